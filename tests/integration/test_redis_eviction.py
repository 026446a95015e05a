"""An evicting ``maxmemory-policy`` deletes a live run's vectors without an error, so it is said:
at the start (``streams.preflight.check_redis``, one line naming the policy and what it does to
vectors: ``allkeys-*``, and ``volatile-*`` when the user keys have a TTL) and, once, when the
sink's once-a-second check sees Redis's ``evicted_keys`` grow. On a private redis-server."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import redis as redis_py

from diam.settings import load_settings
from serving_cache import RedisConfig, RedisWriter, UserVectors
from streams.preflight import check_redis
from streams.redis_sink import _Partition
from tests.integration.test_serve_health import private_redis as private_redis  # noqa: F401


def _cfg(port: int, ttl: int | None = None) -> RedisConfig:
    return load_settings().redis.model_copy(update={
        "url": f"redis://127.0.0.1:{port}/0", "cluster": False, "user_ttl_s": ttl,
        "username": None, "password": None})


def _warned(cfg: RedisConfig, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.preflight"):
        check_redis(cfg, namespace="evict")
    return [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]


def test_the_start_warns_of_an_evicting_policy(private_redis, caplog) -> None:
    port = private_redis["port"]
    client = redis_py.Redis(port=port)
    assert _warned(_cfg(port), caplog) == []  # noeviction, the server's default
    client.config_set("maxmemory-policy", "allkeys-lru")
    lines = _warned(_cfg(port), caplog)
    assert len(lines) == 1 and "maxmemory-policy allkeys-lru deletes any key" in lines[0], lines
    assert "user vectors" in lines[0] and "noeviction" in lines[0]
    client.config_set("maxmemory-policy", "volatile-lru")
    assert _warned(_cfg(port), caplog) == []  # no user key has a TTL
    lines = _warned(_cfg(port, ttl=3600), caplog)
    assert len(lines) == 1 and "volatile-lru deletes keys with a TTL" in lines[0], lines


def _uv(seq: int, user: str) -> UserVectors:
    vecs = np.full((4, 64), seq + len(user), dtype=np.float32)
    return UserVectors(seq=seq, model="m", k=4, d=0.5, dim=64, vecs=vecs, ts=seq)


def test_the_sink_says_once_that_redis_evicted_keys(private_redis, caplog) -> None:
    client = redis_py.Redis(port=private_redis["port"])
    client.config_set("maxmemory-policy", "allkeys-lru")
    part = _Partition(RedisWriter(client, "evict"), max_backoff_s=0.2, check_every_s=3600.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
        for seq in range(1, 5):
            if seq == 2:  # room for about a thousand more users' vectors: then evicted
                used = int(client.info("memory")["used_memory"])
                client.config_set("maxmemory", used + 1_000_000)
            part._next_check = 0.0  # each write checks (and reads evicted_keys)
            part._write([(f"s{seq}-u{i}", _uv(seq, f"u{i}")) for i in range(2000)])  # type: ignore[arg-type]
        part.close()
    client.config_set("maxmemory", 0)
    assert int(client.info("stats")["evicted_keys"]) > 0
    lines = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(lines) == 1 and "maxmemory-policy" in lines[0] and "Said once" in lines[0], lines
