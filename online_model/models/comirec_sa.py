"""ComiRec-SA (Cen et al., KDD 2020): K interests by multi-head self-attentive pooling.

Attention keys are item embeddings plus position embeddings, values the item embeddings;
padding is masked to -inf before the softmax over positions. Training reads out the interest
closest to the target (argmax), as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.layers import SelfAttentivePooling

__all__ = ["ComiRecSA"]


class ComiRecSA(MultiInterestModel):
    """``seq [B, L] -> K interests [B, K, d]`` (K = cfg.n_interests, all active)."""

    name = "comirec-sa"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, cfg.dim) * 0.02)
        self.sa = SelfAttentivePooling(cfg.dim, cfg.n_interests, hidden=4 * cfg.dim)

    def interests(self, batch: Batch) -> Interests:
        x = self.item_emb(batch.seq)  # [B, L, d]
        mask = batch.mask.clone()
        mask[:, -1] |= ~mask.any(1)  # an empty history would give an all -inf softmax row
        vecs, att = self.sa(x + self.pos[-x.shape[1]:], x, mask)  # [B, K, d], [B, K, L]
        return Interests(vecs, torch.ones(vecs.shape[:2], device=vecs.device),
                         extra={"att": att, "seq_mask": mask})
