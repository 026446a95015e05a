"""Training losses of DIAM and the baselines (torch).

Shapes: B batch, K interests, S sampled negatives, d embedding size.

>>> import torch
>>> u = torch.zeros(2, 4); pos = torch.ones(2, 4); neg = torch.ones(3, 4)
>>> round(float(sampled_softmax(u, pos, neg, torch.tensor([1, 2]), torch.tensor([5, 6, 7]))), 4)
1.3863
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "sampled_softmax",
    "hard_negative_log_weights",
    "ortho_loss",
    "dis_loss",
    "utility_ranking_loss",
    "diversity_contrastive_loss",
    "gumbel_interest_weights",
    "routing_regularization",
]


def hard_negative_log_weights(neg_scores: torch.Tensor, beta: float) -> torch.Tensor:
    """Interest-aware hard negatives: log of weights ``S * softmax(beta * score)`` ``[B, S]``.

    Uniform negatives reweighted by ``exp(beta * score)`` under the selected interest, so
    negatives that interest already likes count more. Weights average 1 (``beta = 0`` is plain
    uniform sampling) and carry no gradient: they choose which mistakes matter, not the scores.
    """
    s = neg_scores.detach().float()
    return torch.log_softmax(beta * s, dim=-1) + math.log(s.shape[-1])


def sampled_softmax(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                    target: torch.Tensor, neg_ids: torch.Tensor, beta: float = 0.0,
                    reduction: str = "mean", neg_logit: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Next-item cross-entropy over the positive and S shared uniform negatives.

    ``user`` [B, d], ``pos`` [B, d] (target embeddings), ``neg`` [S, d]; a negative that happens
    to be the target is masked out. ``beta > 0`` turns on hard-negative reweighting (weights
    from the scores under ``user``). ``neg_logit`` [B, S] replaces ``user @ neg.T`` as the
    negatives' logits (DIAM: each negative scored by its best interest).
    """
    pos_logit = (user * pos).sum(-1, keepdim=True)  # [B, 1]
    sel = user @ neg.T  # [B, S] scores under the selected interest
    neg_logit = sel if neg_logit is None else neg_logit
    if beta:
        neg_logit = neg_logit + hard_negative_log_weights(sel, beta)
    neg_logit = neg_logit.masked_fill(neg_ids[None, :] == target[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1).float()
    zero = torch.zeros(len(user), dtype=torch.long, device=user.device)
    return F.cross_entropy(logits, zero, reduction=reduction)


def ortho_loss(vecs: torch.Tensor, mask: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """``mean_{i != j} max(0, cos(v_i, v_j) - margin)`` over active interests.

    ``vecs`` [B, K, d], ``mask`` [B, K] in [0, 1] (soft while training): a pair counts with
    weight ``m_i * m_j`` so interests the gate is switching off matter less.
    """
    v = F.normalize(vecs.float(), dim=-1)
    cos = v @ v.transpose(1, 2)  # [B, K, K]
    w = mask[:, :, None] * mask[:, None, :]
    w = w * (1 - torch.eye(vecs.shape[1], device=vecs.device))
    return (w * F.relu(cos - margin)).sum() / w.sum().clamp_min(1e-6)


def dis_loss(h_cat: torch.Tensor, h_ind: torch.Tensor) -> torch.Tensor:
    """``|cos(h_cat, h_ind)|``, mean over the batch: keeps the two towers disentangled."""
    return F.cosine_similarity(h_cat.float(), h_ind.float(), dim=-1).abs().mean()


def utility_ranking_loss(rel_pos: torch.Tensor, rel_neg: torch.Tensor, red_pos: torch.Tensor,
                         red_neg: torch.Tensor, alpha: torch.Tensor,
                         scale: float = 5.0) -> torch.Tensor:
    """Utility-aware pairwise ranking with diminishing returns (consumption-constraint view).

    An item's utility is its relevance discounted by how redundant it is with what the user
    already has: ``u = rel * (1 - alpha * red)``, ``rel = sigmoid(score)`` in (0, 1), ``red`` in
    [0, 1] the max cosine to recent history. The loss is ``-log sigmoid(scale * (u+ - max u-))``.
    ``alpha = alpha_max * d_u`` *grows* with d_u (seed correction): redundancy costs more to
    users who want diversity. Gradients can reach d_u through alpha (up for users whose next
    items are novel, down for those whose next items repeat their history); DIAM passes a
    detached d_u so that d_u keeps the meaning its auxiliary target gives it.

    ``rel_pos`` [B], ``rel_neg`` [B, S], ``red_pos`` [B], ``red_neg`` [B, S], ``alpha`` [B].
    """
    a = alpha[:, None]
    u_pos = rel_pos * (1 - alpha * red_pos)
    u_neg = rel_neg * (1 - a * red_neg)
    return F.softplus(-scale * (u_pos - u_neg.max(dim=1).values)).mean()


def diversity_contrastive_loss(z: torch.Tensor, d_u: torch.Tensor,
                               tau: float = 0.2) -> torch.Tensor:
    """Supervised-contrastive grouping of users by diversity preference.

    Users above the batch median of d_u are "high"; each high user's summary ``z`` [B, d] is
    pulled towards the other high users and away from the rest (report's L_diversity), so
    interest spaces of explorers share structure. d_u is detached: the grouping is a label.
    """
    d = d_u.detach().float()
    high = d > d.median()
    if high.sum() < 2:
        return z.sum() * 0.0
    zn = F.normalize(z.float(), dim=-1)
    sim = zn @ zn.T / tau
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_p = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = high[:, None] & high[None, :] & ~eye
    per = (log_p.masked_fill(~pos, 0.0)).sum(1) / pos.sum(1).clamp_min(1)
    return -per[high].mean()


def gumbel_interest_weights(logits: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor,
                            noise: bool = True) -> torch.Tensor:
    """Gumbel-softmax over interests ``[B, K]``; ``tau`` [B] rises with d_u (seed correction).

    ``mask`` [B, K] in [0, 1] enters as ``log m``: switched-off interests get no weight, and
    the soft gate receives gradient through the partially open one.
    """
    z = logits.float() + torch.log(mask.float().clamp_min(1e-9))
    if noise:
        u = torch.rand_like(z).clamp(1e-9, 1 - 1e-9)
        z = z - torch.log(-torch.log(u))
    return torch.softmax(z / tau[:, None], dim=-1)


def routing_regularization(att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REMI's routing regularisation (Xie et al., RecSys 2023), per-user mean.

    ``att`` [B, K, L] item-to-interest routing (each row sums to 1 over the valid positions),
    ``mask`` [B, L]. For interest k, ``c_k = sum_l (a_kl - mean_l a_k)^2 / L`` is the spread of
    its routing over the history; the loss is ``sum_k c_k^2``, large when interests "collapse"
    onto single items (a one-hot row has the largest spread).

    >>> a = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    >>> round(float(routing_regularization(a, torch.ones(1, 4, dtype=torch.bool))), 6)
    0.035156
    """
    m = mask[:, None, :].float()  # [B, 1, L]
    n = m.sum(-1).clamp_min(1)  # [B, 1]
    a = att.float()
    mean = (a * m).sum(-1) / n  # [B, K]
    c = (((a - mean[..., None]) ** 2) * m).sum(-1) / att.shape[-1]  # [B, K]
    return (c ** 2).sum(-1).mean()
