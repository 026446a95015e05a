"""``diam forget``'s markers belong to the topic, not to its name: a topic deleted and created
again under the same name (a new topic id, offsets from 0 again) is not bound by the old
topic's markers, while a push learnt from the old topic before the tombstone stays refused;
markers an earlier release recorded under the name alone are adopted by the id current when
first seen and kept for that release's processes, which still refuse the forgotten users; the
lookup runs before a run says it started."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaException

from diam.cli import main
from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.forgotten import adopt_name_only_markers, record_markers
from serving_cache.keys import (
    FORGOTTEN_ADOPTED_BY,
    FORGOTTEN_HELD,
    forgotten_key,
    forgotten_key_by_name,
)
from streams.config import FlowConfig
from streams.forget_markers import topic_id
from streams.kafka_io import delete_topics, ensure_topic, watermarks
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, prepare_online, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.conftest import create_topic
from tests.integration.helpers import click_payloads, produce, redis_state
from tests.integration.test_run_refusals import _refused_without_start
from tests.integration.test_topic_typos import _cli, _settings

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture
def hashes(redis_client, topic) -> Iterator[list[str]]:
    """Every marker hash of ``topic`` (by name, by each id it had) is removed after the test:
    the test appends the id keys it makes."""
    keys = [forgotten_key_by_name(topic)]
    yield keys
    redis_client.delete(*keys)


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


def _job(stack, topic: str, ns: str) -> OnlineJob:
    s = stack.settings
    kafka = s.kafka.model_copy(update={"drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=s.redis, flow=FLOW, topic=topic, namespace=ns, bounded=True)


def _holder() -> LearnerHolder:
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)


def _forget(stack, topic: str, *users: str) -> str:
    r = CliRunner().invoke(main, ["forget", *users, "--topic", topic], obj={"settings": stack.settings})
    assert r.exit_code == 0, r.output
    return r.output


def _recreate(stack, topic: str, old_id: str, partitions: int = 1) -> str:
    """Delete ``topic`` and create it again under the same name; its new id. The broker may
    report the name as taken for a moment after the deletion: creation is retried until it is
    free (a bounded wait, not a timed assertion)."""
    delete_topics(stack.settings.kafka, [topic])
    deadline = time.monotonic() + 60
    while True:
        try:
            create_topic(stack, topic, partitions)
            break
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    new_id = topic_id(stack.settings.kafka, topic)
    assert new_id is not None and new_id != old_id
    return new_id


@pytest.mark.partitions(1)
def test_a_topic_recreated_under_the_same_name_learns_and_pushes_a_forgotten_users_new_clicks(
        stack, topic, namespace, redis_client, hashes) -> None:
    tag = namespace[1:9]  # user ids of this test alone: forget deletes in every namespace
    events = [dataclasses.replace(ev, user_id=f"{tag}-{ev.user_id}")
              for ev in click_stream(n_users=6, n_events=200, seed=8)]
    u1 = f"{tag}-user1"
    payloads = click_payloads(events)
    kafka = stack.settings.kafka
    produce(kafka, topic, payloads)
    run_online(_job(stack, topic, namespace), _holder())
    assert u1 in redis_state(redis_client, namespace)
    old_id = topic_id(kafka, topic)
    assert old_id is not None
    hashes.append(forgotten_key(topic, old_id))
    _forget(stack, topic, u1)
    tomb = watermarks(kafka, topic)[0][1] - 1
    assert int(redis_client.hget(forgotten_key(topic, old_id), u1)) == tomb == len(payloads)
    assert u1 not in redis_state(redis_client, namespace)

    new_id = _recreate(stack, topic, old_id)
    hashes.append(forgotten_key(topic, new_id))
    # the new topic's first clicks, u1's among them, all at offsets below the old tombstone
    again = payloads[:120]
    produce(kafka, topic, again)
    later = sum(1 for ev in events[:120] if ev.user_id == u1)
    stats = FlowStats()
    run_online(_job(stack, topic, namespace), _holder(), stats)
    got = redis_state(redis_client, namespace)
    assert later > 0 and u1 in got, "the recreated topic's clicks of a forgotten user were refused"
    assert decode_user(got[u1]).n == later and decode_user(got[u1]).seq < tomb
    assert stats.as_dict()["forgotten_pushes"] == 0
    # the old topic's marker stands: a push learnt from it before the tombstone is refused
    assert int(redis_client.hget(forgotten_key(topic, old_id), u1)) == tomb
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=old_id)
    redis_client.delete(user_key(namespace, u1))
    assert w.write_batch([(u1, _uv(tomb - 1))]) == 0 and w.last_refused == 1
    assert redis_client.get(user_key(namespace, u1)) is None


def _old_release_writer(redis_client, namespace: str, topic: str) -> RedisWriter:
    """A writer checking the name-only hash, as the previous release's did (e919d05): its
    forget script is the one this writer sends (unchanged since), with KEYS[1] the hash of the
    name (``forgotten_key(topic, None)``): an HGET by user id."""
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=None)
    assert w.forgotten == forgotten_key_by_name(topic)
    return w


def _notices(caplog, words: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage() for r in caplog.records
            if r.name == "streams.runner" and words in r.getMessage()]


@pytest.mark.partitions(1)
def test_markers_recorded_by_name_alone_are_adopted_by_the_topic_holding_the_name_and_kept(
        stack, topic, namespace, redis_client, hashes, caplog) -> None:
    kafka = stack.settings.kafka
    tag = namespace[1:9]
    a, b, c, d, e = (f"{tag}-{x}" for x in "abcde")
    tid = topic_id(kafka, topic)
    assert tid is not None
    hashes.append(forgotten_key(topic, tid))
    old = forgotten_key_by_name(topic)
    produce(kafka, topic, click_payloads(click_stream(n_users=2, n_events=20, seed=3)))
    # an earlier release's markers by name; b was forgotten again since, at a later offset
    redis_client.hset(old, mapping={a: 50, b: 7})
    redis_client.hset(forgotten_key(topic, tid), mapping={b: 9})
    out = _forget(stack, topic, c)
    tomb_c = watermarks(kafka, topic)[0][1] - 1
    assert tomb_c == 20
    assert (f"adopted 1 forget marker(s) of {topic} recorded by name alone ({old}) under its "
            f"current topic id {tid}") in out, out
    assert redis_client.hgetall(forgotten_key(topic, tid)) == {
        a.encode(): b"50", b.encode(): b"9", c.encode(): b"20", FORGOTTEN_HELD.encode(): b"0"}
    # kept for the earlier release, with the adopting id, and the new forget written there too
    assert redis_client.hgetall(old) == {a.encode(): b"50", b.encode(): b"7", c.encode(): b"20",
                                         FORGOTTEN_ADOPTED_BY.encode(): tid.encode()}
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=tid)
    assert w.write_batch([(a, _uv(49)), (b, _uv(8)), (c, _uv(19))]) == 0 and w.last_refused == 3
    before = _old_release_writer(redis_client, namespace, topic)
    assert before.write_batch([(a, _uv(49)), (c, _uv(19))]) == 0 and before.last_refused == 2
    assert redis_client.get(user_key(namespace, a)) is None

    # an earlier release's forget adds a marker by name: the next start adopts it, before the
    # dataflow starts (prepare_online: before diam run's start line)
    redis_client.hset(old, mapping={d: 60})
    job = _job(stack, topic, namespace)
    with caplog.at_level(logging.WARNING, logger="streams.runner"):
        prepared = prepare_online(job)
        assert _notices(caplog, f"adopted 1 forget marker(s) of {topic}")
        assert prepared.topic_id == tid
        run_online(job, _holder(), prepared=prepared)
    assert int(redis_client.hget(forgotten_key(topic, tid), d)) == 60
    assert int(redis_client.hget(old, d)) == 60
    # and again: nothing new, nothing said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.runner"):
        run_online(_job(stack, topic, namespace), _holder())
    assert not _notices(caplog, "forget marker(s)")
    assert before.write_batch([(a, _uv(49)), (d, _uv(59))]) == 0 and before.last_refused == 2

    # the topic recreated after the adoption: the name-only markers are not its
    new_id = _recreate(stack, topic, tid)
    hashes.append(forgotten_key(topic, new_id))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.runner"):
        prepare_online(_job(stack, topic, namespace)).close()
    assert _notices(caplog, f"ignoring 4 forget marker(s) of {topic} recorded by name alone "
                            f"({old}): they belong to topic id {tid}"), caplog.text
    # no marker of the new id (the hash held by its start, for the fail-closed check)
    assert redis_client.hgetall(forgotten_key(topic, new_id)) == {FORGOTTEN_HELD.encode(): b"0"}
    assert redis_client.hget(old, FORGOTTEN_ADOPTED_BY) == tid.encode()
    fresh = RedisWriter(redis_client, namespace, topic=topic, topic_id=new_id)
    assert fresh.write_batch([(a, _uv(1))]) == 1 and fresh.last_refused == 0
    assert decode_user(redis_client.get(user_key(namespace, a))).seq == 1
    # a forget on the new topic records under the new id alone, not in the old topic's hash
    out = _forget(stack, topic, e)
    assert "ignoring 4 forget marker(s)" in out, out
    assert redis_client.hget(forgotten_key(topic, new_id), e) is not None
    assert redis_client.hget(old, e) is None


def test_a_new_forget_creates_no_name_only_hash(stack, topic, redis_client, hashes) -> None:
    """With no name-only hash (nobody was forgotten under the earlier release) a forget writes
    the id's hash alone: the name-only one is written only while it exists and is the
    topic's, never created (a hash an operator deleted stays deleted)."""
    tid = topic_id(stack.settings.kafka, topic)
    assert tid is not None
    hashes.append(forgotten_key(topic, tid))
    assert adopt_name_only_markers(redis_client, topic, tid).line() is None
    record_markers(redis_client, topic, tid, {"u1": 3})
    assert redis_client.exists(forgotten_key_by_name(topic)) == 0
    assert redis_client.hgetall(forgotten_key(topic, tid)) == {b"u1": b"3"}
    # owned by another id: left alone
    redis_client.hset(forgotten_key_by_name(topic), mapping={FORGOTTEN_ADOPTED_BY: "other", "u0": 1})
    record_markers(redis_client, topic, tid, {"u2": 4})
    assert redis_client.hget(forgotten_key_by_name(topic), "u2") is None


def test_a_later_forget_finishing_first_is_not_lowered(stack, topic, redis_client, hashes) -> None:
    """Two ``diam forget`` of one user at once (tombstones at 100 and 110) may record their
    markers in the other order: the higher offset stays, in the id's hash and in the name-only
    one it mirrors (a lowered marker would let pushes learnt from clicks 101-109 through)."""
    tid = topic_id(stack.settings.kafka, topic)
    assert tid is not None
    hashes.append(forgotten_key(topic, tid))
    redis_client.hset(forgotten_key_by_name(topic), mapping={FORGOTTEN_ADOPTED_BY: tid})
    record_markers(redis_client, topic, tid, {"u1": 110, "u2": 5})
    record_markers(redis_client, topic, tid, {"u1": 100, "u2": 7})
    for key in (forgotten_key(topic, tid), forgotten_key_by_name(topic)):
        assert redis_client.hget(key, "u1") == b"110"
        assert redis_client.hget(key, "u2") == b"7"


def test_a_run_whose_marker_lookup_fails_prints_no_start_line(stack, namespace, tmp_path) -> None:
    """A tailing run waits for an unreachable Redis once running, but the topic id and the
    name-only markers are read before its start line: Redis down there refuses it, in one
    Error line, before it says it started."""
    s = _settings(stack, tmp_path)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = s.model_copy(update={"redis": s.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})})
    t = f"t.run{uuid.uuid4().hex[:12]}"
    ensure_topic(s.kafka, t)
    try:
        res = _cli(down, "run", "--topic", t, "--namespace", namespace, "--no-recovery")
        _refused_without_start(res, 1, f"127.0.0.1:{port}")
    finally:
        delete_topics(s.kafka, [t])
