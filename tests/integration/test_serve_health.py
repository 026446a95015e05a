"""``diam serve`` as a real process: /health answers 503 while Redis is down and 200 once it
is back. Uses a private redis-server on a free port (the shared stack's is never stopped)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving_cache.client import ApiError, DiamClient
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (Debian package redis-server)"
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"private redis-server did not open port {port}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for(check, timeout: float = 30.0):
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
def private_redis(tmp_path):
    port = _free_port()
    state = {"proc": _start_redis(port, tmp_path), "port": port}
    yield state
    if state["proc"].poll() is None:
        _stop(state["proc"])


def test_health_follows_redis_down_and_back(tmp_path, private_redis):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=50, dim=8), store).version
    port = _free_port()
    env = {
        **os.environ,
        "DIAM_SNAPSHOT_DIR": str(store.root),
        "DIAM_CONFIG": "",
        "DIAM_REDIS_URL": f"redis://127.0.0.1:{private_redis['port']}/0",
        "DIAM_REDIS_SOCKET_TIMEOUT_S": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "diam", "serve", "--port", str(port), "--reload-every", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = DiamClient(f"http://127.0.0.1:{port}", timeout_s=5)
    try:
        assert _wait_for(api.health) == {"status": "ok", "redis": True, "snapshot": version,
                                         "pid": server.pid}
        assert api.recommendations("someone", n=3)["cold"] is True

        _stop(private_redis["proc"])
        with pytest.raises(ApiError) as err:
            api.health()
        assert err.value.status == 503
        assert err.value.detail == {"status": "unavailable", "redis": False, "snapshot": version,
                                    "pid": server.pid}
        with pytest.raises(ApiError) as err:
            api.recommendations("someone")
        assert err.value.status == 503 and "redis unavailable" in err.value.detail

        private_redis["proc"] = _start_redis(private_redis["port"], tmp_path)
        assert _wait_for(api.health, timeout=10)["status"] == "ok"
        assert api.recommendations("someone", n=3)["cold"] is True
    finally:
        api.close()
        server.terminate()
        try:
            out, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert "Traceback" not in out, out


def test_serve_warns_at_start_when_its_namespace_holds_no_users(stack, namespace, redis_client,
                                                               capsys) -> None:
    """Every user of an empty namespace is answered cold, as with a typo'd --namespace: diam
    serve says so when it starts, and says nothing once a dataflow has written it."""
    import numpy as np

    from diam.commands.serve import _warn_if_empty
    from serving_cache import RedisWriter, UserVectors

    _warn_if_empty(redis_client, namespace)
    assert f"namespace {namespace!r} holds no users yet" in capsys.readouterr().err
    uv = UserVectors(seq=1, model="v1", k=1, d=0.5, dim=4, vecs=np.ones((1, 4), np.float32),
                     ts=1, n=1)
    RedisWriter(redis_client, namespace).write_batch([("u1", uv)])
    _warn_if_empty(redis_client, namespace)
    assert capsys.readouterr().err == ""
