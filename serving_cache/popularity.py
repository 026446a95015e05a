"""Live popularity for cold lists: an exponentially decayed click count per item.

``count_i(t) = Σ_k 2^(-(t - t_k) / half_life)`` over the item's clicks at times ``t_k``. Each
click is stored as ``2^((t_k - t_ref) / half_life)`` against a reference time, so adding is one
float addition and reading scales every count by the same factor (the order never needs it);
the reference moves forward when the weights grow large, so floats never overflow.

>>> c = DecayedCounts(half_life_s=10.0, clock=iter([0.0, 0.0, 10.0]).__next__)
>>> c.add(["a", "a", "b"])          # at t=0
>>> c.add(["b"])                    # at t=10: a has decayed to 1.0, b to 0.5 + 1
>>> {k: round(v, 3) for k, v in c.snapshot().items()}
{'a': 1.0, 'b': 1.5}
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["DecayedCounts"]

_RENORM = 2.0 ** 40


class DecayedCounts:
    """Thread-safe decayed click counts (one writer thread, many readers)."""

    def __init__(self, half_life_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = float(half_life_s)
        self._clock = clock
        self._ref = clock()
        self._w: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, items: Iterable[str]) -> None:
        """Count one click of each of ``items`` (repeats count again), now."""
        now = self._clock()
        with self._lock:
            g = 2.0 ** ((now - self._ref) / self.half_life_s)
            if g > _RENORM:  # move the reference to now: every weight shrinks by g
                self._w = {k: v / g for k, v in self._w.items() if v / g > 1e-12}
                self._ref, g = now, 1.0
            w = self._w
            for it in items:
                w[it] = w.get(it, 0.0) + g
            self._now = now

    def snapshot(self) -> dict[str, float]:
        """The decayed counts at the time of the last :meth:`add`."""
        with self._lock:
            now = getattr(self, "_now", self._ref)
            f = 2.0 ** (-(now - self._ref) / self.half_life_s)
            return {k: v * f for k, v in self._w.items()}

    def __len__(self) -> int:
        return len(self._w)

    @staticmethod
    def half_life_for(window_s: float, keep: float = 0.5) -> float:
        """Half-life under which a click ``window_s`` old keeps weight ``keep``.

        >>> DecayedCounts.half_life_for(3600, 0.25)
        1800.0
        """
        return window_s * math.log(2) / -math.log(keep)
