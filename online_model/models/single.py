"""Single-interest baseline: YouTube-DNN style mean pooling of the history and a small MLP.

One vector per user, K = 1: the reference point every multi-interest model must beat.

With ``single_diam`` (an ablation of DIAM, not a baseline of the literature) the residual MLP
also reads DIAM's dual-scale encoder summary h_seq and the window's category profile, and the
loss weighs negatives by DIAM's interest-aware hardness (``hard_beta``): DIAM's global slot with
every ingredient but the diverse interests, so a gain that this model shares is not a
multi-interest gain.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from online_model import losses
from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.layers import masked_mean

__all__ = ["SingleInterest"]


class SingleInterest(MultiInterestModel):
    """``seq [B, L] -> one interest [B, 1, d]``."""

    name = "single"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        extra = 0
        if cfg.single_diam:
            from online_model.models.encoder import DualScaleEncoder

            self.encoder = DualScaleEncoder(cfg.dim, cfg.seq_len, cfg.window, cfg.n_heads,
                                            cfg.n_layers, cfg.dropout)
            extra = cfg.dim + cfg.n_categories
        self.mlp = nn.Sequential(nn.Linear(cfg.dim + extra, cfg.dim), nn.ReLU(),
                                 nn.Linear(cfg.dim, cfg.dim))

    def interests(self, batch: Batch) -> Interests:
        x = self.item_emb(batch.seq)  # [B, L, d]
        pooled = masked_mean(x, batch.mask)  # [B, d]
        feats = pooled
        if self.cfg.single_diam:
            from online_model.models.diam import category_histogram

            _, h_seq = self.encoder(x, batch.mask)  # [B, d]
            prof = category_histogram(self.item_cat[batch.seq], batch.mask, self.cfg.n_categories)
            prof = prof / prof.sum(1, keepdim=True).clamp_min(1)  # [B, C]
            feats = torch.cat([pooled, h_seq.to(pooled.dtype), prof.to(pooled.dtype)], -1)
        vec = pooled + self.mlp(feats)  # residual: starts as the mean, learns a correction
        return Interests(vec[:, None, :], torch.ones(len(vec), 1, device=vec.device))

    def loss(self, batch: Batch, neg_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.cfg.single_diam:
            return super().loss(batch, neg_ids)
        assert batch.target is not None, "training batches carry a target"
        user = self.interests(batch).vecs[:, 0]
        loss = losses.sampled_softmax(user, self.item_emb(batch.target), self.item_emb(neg_ids),
                                      batch.target, neg_ids, self.cfg.hard_beta)
        return loss, {"main": float(loss.detach())}
