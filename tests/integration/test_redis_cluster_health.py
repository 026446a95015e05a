"""``/health`` on a Redis Cluster asks every primary: a primary that hangs (SIGSTOP) makes it
503 naming that node within about a second, where one PING through the cluster client reached
another node and answered ``ok`` while that node's users waited out their timeouts."""

from __future__ import annotations

import os
import signal
import time

import redis as redis_py
from fastapi.testclient import TestClient

from serving_cache import redis_client
from serving_cache.api import get_app
from serving_cache.connection import PRIMARY_PING_S, primaries_down
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401


def _pid_of(cfg, port: int) -> int:  # type: ignore[no-untyped-def]
    from diam.stack_cluster import _node_dir
    from diam.stack_proc import read_pid

    pid = read_pid(_node_dir(cfg, port).parent / f"{port}.pid")
    assert pid is not None
    return pid


def test_health_names_a_primary_that_does_not_answer(cluster_stack, tmp_path) -> None:
    cfg, rcfg = cluster_stack
    rc = redis_client(rcfg)
    ns = "redisfixb-health"
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=3), store, rc,
                      ns).version
    app = get_app(Recommender(SnapshotIndex.load(store.path(version)), rc, ns))
    assert primaries_down(rc) == []
    # a primary other than the one a PING through the client goes to
    default = rc.get_default_node()
    node = next(n for n in rc.get_primaries() if n.name != default.name)
    pid = _pid_of(cfg, int(node.port))
    with TestClient(app) as http:
        r = http.get("/health")
        assert r.status_code == 200 and r.json()["redis"] is True, r.text
        assert "redis_down" not in r.json(), r.json()
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert primaries_down(rc) == [f"{node.host}:{node.port}"]
            assert time.monotonic() - t0 < 2 * PRIMARY_PING_S + 1
            r = http.get("/health")
            assert r.status_code == 503, r.text
            body = r.json()
            assert (body["status"], body["redis"], body["redis_down"], body["snapshot"]) == (
                "unavailable", False, [f"{node.host}:{node.port}"], version), body
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (r := http.get("/health")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200 and "redis_down" not in r.json(), r.text
    assert isinstance(rc, redis_py.RedisCluster)
