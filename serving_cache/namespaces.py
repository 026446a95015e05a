"""A namespace's keys as a whole: whether a namespace is in use, and dropping one.

``diam replay`` must not write into a namespace that holds an earlier run (write-if-newer would
keep that run's newer values), and replays, shadows and benchmarks leave namespaces behind
that nobody reads again. Every key of a namespace matches :func:`serving_cache.keys.namespace_pattern`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving_cache.keys import (
    every_user_key,
    generation_key,
    namespace_of_key,
    namespace_pattern,
    namespaces_starting,
    user_id_of_key,
    user_in_every_namespace,
    user_pattern,
)

__all__ = ["namespace_in_use", "drop_namespace", "user_keys_everywhere", "namespaces_named",
           "ONE_SCAN_FROM"]

ONE_SCAN_FROM = 4
"""From this many users on, :func:`user_keys_everywhere` walks the keyspace once for all of
them instead of once each."""


def namespace_in_use(client: Any, ns: str) -> bool:
    """Whether namespace ``ns`` holds keys of an earlier run.

    The dataflow sets the namespace's generation marker before its first write
    (``streams.redis_sink``), so a namespace it wrote answers in one EXISTS. Without the
    marker (users written another way, or none), a SCAN for one user key decides: it walks
    the whole keyspace when the namespace is empty.
    """
    if client.exists(generation_key(ns)):
        return True
    return next(iter(client.scan_iter(match=user_pattern(ns), count=1000)), None) is not None


def drop_namespace(client: Any, ns: str, batch: int = 1000, keep: str | None = None) -> int:
    """Delete every key of namespace ``ns`` (its users, the active-model key, the generation
    marker) with UNLINK, ``batch`` keys a call, but the key named ``keep`` (the caller's own
    claim of ``ns``, held until the drop is done); return how many were deleted.

    Never call this on a namespace a running dataflow writes: the dataflow would take the
    missing marker for a lost Redis and push every user it holds again.
    """
    n = 0
    keys: list[bytes] = []
    kept = None if keep is None else keep.encode()
    for key in client.scan_iter(match=namespace_pattern(ns), count=batch):
        if key == kept:
            continue
        keys.append(key)
        if len(keys) >= batch:
            n += int(client.unlink(*keys))
            keys = []
    if keys:
        n += int(client.unlink(*keys))
    return n


def namespaces_named(client: Any, prefix: str, batch: int = 1000) -> list[str]:
    """The namespaces holding keys whose name starts with ``prefix``, sorted (one SCAN of the
    keyspace): what the demo's earlier runs left, for it to drop."""
    return sorted({namespace_of_key(k) for k in client.scan_iter(
        match=namespaces_starting(prefix), count=batch)})


def user_keys_everywhere(client: Any, users: Sequence[str], batch: int = 1000
                         ) -> dict[str, list[bytes]]:
    """Every key of each of ``users`` (valid user ids) in every namespace (``diam forget``).

    A SCAN walks the whole keyspace whatever its MATCH. For a few users, one SCAN each that
    Redis filters (:func:`serving_cache.keys.user_in_every_namespace`); from
    :data:`ONE_SCAN_FROM` users on, one SCAN over every user key, filtered here: forgetting N
    users then walks a large keyspace once, not N times."""
    wanted = list(dict.fromkeys(users))
    found: dict[str, list[bytes]] = {u: [] for u in wanted}
    if len(wanted) < ONE_SCAN_FROM:
        for u in wanted:
            found[u] = list(client.scan_iter(match=user_in_every_namespace(u), count=batch))
        return found
    for key in client.scan_iter(match=every_user_key(), count=batch):
        keys = found.get(user_id_of_key(key))
        if keys is not None:
            keys.append(key)
    return found
