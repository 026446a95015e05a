"""Who holds a namespace: a ``diam replay``'s claim (``keys.claim_key``) and the live ``diam run``
processes writing it (``keys.runs_key``). One owner for the holders' format and for the rule
of when one is alive.

A holder is described as ``"diam <command> pid <pid> on <host> since <time> (<tag>)"``. A run
announces itself in the namespace's runs set with an expiry (score: epoch ms), refreshed every
:data:`RUN_REFRESH_S` by a daemon thread (:class:`RunAnnouncement`), so a killed run ages out
after :data:`RUN_TTL_S`; a replay's claim has no expiry (it holds for as long as the replay
runs, minutes or hours), so a claim whose process is dead on this same host is stale
(:func:`stale_on_this_host`), and a claim from another host is cleared with ``diam drop
--force``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from serving_cache.keys import claim_key, runs_key
from serving_cache.outage import REDIS_ERRORS

RUN_TTL_S = 15.0
"""How long a run's announcement lasts without a refresh: a killed run ages out after it."""
RUN_REFRESH_S = 3.0
"""How often a live run refreshes its announcement."""

_HOLDER_RE = re.compile(r"^diam \S+ pid (\d+) on (\S+) since ")


def describe(command: str) -> str:
    """This process as a holder of a namespace: ``diam <command> pid P on HOST since T (tag)``."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (f"diam {command} pid {os.getpid()} on {socket.gethostname()} since {now} "
            f"({uuid.uuid4().hex[:8]})")


def stale_on_this_host(holder: str) -> bool:
    """Whether ``holder`` (:func:`describe`'s words) names a process of this host that is gone.
    A holder on another host, or in other words, is never stale here."""
    m = _HOLDER_RE.match(holder)
    if m is None or m.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user; a pid out of range
        return False
    return False


RELEASE_CLAIM = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                 "end return 0")
"""Delete a claim only while it still holds the given holder (a ``diam drop`` or another
replay may have taken it since it was read or set): the one script of :func:`release_claim`."""


def release_claim(client: Any, ns: str, holder: str) -> bool:
    """Delete ``ns``'s claim if ``holder`` still holds it; whether it was deleted."""
    return bool(client.eval(RELEASE_CLAIM, 1, claim_key(ns), holder))


def claim_holder(client: Any, ns: str) -> tuple[str | None, str | None]:
    """Who holds ``ns``'s claim now, as ``(holder, stale)``: a claim whose process is gone on
    this host (:func:`stale_on_this_host`) is deleted (only while it still names that process)
    and returned as ``stale``, with ``holder`` None; otherwise ``stale`` is None and ``holder``
    is the claim's words (None: no claim). The one rule of a stale claim's takeover; the
    callers say it in their own words."""
    raw = client.get(claim_key(ns))
    if raw is None:
        return None, None
    holder = _text(raw)
    if stale_on_this_host(holder):
        release_claim(client, ns, holder)
        return None, holder
    return holder, None


def take_claim(client: Any, ns: str, ours: str, tries: int = 3
               ) -> tuple[bool, str | None, list[str]]:
    """Claim ``ns`` for ``ours`` (``SET NX`` of its claim), taking over a stale claim of this
    host (:func:`claim_holder`) and trying again, up to ``tries`` times: returns whether it was
    claimed, the holder that kept it (None when claimed) and the stale holders taken over (the
    callers warn in their own words). The one loop of ``diam replay`` and ``diam drop``."""
    stale_ones: list[str] = []
    holder: str | None = None
    for _ in range(tries):
        if client.set(claim_key(ns), ours, nx=True):
            return True, None, stale_ones
        holder, stale = claim_holder(client, ns)
        if stale is not None:
            stale_ones.append(stale)
        elif holder is not None:
            break
    return False, holder, stale_ones


def _text(raw: Any) -> str:
    """A Redis reply as text (bytes decoded, a decoded client's str as it is)."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def live_runs(client: Any, ns: str, *, prune: bool = True) -> list[str]:
    """The live ``diam run`` processes announced in ``ns``; ``prune``: the expired ones are
    removed too (a reader only, ``diam inspect``, leaves them)."""
    key = runs_key(ns)
    now_ms = int(time.time() * 1000)
    if prune:
        client.zremrangebyscore(key, "-inf", now_ms)
    return [_text(m) for m in client.zrangebyscore(key, now_ms, "+inf")]


def holders_of(client: Any, ns: str) -> tuple[str | None, bool, list[str]]:
    """Who holds ``ns``, read only (``diam inspect namespace``): its claim's holder (None: no
    claim), whether that holder is stale (:func:`stale_on_this_host`: the next replay, run or
    drop takes it over), and the runs whose announcement has not expired."""
    raw = client.get(claim_key(ns))
    claim = None if raw is None else _text(raw)
    return claim, claim is not None and stale_on_this_host(claim), live_runs(client, ns, prune=False)


class RunAnnouncement:
    """A ``diam run`` process's member of its namespace's runs set, from :meth:`start` to
    :meth:`close`: refreshed every ``refresh_s`` by a daemon thread (not the dataflow's),
    expiring ``ttl_s`` after the last refresh. A refresh Redis refuses is tried again at the
    next one (the dataflow's own writes say that Redis is down)."""

    def __init__(self, client: Any, ns: str, *, ttl_s: float = RUN_TTL_S,
                 refresh_s: float = RUN_REFRESH_S) -> None:
        self.client, self.ns, self.key = client, ns, runs_key(ns)
        self.member = describe("run")
        self.ttl_s, self.refresh_s = ttl_s, refresh_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        ttl_ms = int(self.ttl_s * 1000)
        pipe = self.client.pipeline(transaction=False)  # one key: no MULTI for the ACL
        pipe.zadd(self.key, {self.member: int(time.time() * 1000) + ttl_ms})
        pipe.pexpire(self.key, ttl_ms)
        pipe.execute()

    def start(self) -> None:
        """Announce now (an error here is the caller's), then keep it fresh."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="diam-run-announce", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.refresh_s):
            try:
                self.refresh()
            except REDIS_ERRORS:  # a cluster's outage too (serving_cache.outage)
                pass

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(self.refresh_s + 1.0)
        try:
            self.client.zrem(self.key, self.member)
        except REDIS_ERRORS:
            pass  # it ages out
