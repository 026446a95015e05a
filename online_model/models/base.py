"""What every multi-interest model shares: config, batch, output, item table, default loss.

A model maps a batch of histories to K interest vectors in the item embedding space plus an
interest mask; retrieval scores are inner products with the item embeddings. Item rows are
shifted by one inside the model: row 0 of ``item_emb`` is padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from online_model import losses

__all__ = ["ModelConfig", "Batch", "Interests", "MultiInterestModel"]


LEGACY = {"neg_max": False, "global_interest": False, "readout": "gumbel"}
"""DIAM's options before these fields existed (checkpoints whose config.json lacks them)."""


@dataclass
class ModelConfig:
    """Hyper-parameters of every model; each model reads the fields it needs."""

    model: str
    n_items: int
    n_categories: int
    dim: int = 64
    k_max: int = 8  # DIAM's K_max
    n_interests: int = 4  # K of the fixed-K baselines (ComiRec's setting)
    seq_len: int = 50
    n_heads: int = 2
    n_layers: int = 1
    dropout: float = 0.1
    routing_iters: int = 3
    n_neg: int = 1024
    # DIAM
    window: int = 5  # coarse-scale pooling window of the dual-scale encoder
    warmup_k: int = 4  # fixed K of the warm-up stage
    ortho_margin: float = 0.3
    tau_min: float = 0.1  # Gumbel temperature at d_u = 0 ...
    tau_max: float = 1.0  # ... and at d_u = 1 (rises with d_u)
    alpha_max: float = 0.5  # diminishing-returns coefficient alpha = alpha_max * d_u
    hard_beta: float = 0.5  # interest-aware hard-negative reweighting exp(beta * score)
    gumbel_noise: bool = True  # Gumbel noise in the training mix (False: plain tempered softmax)
    # DIAM (models/diam.py): score sampled negatives by their best active interest, as retrieval
    # does (without the global slot it collapses every interest onto one vector, cos 1.000)
    neg_max: bool = True
    # DIAM: slot 0 is a "global" single-interest-style user vector trained by its own sampled
    # softmax; slots 1.. are the diverse interests
    global_interest: bool = True
    # DIAM: how the interests are read out around the target in training: "gumbel"
    # (Gumbel-softmax mix, tau rising with d_u) or "argmax" (ComiRec: the nearest one only)
    readout: str = "argmax"
    # DIAM with a global slot: weight of an extra ComiRec-style softmax of the diverse slots
    # alone (target by its nearest diverse slot, negatives by that slot)
    w_diverse: float = 0.0
    # DIAM ablation: K_u fixed to this many slots in every stage and at inference (0: the
    # gate's K_u). 1 with the global slot is "the global slot alone"
    fixed_k: int = 0
    # single-interest ablation: DIAM's dual-scale encoder summary and category profile enter
    # the residual MLP, and the loss uses DIAM's interest-aware hard negatives (hard_beta)
    single_diam: bool = False
    remi_rr: float = 1e4  # REMI: weight of the routing regularisation (per-user mean)
    adak_cost: float = 0.05  # AdaSR-style adaptive K: price of E[K_u] / K_max in the loss
    util_negatives: int = 50  # hardest negatives the utility loss compares against
    redundancy_window: int = 10  # recent items that define "already consumed"
    light_hidden: int = 32
    w_ortho: float = 0.1
    w_dis: float = 0.05
    w_div: float = 0.01
    w_util: float = 0.5
    w_aux_d: float = 1.0
    w_aux_k: float = 0.5
    w_light: float = 1.0
    w_towers: float = 0.1
    label_pow: float = 2.0  # MIND's label-aware attention sharpness
    dr_per_position: bool = False  # ComiRec-DR: one bilinear map per window position

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; a config written before a field existed gets the
        behaviour it was trained with (``LEGACY``), not today's default."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**LEGACY, **d}.items() if k in names})


@dataclass
class Batch:
    """One mini-batch. ``seq`` [B, L] item row + 1 (0 pad, right-aligned); ``length`` [B] = |I_u|;
    ``signals`` [B, 4]; ``target`` [B] item row + 1; ``div_target`` [B] (NaN = unknown)."""

    seq: torch.Tensor
    length: torch.Tensor
    signals: torch.Tensor
    target: torch.Tensor | None = None
    div_target: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.seq > 0

    def to(self, device: torch.device | str) -> Batch:
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(mv(self.seq), mv(self.length), mv(self.signals),
                     None if self.target is None else mv(self.target),
                     None if self.div_target is None else mv(self.div_target))


@dataclass
class Interests:
    """Model output: ``vecs`` [B, K, d], ``mask`` [B, K] (hard 0/1 in eval, soft in training),
    ``d_u`` [B] or None, and model-specific tensors in ``extra``."""

    vecs: torch.Tensor
    mask: torch.Tensor
    d_u: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def k(self) -> torch.Tensor:
        """Number of active interests per user [B] (hard count)."""
        return (self.mask > 0.5).sum(dim=1)


class MultiInterestModel(nn.Module):
    """Base class: item table, ComiRec-style training readout, sampled softmax, online export."""

    name = "base"
    item_cat: torch.Tensor  # buffer: primary category per item row (-1 padding / unknown)

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        cats = np.full(cfg.n_items + 1, -1, dtype=np.int64)
        if item_cat is not None:
            cats[1:] = item_cat
        # primary category per row (row 0 = padding = -1); a buffer so it follows .to(device)
        self.register_buffer("item_cat", torch.as_tensor(cats), persistent=False)
        self.stage = "joint"
        self.anneal = 1.0

    # -- to implement -------------------------------------------------------------------
    def interests(self, batch: Batch) -> Interests:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------
    def set_stage(self, stage: str, anneal: float = 1.0) -> None:
        """Training stage ('warmup', 'joint', 'finetune') and K-annealing progress in [0, 1]."""
        self.stage, self.anneal = stage, float(anneal)

    def param_groups(self, lr: float, weight_decay: float, fast_scale: float) -> list[dict]:
        """Optimizer parameter groups; one group unless a model needs its own rates
        (``fast_scale``: the multiple of ``lr`` for a model's fast parameters, if it has any)."""
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        """Training user vector [B, d]: the active interest closest to the target (ComiRec)."""
        score = (out.vecs * target_emb[:, None, :]).sum(-1)  # [B, K]
        score = score.masked_fill(out.mask <= 0, float("-inf"))
        best = score.argmax(dim=1)
        return out.vecs[torch.arange(len(best), device=best.device), best]

    def loss(self, batch: Batch, neg_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Sampled-softmax next-item loss with ``neg_ids`` [S] (item rows + 1)."""
        assert batch.target is not None, "training batches carry a target"
        out = self.interests(batch)
        pos = self.item_emb(batch.target)
        user = self.readout(out, pos)
        loss = losses.sampled_softmax(user, pos, self.item_emb(neg_ids), batch.target, neg_ids)
        return loss, {"main": float(loss.detach())}

    def item_table(self) -> torch.Tensor:
        """Item embeddings without the padding row, [N, d]."""
        return self.item_emb.weight[1:]

    def set_diversity_reference(self, div: np.ndarray) -> None:
        """The realised diversity of the training examples (``Features.div_target`` at the
        training positions), before it becomes a percentile: a model that predicts d_u records
        its table for the stream (DIAM: ``DiversityFusion.set_reference``); the others need
        nothing."""

    def export_online(self) -> dict[str, np.ndarray]:
        """The numpy "online head" of the checkpoint contract; baselines export item_emb only."""
        return {"online.item_emb": self.item_table().detach().float().cpu().numpy()}
