"""DIAM's diversity preference learner and the light gate of the online head (DESIGN.md §4.3).

The preference learner *is* a linear fusion of the four behaviour signals of
``online_model.signals`` (personality proxy, session purpose, exploration, distribution):
``d_u = sigmoid(w . f + b)`` (with a calibration folded into w and b, see
:class:`DiversityFusion`). Keeping it linear lets the stream reproduce d_u exactly from the
exported ``online.fusion_w`` / ``online.fusion_b`` with numpy.

The light gate is what the stream can afford per event: an MLP on the mean embedding of the last
<= 50 items and the four signals, distilled from the full gate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from online_model.corpus import diversity_quantiles

__all__ = ["DiversityFusion", "LightGate"]


class DiversityFusion(nn.Module):
    """``signals [B, 4] -> (d_u [B], p_raw [B])``, both in (0, 1).

    ``p_raw = sigmoid(w . f + b)`` is fitted to the auxiliary target, the *quantile* of the
    realised category diversity of the user's next items among training examples. The best
    linear fit is timid (on ml-100k its predictions span 0.45-0.58, so every user would sit in
    the aggregator's middle regime), so d_u is its calibrated form: the logit is standardised
    with running statistics (a BatchNorm without affine) and scaled by pi / sqrt(3), the
    logistic approximation of the normal CDF. d_u is then the user's predicted diversity
    percentile: about 30% of users fall at or below 0.3 (top interest) and 30% above 0.7
    (round-robin). Ranks, hence Spearman correlations, are those of p_raw. At inference the
    whole map is still ``sigmoid(w' . f + b')``; :meth:`export` folds the statistics in.
    """

    SCALE = math.pi / math.sqrt(3.0)

    quantiles: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)  # prior 0.5 until the auxiliary target speaks
        self.norm = nn.BatchNorm1d(1, affine=False)
        # d_u's scale for the stream: the realised diversity at each percentile of the training
        # examples (set by the trainer from its data, not learnt, not in the state dict)
        self.register_buffer("quantiles", torch.from_numpy(diversity_quantiles(np.empty(0))),
                             persistent=False)

    def set_reference(self, div: np.ndarray) -> None:
        """Record the training examples' realised diversity ``div`` (NaN ignored) as the
        quantile table :meth:`export` hands to the stream (``online.div_quantiles``)."""
        self.quantiles = torch.from_numpy(diversity_quantiles(div)).to(self.quantiles.device)

    def forward(self, signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_logit(self.logit(signals))

    def logit(self, signals: torch.Tensor) -> torch.Tensor:
        """The raw fusion logit ``w . f + b`` [B] (fp32): ``p_raw = sigmoid(logit)``. The loss
        fits it with the logits form of the BCE, which autocast accepts."""
        return self.linear(signals.float()).squeeze(-1)

    def from_logit(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d_u [B], p_raw [B])`` from the raw logit of :meth:`logit`."""
        z = z[:, None]  # [B, 1]
        p_raw = torch.sigmoid(z.squeeze(-1))
        if self.training and z.shape[0] < 2:  # batch statistics need two rows
            return torch.sigmoid(self._fold(z)).squeeze(-1), p_raw
        return torch.sigmoid(self.SCALE * self.norm(z)).squeeze(-1), p_raw

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Running mean and std of the fusion logit."""
        mean, var = self.norm.running_mean, self.norm.running_var
        assert mean is not None and var is not None  # track_running_stats is on
        return mean, torch.sqrt(var + self.norm.eps)

    def _fold(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return self.SCALE * (z - mean) / std

    def export(self) -> dict[str, np.ndarray]:
        mean_t, std_t = self._stats()
        std, mean = float(std_t), float(mean_t)
        w = self.linear.weight.detach().double().cpu().numpy().reshape(4)
        b = float(self.linear.bias.detach().double().cpu()[0])
        return {
            "online.fusion_w": (self.SCALE * w / std).astype(np.float32),
            "online.fusion_b": np.array([self.SCALE * (b - mean) / std], dtype=np.float32),
            "online.div_quantiles": self.quantiles.detach().cpu().numpy().astype(np.float32),
        }


class LightGate(nn.Module):
    """``(mean item embedding [B, d], signals [B, 4]) -> gate probability [B]``.

    ``K_u = floor(p * K_max) + 1``, the same formula as the full gate.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 4, hidden)
        self.l2 = nn.Linear(hidden, 1)

    def forward(self, mean_emb: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        x = torch.cat([mean_emb.float(), signals.float()], dim=-1)
        return torch.sigmoid(self.l2(torch.relu(self.l1(x))).squeeze(-1))

    def export(self) -> dict[str, np.ndarray]:
        def f(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        return {
            "online.gate_w1": f(self.l1.weight),  # [H, d + 4]
            "online.gate_b1": f(self.l1.bias),  # [H]
            "online.gate_w2": f(self.l2.weight),  # [1, H]
            "online.gate_b2": f(self.l2.bias),  # [1]
        }
