"""The promotion gate: a retrained candidate becomes active only when it is not worse than the
active snapshot on the newest slice of events, which neither was trained on.

Pure decision, no I/O: the retrain service measures both models and asks :func:`decide`.

>>> cfg = GateConfig()
>>> cand = {"recall@20": 0.20, "entropy@20": 1.60}
>>> decide(cand, {"recall@20": 0.205, "entropy@20": 1.62}, cfg, eval_users=500).publish
True
>>> d = decide(cand, {"recall@20": 0.25, "entropy@20": 1.62}, cfg, eval_users=500)
>>> d.publish, d.reason
(False, 'recall@20 0.2000 is 0.0500 below the active 0.2500 (allowed 0.0100)')
>>> decide(cand, None, cfg, eval_users=500).reason
'no active snapshot'
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GateConfig", "GateDecision", "decide"]


class GateConfig(BaseModel):
    """Tolerances of the promotion gate (absolute, on the newest held-out slice)."""

    model_config = ConfigDict(extra="forbid")

    eps_recall: float = 0.01
    """Recall@20 of the candidate may be at most this much below the active model's. 0.01 is
    about one standard error of Recall@20 over ~1000 held-out users of ml-100k (bench/results/
    model_quality.md: ±0.014 across seeds), so a refusal means a real drop, not noise."""

    eps_entropy: float = 0.05
    """Entropy@20 (nats, categories of the top 20) may be at most this much lower: DIAM's
    point is diversity, and a retrain that quietly narrows every list must not go live."""

    min_eval_users: int = Field(default=20, ge=1)
    """Held-out users needed for a decision; with fewer the metrics are noise and the candidate
    is refused (kept for inspection)."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why."""

    publish: bool
    reason: str


def decide(candidate: dict[str, float], active: dict[str, float] | None, cfg: GateConfig,
           eval_users: int) -> GateDecision:
    """Publish when there is no active model, else when neither metric dropped beyond its
    tolerance; refuse on too few held-out users or a non-finite metric."""
    if active is None:
        return GateDecision(True, "no active snapshot")
    if eval_users < cfg.min_eval_users:
        return GateDecision(False, f"{eval_users} held-out users, fewer than the "
                                   f"{cfg.min_eval_users} a decision needs")
    for name, eps in (("recall@20", cfg.eps_recall), ("entropy@20", cfg.eps_entropy)):
        c, a = float(candidate[name]), float(active[name])
        if not c == c:  # NaN
            return GateDecision(False, f"candidate {name} is not a number")
        if c < a - eps:
            return GateDecision(False, f"{name} {c:.4f} is {a - c:.4f} below the active "
                                       f"{a:.4f} (allowed {eps:.4f})")
    return GateDecision(True, f"recall@20 {candidate['recall@20']:.4f} vs {active['recall@20']:.4f}, "
                              f"entropy@20 {candidate['entropy@20']:.4f} vs "
                              f"{active['entropy@20']:.4f}: within tolerance")
