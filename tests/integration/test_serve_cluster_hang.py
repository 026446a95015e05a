"""The serve path on a Redis Cluster one primary of which hangs (SIGSTOP): that primary's users
are held one read timeout (the cluster client does not retry a timed-out read) and then refused
at once, while the users whose slots other primaries own are served (one breaker per node)."""

from __future__ import annotations

import os
import signal
import time

from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.breaker import ReadBreaker
from serving_cache.connection import redis_client
from serving_cache.keys import user_key
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401
from tests.integration.test_redis_cluster_health import _pid_of

READ_TIMEOUT_S = 0.25


def test_a_hung_primary_refuses_its_own_users_only(cluster_stack, tmp_path) -> None:
    cfg, rcfg = cluster_stack
    ns = "breakerfix-clhang"
    client = fail_fast(redis_client(rcfg.model_copy(update={"socket_timeout_s": READ_TIMEOUT_S})))
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=3), store,
                      redis_client(rcfg), ns).version
    rec = Recommender(SnapshotIndex.load(store.path(version)), client, ns,
                      breaker=ReadBreaker())
    hung = client.get_primaries()[0]
    users: dict[bool, list[str]] = {True: [], False: []}
    for i in range(200):
        uid = f"u{i}"
        users[client.get_node_from_key(user_key(ns, uid)).name == hung.name].append(uid)
    assert users[True] and len({client.get_node_from_key(user_key(ns, u)).name
                                for u in users[False]}) == 2
    pid = _pid_of(cfg, int(hung.port))
    with TestClient(get_app(rec)) as http:
        def get(uid: str) -> int:
            return http.get(f"/users/{uid}/recommendations", params={"n": 2}).status_code

        assert get(users[True][0]) == 200 and get(users[False][0]) == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert get(users[True][0]) == 503
            # one read timeout, not two (old code: the cluster client retried it: 0.51 s)
            assert time.monotonic() - t0 < 1.8 * READ_TIMEOUT_S, time.monotonic() - t0
            assert get(users[True][1]) == 503  # the probe: the breaker of that node opens
            t0 = time.monotonic()
            assert get(users[True][2]) == 503
            assert time.monotonic() - t0 < 0.2
            # the other primaries' users (old code: 503 "not asked again for 1.5 s")
            assert [get(u) for u in users[False][:6]] == [200] * 6
            h = http.get("/health")
            assert h.status_code == 503 and h.json()["reads_paused_s"] > 0, h.text
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while get(users[True][0]) != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert get(users[False][0]) == 200
