"""The stack launcher itself: a second stack with its own home and ports goes up, reports its
versions, comes down, and leaves no process or open port behind. The shared stack is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from diam.settings import load_settings
from diam.stack import StackError, StackPaths, stack_up
from diam.stack_proc import free_port, pid_alive, pids_with_marker, port_open, read_pid


def _diam(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diam", "stack", *args], env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def second_stack(tmp_path: Path) -> dict[str, str]:
    """Environment of a second stack: temporary home, free ports, the shared jar cache."""
    env = dict(os.environ,
               DIAM_STACK_HOME=str(tmp_path / "home"),
               DIAM_STACK_KAFKA_PORT=str(free_port()),
               DIAM_STACK_CONTROLLER_PORT=str(free_port()),
               DIAM_STACK_REDIS_PORT=str(free_port()))
    yield env
    _diam(env, "down")  # whatever the test did, nothing of it outlives the test


def test_second_stack_up_status_down_leaves_nothing(second_stack: dict[str, str]) -> None:
    env = second_stack
    kport, cport, rport = (int(env[k]) for k in (
        "DIAM_STACK_KAFKA_PORT", "DIAM_STACK_CONTROLLER_PORT", "DIAM_STACK_REDIS_PORT"))
    bootstrap = f"127.0.0.1:{kport}"

    up = _diam(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert bootstrap in up.stdout and f"redis://127.0.0.1:{rport}/0" in up.stdout

    again = _diam(env, "up")  # idempotent: verifies, starts nothing
    assert again.returncode == 0, again.stderr
    assert "kafka already running" in again.stdout and "redis already running" in again.stdout

    status = _diam(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    version = load_settings().stack.kafka_version
    assert f"kafka {version}" in status.stdout
    assert "redis 7." in status.stdout or "redis 8." in status.stdout

    # A real round trip through the second broker.
    topic = "stack-selftest"
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    del producer  # its connection would only log refusals once the broker is down
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "selftest",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    msg = None
    for _ in range(60):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            break
    consumer.close()
    assert msg is not None and msg.value() == b"hello"

    paths = StackPaths(Path(env["DIAM_STACK_HOME"]).resolve())
    pids = [read_pid(paths.kafka_pid), read_pid(paths.redis_pid)]
    assert all(p is not None and pid_alive(p) for p in pids)

    down = _diam(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(p) for p in pids if p is not None)
    assert pids_with_marker(str(paths.home)) == []
    assert not any(port_open(p) for p in (kport, cport, rport))
    assert not paths.kafka_pid.exists() and not paths.redis_pid.exists()

    after = _diam(env, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_failed_start_shows_broker_log_and_leaves_nothing(tmp_path: Path) -> None:
    cport = free_port()
    s = load_settings(stack={"home": str(tmp_path / "home"), "kafka_port": free_port(),
                             "controller_port": cport, "redis_port": free_port()})
    paths = StackPaths.of(s.stack)
    # A log directory that claims to belong to another node: the broker refuses it at start.
    paths.data_dir.mkdir(parents=True)
    (paths.data_dir / "meta.properties").write_text(
        "version=1\ncluster.id=2xyOssgGR6uryNNcIh0i-A\nnode.id=99\n")
    paths.formatted.write_text(json.dumps({"controller_port": cport}))
    with pytest.raises(StackError) as err:
        stack_up(s, echo=lambda _: None)
    message = str(err.value)
    assert "exited at start" in message
    assert f"tail of {paths.server_log}" in message
    assert "99" in message  # the broker's own complaint about the node id, from its log
    assert pids_with_marker(str(paths.home)) == []  # Redis, started by this call, is gone too
    assert not port_open(s.stack.redis_port)
