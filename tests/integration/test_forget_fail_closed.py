"""The writer's forget check fails closed: once a command's start made the markers' hash exist
(``serving_cache.keys.FORGOTTEN_HELD``), a write that finds it absent (Redis lost its data)
writes nothing, and the sink restores the markers and re-pushes first; a bounded run's close
checks for a loss once more; a refused push's key goes; the writer waits on Kafka as Kafka,
restores only after a loss; a restore racing a forget never leaves a lower marker newest on
the markers' topic.

Redis "losing its data" is the test's own keys deleted between two writes (the namespace's
keys with its generation marker, the markers' hash), not a FLUSHALL of the shared server."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.forgotten import record_markers
from serving_cache.keys import FORGOTTEN_HELD, forgotten_key, forgotten_key_by_name
from serving_cache.writer import MarkersMissing
from streams.config import FlowConfig
from streams.forget_markers import (
    forget_markers_of,
    read_markers,
    restore_markers,
    write_markers,
)
from streams.kafka_io import consume_all, watermarks
from streams.online import FlowStats
from streams.redis_sink import RedisVectorSink, SinkPending
from streams.runner import stopping_note, unwritten_line
from tests.flowkit import click_stream, tiny_config
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _settings(stack, topic: str):  # type: ignore[no-untyped-def]
    kafka = stack.settings.kafka.model_copy(update={
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq",
        "forgotten_topic": f"{topic}.forgotten"})
    return stack.settings.model_copy(update={"kafka": kafka, "online": tiny_config(), "flow": FLOW})


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


def _forget(s, topic: str, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["forget", *args, "--topic", topic], obj={"settings": s})
    assert r.exit_code == 0, r.output
    return r.output


def _lose(client, namespace: str, topic: str, tid: str | None) -> None:  # type: ignore[no-untyped-def]
    """Redis loses the key set: the namespace's keys (its generation marker) and the markers."""
    for key in client.scan_iter(match=f"diam:{namespace}:*"):
        client.delete(key)
    client.delete(forgotten_key(topic, tid), forgotten_key_by_name(topic))


@pytest.fixture
def markers(redis_client, topic):  # type: ignore[no-untyped-def]
    keys: list[str] = [forgotten_key_by_name(topic)]
    yield keys
    for k in keys:
        redis_client.delete(k)


def _started(s, topic: str, redis_client, markers):  # type: ignore[no-untyped-def]
    """A command's start (``forget_markers_of``), as ``diam run`` and ``diam replay`` do it."""
    produce(s.kafka, topic, click_payloads(click_stream(n_users=2, n_events=10, seed=1)))
    adoption = forget_markers_of(s.kafka, redis_client, topic)
    markers.append(forgotten_key(topic, adoption.topic_id))
    assert redis_client.hget(forgotten_key(topic, adoption.topic_id), FORGOTTEN_HELD) == b"0"
    return adoption.topic_id


@pytest.mark.partitions(1)
def test_a_push_right_after_redis_lost_its_data_is_not_written_before_the_markers_are_back(
        stack, topic, namespace, redis_client, markers) -> None:
    s = _settings(stack, topic)
    tag = namespace[1:9]  # forget deletes in every namespace
    a, b = f"{tag}-a", f"{tag}-b"
    tid = _started(s, topic, redis_client, markers)
    # the periodic check is far away: only the fail-closed check can see the loss
    sink = RedisVectorSink(s.redis, namespace, check_every_s=3600.0, topic=topic, topic_id=tid,
                           markers_from=s.kafka)
    part = sink.build("vectors", 0, 1)
    try:
        part.write_batch([(a, _uv(5)), (b, _uv(5))])
        part._q.join()
        _forget(s, topic, a)
        tomb = watermarks(s.kafka, topic)[0][1] - 1
        assert tomb == 10
        _lose(redis_client, namespace, topic, tid)
        part.write_batch([(a, _uv(7))])  # a dataflow behind the tombstone pushes a again
        part._q.join()
        assert part.error is None
        got = redis_state(redis_client, namespace)
        assert a not in got, "a push right after the loss wrote the forgotten user back"
        assert part.repushed == 2 and decode_user(got[b]).seq == 5  # b re-pushed
        assert int(redis_client.hget(forgotten_key(topic, tid), a)) == tomb
    finally:
        part.close()


@pytest.mark.partitions(1)
def test_a_bounded_run_that_closes_right_after_a_loss_restores_and_re_pushes(
        stack, topic, namespace, redis_client, markers) -> None:
    s = _settings(stack, topic)
    tag = namespace[1:9]
    a, b = f"{tag}-a", f"{tag}-b"
    tid = _started(s, topic, redis_client, markers)
    sink = RedisVectorSink(s.redis, namespace, check_every_s=3600.0, topic=topic, topic_id=tid,
                           markers_from=s.kafka)
    part = sink.build("vectors", 0, 1)
    part.write_batch([(a, _uv(5)), (b, _uv(5))])  # a still held: the dataflow is behind
    part._q.join()
    _forget(s, topic, a)
    _lose(redis_client, namespace, topic, tid)
    part.close()  # nothing pushed since the loss
    assert part.error is None
    got = redis_state(redis_client, namespace)
    assert b in got, "the close did not find the loss: b was not re-pushed"
    assert a not in got
    assert int(redis_client.hget(forgotten_key(topic, tid), a)) == 10, "markers not restored"


@pytest.mark.partitions(1)
def test_a_refused_push_deletes_the_key_learnt_before_the_tombstone(
        stack, topic, namespace, redis_client, markers) -> None:
    s = _settings(stack, topic)
    tid = _started(s, topic, redis_client, markers)
    key = forgotten_key(topic, tid)
    # a value learnt before the tombstone left in Redis (by a writer without the check), and a
    # newer one of another user that stays
    RedisWriter(redis_client, namespace).write_batch([("a", _uv(7)), ("c", _uv(12))])
    redis_client.hset(key, mapping={"a": 10, "c": 10})
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=tid, markers_required=True)
    assert w.write_batch([("a", _uv(8)), ("c", _uv(9))]) == 0
    assert w.last_refused == 1  # c's push is stale (Redis holds 12), not refused
    assert redis_client.get(user_key(namespace, "a")) is None, "the refused user's key stayed"
    assert decode_user(redis_client.get(user_key(namespace, "c"))).seq == 12


@pytest.mark.partitions(1)
def test_waiting_on_kafka_is_said_as_such_and_a_blip_restores_nothing(
        stack, topic, namespace, redis_client, markers, caplog) -> None:
    s = _settings(stack, topic)
    tid = _started(s, topic, redis_client, markers)
    down = s.kafka.model_copy(update={"bootstrap": "127.0.0.1:1"})  # no broker answers there
    sink = RedisVectorSink(s.redis, namespace, check_every_s=3600.0, topic=topic, topic_id=tid,
                           markers_from=s.kafka, max_backoff_s=0.2)
    part = sink.build("vectors", 0, 1)
    calls: list[int] = []
    real = part.restore
    assert real is not None

    def broker_down(client: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) < 3:
            return restore_markers(down, client, topic, tid, timeout=0.5)
        return real(client)

    part.restore = broker_down
    try:
        part.write_batch([("a", _uv(5))])
        part._q.join()
        # a connection blip, no data lost: re-pushed, the markers not read again
        part._suspect = True
        part.write_batch([("b", _uv(5))])
        part._q.join()
        assert calls == [] and part.repushed == 2, "a blip restored the markers"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
            _lose(redis_client, namespace, topic, tid)
            part.write_batch([("c", _uv(5))])
            part._q.join()
        assert part.error is None and len(calls) == 3
        said = [r.getMessage() for r in caplog.records]
        assert not any("connection broke" in x for x in said), said
        assert not any("reachable again" in x for x in said), said
        assert any("restored from Kafka after" in x and "waiting for the broker" in x
                   for x in said), said
        assert set(redis_state(redis_client, namespace)) == {"a", "b", "c"}
        assert redis_client.hget(forgotten_key(topic, tid), FORGOTTEN_HELD) == b"0"
    finally:
        part.close()


class _RacingForget:
    """A Redis client whose first read of the markers' hash is followed by a forget of user
    ``u`` at offset 10 (its record on the markers' topic, then the hash), before the restore
    writes what it read: the race of ``restore_markers`` with a ``diam forget``."""

    def __init__(self, client: Any, s: Any, topic: str, tid: str | None) -> None:
        self._c, self._s, self._topic, self._tid = client, s, topic, tid
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def hgetall(self, key: str) -> Any:
        out = self._c.hgetall(key)
        if not self.raced:
            self.raced = True
            write_markers(self._s.kafka, self._topic, self._tid, {"u": 10})
            self._c.hset(key, "u", 10)
        return out


@pytest.mark.partitions(1)
def test_a_restore_racing_a_forget_leaves_the_higher_marker_newest_on_the_topic(
        stack, topic, redis_client, markers) -> None:
    s = _settings(stack, topic)
    tid = _started(s, topic, redis_client, markers)
    key = forgotten_key(topic, tid)
    redis_client.hset(key, "u", 5)  # Redis alone holds u's older marker
    racing = _RacingForget(redis_client, s, topic, tid)
    restore_markers(s.kafka, racing, topic, tid)
    assert racing.raced
    mine = [rec for rec in consume_all(s.kafka, s.kafka.forgotten_topic)
            if rec.value is not None and b'"user":"u"' in rec.value]
    assert mine and b'"offset":10' in mine[-1].value, (
        "the restore's lower marker is the newest record: compaction would keep it")
    assert read_markers(s.kafka, topic, tid) == {"u": 10}
    # a topic whose newest record of a user is below its highest is mended at the next start
    write_markers(s.kafka, topic, tid, {"u": 4})
    restore_markers(s.kafka, redis_client, topic, tid)
    last = [rec for rec in consume_all(s.kafka, s.kafka.forgotten_topic)
            if rec.value is not None and b'"user":"u"' in rec.value][-1]
    assert b'"offset":10' in last.value


class _PausedRestore:
    """A Redis client whose restore (``restore_markers``) runs ``meanwhile`` before its second
    merge call: the hash then holds the first thousand markers only (``forgotten._CHUNK``)."""

    def __init__(self, client: Any, meanwhile: Any) -> None:
        self._c, self._meanwhile, self.calls = client, meanwhile, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def eval(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self._meanwhile()
        return self._c.eval(*args)


@pytest.mark.partitions(1)
def test_a_push_during_a_restore_or_after_a_forget_recreated_the_hash_writes_nothing(
        stack, topic, namespace, redis_client, markers) -> None:
    """The fail-closed check asks for the hash's mark (FORGOTTEN_HELD), which a restore sets
    after its last merge call, not whether the hash exists: a hash holding some markers only
    (a restore half done, a forget's HSET after the loss) is no hash of every marker."""
    s = _settings(stack, topic)
    tid = _started(s, topic, redis_client, markers)
    key = forgotten_key(topic, tid)
    users = {f"q{i:04d}": 10**9 for i in range(1500)}  # two merge calls
    write_markers(s.kafka, topic, tid, users)  # their durable copy, as diam forget writes it
    redis_client.delete(key)  # Redis loses its data
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=tid, markers_required=True)
    seen: list[Any] = []

    def push() -> None:  # a forgotten user's push, learnt before the tombstone
        seen.append((redis_client.hlen(key), redis_client.hexists(key, FORGOTTEN_HELD)))
        try:
            seen.append(w.write_batch([("q1499", _uv(5))]))
        except MarkersMissing as exc:
            seen.append(exc)

    restore_markers(s.kafka, _PausedRestore(redis_client, push), topic, tid)
    assert seen[0] == (1000, False)  # mid-restore: the hash exists, without q1499's marker
    assert isinstance(seen[1], MarkersMissing), f"a push mid-restore was written ({seen[1]})"
    assert redis_client.get(user_key(namespace, "q1499")) is None
    assert redis_client.hget(key, FORGOTTEN_HELD) == b"0" and redis_client.hlen(key) == 1501
    assert w.write_batch([("q1499", _uv(5))]) == 0 and w.last_refused == 1  # restored: refused
    # a forget (or an earlier release's) recreating the lost hash with its own marker alone
    redis_client.delete(key)
    record_markers(redis_client, topic, tid, {"z": 10**9})
    with pytest.raises(MarkersMissing):
        w.write_batch([("q0001", _uv(5))])
    assert redis_client.get(user_key(namespace, "q0001")) is None


@pytest.mark.partitions(1)
def test_a_stop_during_the_markers_restore_says_the_re_push_and_the_wait_on_kafka(
        stack, topic, namespace, redis_client, markers, caplog) -> None:
    """A stopping run whose sink waits on Kafka to restore the markers after a loss says that
    (not "waiting for Redis"), with the held users not re-pushed yet; a stop at once then
    never says "every push was written" while the re-push and the restore are still due."""
    s = _settings(stack, topic)
    tid = _started(s, topic, redis_client, markers)
    down = s.kafka.model_copy(update={"bootstrap": "127.0.0.1:1"})  # no broker answers there
    sink = RedisVectorSink(s.redis, namespace, check_every_s=3600.0, topic=topic, topic_id=tid,
                           markers_from=s.kafka, max_backoff_s=0.2)
    stop = threading.Event()
    stop.set()  # the run is stopping (a first SIGTERM)
    sink.stopping = functools.partial(stopping_note, stop, FlowStats(), True)
    part = sink.build("vectors", 0, 1)
    real = part.restore
    assert real is not None
    broker = threading.Event()  # set: the broker answers again

    def restore(client: Any) -> tuple[int, int]:
        if not broker.is_set():
            return restore_markers(down, client, topic, tid, timeout=0.5)
        return real(client)

    part.restore = restore
    try:
        part.write_batch([(u, _uv(5)) for u in ("a", "b", "c")])
        part._q.join()
        assert sink.pending() == SinkPending()
        with caplog.at_level(logging.WARNING, logger="streams.redis_sink"):
            _lose(redis_client, namespace, topic, tid)
            part.write_batch([("d", _uv(5))])
            deadline = time.monotonic() + 30
            while sink.pending().waiting != "kafka" and time.monotonic() < deadline:
                time.sleep(0.05)
            pending = sink.pending()
            assert pending == SinkPending(4, lost=True, restore=True, waiting="kafka")
            deadline = time.monotonic() + 30
            while (not any("waiting for" in r.getMessage() for r in caplog.records)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
        said = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert said and ("waiting for Kafka to restore the forget markers: Redis lost its data: "
                         "4 held user(s) not re-pushed yet; 0 push(es) not written yet"
                         in said[0]), said
        line = unwritten_line(0, True, pending)  # a second SIGTERM now
        assert "every push was written" not in line, line
        assert line.startswith("stopped at once: Redis lost its data: 4 held user(s) were not "
                               "re-pushed; the forget markers were not restored from Kafka; "
                               "nothing is lost: the run started again with the same command "
                               "restores the forget markers from Kafka at its start, then "
                               "resumes from its recovery store and pushes every user"), line
        broker.set()
        part._q.join()
        assert set(redis_state(redis_client, namespace)) == {"a", "b", "c", "d"}
        assert sink.pending() == SinkPending()
        assert unwritten_line(0, True, sink.pending()) == ("stopped at once: every push was "
                                                           "written to Redis")
    finally:
        broker.set()
        part.close()
