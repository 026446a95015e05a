"""Configuration of the online update rule and its drift guards (DESIGN.md §5)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class OnlineConfig(BaseModel):
    """Thresholds of the online learner. Each default says why it is what it is."""

    model_config = ConfigDict(extra="forbid")

    dim: int = 64
    """Interest vector dimension; must equal the base model's item embedding size."""

    k_max: int = 8
    """Upper bound of K_u, the number of interests per user (the base model's K_max)."""
