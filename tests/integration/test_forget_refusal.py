"""``diam forget``'s promise against the real broker and Redis: once it returns, no push learnt
from a user's clicks before their tombstone reaches Redis, in any namespace (a run resumed from
its recovery store, a run behind the tombstone, a replay of a range that ends before it), while
the user's clicks after the forget are learnt and pushed as a new user's."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.forgotten import record_markers
from serving_cache.keys import forgotten_key
from streams.config import FlowConfig
from streams.forget_markers import topic_id
from streams.kafka_io import watermarks
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_config, tiny_learner
from tests.integration.helpers import click_payloads, produce, redis_state, write_tiny_checkpoint

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture
def marks(stack, redis_client, topic) -> Iterator[str]:
    """The topic's hash of forgotten users, removed after the test."""
    key = forgotten_key(topic, topic_id(stack.settings.kafka, topic))
    yield key
    redis_client.delete(key)


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


@pytest.mark.parametrize("ttl_s", [None, 600])
def test_the_writer_refuses_a_push_learnt_before_the_users_tombstone(
        stack, redis_client, namespace, topic, marks, ttl_s) -> None:
    tid = topic_id(stack.settings.kafka, topic)
    w = RedisWriter(redis_client, namespace, keys_per_call=2, ttl_s=ttl_s, topic=topic, topic_id=tid)
    assert w.write_batch([("a", _uv(5)), ("b", _uv(5))]) == 2  # no hash yet: plain writes
    redis_client.hset(marks, mapping={"a": 10, "c": 3})
    redis_client.delete(user_key(namespace, "a"))
    # a: seq 9 is below its tombstone (10): refused; b: never forgotten; c: after its tombstone
    assert w.write_batch([("a", _uv(9)), ("b", _uv(6)), ("c", _uv(4)), ("d", _uv(1))]) == 3
    assert (w.last_refused, w.last_skipped) == (1, [])
    assert redis_client.get(user_key(namespace, "a")) is None
    assert w.write_batch([("b", _uv(6)), ("a", _uv(11))]) == 1  # b stale; a clicked again
    assert (w.last_refused, [u for u, _ in w.last_skipped]) == (0, ["b"])
    assert decode_user(redis_client.get(user_key(namespace, "a"))).seq == 11
    # a writer of another topic (or none) is not bound by this topic's tombstones
    other = RedisWriter(redis_client, namespace, topic=f"{topic}.other", topic_id=tid)
    assert other.write_batch([("c", _uv(2))]) == 0 and other.last_refused == 0  # stale, not refused
    # nor is a writer of a topic of the same name with another id (deleted and created again)
    again = RedisWriter(redis_client, namespace, topic=topic, topic_id="A" * 21 + "Q")
    redis_client.delete(user_key(namespace, "a"))
    assert again.write_batch([("a", _uv(9))]) == 1 and again.last_refused == 0


def _job(stack, topic: str, ns: str, **kw) -> OnlineJob:
    s = stack.settings
    kafka = s.kafka.model_copy(update={"drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=s.redis, flow=FLOW, topic=topic, namespace=ns, bounded=True, **kw)


def _holder() -> LearnerHolder:
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)


def _events(namespace: str, n_events: int = 240):  # type: ignore[no-untyped-def]
    # user ids of this test alone: forget deletes the user in *every* namespace of the server
    tag = namespace[1:9]
    return [dataclasses.replace(ev, user_id=f"{tag}-{ev.user_id}")
            for ev in click_stream(n_users=6, n_events=n_events, seed=8)], f"{tag}-user1"


def _forget(stack, topic: str, user: str) -> int:
    """``diam forget USER --topic TOPIC``; the tombstone's offset (the topic has one partition)."""
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url}
    subprocess.run([sys.executable, "-m", "diam", "forget", user, "--topic", topic], env=env,
                   check=True, capture_output=True, text=True, timeout=120)
    return watermarks(stack.settings.kafka, topic)[0][1] - 1


def _first_run(stack, topic: str, namespace: str, rec, n_first: int):  # type: ignore[no-untyped-def]
    """The test's clicks, their payloads and the user it forgets, with the first ``n_first``
    produced and learnt by a run keeping its recovery store in ``rec`` (the run a forget
    follows)."""
    events, u1 = _events(namespace)
    payloads = click_payloads(events)
    produce(stack.settings.kafka, topic, payloads[:n_first])
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    return events, payloads, u1


@pytest.mark.partitions(1)
def test_a_run_resumed_after_a_forget_does_not_push_the_forgotten_user_back(
        stack, topic, namespace, redis_client, marks, tmp_path) -> None:
    rec = tmp_path / "recovery"
    events, payloads, u1 = _first_run(stack, topic, namespace, rec, 150)
    before = redis_state(redis_client, namespace)
    assert u1 in before
    tomb = _forget(stack, topic, u1)
    assert int(redis_client.hget(marks, u1)) == tomb
    # the same run started again, up to the tombstone: every resumed user is pushed at once
    stats = FlowStats()
    run_online(_job(stack, topic, namespace, recovery_dir=rec, end={0: tomb}), _holder(), stats)
    got = redis_state(redis_client, namespace)
    assert u1 not in got, "the resumed run wrote the forgotten user back"
    assert got == {u: v for u, v in before.items() if u != u1}
    # the markers drop u1's resumed state at the start: nothing of it is pushed to be refused
    assert stats.as_dict()["forgotten_pushes"] == 0 and stats.as_dict()["resumed"] == len(before)
    # on through the tombstone: u1's later clicks make a new user, pushed
    produce(stack.settings.kafka, topic, payloads[150:])
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    later = sum(1 for ev in events[150:] if ev.user_id == u1)
    assert later > 0 and decode_user(redis_state(redis_client, namespace)[u1]).n == later


@pytest.mark.partitions(1)
def test_a_user_forgotten_while_the_run_was_down_is_not_resumed_when_the_tombstone_is_gone(
        stack, topic, namespace, redis_client, marks, tmp_path) -> None:
    """The tombstone may never reach a resumed run (the topic's retention deleted it, or the
    run resumes after it): the markers alone drop the state learnt before it, so the user's
    later clicks make a new user, not one that still holds the forgotten clicks."""
    rec = tmp_path / "recovery"
    events, payloads, u1 = _first_run(stack, topic, namespace, rec, 150)
    assert u1 in redis_state(redis_client, namespace)
    # what diam forget records, without its tombstone on the topic (retention took it)
    record_markers(redis_client, topic, topic_id(stack.settings.kafka, topic), {u1: 150})
    produce(stack.settings.kafka, topic, payloads[150:])
    stats = FlowStats()
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder(), stats)
    later = sum(1 for ev in events[150:] if ev.user_id == u1)
    got = redis_state(redis_client, namespace)
    assert later > 0 and decode_user(got[u1]).n == later, "the forgotten clicks came back"
    assert len(got) == 6 and stats.as_dict()["forgotten_pushes"] == 0


@pytest.mark.partitions(1)
def test_a_run_behind_the_tombstone_does_not_push_the_forgotten_users_earlier_clicks(
        stack, topic, namespace, redis_client, marks, tmp_path) -> None:
    rec = tmp_path / "recovery"
    events, payloads, u1 = _first_run(stack, topic, namespace, rec, 100)
    assert u1 in redis_state(redis_client, namespace)
    produce(stack.settings.kafka, topic, payloads[100:])  # more of u1's clicks, not read yet
    assert any(ev.user_id == u1 for ev in events[100:])
    tomb = _forget(stack, topic, u1)
    # the run goes on reading the clicks before the tombstone: it learns u1's and pushes them
    stats = FlowStats()
    run_online(_job(stack, topic, namespace, recovery_dir=rec, end={0: tomb}), _holder(), stats)
    got = redis_state(redis_client, namespace)
    assert u1 not in got, "a run behind the tombstone wrote the forgotten user back"
    # its resumed state is dropped at the start (the markers): nothing pushed to be refused
    assert len(got) == 5 and stats.as_dict()["forgotten_pushes"] == 0
    # restarted behind the tombstone, it learns none of u1's clicks below it (the markers
    # are read at each start: streams.online.skip_forgotten)
    assert stats.as_dict()["forgotten_clicks"] == sum(1 for ev in events[100:] if ev.user_id == u1)


@pytest.mark.partitions(1)
def test_a_replay_of_a_range_before_the_tombstone_does_not_recreate_the_user(
        stack, topic, namespace, redis_client, marks, tmp_path) -> None:
    events, u1 = _events(namespace, n_events=120)
    produce(stack.settings.kafka, topic, click_payloads(events))
    run_online(_job(stack, topic, namespace), _holder())
    tomb = _forget(stack, topic, u1)
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={
            "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"}),
        "online": tiny_config(), "flow": FLOW})
    replays = [f"{namespace}-replay", f"{namespace}-replay2"]
    try:
        res = CliRunner().invoke(main, ["replay", "--topic", topic, "--to", f"0:{tomb}",
                                        "--namespace", replays[0], "--checkpoint", str(ckpt),
                                        "--no-progress", "--json"], obj={"settings": s})
        assert res.exit_code == 0, res.output
        report = json.loads(res.output.strip().splitlines()[-1])
        got = redis_state(redis_client, replays[0])
        assert u1 not in got, "a replay ending before the tombstone recreated the forgotten user"
        # the replay reads the markers at its start: it learns none of u1's clicks (nothing
        # for the writer to refuse; streams.online.skip_forgotten)
        below = sum(1 for ev in events if ev.user_id == u1)
        assert len(got) == 5 and (report["forgotten_clicks"], report["forgotten_pushes"]) == (below, 0)
        res = CliRunner().invoke(main, ["replay", "--topic", topic, "--to", f"0:{tomb}",
                                        "--namespace", replays[1], "--checkpoint", str(ckpt),
                                        "--no-progress"], obj={"settings": s})
        assert res.exit_code == 0, res.output
        assert f"({below:,} skipped as forgotten)" in res.output, res.output
    finally:
        for ns in replays:
            for k in redis_client.scan_iter(match=f"diam:{ns}:*"):
                redis_client.delete(k)
