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

import math

import numpy as np

__all__ = ["feasible", "clip_norm", "cap_step", "cap_drift", "push_apart", "TokenBucket"]


def clip_norm(v: np.ndarray, max_norm: float) -> np.ndarray:
    """``v`` scaled down to norm ``max_norm`` if longer (rows of a 2-D array independently).
    Lands a hair inside (1e-6 relative) so that float32 rounding cannot leave it outside."""
    m = max_norm * (1.0 - 1e-6)
    if v.ndim == 2:
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return np.where(n > m, v * (m / np.maximum(n, 1e-30)), v)
    n = float(np.linalg.norm(v))
    return v * (m / n) if n > m else v


def feasible(v: np.ndarray, a: np.ndarray, rho: float, max_norm: float) -> np.ndarray:
    """The point ``a + t(v − a)`` with the largest t ≤ 1 inside the trust region and the norm
    ball (convex, and containing ``a``), i.e. ``v`` pulled straight back toward its anchor."""
    delta = v - a
    dd = float(delta @ delta)
    if (dd <= rho * rho and float(v @ v) <= max_norm * max_norm) or dd == 0.0:
        return v  # the common case (two dot products), or v is its anchor
    t = min(1.0, rho / math.sqrt(dd))
    w = a + t * delta
    if float(w @ w) > max_norm * max_norm:
        ad, aa = float(a @ delta), float(a @ a)
        disc = ad * ad - dd * (aa - max_norm * max_norm)
        t = min(t, max(0.0, (-ad + math.sqrt(max(disc, 0.0))) / dd))
        w = a + t * delta
    return w


def cap_step(new: np.ndarray, old: np.ndarray, cap: float) -> tuple[np.ndarray, bool]:
    """Limit ``‖new − old‖`` to ``cap``; returns the vector and whether the cap bit."""
    step = new - old
    n = math.sqrt(float(step @ step))
    if n <= cap:
        return new, False
    return old + step * (cap / n), True


def cap_drift(vecs: np.ndarray, anchors: np.ndarray, cap: float) -> tuple[np.ndarray, float]:
    """Scale every interest's drift so that the RMS drift ``sqrt(mean_k ‖v_k − a_k‖²)`` is at
    most ``cap``; returns the vectors and the RMS drift before capping."""
    delta = vecs - anchors
    rms = math.sqrt(float((delta * delta).sum()) / max(len(vecs), 1))
    if rms <= cap:
        return vecs, rms
    return (anchors + delta * (cap / rms)).astype(vecs.dtype), rms


def push_apart(
    v: np.ndarray, vecs: np.ndarray, skip: int, threshold: float, norms: np.ndarray | None = None
) -> np.ndarray:
    """Reduce ``v``'s component along any row of ``vecs`` (except row ``skip``, v's own) whose
    cosine with ``v`` exceeds ``threshold``, down to exactly ``threshold``; its orthogonal part,
    hence its direction away from the others, is kept. One pass, in row order. ``norms``: the
    rows' norms when the caller has them."""
    nv = math.sqrt(float(v @ v))
    if nv == 0.0:
        return v
    if norms is None:
        norms = np.sqrt((vecs * vecs).sum(axis=1))
    cos = (vecs @ v) / (norms * nv + 1e-30)
    cos[skip] = -1.0
    if cos.max() <= threshold:
        return v  # the common case: one matrix-vector product
    for j in np.flatnonzero(cos > threshold).tolist():
        uh = vecs[j] / norms[j]
        along = float(v @ uh)
        nv = math.sqrt(float(v @ v))
        if along <= threshold * nv:
            continue  # an earlier push already separated them
        perp = v - along * uh
        pn = math.sqrt(float(perp @ perp))
        if pn < 1e-9 * nv:
            continue  # parallel: no direction to push along, leave it to the trust region
        v = perp + uh * (threshold * pn / math.sqrt(1.0 - threshold * threshold))
    return v


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
        """(learn from this event?, did the user just get frozen?). Mutates ``st``."""
        tokens, last, until = st
        if until >= 0:
            if ts_ms < until:
                return False, False
            tokens, last, until = self.burst, float(ts_ms), -1.0  # thawed: a fresh bucket
        if last >= 0 and ts_ms > last:
            tokens = min(self.burst, tokens + (ts_ms - last) / 1000.0 * self.per_s)
        last = max(last, float(ts_ms))
        if tokens >= 1.0:
            st[:] = [tokens - 1.0, last, until]
            return True, False
        st[:] = [tokens, last, float(ts_ms + self.freeze_ms)]
        return False, True
