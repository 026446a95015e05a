"""Redis client construction from :class:`RedisConfig` (security options pass through), and the
one read of many keys that works on both client kinds (:func:`get_values`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from serving_cache.config import RedisConfig, RedisSettingsError, url_host

__all__ = ["PRIMARY_PING_S", "get_values", "primaries_down", "redis_client",
           "redis_client_waiting"]

PRIMARY_PING_S = 1.0
"""How long :func:`primaries_down` waits for each primary's PONG: a health check answers within
seconds while a node hangs (the clients' ``socket_timeout_s``, 5 s, is for a loaded batch)."""


def redis_client(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg.url`` with the ACL/TLS options of ``cfg``. Connects lazily, except a
    Redis Cluster client (``cfg.cluster``), which asks the URL's node for the slot layout: no
    node answering raises redis-py's ``RedisClusterUnreachableError`` (an outage,
    :func:`serving_cache.outage.unreachable`). Settings no client can use
    (:meth:`RedisConfig.problem`) and a cluster client pointed at a server without cluster
    mode raise :class:`RedisSettingsError`."""
    if (problem := cfg.problem()) is not None:
        raise RedisSettingsError(problem)
    if cfg.cluster:
        from redis.cluster import RedisCluster

        try:
            return RedisCluster.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[return-value]
        except redis.exceptions.RedisClusterException as exc:
            if "cluster mode is not enabled" not in str(exc).lower():
                raise
            where = url_host(cfg.url)  # never a password from the URL
            raise RedisSettingsError(
                f"Redis at {where} is not a node of a Redis Cluster (cluster mode is not "
                "enabled on it), and DIAM_REDIS_CLUSTER is set: unset DIAM_REDIS_CLUSTER for a "
                "single server, or point DIAM_REDIS_URL at a node of the cluster") from None
    return redis.Redis.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[arg-type]


def redis_client_waiting(cfg: RedisConfig, waiting: Callable[[BaseException], None],
                         pause_s: float = 1.0) -> redis.Redis:
    """:func:`redis_client`, waiting for Redis where it is away: a single server's client
    connects lazily, so it never waits here; a Redis Cluster client that no node answers
    (:func:`serving_cache.outage.unreachable`) is tried again every ``pause_s`` seconds,
    ``waiting(error)`` called once, at the first. A service (``diam serve``) starts through it,
    as it starts on a single server that is down. Anything else raises at once."""
    from serving_cache.outage import unreachable

    told = False
    while True:
        try:
            return redis_client(cfg)
        except Exception as exc:
            if not unreachable(exc):
                raise
            if not told:
                waiting(exc)
                told = True
        time.sleep(pause_s)


def primaries_down(client: redis.RedisCluster, timeout_s: float = PRIMARY_PING_S) -> list[str]:
    """The primaries of a Redis Cluster client (``host:port``, in the client's slot map) that
    do not answer PING within ``timeout_s`` each, over a connection of their own with the
    client's credentials and TLS: the client's pooled ones wait ``socket_timeout_s``, and one
    PING through the cluster client reaches one node only, so a primary that hangs would go
    unseen while its users' reads time out. Never raises about Redis."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from serving_cache.outage import REDIS_ERRORS

    down = []
    for node in client.get_primaries():
        pool = node.redis_connection.connection_pool
        kw = {**pool.connection_kwargs, "socket_timeout": timeout_s,
              "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}
        probe = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **kw))
        try:
            probe.ping()
        except REDIS_ERRORS:
            down.append(f"{node.host}:{node.port}")
        finally:
            probe.close()
            probe.connection_pool.disconnect()
    return down


def get_values(client: redis.Redis, keys: Sequence[bytes | str]) -> list[bytes | None]:
    """The values of ``keys``, in order; None where a key is missing or holds another Redis type
    than a string (MGET's answer). Every read of many keys (e.g. the keys a SCAN found, which
    belong to different users) goes through here: a Redis Cluster refuses one MGET over keys of
    several hash slots, so on a :class:`redis.cluster.RedisCluster` the keys are grouped by slot
    and each slot's MGET is sent in one pipeline per node (``mget_nonatomic``: the values are
    read slot by slot, not at one instant, as a SCAN's are anyway); on a single Redis, one MGET.
    """
    if not keys:
        return []
    if isinstance(client, redis.RedisCluster):
        return list(client.mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))  # type: ignore[arg-type]
