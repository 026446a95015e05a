"""``diam serve --processes 2`` as real processes on the stack's Redis and Kafka: both
processes answer on the one port, a stop signal ends them all with exit code 0, and a process
that dies stops the server with exit code 1."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from diam.stack_proc import free_port
from serving_cache import RedisWriter, UserVectors
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from tests.integration.helpers import child_pids, http_get, serving

DIM = 8


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def server(stack, tmp_path, redis_client, namespace):
    """``diam serve --processes 2`` on a published snapshot with one known user; yields
    ``(process, port)`` once /health answers 200."""
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=300, dim=DIM, seed=3), store,
                      redis_client, namespace).version
    vecs = SnapshotIndex.load(store.path(version)).item_vecs[[0, 150]]
    RedisWriter(redis_client, namespace).write_batch([("alice", UserVectors(
        seq=1, model=version, k=2, d=0.5, dim=DIM, vecs=vecs, ts=1, n=10))])
    port = free_port()
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store.root),
           "DIAM_CONFIG": "", "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_NAMESPACE": namespace}
    with serving(env, port, "--processes", "2") as p:
        yield p, port


def test_two_processes_answer_on_one_port_and_stop_cleanly_on_sigterm(server) -> None:
    p, port = server
    children = child_pids(p.pid)
    assert len(children) == 2
    pids: Counter[int] = Counter()
    # /health answered once the first process was up; the second may still be loading its
    # snapshot and warming up (longer on a loaded machine), and until it accepts, every new
    # connection goes to the first: poll for a while, not a fixed number of times
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = http_get(port, "/health")
        assert status == 200 and body["status"] == "ok", body
        pids[body["pid"]] += 1
        if len(pids) == 2 and min(pids.values()) >= 3:
            break
        time.sleep(0.02)
    assert set(pids) == children, pids  # both processes answer, and only they
    for _ in range(10):
        status, body = http_get(port, "/users/alice/recommendations?n=5")
        assert status == 200 and not body["cold"] and len(body["items"]) == 5, body

    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert not any(_alive(c) for c in children)
    assert "Traceback" not in out, out
    line = next(x for x in out.splitlines() if "with 2 processes: pids" in x)
    assert {int(x) for x in line.split("pids ")[1].split()} == children, out


def test_a_process_that_dies_stops_the_server_with_exit_code_1(server) -> None:
    p, port = server
    victim, other = sorted(child_pids(p.pid))
    os.kill(victim, signal.SIGKILL)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out
    assert f"server process {victim} killed by SIGKILL; stopping the other 1" in out, out
    assert not _alive(other)
    with pytest.raises(OSError):
        http_get(port, "/health")
