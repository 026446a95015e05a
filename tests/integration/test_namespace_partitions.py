"""A namespace's record of its clicks topic's partition count (``diam:<ns>:partitions``,
``serving_cache.base_record.record_partitions``) is asked and kept by every writer, against the
real broker and Redis: ``diam replay`` is refused as ``diam run`` is when the namespace was
recorded with another count of the topic (nothing written), and records the count when the
namespace has none; a tailing ``diam run`` whose Redis lost the namespace's keys writes the
record again with the users it re-pushes (it was missing until the next start)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import redis as redis_py
from confluent_kafka.admin import AdminClient, NewPartitions

from serving_cache.keys import partitions_key
from tests.flowkit import DIM, click_stream
from tests.integration.helpers import click_payloads, produce, redis_state, write_tiny_checkpoint
from tests.integration.test_run_refusals import START
from tests.integration.test_topic_typos import _cli, _exists, _settings


def _raise_partitions(kafka, topic: str, count: int) -> None:  # type: ignore[no-untyped-def]
    admin = AdminClient(kafka.client_config())
    admin.create_partitions([NewPartitions(topic, count)])[topic].result(30)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def _keys(client, ns: str) -> set[bytes]:  # type: ignore[no-untyped-def]
    return set(client.scan_iter(match=f"diam:{ns}:*", count=1000))


def test_a_replay_into_a_namespace_recorded_with_another_count_is_refused_as_a_run_is(
        stack, new_topic, namespace, tmp_path, redis_client) -> None:
    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    # the replays' own dead-letter and drift topics (<topic>.dlq.replay.<ns>) go with the topic
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={
        "deadletter_topic": f"{topic}.dlq", "drift_topic": f"{topic}.drift"})})
    # a run that recorded the count and wrote no user (the topic was empty): the namespace is
    # not "in use", so a replay needs no --clear, and only the record can refuse it
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace)
    assert res.exit_code == 0 and START in res.output, res.output
    assert _keys(redis_client, namespace) == {partitions_key(namespace).encode()}
    _raise_partitions(s.kafka, topic, 4)
    produce(s.kafka, topic, click_payloads(click_stream(6, 60, seed=5)))

    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress")
    assert res.exit_code == 1, res.output  # the old code replayed 60 events into it
    assert "replayed" not in res.output and "Traceback" not in res.output, res.output
    (line,) = _errors(res.output)
    assert f"topic {topic!r} has 4 partitions" in line and "was built from 2" in line, line
    assert f"namespace {namespace!r}" in line and "fresh namespace" in line, line
    # a replay's remedy: it has no recovery store, and --clear deletes the record (the old
    # line said "with a fresh recovery store", a run's)
    assert "recovery store" not in line and "with --clear" in line, line
    # nothing written: no user, no marker, the record as it was, no replay topic made
    assert _keys(redis_client, namespace) == {partitions_key(namespace).encode()}
    assert redis_client.hgetall(partitions_key(namespace)) == {topic.encode(): b"2"}
    assert not _exists(s, f"{topic}.dlq.replay.{namespace}")
    # the same words as `diam run`'s refusal (one rule, one message), but for what to do
    run = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace)
    assert run.exit_code == 1, run.output
    (run_line,) = _errors(run.output)
    assert run_line.endswith("(DIAM_KAFKA_PARTITIONS) and run it into a fresh namespace with a "
                             "fresh recovery store"), run_line
    why = line.rsplit(" and replay it ", 1)[0]
    assert why.endswith("(DIAM_KAFKA_PARTITIONS)") and run_line.startswith(why), (line, run_line)

    # --clear deletes the record with the rest of the namespace: the replay then records its count
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--clear", "--no-progress")
    assert res.exit_code == 0 and "replayed 60 events" in res.output, res.output
    assert redis_client.hgetall(partitions_key(namespace)) == {topic.encode(): b"4"}
    # and a run of the topic as it is now goes into it
    run = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace)
    assert run.exit_code == 0 and START in run.output, run.output

    # a fresh namespace is recorded by the replay (the old code left it without the record, so
    # a later run of another count of the topic into it was taken)
    fresh = f"{namespace}-fresh"
    try:
        res = _cli(s, "replay", "--topic", topic, "--namespace", fresh, "--no-progress")
        assert res.exit_code == 0 and "replayed 60 events" in res.output, res.output
        assert redis_client.hgetall(partitions_key(fresh)) == {topic.encode(): b"4"}
    finally:
        if keys := _keys(redis_client, fresh):
            redis_client.delete(*keys)


def test_a_tailing_run_records_the_count_again_when_redis_lost_the_namespace(
        stack, new_topic, namespace, tmp_path, redis_client) -> None:
    topic = new_topic(2)
    s = stack.settings
    events = click_stream(8, 120, seed=6)
    produce(s.kafka, topic, click_payloads(events[:60]))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_ONLINE_DIM": str(DIM), "DIAM_ONLINE_K_MAX": "4",
           "DIAM_FLOW_EPOCH_INTERVAL_S": "0.2", "DIAM_FLOW_PUSH_EVERY_MS": "100",
           "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift", "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
    cmd = [sys.executable, "-m", "diam", "run", "--tail", "--topic", topic, "--checkpoint",
           str(ckpt), "--namespace", namespace, "--no-recovery"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    users = {ev.user_id for ev in events[:60]}
    record = {topic.encode(): b"2"}

    def wait(cond, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert proc.poll() is None, "the run ended:\n" + "".join(lines)
            assert time.monotonic() < deadline, f"no {what} in {timeout_s:g} s:\n" + "".join(lines)
            time.sleep(0.2)

    try:
        wait(lambda: len(redis_state(redis_client, namespace)) == len(users), "first pushes", 120)
        assert redis_client.hgetall(partitions_key(namespace)) == record
        # the namespace's key set is lost (FLUSHALL, a restart without files), this test's only
        redis_client.delete(*_keys(redis_client, namespace))
        wait(lambda: len(redis_state(redis_client, namespace)) == len(users), "re-push")
        # the old code re-pushed the users and left the record missing until the next start
        wait(lambda: redis_client.hgetall(partitions_key(namespace)) == record,
             "partition count recorded again", 15)
        produce(s.kafka, topic, click_payloads(events[60:]))  # the run goes on as before
        wait(lambda: len(redis_state(redis_client, namespace))
             == len({ev.user_id for ev in events}), "pushes after the loss")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    text = "".join(lines)
    assert "re-pushing" in text and "Traceback" not in text, text
    assert "partition count" not in text, text  # recorded, no warning
    assert redis_client.hgetall(partitions_key(namespace)) == record


@contextlib.contextmanager
def _own_redis(tmp_path, *args: str) -> Iterator[tuple[str, redis_py.Redis]]:
    """(url, client) of a redis-server of this test alone (``args``: its settings), killed
    after: the shared stack's Redis must keep taking writes for the other tests."""
    from diam.stack_proc import free_port
    from serving_cache.reader import fail_fast

    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = fail_fast(redis_py.Redis(port=port))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis_py.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the test's redis-server never answered"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        proc.kill()
        proc.wait(20)


def test_a_redis_that_refuses_writes_is_one_error_line_and_nothing_written(
        stack, new_topic, namespace, tmp_path) -> None:
    """Redis out of memory (``maxmemory`` with noeviction) or a read-only replica answers the
    namespace's partition-count record with an error: ``diam run`` says so in the one wording of
    "Redis failed this command" (``diam.commands.redis_unusable``, as ``diam replay`` does),
    exit 1, no traceback, before its start line, and claims no recovery store."""
    from streams.runner import STORE_RECORD, store_owner

    base = _settings(stack, tmp_path)
    topic = new_topic(2)
    base = base.model_copy(update={"kafka": base.kafka.model_copy(update={
        "deadletter_topic": f"{topic}.dlq", "drift_topic": f"{topic}.drift"})})
    produce(base.kafka, topic, click_payloads(click_stream(4, 20, seed=7)))
    with _own_redis(tmp_path / "primary", "--maxmemory", "1",
                    "--maxmemory-policy", "noeviction") as (url, primary):
        port = primary.connection_pool.connection_kwargs["port"]
        with _own_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(port)) as (
                replica_url, replica):
            for what, where, client in (("maxmemory", url, primary),
                                        ("read only replica", replica_url, replica)):
                s = base.model_copy(update={"redis": base.redis.model_copy(update={"url": where})})
                store = tmp_path / f"rec-{what}"
                for cmd in (["run", "--bounded", "--recovery-dir", str(store)],
                            ["replay", "--no-progress"]):
                    res = _cli(s, *cmd, "--topic", topic, "--namespace", namespace)
                    # the old code: the run's ResponseError raised whole
                    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (
                        what, cmd, res.output, res.exception)
                    assert "Traceback" not in res.output and START not in res.output, res.output
                    (line,) = _errors(res.output)
                    assert line.startswith(f"Error: Redis at {where} is not usable ("), line
                    assert what in line, line
                    assert client.dbsize() == 0, (what, cmd)
                # the refused run left no record in its store: nobody's yet
                assert not (store / STORE_RECORD).exists() and store_owner(store) is None
    assert not _exists(base, f"{topic}.dlq.replay.{namespace}")


def test_a_replay_of_an_empty_range_writes_nothing(stack, new_topic, namespace, tmp_path,
                                                   redis_client) -> None:
    """A replay whose range selects no record ("the namespace gets no user", exit 0) writes
    nothing, the partition-count record neither (6d58c22 wrote it)."""
    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={
        "deadletter_topic": f"{topic}.dlq", "drift_topic": f"{topic}.drift"})})
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress")
    assert res.exit_code == 0 and "the namespace gets no user" in res.output, res.output
    assert _keys(redis_client, namespace) == set()


def test_a_run_refused_over_the_namespace_leaves_its_recovery_store_unclaimed(
        stack, new_topic, namespace, tmp_path, redis_client) -> None:
    """A ``diam run --recovery-dir D`` refused at its checks (here the namespace's partition
    count, asked after the store's) writes no record into D: D is nobody's yet, so a drift
    monitor may take it (``diam drift run --help``); the run taken writes it. Nor does it
    rewrite D's growth log (``streams.growth_log``): the file is byte for byte as it was."""
    from streams.config import DriftConfig
    from streams.drift_flow import STORE_OWNER, check_store
    from streams.growth_log import GROWTH_LOG
    from streams.runner import DRIFT_STORE, RUN_STORE, STORE_RECORD, store_owner

    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={
        "deadletter_topic": f"{topic}.dlq", "drift_topic": f"{topic}.drift"})})
    redis_client.hset(partitions_key(namespace), topic, "3")  # learnt from another count
    store = tmp_path / "rec"
    store.mkdir()
    # a log a run rewrites when it starts (its torn last line left out, a version no longer
    # kept dropped): a refused run must not have started it
    growth = store / GROWTH_LOG.format(process=0)
    logged = (b'{"log":"diam-growth","processes":1,"workers":1}\n'
              b'{"version":"v-gone","items":[["i9",["c1"],"t",5]]}\n{"version":"v-to')
    growth.write_bytes(logged)
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", namespace,
               "--recovery-dir", str(store))
    assert res.exit_code == 1 and START not in res.output, res.output
    (line,) = _errors(res.output)
    assert "was built from 3" in line and "fresh recovery store" in line, line
    # the old code: diam-store.json written, and the monitor refused D as "a diam run's"
    assert not (store / STORE_RECORD).exists() and store_owner(store) is None
    # the old code: rewritten by prepare_online (the header and the kept growths only)
    assert growth.read_bytes() == logged
    growth.unlink()  # the rest as before: a store without a run's files
    fresh = tmp_path / "rec2"
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", f"{namespace}x",
               "--recovery-dir", str(fresh))
    try:
        assert res.exit_code == 0 and START in res.output, res.output
        assert json.loads((fresh / STORE_RECORD).read_text()) == {
            "topic": topic, "partitions": 2, "reads": None}
        assert store_owner(fresh) == RUN_STORE
    finally:
        if keys := _keys(redis_client, f"{namespace}x"):
            redis_client.delete(*keys)
    assert check_store(store, "diam.drift", None, DriftConfig()) is False
    assert (store / STORE_OWNER).exists() and store_owner(store) == DRIFT_STORE
