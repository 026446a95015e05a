"""Building blocks shared by the models: masked pooling, squash, B2I capsule routing and
self-attentive multi-interest pooling.

>>> import torch
>>> x = torch.ones(1, 3, 2); m = torch.tensor([[False, True, True]])
>>> masked_mean(x, m).tolist()
[[1.0, 1.0]]
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["masked_mean", "squash", "ramp_mask", "CapsuleRouting", "SelfAttentivePooling"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` [B, L, d] over positions where ``mask`` [B, L] is true -> [B, d]."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def squash(s: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|`` along the last axis."""
    n2 = (s * s).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + eps)


class CapsuleRouting(nn.Module):
    """Behaviour-to-interest dynamic routing (MIND / ComiRec-DR).

    ``shared=True`` (MIND): one bilinear map S for all capsules, routing logits initialised from
    a fixed N(0, 1) draw (MIND's random init; zeros would give K identical capsules).
    ``shared=False`` (ComiRec-DR): a separate map per capsule, logits start at zero.

    The coupling coefficients are a softmax over the *interest* axis (each behaviour distributes
    itself over the capsules), and padded behaviours are removed before any capsule is formed:
    their predictions are zeroed, so they contribute nothing to the capsules nor to the logit
    updates. Softmax over the sequence axis, or padding that still leaks into capsules, are the
    two usual reimplementation bugs this avoids.
    """

    def __init__(self, dim: int, n_caps: int, seq_len: int, iters: int = 3,
                 shared: bool = False, seed: int = 0, per_position: bool = False) -> None:
        super().__init__()
        if shared and per_position:
            raise ValueError("per_position maps are per capsule (shared=False)")
        self.dim, self.n_caps, self.iters, self.shared = dim, n_caps, iters, shared
        self.per_position = per_position
        out = dim if shared else dim * n_caps
        if per_position:
            # ComiRec-DR's default (bilinear_type=2): one [K*d, d] map per position of the
            # window, N(0, 1) as in its code, so routing agreements are large from the start
            self.weight = nn.Parameter(torch.randn(seq_len, out, dim))
        else:
            self.proj = nn.Linear(dim, out, bias=False)
            nn.init.normal_(self.proj.weight, std=dim ** -0.5)
        g = torch.Generator().manual_seed(seed)
        init = torch.randn(seq_len, n_caps, generator=g) if shared else torch.zeros(seq_len, n_caps)
        self.b_init: torch.Tensor
        self.register_buffer("b_init", init, persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, L, d], ``mask`` [B, L] -> capsules [B, K, d], couplings [B, L, K]."""
        b_sz, length, _ = x.shape
        k = self.n_caps
        if self.per_position:  # positions are right-aligned: the last map is the newest item
            u = torch.einsum("bld,lod->blo", x, self.weight[-length:].to(x.dtype))
        else:
            u = self.proj(x)  # [B, L, d] (shared) or [B, L, K*d]
        if not self.shared:
            u = u.view(b_sz, length, k, self.dim)
        # shared: caps_k = sum_l c_lk u_l; per-capsule: caps_k = sum_l c_lk u_lk
        pool = "blk,bld->bkd" if self.shared else "blk,blkd->bkd"
        agree = "bld,bkd->blk" if self.shared else "blkd,bkd->blk"
        m = mask.to(u.dtype)[:, :, None]  # [B, L, 1]
        u_detached = u.detach()  # ComiRec: no gradient through the intermediate iterations
        logits = self.b_init[-length:].to(u.dtype).expand(b_sz, length, k)
        caps = c = None
        for it in range(self.iters):
            # softmax over the interest axis; padded behaviours get coupling 0 to every
            # capsule, so they never enter a capsule nor, through it, any logit update
            c = torch.softmax(logits, dim=2) * m  # [B, L, K]
            src = u if it == self.iters - 1 else u_detached
            caps = squash(torch.einsum(pool, c, src))  # [B, K, d]
            if it < self.iters - 1:
                logits = logits + torch.einsum(agree, u_detached, caps.detach())
        assert caps is not None and c is not None
        return caps, c


class SelfAttentivePooling(nn.Module):
    """ComiRec-SA extraction: K attention heads over the sequence, one interest per head.

    ``A = softmax_L(W2 tanh(W1 H^T))`` with padding set to -inf *before* the softmax over
    positions, then ``V = A X``.
    """

    def __init__(self, dim: int, n_heads: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 4 * dim
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, n_heads, bias=False)

    def forward(self, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys``/``values`` [B, L, d], ``mask`` [B, L] -> interests [B, K, d], attention [B, K, L]."""
        logits = self.w2(torch.tanh(self.w1(keys))).transpose(1, 2)  # [B, K, L]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        att = torch.softmax(logits.float(), dim=-1).to(values.dtype)
        return att @ values, att


def ramp_mask(k_cont: torch.Tensor, k_max: int) -> torch.Tensor:
    """Soft interest mask [B, K_max]: ``clamp(k_cont - k + 1, 0, 1)`` for k = 1..K_max.

    Interests up to floor(k_cont) are fully on, the next one is partially on, so the hard mask
    ``k <= floor(k_cont)`` is its rounding and the gate gets a gradient through the partial one.
    """
    k = torch.arange(1, k_max + 1, device=k_cont.device, dtype=k_cont.dtype)
    return (k_cont[:, None] - k[None, :] + 1).clamp(0, 1)

