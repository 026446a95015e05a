"""``diam serve`` under a Redis that hangs (a private redis-server stopped with SIGSTOP; the
shared stack's is never touched): concurrent requests are all answered 503 within about two
seconds, /metrics answers meanwhile, and after SIGCONT the users are served again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            return check()
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"gave up waiting: {last}")


@pytest.fixture
def hung_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server of this test alone on a free port; SIGCONT and stopped at the end."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (Debian package redis-server)"
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close(), 10)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_hung_redis_answers_503_at_once_and_metrics_answer(tmp_path, hung_redis) -> None:
    redis_port, redis_proc = hung_redis
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    publish(write_checkpoint(tmp_path / "ck", n_items=50, dim=8), store)
    port = _free_port()
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store.root), "DIAM_CONFIG": "",
           "DIAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "diam", "serve", "--port", str(port), "--no-ui",
         "--no-follow-items", "--no-live-popularity"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)  # the first request may compile kernels

    def rec(user: str) -> int:
        return http.get(f"/users/{user}/recommendations", params={"n": 2}).status_code

    try:
        _wait_for(lambda: http.get("/health").raise_for_status(), 60)
        assert rec("race0") == 200

        redis_proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            recs = [pool.submit(rec, f"race{i}") for i in range(4)]
            health = pool.submit(lambda: http.get("/health").status_code)
            metrics = pool.submit(lambda: http.get("/metrics").status_code)
            recs_done = [f.result() for f in recs]
            metrics_done = metrics.result()
            t_metrics = time.monotonic() - t0
            health_done = health.result()
        took = time.monotonic() - t0
        # old code: one request after another, 2 x the 5 s socket timeout each
        assert recs_done == [503] * 4, recs_done
        assert metrics_done == 200 and t_metrics < 2.0, t_metrics
        assert health_done == 503
        assert took < 2.0, took
        # while the breaker is open, a request is refused without waiting for Redis at all
        t1 = time.monotonic()
        assert rec("race5") == 503
        assert time.monotonic() - t1 < 0.2

        redis_proc.send_signal(signal.SIGCONT)
        assert _wait_for(lambda: rec("race6") == 200 or 1 / 0, 5) is True
        assert http.get("/health").status_code == 200
    finally:
        http.close()
        server.terminate()
        try:
            out, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert "Traceback" not in out, out
