"""The serve routes under a Redis Cluster that goes down whole while serving (every node
killed): the users' routes answer 503 "redis unavailable", not a 500 with a traceback
(``RedisClusterUnreachableError`` is no ``redis.ConnectionError``)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from serving_cache import redis_client
from serving_cache.api import get_app
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.test_redis_cluster import cluster_stack as cluster_stack  # noqa: F401
from tests.integration.test_redis_cluster_outage import _kill_all


def test_a_whole_cluster_down_answers_503_on_the_users_routes(cluster_stack, tmp_path) -> None:
    cfg, rcfg = cluster_stack
    rc = redis_client(rcfg)
    ns = "breakerfix-down"
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=3), store, rc,
                      ns).version
    app = get_app(Recommender(SnapshotIndex.load(store.path(version)), rc, ns))
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/users/u1/recommendations", params={"n": 2}).status_code == 200
        _kill_all(cfg)
        for path in ("/users/u1/recommendations", "/users/u2/recommendations",
                     "/users/u1/interests"):
            r = http.get(path)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.json()["detail"].startswith("redis unavailable"), r.text
