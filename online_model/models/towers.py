"""DIAM's disentangled category-aware and category-free towers (DESIGN.md §4.4).

Both towers read the pooled interests; the category-aware one also reads the user's category
histogram. Each has its own objective so that neither collapses:

- ``h_cat`` scores categories against category centroids of the shared item embeddings and is
  trained to predict the next item's category;
- ``h_ind`` scores items directly (sampled softmax), the user's taste within categories;
- ``L_dis = |cos(h_cat, h_ind)|`` keeps them apart, so that shifting ``h_cat`` (category
  preference) at inference leaves ``h_ind`` (intrinsic taste) alone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DisentangledTowers", "category_centroids"]


def category_centroids(item_emb: torch.Tensor, item_cat: torch.Tensor, n_cat: int) -> torch.Tensor:
    """Mean item embedding per category ``[C, d]`` (rows with unknown category skipped)."""
    keep = item_cat >= 0
    emb, cat = item_emb[keep], item_cat[keep]
    sums = torch.zeros(n_cat, emb.shape[1], device=emb.device, dtype=emb.dtype)
    sums.index_add_(0, cat, emb)
    cnt = torch.bincount(cat, minlength=n_cat).clamp_min(1).to(emb.dtype)
    return sums / cnt[:, None]


class DisentangledTowers(nn.Module):
    """``(pooled interests [B, d], category histogram [B, C]) -> (h_cat [B, d], h_ind [B, d])``."""

    def __init__(self, dim: int, n_categories: int) -> None:
        super().__init__()
        self.cat = nn.Sequential(nn.Linear(dim + n_categories, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.ind = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, pooled: torch.Tensor, cat_hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cat(torch.cat([pooled, cat_hist.to(pooled.dtype)], -1)), self.ind(pooled)
