"""An AdaSR-style adaptive-K baseline: ComiRec-SA's interests with a per-user number of them.

``K_max = cfg.n_interests`` attention heads as ComiRec-SA (the count a checkpoint records
as its ``k_max`` for every non-DIAM model); a gate on the mean embedding of the history gives
``K_u = floor(sigmoid(g) * K_max) + 1`` (soft ramp mask while training, hard mask at inference,
the same form as DIAM's gate). Training reads out the active interest closest to the target,
scaled by its mask value so the gate gets a gradient, plus ``cfg.adak_cost * E[K_u] / K_max``,
a price per interest: without it more interests never cost the argmax readout anything, and the
gate would open every head. "Style": the adaptive number of interests is the idea borrowed, not
a reproduction of a published architecture.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from online_model import losses
from online_model.models.base import Batch, Interests, ModelConfig
from online_model.models.comirec_sa import ComiRecSA
from online_model.models.extractor import hard_k
from online_model.models.layers import masked_mean, ramp_mask

__all__ = ["AdaptiveK"]


class AdaptiveK(ComiRecSA):
    """``seq [B, L] -> K_max interests [B, K_max, d]`` with a K_u prefix mask."""

    name = "adasr"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(), nn.Linear(cfg.dim, 1))

    def interests(self, batch: Batch) -> Interests:
        out = super().interests(batch)
        pooled = masked_mean(self.item_emb(batch.seq), batch.mask)  # [B, d]
        p = torch.sigmoid(self.gate(pooled).squeeze(-1).float())  # [B]
        k_max = self.cfg.n_interests
        if self.training:
            mask = ramp_mask(p * k_max + 1, k_max)  # [B, K_max] soft
        else:
            k = hard_k(p, k_max)
            mask = (torch.arange(1, k_max + 1, device=k.device)[None] <= k[:, None]).float()
        return Interests(out.vecs, mask.to(out.vecs.dtype), extra={**out.extra, "gate_prob": p})

    def loss(self, batch: Batch, neg_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        assert batch.target is not None, "training batches carry a target"
        out = self.interests(batch)
        pos = self.item_emb(batch.target)
        logit = (out.vecs * pos[:, None]).sum(-1).masked_fill(out.mask <= 0, float("-inf"))
        best = logit.argmax(1)  # [B]
        rows = torch.arange(len(best), device=best.device)
        user = out.vecs[rows, best] * out.mask[rows, best, None]  # [B, d]
        main = losses.sampled_softmax(user, pos, self.item_emb(neg_ids), batch.target, neg_ids)
        k_mean = out.mask.float().sum(1).mean()
        total = main + self.cfg.adak_cost * k_mean / self.cfg.n_interests
        return total, {"main": float(main.detach()), "k": float(k_mean.detach())}

