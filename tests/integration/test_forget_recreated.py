"""``diam forget``'s markers belong to the topic, not to its name: a topic deleted and created
again under the same name (a new topic id, offsets from 0 again) is not bound by the old
topic's markers, while a push learnt from the old topic before the tombstone stays refused;
markers an earlier release recorded under the name alone are moved under the id current when
first seen, losing none."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaException

from diam.cli import main
from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.forgotten import adopt_name_only_markers
from serving_cache.keys import forgotten_key, forgotten_key_by_name
from streams.config import FlowConfig
from streams.forget_markers import topic_id
from streams.kafka_io import delete_topics, watermarks
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.conftest import create_topic
from tests.integration.helpers import click_payloads, produce, redis_state

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


@pytest.mark.partitions(1)
def test_markers_recorded_by_name_alone_belong_to_the_topic_holding_the_name_when_first_seen(
        stack, topic, namespace, redis_client, hashes, caplog) -> None:
    kafka = stack.settings.kafka
    tag = namespace[1:9]
    a, b, c = (f"{tag}-{x}" for x in "abc")
    tid = topic_id(kafka, topic)
    assert tid is not None
    hashes.append(forgotten_key(topic, tid))
    # an earlier release's markers by name; b was forgotten again since, at a later offset
    redis_client.hset(forgotten_key_by_name(topic), mapping={a: 50, b: 7})
    redis_client.hset(forgotten_key(topic, tid), mapping={b: 9})
    out = _forget(stack, topic, c)
    assert (f"moved 2 forget marker(s) of {topic} recorded by name alone "
            f"({forgotten_key_by_name(topic)}) under its current topic id {tid}") in out, out
    assert redis_client.exists(forgotten_key_by_name(topic)) == 0
    assert redis_client.hgetall(forgotten_key(topic, tid)) == {a.encode(): b"50", b.encode(): b"9",
                                                               c.encode(): b"0"}
    w = RedisWriter(redis_client, namespace, topic=topic, topic_id=tid)
    assert w.write_batch([(a, _uv(49)), (b, _uv(8))]) == 0 and w.last_refused == 2

    # diam run (and replay, through the same runner) moves them at its start too
    redis_client.hset(forgotten_key_by_name(topic), mapping={a: 60})
    produce(kafka, topic, click_payloads(click_stream(n_users=2, n_events=20, seed=3)))
    with caplog.at_level(logging.WARNING, logger="streams.runner"):
        run_online(_job(stack, topic, namespace), _holder())
    assert any(f"moved 1 forget marker(s) of {topic}" in r.getMessage() for r in caplog.records)
    assert redis_client.exists(forgotten_key_by_name(topic)) == 0
    assert int(redis_client.hget(forgotten_key(topic, tid), a)) == 60

    # the topic recreated after the move is bound by none of them
    new_id = _recreate(stack, topic, tid)
    hashes.append(forgotten_key(topic, new_id))
    fresh = RedisWriter(redis_client, namespace, topic=topic, topic_id=new_id)
    assert fresh.write_batch([(a, _uv(1))]) == 1 and fresh.last_refused == 0
    assert decode_user(redis_client.get(user_key(namespace, a))).seq == 1


def test_a_marker_recorded_by_name_during_the_move_is_moved_too(stack, topic, redis_client,
                                                               hashes) -> None:
    """An earlier release's ``diam forget`` may add a marker between the read of the name-only
    hash and its deletion: the hash is deleted only if it holds what was moved, and the move
    goes round again, so no marker is lost."""
    tid = topic_id(stack.settings.kafka, topic)
    assert tid is not None
    hashes.append(forgotten_key(topic, tid))
    old = forgotten_key_by_name(topic)
    redis_client.hset(old, mapping={"u1": 3})

    class AddsOnce:
        """Redis, with an earlier release's forget landing after the first merge."""

        def __init__(self) -> None:
            self.added = False

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(redis_client, name)

        def eval(self, script: str, n: int, *args):  # type: ignore[no-untyped-def]
            out = redis_client.eval(script, n, *args)
            if not self.added:
                self.added = True
                redis_client.hset(old, "u2", 4)
            return out

    assert adopt_name_only_markers(AddsOnce(), topic, tid) == 2
    assert redis_client.exists(old) == 0
    assert redis_client.hgetall(forgotten_key(topic, tid)) == {b"u1": b"3", b"u2": b"4"}
