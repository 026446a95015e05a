"""MIND (Li et al., CIKM 2019): B2I dynamic routing with a shared bilinear map, an adaptive
number of interests ``K' = max(1, min(K, floor(log2 |I_u|)))`` and label-aware attention.

|I_u| is the user's full history length before the prediction point (not capped by the
window). Label-aware attention mixes the active interests with weights
``softmax(p * <v_k, e_target>)``; MIND writes ``pow(<v_k, e>, p)``, which loses the sign of
negative scores, so we use the exponential form with the same sharpening p = 2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.layers import CapsuleRouting

__all__ = ["MIND", "mind_k"]


def mind_k(length: torch.Tensor, k: int) -> torch.Tensor:
    """``max(1, min(K, floor(log2 |I_u|)))`` per user [B].

    >>> mind_k(torch.tensor([1, 2, 5, 16, 1000]), 4).tolist()
    [1, 1, 2, 4, 4]
    """
    lg = torch.floor(torch.log2(length.clamp_min(1).double()) + 1e-9).long()
    return lg.clamp(1, k)


class MIND(MultiInterestModel):
    """``seq [B, L] -> K interests [B, K, d]`` with the first K' active."""

    name = "mind"

    def __init__(self, cfg: ModelConfig, item_cat: np.ndarray | None = None) -> None:
        super().__init__(cfg, item_cat)
        self.routing = CapsuleRouting(cfg.dim, cfg.n_interests, cfg.seq_len, cfg.routing_iters,
                                      shared=True, seed=0)
        self.hidden = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU())  # MIND's H layer

    def interests(self, batch: Batch) -> Interests:
        caps, _ = self.routing(self.item_emb(batch.seq), batch.mask)
        vecs = caps + self.hidden(caps)
        k = mind_k(batch.length, self.cfg.n_interests)
        ar = torch.arange(1, self.cfg.n_interests + 1, device=vecs.device)
        return Interests(vecs, (ar[None, :] <= k[:, None]).to(vecs.dtype))

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        score = (out.vecs * target_emb[:, None, :]).sum(-1).float()  # [B, K]
        score = score.masked_fill(out.mask <= 0, float("-inf"))
        w = torch.softmax(self.cfg.label_pow * score, dim=1).to(out.vecs.dtype)
        return (w[..., None] * out.vecs).sum(1)
