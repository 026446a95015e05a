"""The shared offline trainer of DIAM and the baselines (DESIGN.md §4, "Training").

One example per (training user, position): the last ``seq_len`` items before the position
predict the item at it. An epoch visits up to ``max_per_user`` positions per training user,
drawn afresh each epoch from a seeded generator, so heavy users do not dominate and an epoch on
ml-100k costs minutes, not tens of minutes, on a CPU. AdamW, cosine decay from ``lr`` to
``lr_min`` per step, gradient clipping, mixed precision on CUDA (bf16 where supported, else fp16
with loss scaling). DIAM runs its three stages: warm-up (10% of epochs), joint (70%; K annealed
from 4 to K_u over its first half), fine-tune (20%).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from online_model.corpus import Corpus, future_entropy, prefix_signals, windows
from online_model.evaluate import EvalSet, evaluate, make_eval_set, split_users
from online_model.models import Batch, ModelConfig, MultiInterestModel, build_model

__all__ = ["TrainConfig", "TrainResult", "Features", "train", "resolve_device", "stage_plan",
           "make_batch", "quantile_target"]


@dataclass
class TrainConfig:
    """Optimisation settings (model shape lives in ``ModelConfig``)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-2
    """Peak learning rate, the one default of ``diam train`` and the retrain service. 1e-2 was
    every model's best of {3e-3, 1e-2} on ml-100k validation users (``bench/model_quality.py
    --lr-grid``, ``bench/results/model_quality_round2.md``); DESIGN.md §4's 1e-3 trained
    less far in the same epochs."""
    lr_min: float = 1e-5
    weight_decay: float = 1e-4
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    max_per_user: int = 64
    amp: bool = True
    deterministic: bool = True
    eval_every: int = 1  # validation metrics every n epochs (0: never)
    keep_best: bool = False  # end with the weights of the epoch best on VALID users (R@20 + R@50)
    threads: int = 1  # CPU threads; on a shared 2-core box one thread is ~40x faster than two
    fast_lr_scale: float = 10.0  # multiple of lr for a model's fast parameters (DIAM: d_u fusion, light gate)


@dataclass
class Features:
    """Per-event features computed once per corpus: signals before each event, future entropy."""

    signals: np.ndarray  # [E, 4]
    div_target: np.ndarray  # [E]

    @classmethod
    def of(cls, corpus: Corpus) -> Features:
        return cls(prefix_signals(corpus), future_entropy(corpus))


@dataclass
class TrainResult:
    model: MultiInterestModel
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    split: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    best_epoch: int = 0  # epoch whose weights were kept (0: the last, keep_best off)

    def metrics(self) -> dict:
        """Compact summary for the checkpoint's config.json."""
        last = self.history[-1] if self.history else {}
        return {"epochs": len(self.history), "seconds_per_epoch": round(self.seconds_per_epoch, 2),
                "final": last, "best_epoch": self.best_epoch, "train_cfg": asdict(self.train_cfg)}


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is passed to torch.

    A name torch does not parse, or CUDA asked for where torch sees none, is a ValueError
    saying which (torch's own RuntimeError reads like a crash to a CLI user)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"{name!r} is not a torch device: use auto, cpu, cuda, cuda:1 ... "
                         f"({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return dev


def stage_plan(epochs: int) -> list[str]:
    """DIAM's stage per epoch: 10% warm-up, 70% joint, 20% fine-tune (each >= 1 when room).

    >>> stage_plan(10)
    ['warmup', 'joint', 'joint', 'joint', 'joint', 'joint', 'joint', 'joint', 'finetune', 'finetune']
    >>> stage_plan(2)
    ['warmup', 'joint']
    """
    if epochs < 3:
        return ["warmup", "joint"][-epochs:] if epochs == 1 else ["warmup", "joint"]
    warm = max(1, round(0.1 * epochs))
    fine = max(1, round(0.2 * epochs))
    return ["warmup"] * warm + ["joint"] * (epochs - warm - fine) + ["finetune"] * fine


def make_batch(corpus: Corpus, feats: Features, pos: np.ndarray, seq_len: int) -> Batch:
    """Training batch of the examples at flat positions ``pos``."""
    seq, length = windows(corpus, pos, seq_len)
    return Batch(
        seq=torch.from_numpy(seq),
        length=torch.from_numpy(length),
        signals=torch.from_numpy(feats.signals[pos]),
        target=torch.from_numpy(corpus.items[pos] + 1),
        div_target=torch.from_numpy(feats.div_target[pos]),
    )


def quantile_target(div: np.ndarray, ref_pos: np.ndarray) -> np.ndarray:
    """Mid-rank quantile of each realised diversity among ``div[ref_pos]`` (NaN stays NaN).

    >>> quantile_target(np.array([0.1, 0.5, np.nan, 0.9]), np.arange(4)).astype(float).round(3).tolist()
    [0.167, 0.5, nan, 0.833]
    """
    ref = np.sort(div[ref_pos][~np.isnan(div[ref_pos])])
    if len(ref) == 0:
        return div.copy()
    q = (np.searchsorted(ref, div, "left") + np.searchsorted(ref, div, "right")) / (2 * len(ref))
    return np.where(np.isnan(div), np.nan, q).astype(np.float32)


def _train_positions(corpus: Corpus, users: np.ndarray) -> list[np.ndarray]:
    """Per training user, the positions with at least one earlier item."""
    return [np.arange(corpus.offsets[u] + 1, corpus.offsets[u + 1]) for u in users]


def _epoch_positions(per_user: list[np.ndarray], cap: int, rng: np.random.Generator) -> np.ndarray:
    parts = [p if len(p) <= cap else rng.choice(p, size=cap, replace=False) for p in per_user]
    out = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    rng.shuffle(out)
    return out


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Autocast dtype on CUDA (bf16 where supported, else fp16); None = full precision."""
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig,
          feats: Features | None = None, log: Callable[[str], None] | None = None,
          progress: bool = True, valid: EvalSet | None = None,
          init_state: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``model_cfg.model`` on the training users of ``corpus`` (split by ``cfg.seed``).

    ``init_state``: a full state dict to start from instead of the random initialisation (a
    warm start; the retrain service builds it from the active snapshot)."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    feats = feats or Features.of(corpus)
    split = split_users(corpus.users, cfg.seed)
    if valid is None and cfg.eval_every:
        valid = make_eval_set(corpus, split["valid"], feats.signals)
    model = build_model(model_cfg, corpus.item_cat)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    plan = stage_plan(cfg.epochs)
    per_user = _train_positions(corpus, split["train"])
    # d_u's target is a quantile among training examples (its scale is that of a percentile)
    ref_pos = np.concatenate(per_user)
    model.set_diversity_reference(feats.div_target[ref_pos])
    feats = replace(feats, div_target=quantile_target(feats.div_target, ref_pos))
    rng = np.random.default_rng(cfg.seed)
    n_ex = sum(min(len(p), cfg.max_per_user) for p in per_user)
    steps_per_epoch = max(1, math.ceil(n_ex / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.weight_decay, cfg.fast_lr_scale))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, cfg.lr, cfg.lr_min))
    # (one multiplier for every group: a group at 10x lr decays to 10x lr_min)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_neg = min(model_cfg.n_neg, corpus.n_items)
    joint_steps = plan.count("joint") * steps_per_epoch
    amp_dtype = _amp_dtype(device, cfg.amp)
    # fp16 needs loss scaling, one scaler for the whole run (its scale adapts across steps)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    result = TrainResult(model, model_cfg, cfg, split)
    step = joint_done = 0
    times = []
    best_score, best_state, best_epoch = -1.0, None, 0
    for epoch, stage in enumerate(plan, start=1):
        model.train()
        positions = _epoch_positions(per_user, cfg.max_per_user, rng)
        sums: dict[str, float] = {}
        lr_start = sched.get_last_lr()[0]  # the rate of the epoch's first step
        t0 = time.perf_counter()
        bar = tqdm(range(0, len(positions), cfg.batch_size), disable=not progress, leave=False,
                   desc=f"{model_cfg.model} epoch {epoch}/{cfg.epochs} [{stage}]", unit="batch")
        for start in bar:
            anneal = min(1.0, joint_done / max(1, joint_steps // 2)) if stage == "joint" else 1.0
            model.set_stage(stage, anneal)
            batch = make_batch(corpus, feats, positions[start:start + cfg.batch_size],
                               model_cfg.seq_len).to(device)
            neg = (torch.randint(1, corpus.n_items + 1, (n_neg,), generator=gen)).to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype,
                                enabled=amp_dtype is not None):
                loss, logs = model.loss(batch, neg)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            step += 1
            joint_done += stage == "joint"
            logs["loss"] = float(loss.detach())
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
        times.append(time.perf_counter() - t0)
        n_b = max(1, math.ceil(len(positions) / cfg.batch_size))
        # the cosine decays within the epoch: its first step's rate and the rate after its last
        # step (one bare "lr" read 1e-05 for a 1-epoch run whose peak was 1e-2)
        rec = {"epoch": epoch, "stage": stage, "seconds": round(times[-1], 2),
               "lr_start": lr_start, "lr_end": sched.get_last_lr()[0]}
        rec.update({k: round(v / n_b, 4) for k, v in sums.items()})
        if valid is not None and cfg.eval_every and (epoch % cfg.eval_every == 0
                                                     or epoch == cfg.epochs):
            res = evaluate(model, corpus, valid, device=device, ns=(20, 50), agg="merge")
            rec.update({f"valid_{k}": round(res[k], 4) for k in ("recall@20", "recall@50",
                                                                  "ndcg@50")})
            score = res["recall@20"] + res["recall@50"]
            if cfg.keep_best and score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result.history.append(rec)
        if log is not None:
            log(" ".join(f"{k}={v}" for k, v in rec.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_epoch = best_epoch
        if log is not None:
            log(f"kept the weights of epoch {best_epoch} (best valid recall@20 + recall@50)")
    model.set_stage("joint", 1.0)
    model.eval()
    result.seconds_per_epoch = float(np.mean(times)) if times else 0.0
    return result


def _cosine(step: int, total: int, lr: float, lr_min: float) -> float:
    """Multiplier of the base lr: cosine from 1 to lr_min / lr over ``total`` steps."""
    t = min(step, total) / max(1, total)
    floor = lr_min / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
