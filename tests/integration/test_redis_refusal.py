"""Redis refusing writes for a while (``maxmemory`` reached under noeviction: OOM) is waited out
and said once, on a private redis-server: nothing broke and nothing was lost, so no "the
connection broke" re-push (``serving_cache.outage``: only an unreachable server makes the sink
suspect lost writes), and the values are byte for byte those of a write that was never refused."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import redis as redis_py

from serving_cache import RedisWriter, UserVectors
from streams.redis_sink import _Partition
from tests.integration.helpers import redis_state
from tests.integration.test_serve_health import private_redis as private_redis  # noqa: F401

USERS = [f"u{i:02d}" for i in range(20)]


def _uv(seq: int, user: str) -> UserVectors:
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4) * seq + len(user)
    return UserVectors(seq=seq, model="m", k=2, d=0.5, dim=4, vecs=vecs, ts=seq)


def _written(client: redis_py.Redis, ns: str, refuse_s: float,
             caplog: pytest.LogCaptureFixture) -> _Partition:
    """Write USERS, then 5 of them newer while ``refuse_s`` seconds of OOM pass (0: none)."""
    part = _Partition(RedisWriter(client, ns), max_backoff_s=0.2, check_every_s=3600.0)
    part._next_check = 0.0
    part._write([(u, _uv(5, u)) for u in USERS])  # type: ignore[arg-type]
    lift = None
    if refuse_s:
        client.config_set("maxmemory", 1)  # below what the server uses: every write refused
        lift = threading.Timer(refuse_s, client.config_set, ("maxmemory", 0))
        lift.start()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
        part._write([(u, _uv(6, u)) for u in USERS[:5]])  # type: ignore[arg-type]
    if lift is not None:
        lift.join()
    part.close()
    return part


def test_an_oom_refusal_is_waited_out_and_said_once_without_a_repush(private_redis, caplog) -> None:
    client = redis_py.Redis(port=private_redis["port"])
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    part = _written(client, "oom", 1.5, caplog)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refusing writes since" in x and "maxmemory" in x for x in lines) == 1, lines
    assert sum("reachable again" in x for x in lines) == 1, lines
    assert not any("re-pushing" in x for x in lines), lines  # nothing broke, nothing lost
    assert part.repushed == 0
    clean = _written(client, "clean", 0, caplog)
    assert clean.repushed == 0
    assert redis_state(client, "oom") == redis_state(client, "clean")  # byte for byte
