"""Constraints and drift guards on interest vectors, pure numpy on small arrays.

Every function keeps the feasible set ``{v : ‖v − a‖ ≤ ρ, ‖v‖ ≤ M}`` (given ``‖a‖ ≤ M``):
projections move along the segment to the anchor, caps take convex combinations of feasible
points, so no guard can undo a constraint.

>>> import numpy as np
>>> a = np.array([1.0, 0.0]); v = np.array([5.0, 0.0])
>>> feasible(v, a, rho=1.0, max_norm=10.0).tolist()
[2.0, 0.0]
>>> feasible(v, a, rho=10.0, max_norm=3.0).tolist()
[3.0, 0.0]
"""

from __future__ import annotations

import numpy as np

from online_model import kernels as K

__all__ = ["feasible", "clip_norm", "cap_step", "cap_drift", "push_apart", "TokenBucket"]


def clip_norm(v: np.ndarray, max_norm: float) -> np.ndarray:
    """``v`` scaled down to norm ``max_norm`` if longer (rows of a 2-D array independently).
    Lands a hair inside (1e-6 relative) so that float32 rounding cannot leave it outside."""
    if v.ndim == 2:
        out = np.array(v, dtype=np.result_type(v.dtype, np.float32), order="C")
        K.clip_rows(out, float(max_norm))  # the compiled rule the learner uses
        return out
    m = max_norm * (1.0 - 1e-6)
    n = float(np.linalg.norm(v))
    return v * (m / n) if n > m else v


def feasible(v: np.ndarray, a: np.ndarray, rho: float, max_norm: float) -> np.ndarray:
    """The point ``a + t(v − a)`` with the largest t ≤ 1 inside the trust region and the norm
    ball (convex, and containing ``a``), i.e. ``v`` pulled straight back toward its anchor.
    Returns a new float64 array (the compiled :func:`online_model.kernels.feasible`)."""
    w = np.array(v, dtype=np.float64)
    K.feasible(w, np.asarray(a), float(rho), float(max_norm))
    return w


def cap_step(new: np.ndarray, old: np.ndarray, cap: float) -> tuple[np.ndarray, bool]:
    """Limit ``‖new − old‖`` to ``cap``; returns the vector (``new`` itself when within the cap)
    and whether the cap bit."""
    w = np.array(new, dtype=np.float64)
    bit = bool(K.cap_step(w, np.asarray(old), float(cap)))
    return (w if bit else new), bit


def cap_drift(vecs: np.ndarray, anchors: np.ndarray, cap: float) -> tuple[np.ndarray, float]:
    """Scale every interest's drift so that the RMS drift ``sqrt(mean_k ‖v_k − a_k‖²)`` is at
    most ``cap``; returns the vectors (``vecs`` itself when within the cap) and the RMS drift
    before capping."""
    out = np.array(vecs, order="C")
    rms = float(K.cap_drift(out, np.ascontiguousarray(anchors), float(cap)))
    return (vecs if rms <= cap else out), rms


def push_apart(
    v: np.ndarray, vecs: np.ndarray, skip: int, threshold: float, norms: np.ndarray | None = None
) -> np.ndarray:
    """Reduce ``v``'s component along any row of ``vecs`` (except row ``skip``, v's own) whose
    cosine with ``v`` exceeds ``threshold``, down to exactly ``threshold``; its orthogonal part,
    hence its direction away from the others, is kept. One pass, in row order. ``norms``: the
    rows' norms when the caller has them. Returns a new float64 array."""
    vecs = np.ascontiguousarray(vecs)
    if norms is None:
        norms = np.sqrt((vecs.astype(np.float64) ** 2).sum(axis=1))
    w = np.array(v, dtype=np.float64)
    K.push_apart(w, vecs, int(skip), float(threshold), np.asarray(norms, dtype=np.float64))
    return w


class TokenBucket:
    """Per-user rate limit on event time (never the wall clock, so a replay freezes exactly the
    same events). State is three numbers kept in the user state; this class holds the rule.

    >>> tb = TokenBucket(burst=2, per_s=1.0, freeze_ms=10_000)
    >>> st = tb.initial()
    >>> [tb.admit(st, t)[0] for t in (0, 0, 0, 5_000, 20_000)]
    [True, True, False, False, True]
    """

    def __init__(self, burst: int, per_s: float, freeze_ms: int) -> None:
        self.burst, self.per_s, self.freeze_ms = float(burst), per_s, freeze_ms

    def initial(self) -> list[float]:
        """[tokens, last refill ts (ms, -1 = never), frozen until ts (ms, -1 = not frozen)]."""
        return [self.burst, -1.0, -1.0]

    def admit(self, st: list[float], ts_ms: int) -> tuple[bool, bool]:
        """(learn from this event?, did the user just get frozen?). Mutates ``st``. The rule
        is :func:`online_model.kernels.admit`, which the learner's kernel calls directly."""
        user = np.zeros(1, K.USER)
        user["tokens"], user["refill_ms"], user["frozen_until_ms"] = st
        ok, froze = K.admit(user, int(ts_ms), self.burst, float(self.per_s), float(self.freeze_ms))
        st[:] = [float(user[f][0]) for f in ("tokens", "refill_ms", "frozen_until_ms")]
        return bool(ok), bool(froze)
