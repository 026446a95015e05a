"""DIAM's diversity preference learner and the light gate of the online head (DESIGN.md §4.3).

The preference learner *is* a linear fusion of the four behaviour signals of
``online_model.signals`` (personality proxy, session purpose, exploration, distribution):
``d_u = sigmoid(w . f + b)``. Keeping it linear lets the stream reproduce d_u exactly from the
exported ``online.fusion_w`` / ``online.fusion_b`` with numpy.

The light gate is what the stream can afford per event: an MLP on the mean embedding of the last
<= 50 items and the four signals, distilled from the full gate.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["DiversityFusion", "LightGate"]


class DiversityFusion(nn.Module):
    """``signals [B, 4] -> d_u [B]`` in (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)  # prior 0.5 until the auxiliary target speaks

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(signals.float()).squeeze(-1))

    def export(self) -> dict[str, np.ndarray]:
        return {
            "online.fusion_w": self.linear.weight.detach().float().cpu().numpy().reshape(4),
            "online.fusion_b": self.linear.bias.detach().float().cpu().numpy().reshape(1),
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
