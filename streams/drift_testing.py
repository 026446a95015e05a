"""Synthetic drift-event streams for testing and demonstrating the drift monitor.

:func:`stable_stream` is the null model the false-alarm bounds are stated against: every user's
K_u changes at Poisson rate ``rate`` per window, each change one step up or down at random (within
1..k_max), d_u a small random walk carried in the events, and rare guard trips.
:func:`plant_oscillation` makes a few users' K_u flip A→B→A→... from a given time on.

>>> evs = stable_stream(n_users=20, n_windows=3, seed=1)
>>> all(a.ts_ms <= b.ts_ms for a, b in zip(evs, evs[1:]))
True
"""

from __future__ import annotations

import math

import numpy as np

from streams.drift import DriftRecord

__all__ = ["T0_MS", "null_alert_bound", "plant_oscillation", "stable_stream"]

T0_MS = 1_700_000_040_000  # a minute boundary, so windows line up with the generator's


def stable_stream(n_users: int = 200, n_windows: int = 30, *, rate: float = 0.05,
                  guard_rate: float = 0.02, k_max: int = 8, window_ms: int = 60_000,
                  t0_ms: int = T0_MS, seed: int = 0) -> list[DriftRecord]:
    """Drift events of a healthy fleet, in event-time order, offsets increasing."""
    rng = np.random.default_rng(seed)
    raw: list[tuple[int, str, str, dict[str, object]]] = []
    # Counts drawn for every (user, window) at once; only the few events are looped over.
    n_changes = rng.poisson(rate, size=(n_users, n_windows))
    n_guards = rng.poisson(guard_rate, size=(n_users, n_windows))
    k0 = rng.integers(2, 6, size=n_users)
    d0 = rng.uniform(0.2, 0.8, size=n_users)
    for u in np.flatnonzero(n_changes.sum(axis=1)).tolist():
        uid, k, d = f"u{u:04d}", int(k0[u]), float(d0[u])
        wins = np.repeat(np.arange(n_windows), n_changes[u])
        offs = rng.integers(0, window_ms, size=wins.size)
        steps = rng.choice((-1, 1), size=wins.size)
        noise = rng.normal(0, 0.02, size=wins.size)
        for ts, step, eps in sorted(zip((t0_ms + wins * window_ms + offs).tolist(),
                                        steps.tolist(), noise.tolist(), strict=True)):
            step = 1 if k == 1 else -1 if k == k_max else step
            d_new = min(max(d + eps, 0.01), 0.99)
            raw.append((ts, uid, "k_change", {"k_from": k, "k_to": k + step, "d": round(d_new, 6)}))
            k, d = k + step, d_new
    gu, gw = np.nonzero(n_guards)
    for u, w in zip(gu.tolist(), gw.tolist(), strict=True):
        for off in rng.integers(0, window_ms, size=int(n_guards[u, w])).tolist():
            raw.append((t0_ms + w * window_ms + off, f"u{u:04d}", "guard_trip", {"guard": "step_cap"}))
    raw.sort(key=lambda r: (r[0], r[1]))
    return [DriftRecord(kind, uid, ts, off, detail) for off, (ts, uid, kind, detail) in enumerate(raw)]


def plant_oscillation(events: list[DriftRecord], users: list[str], *, start_ms: int,
                      every_ms: int = 5_000, n_changes: int = 8, k_a: int = 3,
                      k_b: int = 4) -> list[DriftRecord]:
    """``events`` with ``users``' K_u flipping ``k_a``→``k_b``→``k_a``... every ``every_ms``
    from ``start_ms`` (their own events from then on are dropped); offsets renumbered."""
    planted = set(users)
    kept = [e for e in events if not (e.user_id in planted and e.ts_ms >= start_ms)]
    extra = []
    for j, uid in enumerate(users):
        for i in range(n_changes):
            a, b = (k_a, k_b) if i % 2 == 0 else (k_b, k_a)
            # users staggered by a second so their changes interleave with the fleet's
            extra.append(DriftRecord("k_change", uid, start_ms + j * 1_000 + i * every_ms, 0,
                                     {"k_from": a, "k_to": b, "d": 0.5}))
    merged = sorted(kept + extra, key=lambda e: (e.ts_ms, e.user_id))
    return [DriftRecord(e.kind, e.user_id, e.ts_ms, off, e.detail) for off, e in enumerate(merged)]


def null_alert_bound(rate: float, user_windows: int) -> float:
    """Upper bound on the expected per-user alerts (``k_flip_flop`` at 2 reversals, ``k_churn`` at
    4 changes) of :func:`stable_stream`: both need at least 3 changes of one user in one window,
    so the bound is ``user_windows · P(Poisson(rate) >= 3)``.

    >>> round(null_alert_bound(0.05, 6000), 3)
    0.12
    """
    p3 = 1.0 - math.exp(-rate) * (1.0 + rate + rate * rate / 2.0)
    return user_windows * p3
