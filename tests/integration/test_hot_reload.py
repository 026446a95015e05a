"""Publish a new snapshot while the dataflow runs: the active version moves in Redis, the running
dataflow loads it once and re-anchors each user on their next event, with a drift event."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from serving_cache import decode_user, model_active_key, user_key
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.events import ClickEvent
from streams.kafka_io import consume_all, ensure_topic
from tests.integration.helpers import click_payloads, produce

T0 = 1_700_000_000_000


def _wait_model(client, ns: str, user: str, model: str, proc, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the dataflow exited with {proc.returncode}"
        raw = client.get(user_key(ns, user))
        if raw is not None and decode_user(raw).model == model:
            return
        time.sleep(0.1)
    raw = client.get(user_key(ns, user))
    got = decode_user(raw).model if raw else None
    raise AssertionError(f"user {user} never reached model {model} (has {got})")


@contextlib.contextmanager
def _tailing(env: dict[str, str], topic: str, namespace: str, out: dict[str, str]):  # type: ignore[no-untyped-def]
    """A tailing ``diam run`` for the block; its stderr lands in ``out["err"]`` when it is
    stopped, and an assertion failing inside the block carries the stderr's tail."""
    proc = subprocess.Popen([sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace",
                             namespace, "--tail"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out["err"] = ""
    try:
        yield proc
    except AssertionError as exc:
        if proc.poll() is None:
            proc.terminate()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"{exc}; dataflow stderr tail:\n{err[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.terminate()
            _, out["err"] = proc.communicate(timeout=30)


def _run_env(stack, tmp_path, topic, drift_topic) -> dict[str, str]:
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
            "DIAM_SNAPSHOT_DIR": str(tmp_path / "snaps"), "DIAM_ONLINE_DIM": "16",
            "DIAM_FLOW_RELOAD_CHECK_S": "0.2", "DIAM_FLOW_PUSH_EVERY_MS": "50",
            "DIAM_STACK_HOME": str(tmp_path / "home"),
            "DIAM_KAFKA_DRIFT_TOPIC": drift_topic, "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}


def test_publish_moves_active_version_and_running_flow_reanchors(stack, topic, namespace,
                                                                 redis_client, tmp_path) -> None:
    kafka = stack.settings.kafka
    drift_topic = f"{topic}.drift"
    ensure_topic(kafka, drift_topic, partitions=1)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    ck1 = write_checkpoint(tmp_path / "ck1", n_items=200, dim=16, seed=1)
    ck2 = write_checkpoint(tmp_path / "ck2", n_items=200, dim=16, seed=2)
    v1 = publish(ck1, store, redis_client, ns=namespace).version
    assert redis_client.get(model_active_key(namespace)).decode() == v1

    env = _run_env(stack, tmp_path, topic, drift_topic)
    out: dict[str, str] = {}
    with _tailing(env, topic, namespace, out) as proc:
        produce(kafka, topic, click_payloads(ClickEvent("alice", f"i{i}", T0 + i) for i in range(30)))
        _wait_model(redis_client, namespace, "alice", v1, proc)

        v2 = publish(ck2, store, redis_client, ns=namespace).version
        assert v2 != v1 and redis_client.get(model_active_key(namespace)).decode() == v2
        time.sleep(1.0)  # > reload_check_s: the next batch sees the new version
        produce(kafka, topic, click_payloads(ClickEvent("alice", f"i{i}", T0 + 60_000 + i - 30)
                                             for i in range(30, 40)))
        _wait_model(redis_client, namespace, "alice", v2, proc)
    err = out["err"]
    drift = [json.loads(r.value) for r in consume_all(kafka, drift_topic)]
    reanchors = [d for d in drift if d["kind"] == "reanchor" and d["user_id"] == "alice"]
    assert reanchors, f"no reanchor drift event; stderr tail: {err[-1500:]}"
    assert reanchors[-1]["detail"]["version"] == v2
    # a tailing run keeps a recovery store by default, under the stack home
    rec = tmp_path / "home" / "recovery" / f"{namespace}--{topic}"
    assert any(rec.glob("part-*.sqlite3")), f"no default recovery store at {rec}"


def test_a_snapshot_the_stream_cannot_use_is_refused_and_the_flow_keeps_running(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """A verified snapshot of another embedding size (a `diam train --dim 8` checkpoint while
    the stream runs d=16) is refused at hot reload like a failed hash: one log line naming the
    version and why, the current base stays, and the next usable version is still taken."""
    kafka = stack.settings.kafka
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=200, dim=16, seed=1), store,
                 redis_client, ns=namespace).version
    env = _run_env(stack, tmp_path, topic, f"{topic}.drift")
    out: dict[str, str] = {}
    with _tailing(env, topic, namespace, out) as proc:
        produce(kafka, topic, click_payloads(ClickEvent("bob", f"i{i}", T0 + i) for i in range(30)))
        _wait_model(redis_client, namespace, "bob", v1, proc)
        bad = publish(write_checkpoint(tmp_path / "ck8", n_items=200, dim=8, seed=2), store,
                      redis_client, ns=namespace).version
        time.sleep(1.0)  # > reload_check_s: the next batch sees it, and refuses it
        produce(kafka, topic, click_payloads(ClickEvent("bob", f"i{i}", T0 + 60_000 + i - 30)
                                             for i in range(30, 40)))
        time.sleep(2.0)
        assert proc.poll() is None, "the dataflow died on a snapshot it cannot use"
        v3 = publish(write_checkpoint(tmp_path / "ck3", n_items=200, dim=16, seed=3), store,
                     redis_client, ns=namespace).version
        time.sleep(1.0)
        produce(kafka, topic, click_payloads(ClickEvent("bob", f"i{i}", T0 + 120_000 + i - 40)
                                             for i in range(40, 50)))
        _wait_model(redis_client, namespace, "bob", v3, proc)
    err = out["err"]
    refused = [line for line in err.splitlines() if bad in line]
    assert len(refused) == 1, err[-3000:]
    assert "hot reload refused, keeping " + v1 in refused[0]
    assert f"snapshot {bad} has d=8, DIAM_ONLINE_DIM is 16" in refused[0]
    assert "Traceback" not in err


def test_diam_run_refuses_an_active_snapshot_of_another_dim_in_one_line(stack, topic, namespace,
                                                                         tmp_path) -> None:
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v = publish(write_checkpoint(tmp_path / "ck8", n_items=50, dim=8), store).version
    env = _run_env(stack, tmp_path, topic, f"{topic}.drift")
    r = subprocess.run([sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace",
                        namespace, "--bounded"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: snapshot {v} has d=8, DIAM_ONLINE_DIM is 16 (set DIAM_ONLINE_DIM=8 or publish a "
        "d=16 model)")
