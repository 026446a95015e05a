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

With the held-out users' own values, the decision carries the paired 95% interval of each
difference; the point difference still decides (on a few users the interval is wide: an
untrained candidate's drop can lie inside it, and that must not go live).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> act = rng.random(90) * 0.4
>>> cand = act + rng.normal(0.0, 0.15, 90) - 0.02
>>> d = decide({"recall@20": cand.mean(), "entropy@20": 1.6},
...            {"recall@20": act.mean(), "entropy@20": 1.6}, cfg, eval_users=90,
...            per_user={"recall@20": (cand, act)})
>>> d.publish, d.intervals["recall@20"][0] < 0 < d.intervals["recall@20"][1]
(False, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GateConfig", "GateDecision", "decide", "paired_interval"]


class GateConfig(BaseModel):
    """Tolerances of the promotion gate (absolute, on the newest held-out slice)."""

    model_config = ConfigDict(extra="forbid")

    eps_recall: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    """Recall@20 of the candidate may be at most this much below the active model's. 0.01 is
    about one standard error of Recall@20 over ~1000 held-out users of ml-100k (bench/results/
    model_quality.md: ±0.014 across seeds), so a refusal means a real drop, not noise."""

    eps_entropy: float = Field(default=0.05, ge=0, allow_inf_nan=False)
    """Entropy@20 (nats, categories of the top 20) may be at most this much lower: DIAM's
    point is diversity, and a retrain that quietly narrows every list must not go live.

    Both are finite and not negative: NaN compared false with every drop, which turned the
    gate off (every candidate published); a negative one would refuse a candidate as good as
    the active model."""

    min_eval_users: int = Field(default=20, ge=1)
    """Held-out users needed for a decision; with fewer the metrics are noise and the candidate
    is refused (kept for inspection)."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why; ``intervals``: the paired 95% interval of each metric's
    difference (candidate minus active) where the users' values were given."""

    publish: bool
    reason: str
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def paired_interval(candidate: np.ndarray, active: np.ndarray, reps: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``mean(candidate - active)`` over users (the same users'
    values under the two models, resampled together); the same draw for the same inputs."""
    from online_model.metrics import bootstrap_ci

    cand = np.asarray(candidate, dtype=float)
    if cand.shape[0] == 0:
        return float("nan"), float("nan")
    return bootstrap_ci(cand, np.ones(cand.shape[0]), ref=np.asarray(active, dtype=float),
                        reps=reps, seed=seed)


def decide(candidate: Mapping[str, float], active: Mapping[str, float] | None, cfg: GateConfig,
           eval_users: int,
           per_user: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> GateDecision:
    """Publish when there is no active model, else when neither metric dropped beyond its
    tolerance; refuse on too few held-out users or a non-finite metric. ``per_user``:
    ``{metric: (candidate's values, active's)}`` over the same held-out users; each metric's
    paired 95% interval (:func:`paired_interval`) is then given with the decision and its
    reason, so an operator sees how much of a difference the slice can tell. It informs, it
    does not decide: a rule that refused only drops whose interval lies below zero published
    an untrained candidate in ``tests/integration/test_loop.py`` (Recall@20 0.094 against
    0.127, inside the interval of its few held-out users)."""
    if active is None:
        return GateDecision(True, "no active snapshot")
    if eval_users < cfg.min_eval_users:
        return GateDecision(False, f"{eval_users} held-out users, fewer than the "
                                   f"{cfg.min_eval_users} a decision needs")
    intervals = {name: paired_interval(*pair) for name, pair in (per_user or {}).items()}

    def ci(name: str) -> str:
        lo_hi = intervals.get(name)
        return "" if lo_hi is None else f", paired 95% interval [{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}]"

    for name, eps in (("recall@20", cfg.eps_recall), ("entropy@20", cfg.eps_entropy)):
        c, a = float(candidate[name]), float(active[name])
        if not c == c:  # NaN
            return GateDecision(False, f"candidate {name} is not a number", intervals)
        if c < a - eps:
            return GateDecision(False, f"{name} {c:.4f} is {a - c:.4f} below the active "
                                       f"{a:.4f} (allowed {eps:.4f}{ci(name)})", intervals)
    return GateDecision(True, f"recall@20 {candidate['recall@20']:.4f} vs "
                              f"{active['recall@20']:.4f}{ci('recall@20')}, entropy@20 "
                              f"{candidate['entropy@20']:.4f} vs {active['entropy@20']:.4f}"
                              f"{ci('entropy@20')}: within tolerance", intervals)
