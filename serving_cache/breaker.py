"""The serve path's breaker for Redis reads: a read that timed out makes the next read a probe
(the reads meanwhile fail at once); a probe that times out too opens it: Redis is not asked again
for :data:`FIRST_PAUSE_S`, then one read probes it, and each probe that times out doubles the
pause up to :data:`PAUSE_S`. The refused reads fail at once (:class:`RedisPaused`, a
``redis.TimeoutError``: the routes answer 503, ``/health`` says ``reads_paused``).

Why: the recommendation route reads Redis in the server's event loop (``serving_cache.api``),
so a Redis that hangs holds every request, ``/health`` and ``/metrics`` included, for the read
timeout of each request in turn. With the breaker a hang costs one read timeout per pause (two
at its start). A brief stall (a slow command of another client, a fork, an fsync) costs the
reads it delays: the probe after the first timeout is sent at once, and a pause is never longer
than the one before it twice; it used to open for the whole :data:`PAUSE_S` at the first
timeout, 503 to every user for 1.5 s after a 0.3 s stall.

>>> t = [0.0]
>>> b = ReadBreaker(clock=lambda: t[0])
>>> def hung() -> bytes:
...     raise redis.TimeoutError("Timeout reading from socket")
>>> b.call(hung)
Traceback (most recent call last):
...
redis.exceptions.TimeoutError: Timeout reading from socket
>>> b.call(lambda: b"v")  # a stall over: the probe at once answers, nobody refused
b'v'
>>> b.call(hung)  # another stall
Traceback (most recent call last):
...
redis.exceptions.TimeoutError: Timeout reading from socket
>>> b.call(hung)  # two in a row: open for FIRST_PAUSE_S
Traceback (most recent call last):
...
redis.exceptions.TimeoutError: Timeout reading from socket
>>> b.call(lambda: b"v")
Traceback (most recent call last):
...
serving_cache.breaker.RedisPaused: redis did not answer 2 reads in a row, the last 0.0 s ago: not asked again for 0.5 s
>>> t[0] = 0.5
>>> b.call(hung)  # the probe times out: the pause doubles
Traceback (most recent call last):
...
redis.exceptions.TimeoutError: Timeout reading from socket
>>> b.paused_for()
1.0
>>> t[0] = 1.5
>>> b.call(lambda: b"v")  # the probe
b'v'
>>> b.call(lambda: b"w"), b.paused_for()
(b'w', 0.0)

One state per node a read names (a Redis Cluster's node of the key's slot):

>>> for _ in range(2):
...     try:
...         b.call(hung, node="10.0.0.1:7000")
...     except redis.TimeoutError:
...         pass
>>> b.paused_nodes(), b.call(lambda: b"x", node="10.0.0.2:7001")
(['10.0.0.1:7000'], b'x')
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

__all__ = ["FIRST_PAUSE_S", "PAUSE_S", "ReadBreaker", "RedisPaused"]

log = logging.getLogger(__name__)

PAUSE_S = 1.5
"""The longest Redis is left alone after a probe timed out: long enough that a hung Redis costs
the server one read timeout (``ServeConfig.redis_read_timeout_s``) per pause, not one per
request; short enough that a Redis back is served again within a second or two."""

FIRST_PAUSE_S = 0.5
"""The pause after two reads in a row timed out (doubled at each probe that times out, up to
:data:`PAUSE_S`): a stall that outlasted two read timeouts refuses reads at most this long after
it is over."""

T = TypeVar("T")


class RedisPaused(redis.TimeoutError):
    """A read refused without asking Redis: the breaker is open (reads timed out, and the pause
    after the last is not over) or a probe is out. A ``redis.TimeoutError``, so that every
    caller takes it for what it stands for: Redis did not answer."""


class _Node:
    """One node's state (under the breaker's lock)."""

    __slots__ = ("timeouts", "last", "probing")

    def __init__(self) -> None:
        self.timeouts = 0  # reads timed out in a row; 0: closed
        self.last = 0.0  # when the last of them timed out
        self.probing = False


class ReadBreaker:
    """Closed: every read goes to Redis. A read that times out makes the next read a probe
    (others refused while it is out); an answer, or any error other than a timeout, closes it.
    A probe that times out opens it: the probe after it waits ``first_pause_s``, then twice the
    pause before, up to ``pause_s``. One such state per ``node`` a read names (a Redis Cluster's
    node owning the key's slot, ``host:port``): a hung primary refuses its own users only.
    Thread-safe (the event loop and the worker threads of the plain routes share it);
    ``clock`` injected."""

    def __init__(self, pause_s: float = PAUSE_S, first_pause_s: float = FIRST_PAUSE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pause_s = pause_s
        self.first_pause_s = min(first_pause_s, pause_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}

    def _pause(self, st: _Node) -> float:
        """The pause after ``st.timeouts`` reads timed out in a row (lock held)."""
        if st.timeouts < 2:
            return 0.0
        return float(min(self.pause_s, self.first_pause_s * 2 ** (st.timeouts - 2)))

    def _open(self, st: _Node, now: float) -> bool:
        return st.timeouts > 0 and (st.probing or now < st.last + self._pause(st))

    def paused_for(self) -> float:
        """How many seconds more some node's reads are refused without a probe (0.0: every
        read goes to Redis now, a probe where reads timed out; a probe out counts as the pause
        it follows)."""
        with self._lock:
            now = self._clock()
            return max((max(st.last + self._pause(st) - now,
                            self._pause(st) if st.probing else 0.0)
                        for st in self._nodes.values() if st.timeouts > 0), default=0.0)

    def paused_nodes(self) -> list[str]:
        """The nodes whose reads are refused now (``""``: a single server's)."""
        with self._lock:
            now = self._clock()
            return sorted(n for n, st in self._nodes.items() if self._open(st, now))

    @property
    def open(self) -> bool:
        """Whether some node's reads are refused now (a pause not over, or a probe out)."""
        return bool(self.paused_nodes())

    def call(self, read: Callable[[], T], node: str = "") -> T:
        """``read()``, unless the breaker of ``node`` is open (:class:`RedisPaused`)."""
        with self._lock:
            st = self._nodes.get(node)
            probe = st is not None and st.timeouts > 0
            if st is not None and probe:
                now = self._clock()
                pause = self._pause(st)
                if st.probing or now < st.last + pause:
                    left = max(0.0, st.last + pause - now)
                    raise RedisPaused(
                        f"redis{' node ' + node if node else ''} did not answer {st.timeouts} "
                        f"read{'s in a row, the last' if st.timeouts > 1 else ''} "
                        f"{now - st.last:.1f} s ago: "
                        + ("a probe is out" if st.probing and left == 0.0
                           else f"not asked again for {left:.1f} s"))
                st.probing = True
        try:
            out = read()
        except redis.TimeoutError:
            with self._lock:
                st = self._nodes.setdefault(node, _Node())
                st.timeouts += 1
                st.last, st.probing = self._clock(), False
                if st.timeouts == 2:
                    log.warning("redis%s did not answer 2 reads in a row: its reads answer 503 "
                                "at once, Redis asked again after %.1f s, then every pause "
                                "twice the last up to %.1f s, until it answers",
                                " node " + node if node else "", self.first_pause_s,
                                self.pause_s)
            raise
        except BaseException:
            if probe:
                self._close(node)
            raise
        if probe:
            self._close(node)
        return out

    def _close(self, node: str) -> None:
        with self._lock:
            st = self._nodes.pop(node, None)
            if st is not None and st.timeouts > 1:
                log.warning("redis%s answers reads again", " node " + node if node else "")
