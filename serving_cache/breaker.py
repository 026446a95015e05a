"""The serve path's breaker for Redis reads: after a read that timed out, Redis is not asked
again for :data:`PAUSE_S`; the reads meanwhile fail at once (:class:`RedisPaused`, a
``redis.TimeoutError``: the routes answer 503), then one read probes it.

Why: the recommendation route reads Redis in the server's event loop (``serving_cache.api``),
so a Redis that hangs holds every request, ``/health`` and ``/metrics`` included, for the read
timeout of each request in turn. With the breaker a hang costs one read timeout per pause.

>>> t = [0.0]
>>> b = ReadBreaker(pause_s=1.5, clock=lambda: t[0])
>>> def hung() -> bytes:
...     raise redis.TimeoutError("Timeout reading from socket")
>>> b.call(hung)
Traceback (most recent call last):
...
redis.exceptions.TimeoutError: Timeout reading from socket
>>> b.call(lambda: b"v")
Traceback (most recent call last):
...
serving_cache.breaker.RedisPaused: redis did not answer a read 0.0 s ago: not asked again for 1.5 s
>>> t[0] = 1.5
>>> b.call(lambda: b"v")  # the probe
b'v'
>>> b.call(lambda: b"w")
b'w'
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

__all__ = ["PAUSE_S", "ReadBreaker", "RedisPaused"]

log = logging.getLogger(__name__)

PAUSE_S = 1.5
"""How long after a read timed out Redis is left alone: long enough that a hung Redis costs the
server one read timeout (``ServeConfig.redis_read_timeout_s``) per pause, not one per request;
short enough that a Redis back is served again within a second or two."""

T = TypeVar("T")


class RedisPaused(redis.TimeoutError):
    """A read refused without asking Redis: a read timed out less than :data:`PAUSE_S` ago (or
    the one probe after the pause is still out). A ``redis.TimeoutError``, so that every caller
    takes it for what it stands for: Redis did not answer."""


class ReadBreaker:
    """Closed: every read goes to Redis. A read that times out opens it for ``pause_s``; the
    first read after that is the probe (others still refused while it is out): an answer, or
    any error other than a timeout, closes it, a timeout opens it again. Thread-safe (the
    event loop and the worker threads of the plain routes share it); ``clock`` injected."""

    def __init__(self, pause_s: float = PAUSE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pause_s = pause_s
        self._clock = clock
        self._lock = threading.Lock()
        self._opened: float | None = None  # when the last timeout was seen; None: closed
        self._probing = False

    @property
    def open(self) -> bool:
        """Whether reads are refused now."""
        with self._lock:
            return self._opened is not None and (
                self._probing or self._clock() < self._opened + self.pause_s)

    def call(self, read: Callable[[], T]) -> T:
        """``read()``, unless the breaker is open (:class:`RedisPaused`)."""
        with self._lock:
            probe = self._opened is not None
            if probe:
                assert self._opened is not None
                now = self._clock()
                if self._probing or now < self._opened + self.pause_s:
                    left = max(0.0, self._opened + self.pause_s - now)
                    raise RedisPaused(f"redis did not answer a read {now - self._opened:.1f} s "
                                      f"ago: not asked again for {left:.1f} s")
                self._probing = True
        try:
            out = read()
        except redis.TimeoutError:
            with self._lock:
                if self._opened is None:
                    log.warning("redis did not answer a read in time: reads answer 503 at once, "
                                "Redis asked again every %.1f s until it answers", self.pause_s)
                self._opened, self._probing = self._clock(), False
            raise
        except BaseException:
            if probe:
                self._close()
            raise
        if probe:
            self._close()
        return out

    def _close(self) -> None:
        with self._lock:
            if self._opened is not None:
                log.warning("redis answers reads again")
            self._opened, self._probing = None, False
