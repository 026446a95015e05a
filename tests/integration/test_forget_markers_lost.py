"""``diam forget``'s promise holds after Redis lost its data: the markers' hash is restored
from its durable copy on the compacted markers' topic (``streams.forget_markers``) at every
command's start and in a running dataflow's writer when it finds the key set lost, before
anything is written; ``diam forget --restore-markers`` does it on demand.

Redis "losing its data" is the test's own keys deleted (the markers' hash, the namespace's
keys with its generation marker), not a FLUSHALL of the shared server."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import UserVectors, decode_user, user_key
from serving_cache.keys import FORGOTTEN_HELD, forgotten_key, forgotten_key_by_name
from streams.config import FlowConfig
from streams.forget_markers import forget_markers_of, read_markers, topic_id
from streams.kafka_io import ensure_topic, watermarks
from streams.online import LearnerHolder
from streams.redis_sink import RedisVectorSink
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_config, tiny_learner
from tests.integration.helpers import click_payloads, produce, redis_state, write_tiny_checkpoint

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _settings(stack, topic: str):  # type: ignore[no-untyped-def]
    """The stack's settings with the test's own side topics (deleted with ``topic``), the
    markers' topic among them."""
    kafka = stack.settings.kafka.model_copy(update={
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq",
        "forgotten_topic": f"{topic}.forgotten"})
    return stack.settings.model_copy(update={"kafka": kafka, "online": tiny_config(), "flow": FLOW})


def _lose_markers(client, topic: str, tid: str | None) -> None:  # type: ignore[no-untyped-def]
    client.delete(forgotten_key(topic, tid), forgotten_key_by_name(topic))
    assert not client.exists(forgotten_key(topic, tid))


def _forget(s, topic: str, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["forget", *args, "--topic", topic], obj={"settings": s})
    assert r.exit_code == 0, r.output
    return r.output


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


@pytest.fixture
def cleanup(redis_client, topic):  # type: ignore[no-untyped-def]
    keys: list[str] = [forgotten_key_by_name(topic)]
    yield keys
    for k in keys:
        for key in redis_client.scan_iter(match=k):
            redis_client.delete(key)


@pytest.mark.partitions(1)
def test_a_replay_before_the_tombstone_after_redis_lost_the_markers_writes_nothing_of_the_user(
        stack, topic, namespace, redis_client, cleanup, tmp_path) -> None:
    s = _settings(stack, topic)
    tag = namespace[1:9]  # user ids of this test alone: forget deletes in every namespace
    events = [dataclasses.replace(ev, user_id=f"{tag}-{ev.user_id}")
              for ev in click_stream(n_users=6, n_events=120, seed=8)]
    u1 = f"{tag}-user1"
    produce(s.kafka, topic, click_payloads(events))
    learner = tiny_learner()
    run_online(OnlineJob(kafka=s.kafka, redis=s.redis, flow=FLOW, topic=topic,
                         namespace=namespace, bounded=True), LearnerHolder(learner, learner.base.version))
    assert u1 in redis_state(redis_client, namespace)
    tid = topic_id(s.kafka, topic)
    cleanup.append(forgotten_key(topic, tid))
    out = _forget(s, topic, u1)
    assert f"{u1}: deleted in 1 namespace(s)" in out, out
    tomb = watermarks(s.kafka, topic)[0][1] - 1
    assert read_markers(s.kafka, topic, tid) == {u1: tomb}  # the durable copy
    _lose_markers(redis_client, topic, tid)
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    replay = f"{namespace}-r"
    cleanup.append(f"diam:{replay}:*")
    res = CliRunner().invoke(main, ["replay", "--topic", topic, "--to", f"0:{tomb}",
                                    "--namespace", replay, "--checkpoint", str(ckpt),
                                    "--no-progress", "--json"], obj={"settings": s})
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    got = redis_state(redis_client, replay)
    assert u1 not in got, "a replay after Redis lost the markers wrote the forgotten user back"
    # the restored markers are the ones the replay skips u1's clicks by (nothing to refuse)
    below = sum(1 for ev in events if ev.user_id == u1)
    assert len(got) == 5 and (report["forgotten_clicks"], report["forgotten_pushes"]) == (below, 0)
    assert int(redis_client.hget(forgotten_key(topic, tid), u1)) == tomb


@pytest.mark.partitions(1)
def test_a_running_writer_that_finds_the_key_set_lost_restores_the_markers_before_pushing_again(
        stack, topic, namespace, redis_client, cleanup) -> None:
    s = _settings(stack, topic)
    tag = namespace[1:9]
    a, b = f"{tag}-a", f"{tag}-b"
    produce(s.kafka, topic, click_payloads(click_stream(n_users=2, n_events=10, seed=1)))
    tid = topic_id(s.kafka, topic)
    cleanup.append(forgotten_key(topic, tid))
    forget_markers_of(s.kafka, redis_client, topic)  # the run's start: the markers' hash held
    sink = RedisVectorSink(s.redis, namespace, check_every_s=0.0, topic=topic, topic_id=tid,
                           markers_from=s.kafka)
    part = sink.build("vectors", 0, 1)
    try:
        part.write_batch([(a, _uv(5)), (b, _uv(5))])  # held by the writer, as a dataflow's users
        part._q.join()
        assert set(redis_state(redis_client, namespace)) == {a, b}
        _forget(s, topic, a)  # a dataflow behind the tombstone still holds a's state
        tomb = watermarks(s.kafka, topic)[0][1] - 1
        assert tomb == 10 and a not in redis_state(redis_client, namespace)
        # Redis loses the key set: the namespace's keys (its generation marker) and the markers,
        # at once (one transaction), as a restarted server loses them: the writer's idle check
        # (check_every_s 0) runs all along, and losses it finds apart are two re-pushes
        lost = [*redis_client.scan_iter(match=f"diam:{namespace}:*"),
                forgotten_key(topic, tid), forgotten_key_by_name(topic)]
        redis_client.pipeline(transaction=True).delete(*lost).execute()
        assert not redis_client.exists(forgotten_key(topic, tid))
        part.write_batch([(b, _uv(6))])  # the check finds the loss and pushes a and b again
        part._q.join()
        assert part.error is None and part.repushed == 2
        got = redis_state(redis_client, namespace)
        assert a not in got, "the re-push after the loss wrote the forgotten user back"
        assert decode_user(got[b]).seq == 6
        assert int(redis_client.hget(forgotten_key(topic, tid), a)) == tomb
    finally:
        part.close()
    assert redis_client.get(user_key(namespace, a)) is None


@pytest.mark.partitions(1)
def test_restore_markers_on_demand_keeps_a_forget_made_during_the_loss_and_fills_the_copy(
        stack, topic, redis_client, cleanup) -> None:
    s = _settings(stack, topic)
    tid = topic_id(s.kafka, topic)
    key = forgotten_key(topic, tid)
    cleanup.append(key)
    x0, x1, x2 = (f"{topic[-8:]}-x{i}" for i in range(3))  # forget deletes in every namespace
    produce(s.kafka, topic, click_payloads(click_stream(n_users=2, n_events=4, seed=1)))
    _forget(s, topic, x1)
    _lose_markers(redis_client, topic, tid)
    out = _forget(s, topic, x2)  # during the loss: its start restores x1 first
    assert "restored 1 forget marker(s)" in out, out
    want = {x1: 4, x2: 5}
    assert {k.decode(): int(v) for k, v in redis_client.hgetall(key).items()} == {
        **want, FORGOTTEN_HELD: 0}
    _lose_markers(redis_client, topic, tid)
    redis_client.hset(key, x0, 2)  # a marker Redis alone holds (an earlier release's)
    out = _forget(s, topic, "--restore-markers")
    assert "restored 2 forget marker(s)" in out and "1 marker(s) Redis held were written" in out
    assert {k.decode(): int(v) for k, v in redis_client.hgetall(key).items()} == {
        **want, x0: 2, FORGOTTEN_HELD: 0}
    assert read_markers(s.kafka, topic, tid) == {**want, x0: 2}
    out = _forget(s, topic, "--restore-markers")  # idempotent
    assert "agree: nothing to restore" in out, out
    # a higher offset in Redis is never lowered by the copy
    redis_client.hset(key, x1, 9)
    _forget(s, topic, "--restore-markers")
    assert int(redis_client.hget(key, x1)) == 9 and read_markers(s.kafka, topic, tid)[x1] == 9


@pytest.mark.partitions(1)
def test_a_markers_topic_that_is_not_compacted_is_refused(stack, topic, redis_client) -> None:
    s = _settings(stack, topic)
    ensure_topic(s.kafka, s.kafka.forgotten_topic, partitions=1)  # cleanup.policy=delete
    r = CliRunner().invoke(main, ["forget", f"{topic[-8:]}-y1", "--topic", topic], obj={"settings": s})
    assert r.exit_code == 1 and "cleanup.policy=delete" in r.output, r.output
    assert "no tombstone was written" in r.output
    assert watermarks(s.kafka, topic)[0][1] == 0
