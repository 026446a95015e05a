"""Redis client construction from :class:`RedisConfig` (security options pass through)."""

from __future__ import annotations

import redis

from serving_cache.config import RedisConfig

__all__ = ["redis_client"]


def redis_client(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg.url`` with the ACL/TLS options of ``cfg``. Connects lazily, except a
    Redis Cluster client (``cfg.cluster``), which asks the URL's node for the slot layout."""
    if cfg.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[return-value]
    return redis.Redis.from_url(cfg.url, **cfg.client_kwargs())  # type: ignore[arg-type]
