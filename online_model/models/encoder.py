"""DIAM's dual-scale behaviour encoder (DESIGN.md §4.1).

Fine scale: a Transformer over the item sequence (transitions between consecutive items).
Coarse scale: a Transformer over non-overlapping windows of ``window`` items, each the masked
mean of its items (the user's longer-range pattern). Each position then receives its window's
coarse state: ``H = LayerNorm(fine + coarse)``; ``h_seq`` is the masked mean of H.
"""

from __future__ import annotations

import torch
from torch import nn

from online_model.models.layers import masked_mean

__all__ = ["DualScaleEncoder"]


def _layer(dim: int, heads: int, n_layers: int) -> nn.TransformerEncoder:
    # dropout only at the encoder input: inside the layers it costs four Bernoulli draws over
    # [B, L, d] per layer (a sixth of a CPU training step) for no measurable gain at this size
    layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


class DualScaleEncoder(nn.Module):
    """``(x [B, L, d], mask [B, L]) -> (H [B, L, d], h_seq [B, d])``; L a multiple of window."""

    def __init__(self, dim: int, seq_len: int, window: int, heads: int = 2, layers: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if seq_len % window:
            raise ValueError(f"seq_len {seq_len} must be a multiple of window {window}")
        self.window = window
        self.pos_fine = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.pos_coarse = nn.Parameter(torch.randn(seq_len // window, dim) * 0.02)
        self.fine = _layer(dim, heads, layers)
        self.coarse = _layer(dim, heads, layers)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, length, d = x.shape
        w = self.window
        # a user with no history at all would make attention rows all -inf: keep one slot open
        mask = mask.clone()
        mask[:, -1] |= ~mask.any(1)
        fine = self.fine(self.drop(x + self.pos_fine[-length:]), src_key_padding_mask=~mask)
        xm = (x * mask[..., None]).view(b, length // w, w, d)
        cnt = mask.view(b, length // w, w).sum(-1, keepdim=True)
        pooled = xm.sum(2) / cnt.clamp_min(1)  # [B, L/w, d]
        wmask = cnt[..., 0] > 0
        coarse = self.coarse(pooled + self.pos_coarse[-(length // w):],
                             src_key_padding_mask=~wmask)
        coarse = coarse.repeat_interleave(w, dim=1)  # back to positions: [B, L, d]
        h = self.norm(fine + coarse) * mask[..., None]
        return h, masked_mean(h, mask)
