"""Redis client construction from :class:`RedisConfig` (security options pass through), and the
one read of many keys that works on both client kinds (:func:`get_values`)."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from serving_cache.config import RedisConfig

__all__ = ["get_values", "redis_client"]


def redis_client(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg.url`` with the ACL/TLS options of ``cfg``. Connects lazily, except a
    Redis Cluster client (``cfg.cluster``), which asks the URL's node for the slot layout."""
    if cfg.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[return-value]
    return redis.Redis.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[arg-type]


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
