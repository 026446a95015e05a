"""ComiRec-DR (Cen et al., KDD 2020): K interests by dynamic routing.

A separate linear map per capsule, routing logits initialised to zero, 3 iterations; the
coupling softmax runs over the interest axis and padding is removed before routing (see
``layers.CapsuleRouting``). Training reads out the interest closest to the target (argmax).
"""

from __future__ import annotations

import numpy as np
import torch

from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.layers import CapsuleRouting

__all__ = ["ComiRecDR"]


class ComiRecDR(MultiInterestModel):
    """``seq [B, L] -> K interests [B, K, d]`` (K = cfg.n_interests, all active)."""

    name = "comirec-dr"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        self.routing = CapsuleRouting(cfg.dim, cfg.n_interests, cfg.seq_len, cfg.routing_iters,
                                      shared=False, per_position=cfg.dr_per_position)

    def interests(self, batch: Batch) -> Interests:
        vecs, _ = self.routing(self.item_emb(batch.seq), batch.mask)
        return Interests(vecs, torch.ones(vecs.shape[:2], device=vecs.device))
