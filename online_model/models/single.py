"""Single-interest baseline: YouTube-DNN style mean pooling of the history and a small MLP.

One vector per user, K = 1: the reference point every multi-interest model must beat.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.layers import masked_mean

__all__ = ["SingleInterest"]


class SingleInterest(MultiInterestModel):
    """``seq [B, L] -> one interest [B, 1, d]``."""

    name = "single"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(), nn.Linear(cfg.dim, cfg.dim))

    def interests(self, batch: Batch) -> Interests:
        pooled = masked_mean(self.item_emb(batch.seq), batch.mask)  # [B, d]
        vec = pooled + self.mlp(pooled)  # residual: starts as the mean, learns a correction
        return Interests(vec[:, None, :], torch.ones(len(vec), 1, device=vec.device))
