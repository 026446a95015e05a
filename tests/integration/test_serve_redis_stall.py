"""The serve breaker under a brief stall of a real Redis (a private redis-server stopped with
SIGSTOP for one read timeout, then SIGCONT): the read after the stall is answered, not refused
for the breaker's whole pause; a Redis that keeps not answering opens it, and ``/health`` says
so (503, ``reads_paused_s``) until a probe is answered."""

from __future__ import annotations

import signal
import time

import pytest
import redis as redis_py
from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.breaker import FIRST_PAUSE_S, ReadBreaker, RedisPaused
from serving_cache.config import RedisConfig
from serving_cache.connection import redis_client
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.test_serve_redis_hang import hung_redis as hung_redis  # noqa: F401

READ_TIMEOUT_S = 0.25


def _serve_client(port: int) -> redis_py.Redis:
    return fail_fast(redis_client(RedisConfig(url=f"redis://127.0.0.1:{port}/0",
                                              socket_timeout_s=READ_TIMEOUT_S)))


def test_a_brief_stall_refuses_no_read_after_it(tmp_path, hung_redis) -> None:
    port, proc = hung_redis
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    client = _serve_client(port)
    version = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=3), store,
                      client, "breakerfix-stall").version
    rec = Recommender(SnapshotIndex.load(store.path(version)), client, "breakerfix-stall",
                      breaker=ReadBreaker())
    with TestClient(get_app(rec)) as http:
        assert http.get("/users/u1/recommendations").status_code == 200
        proc.send_signal(signal.SIGSTOP)
        try:
            r = http.get("/users/u1/recommendations")  # held one read timeout
        finally:
            proc.send_signal(signal.SIGCONT)
        assert r.status_code == 503, r.text
        # Redis answers again: so do the users (old code: 503 "not asked again for 1.5 s")
        r = http.get("/users/u1/recommendations")
        assert r.status_code == 200, r.text
        assert http.get("/health").status_code == 200

        # a Redis that keeps not answering: two timeouts in a row open the breaker
        proc.send_signal(signal.SIGSTOP)
        try:
            assert [http.get("/users/u1/recommendations").status_code for _ in range(2)] == [
                503, 503]
            t0 = time.monotonic()
            r = http.get("/users/u2/recommendations")
            assert r.status_code == 503 and time.monotonic() - t0 < 0.2, r.text
            assert "not asked again" in r.json()["detail"], r.text
            h = http.get("/health")
            assert h.status_code == 503, h.text
            assert 0.0 < h.json()["reads_paused_s"] <= FIRST_PAUSE_S, h.json()
        finally:
            proc.send_signal(signal.SIGCONT)
        time.sleep(FIRST_PAUSE_S)
        assert http.get("/users/u1/recommendations").status_code == 200  # the probe
        h = http.get("/health")
        assert h.status_code == 200 and "reads_paused_s" not in h.json(), h.text


def test_the_breaker_on_a_real_redis_counts_timeouts_in_a_row(hung_redis) -> None:
    port, proc = hung_redis
    b = ReadBreaker()
    client = _serve_client(port)
    client.set("breakerfix:k", b"v")
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(redis_py.TimeoutError) as info:
            b.call(lambda: client.get("breakerfix:k"))
        assert not isinstance(info.value, RedisPaused)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert b.call(lambda: client.get("breakerfix:k")) == b"v"
    assert not b.open
