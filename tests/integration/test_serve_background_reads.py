"""``diam serve``'s reads that no user waits on keep the writers' ``socket_timeout_s``
(``diam.server.build_app``): the /ui page's namespace SCAN of a Redis that pauses for a second
(a private redis-server SIGSTOPped for 1 s; the shared stack's is never touched) answers once
Redis does, where the requests' 0.25 s client (``DIAM_SERVE_REDIS_READ_TIMEOUT_S``) answered
503 ``redis unavailable: Timeout reading from ...``."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import redis as redis_py
from fastapi.testclient import TestClient

from diam.server import ServeOptions, build_app
from serving_cache import RedisConfig
from snapshotter import SnapshotConfig
from tests.integration.test_serve_redis_hang import hung_redis as hung_redis  # noqa: F401


def test_the_ui_namespace_scan_waits_the_writers_timeout(stack, hung_redis, tmp_path: Path
                                                         ) -> None:
    port, proc = hung_redis
    url = f"redis://127.0.0.1:{port}/0"
    r = redis_py.Redis.from_url(url)
    for u in range(50):
        r.set(f"diam:leftovers-f:u:{u}", b"x")  # any keys of the namespace: the SCAN reads them
    s = stack.settings.model_copy(update={
        "redis": RedisConfig(url=url, socket_timeout_s=5.0),
        "snapshot": SnapshotConfig(dir=str(tmp_path / "snaps"))})
    app = build_app(s, ServeOptions(namespace="leftovers-f", follow_items=False,
                                    live_popularity=False))
    http = TestClient(app)  # no lifespan: no snapshot poll, no warm-up
    proc.send_signal(signal.SIGSTOP)
    resume = threading.Timer(1.0, proc.send_signal, (signal.SIGCONT,))
    resume.start()
    try:
        t0 = time.monotonic()
        got = http.get("/ui/api/namespace")
        took = time.monotonic() - t0
    finally:
        resume.join()
    assert got.status_code == 200, got.text
    assert 0.8 < took < 4.5, took  # it waited for Redis, within the writers' timeout
