"""The offline trainer on a GPU: what it buys in time, and whether its network is as good.

DESIGN.md §4 trains the base model on a GPU when there is one (``diam train --device auto``;
the retrain service calls the same ``online_model.train.train``). This bench runs that trainer
on one torch device and writes, per run, seconds per epoch (the trainer's own clock: batches,
steps and nothing else), the precision it ran in and the validation metrics it logs:

- ``full``: ``diam train``'s defaults on ml-100k (10 epochs, 64 positions per user, lr 1e-2,
  batch 256, the served window of 10 items), with mixed precision (bf16 on CUDA) and without;
- ``batch``: the same with batches of 1024 and 4096 (the learning rate unchanged, so their
  validation metrics say what a larger batch costs in quality at the default schedule);
- ``cpu``: one epoch of ``full`` on this machine's CPU with one thread, the trainer's CPU
  default, as the same machine's reference;
- ``synth``: a corpus of ten times ml-100k's clicks (``diam data synth`` with 20,000 users and
  items, about a million clicks), one epoch at batch 256 and at 4096, and the CPU's seconds for
  the first 30 batches of 256, scaled to an epoch (:func:`cpu_batches`: an estimate);
- ``quarter``: the design-period base of ``bench/prequential.py --early`` (the first quarter
  of ml-100k, 4 epochs), trained twice from the same seed: are the two bit for bit the same?
  It trains where ``bench/prequential.py`` would (``--device auto``, whatever ``--device``
  says; the part records its device). The first is written under ``--checkpoints`` so that
  the served path can be read on it (``python bench/prequential.py --early --checkpoint
  DIR``);
- ``infer``: the network's forward pass (torch, no autograd, fp32) on batches of users' last
  10 items, microseconds per user at batches of 1 to 8192: what re-running the network for
  many users at once would cost on this device.

Run: ``python bench/train_device.py [--device auto] [--only full,batch,...]
[--out bench/results/train_device.json] [--checkpoints DIR]``; ``--smoke`` shrinks every part
to seconds (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from online_model.config import OnlineConfig  # noqa: E402
from online_model.corpus import corpus_from_prepared  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.models import Batch, ModelConfig  # noqa: E402
from online_model.train import (  # noqa: E402
    Features,
    TrainConfig,
    _amp_dtype,
    resolve_device,
    train,
)

PARTS = ("full", "batch", "cpu", "synth", "quarter", "infer")
RESULTS = ROOT / "bench" / "results"


def device_info(device: torch.device) -> dict:
    """What ran: the device's name, torch's version and build, the host."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    return info


def model_config(corpus) -> ModelConfig:
    """``diam train``'s DIAM: ``ModelConfig``'s own shape (d 64, K_max 8), the served window."""
    return ModelConfig(model="diam", n_items=corpus.n_items, n_categories=corpus.n_categories,
                       seq_len=OnlineConfig().train_seq_len("diam"))


def run_train(corpus, feats, device: str, *, epochs: int, batch: int, amp: bool = True,
              eval_every: int = 1) -> dict:
    """One training run as ``diam train`` does it; its clock and its last validation line."""
    tcfg = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-2, seed=0, device=device,
                       max_per_user=64, threads=1, amp=amp, eval_every=eval_every)
    t0 = time.perf_counter()
    res = train(corpus, model_config(corpus), tcfg, feats=feats, progress=False)
    wall = time.perf_counter() - t0
    last = res.history[-1]
    dt = _amp_dtype(resolve_device(device), amp)
    return {"epochs": epochs, "batch_size": batch,
            "precision": "fp32" if dt is None else str(dt).removeprefix("torch."),
            "seconds_per_epoch": round(res.seconds_per_epoch, 3),
            "epoch_seconds": [h["seconds"] for h in res.history],
            "wall_s": round(wall, 2),
            **{k: last[k] for k in ("valid_recall@20", "valid_recall@50", "valid_ndcg@50")
               if k in last},
            "final_loss": last.get("loss")}


def cpu_batches(corpus, feats, n_batches: int, batch: int = 256) -> dict:
    """Seconds for the first ``n_batches`` steps on the CPU (one thread), scaled to an epoch:
    the CPU's cost of a corpus too large to train here in full. An estimate: the trainer's
    forward and backward pass and AdamW's step in its joint stage, without its gradient
    clipping and learning-rate schedule (a few vector operations per step), the first step's
    one-off costs included."""
    from online_model.evaluate import split_users
    from online_model.models import build_model
    from online_model.train import _epoch_positions, _train_positions, make_batch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    mcfg = model_config(corpus)
    model = build_model(mcfg, corpus.item_cat)
    per_user = _train_positions(corpus, split_users(corpus.users, 0)["train"])
    model.set_diversity_reference(feats.div_target[np.concatenate(per_user)])
    pos = _epoch_positions(per_user, 64, np.random.default_rng(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    model.set_stage("joint", 1.0)
    t0 = time.perf_counter()
    for b in range(n_batches):
        bt = make_batch(corpus, feats, pos[b * batch:(b + 1) * batch], mcfg.seq_len)
        neg = torch.randint(1, corpus.n_items + 1, (mcfg.n_neg,), generator=gen)
        loss, _ = model.loss(bt, neg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    steps = -(-len(pos) // batch)
    return {"batches_timed": n_batches, "batch_size": batch, "seconds": round(secs, 2),
            "steps_per_epoch": steps,
            "seconds_per_epoch_estimate": round(secs / n_batches * steps, 1)}


def weights_digest(ckpt: Path) -> str:
    return hashlib.sha256((ckpt / "weights.safetensors").read_bytes()).hexdigest()[:16]


def quarter(data: Path, out_dir: Path, epochs: int) -> dict:
    """The ``--early`` base of bench/prequential.py trained twice from seed 0 on this device:
    the same bytes? The first copy stays in ``out_dir`` for the served path to be read on."""
    import prequential

    seq_len = OnlineConfig().train_seq_len("diam")
    kind = resolve_device("auto").type  # train_first_half trains where ``diam train`` would
    dirs = [out_dir / f"prequential-diam-quarter-e{epochs}-L{seq_len}-{kind}{tag}"
            for tag in ("", "-again")]
    for d in dirs:
        if d.exists():
            raise SystemExit(f"{d}: exists; pick an empty --checkpoints directory")
    metas = []
    for d in dirs:
        prequential.train_first_half(data, epochs, d, seq_len, early=True)
        metas.append(json.loads((d / "config.json").read_text()))
    digests = [weights_digest(d) for d in dirs]
    from safetensors.numpy import load_file

    a, b = (load_file(str(d / "weights.safetensors")) for d in dirs)
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
               if a[k].size else 0.0 for k in a)
    train_m = [m.get("train_metrics", {}) for m in metas]
    return {"device": kind, "checkpoint": str(dirs[0]), "weights_sha256_16": digests,
            "bit_identical": digests[0] == digests[1], "max_abs_weight_diff": diff,
            "seconds_per_epoch": [t.get("seconds_per_epoch") for t in train_m],
            "valid_recall@20": [t.get("final", {}).get("valid_recall@20") for t in train_m]}


def infer(corpus, device: torch.device, sizes: tuple[int, ...], repeats: int = 20) -> dict:
    """µs per user of the network's forward pass (interests, K_u gate, d_u) on this device,
    untrained weights (the cost does not depend on them), fp32, no autograd."""
    from online_model.models import build_model
    from online_model.train import make_batch

    torch.manual_seed(0)
    mcfg = model_config(corpus)
    model = build_model(mcfg, corpus.item_cat).to(device).eval()
    feats = Features.of(corpus)
    rng = np.random.default_rng(0)
    full = np.concatenate([np.arange(o + mcfg.seq_len, e) for o, e in  # a full window before
                           zip(corpus.offsets[:-1].tolist(), corpus.offsets[1:].tolist(),
                               strict=True)])
    rows = {}
    for n in sizes:
        pos = rng.choice(full, size=n)
        bt = make_batch(corpus, feats, pos, mcfg.seq_len)
        bt = Batch(bt.seq, bt.length, bt.signals).to(device)
        with torch.inference_mode():
            for _ in range(3):
                model.interests(bt)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = model.interests(bt)
                float(out.vecs.sum())  # the result on the host: what a hand-back would need
                times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        rows[str(n)] = {"batch_ms_median": round(med * 1e3, 3),
                        "us_per_user": round(med / n * 1e6, 3)}
    return {"repeats": repeats, "items_per_user": mcfg.seq_len, "sizes": rows}


VARIANTS = ("device", "data")
"""Options that change what is measured (another device, another dataset): off their defaults
the run needs ``--out`` (``provenance.refuse_variant``)."""


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="torch device (auto: CUDA when present)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="where ``quarter`` writes its two checkpoints [default: a temporary "
                         "directory, removed]")
    ap.add_argument("--smoke", action="store_true",
                    help="every part shrunk to seconds: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("train_device", (), quick="--only",
                                        variants=VARIANTS)[:-1] + "; --smoke: stdout only]")
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path | None:
    """``--out``, else None with ``--smoke`` (stdout only), else where the run writes
    (``provenance.sized_out``): only every part (``--only`` at its default) writes the
    committed ``train_device.json``, a subset ``train_device_quick.json``; ``--device`` or
    ``--data`` off its default is refused without ``--out`` (exit 2)."""
    if args.out:
        return Path(args.out)
    if args.smoke:
        return None
    subset = {p.strip() for p in args.only.split(",") if p.strip()} != set(PARTS)
    return sized_out(ap, args, "train_device", (), quick=subset, variants=VARIANTS)


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    out = results_path(ap, args)  # a variant without --out is refused here, before anything runs
    if not (args.data / "events.npz").is_file() and not (args.data / "events.tsv").is_file():
        sys.exit(f"{args.data}: not a prepared dataset (diam data prepare ml-100k)")
    with tempfile.TemporaryDirectory() as tmp:
        _run(args, parts, out, Path(tmp))


def _run(args: argparse.Namespace, parts: list[str], out: Path | None, tmp: Path) -> None:
    """The parts in order, the JSON written after each (a failing part is recorded, the
    others still run); scratch files (the synthetic corpus, default checkpoints) in ``tmp``."""
    device = resolve_device(args.device)
    ep = 1 if args.smoke else 10
    res: dict = {"provenance": provenance(), "bench": "train_device", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime()),
                 "command": " ".join(["python bench/train_device.py", *sys.argv[1:]]),
                 "smoke": args.smoke, **device_info(device), "parts": {}, "failed": {}}

    def save() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1) + "\n")

    corpus = corpus_from_prepared(load_prepared(args.data))
    feats = Features.of(corpus)
    res["dataset"] = {"name": corpus.name, "users": int(corpus.n_users),
                      "items": int(corpus.n_items), "events": int(len(corpus.items))}
    synth = None

    def synth_corpus():
        nonlocal synth
        if synth is None:
            from online_model.synth import SynthParams, write_synth

            n = 500 if args.smoke else 20_000
            d = write_synth(SynthParams(users=n, items=n, events_per_user=50.0, seed=0),
                            tmp / "synth")
            c = corpus_from_prepared(load_prepared(d))
            synth = (c, Features.of(c))
            res["synth_dataset"] = {"users": int(c.n_users), "items": int(c.n_items),
                                    "events": int(len(c.items))}
        return synth

    jobs = {
        "full": lambda: {"amp": run_train(corpus, feats, str(device), epochs=ep, batch=256),
                         "no_amp": run_train(corpus, feats, str(device), epochs=ep, batch=256,
                                             amp=False)},
        "batch": lambda: {str(b): run_train(corpus, feats, str(device), epochs=ep, batch=b)
                          for b in (1024, 4096)},
        "cpu": lambda: run_train(corpus, feats, "cpu", epochs=1, batch=256),
        "synth": lambda: {
            **{str(b): run_train(*synth_corpus(), str(device), epochs=1, batch=b,
                                 eval_every=1) for b in (256, 4096)},
            "cpu_256": cpu_batches(*synth_corpus(), 3 if args.smoke else 30)},
        "quarter": lambda: quarter(args.data, args.checkpoints or tmp / "checkpoints",
                                   1 if args.smoke else 4),
        "infer": lambda: infer(corpus, device, (1, 64) if args.smoke else
                               (1, 16, 256, 1024, 8192)),
    }
    for part in parts:
        t0 = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {part} ...", file=sys.stderr, flush=True)
        try:
            res["parts"][part] = jobs[part]()
        except Exception:  # one part's failure must not lose the others' numbers
            res["failed"][part] = traceback.format_exc()
            print(res["failed"][part], file=sys.stderr, flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] {part} done in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        save()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(json.dumps(res, indent=1))
    if res["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
