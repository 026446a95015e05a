"""User lifecycle against the real broker and Redis: key expiry refreshed on every push, and
``diam forget`` removing a user from every namespace and from the dataflow's state."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.keys import generation_key
from serving_cache.namespaces import (
    ONE_SCAN_FROM,
    drop_namespace,
    namespaces_named,
    user_keys_everywhere,
)
from streams.config import FlowConfig
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.conftest import create_topic
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=seq)


def test_user_keys_expire_and_every_push_refreshes_the_expiry(redis_client, namespace) -> None:
    w = RedisWriter(redis_client, namespace, ttl_s=600)
    key = user_key(namespace, "a")
    assert w.write_batch([("a", _uv(5))]) == 1
    assert 590 <= redis_client.ttl(key) <= 600
    redis_client.expire(key, 3)
    assert w.write_batch([("a", _uv(4))]) == 0  # stale: not written, but the user is active
    assert 590 <= redis_client.ttl(key) <= 600
    assert decode_user(redis_client.get(key)).seq == 5
    redis_client.expire(key, 3)
    assert w.write_batch([("a", _uv(6))]) == 1
    assert 590 <= redis_client.ttl(key) <= 600
    assert RedisWriter(redis_client, namespace).write_batch([("b", _uv(1))]) == 1
    assert redis_client.ttl(user_key(namespace, "b")) == -1  # off by default


def _job(stack, topic: str, ns: str, **kw) -> OnlineJob:
    s = stack.settings
    kafka = s.kafka.model_copy(update={"drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=kw.pop("redis", s.redis), flow=FLOW, topic=topic, namespace=ns,
                     bounded=True, **kw)


def _holder() -> LearnerHolder:
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)



def test_the_dataflow_sets_the_ttl_setting(stack, topic, namespace, redis_client) -> None:
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=4, n_events=40, seed=3)))
    redis = stack.settings.redis.model_copy(update={"user_ttl_s": 900})
    started = time.monotonic()
    run_online(_job(stack, topic, namespace, redis=redis), _holder())
    keys = list(redis_client.scan_iter(match=f"diam:{namespace}:u:*"))
    ttls = [redis_client.ttl(k) for k in keys]
    # each key got 900 s when written, during the run: at most the run's length ago (a slow
    # box can take more than the 20 s this allowed before; a key without a TTL reads -1)
    waited = time.monotonic() - started
    assert len(keys) == 4 and all(900 - waited - 1 <= t <= 900 for t in ttls), (ttls, waited)


def test_diam_forget_removes_the_user_everywhere_and_the_dataflow_forgets_them(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    # user ids of this test alone: forget deletes the user in *every* namespace of the server
    tag = namespace[1:9]
    events = [dataclasses.replace(ev, user_id=f"{tag}-{ev.user_id}")
              for ev in click_stream(n_users=6, n_events=240, seed=8)]
    u1, u2 = f"{tag}-user1", f"{tag}-user2"
    payloads = click_payloads(events)
    produce(stack.settings.kafka, topic, payloads[:150])
    rec = tmp_path / "recovery"
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    other = f"{namespace}-other"
    RedisWriter(redis_client, other).write_batch([(u1, _uv(1)), (u2, _uv(1))])
    assert u1 in redis_state(redis_client, namespace)
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url}
    out = subprocess.run([sys.executable, "-m", "diam", "forget", u1, "--topic", topic], env=env,
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert f"{u1}: deleted in 2 namespace(s)" in out, out
    assert u1 not in redis_state(redis_client, namespace) and set(redis_state(redis_client, other)) == {u2}
    # the run resumed from its store reads the tombstone, then u1's later clicks
    produce(stack.settings.kafka, topic, payloads[150:])
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    got = redis_state(redis_client, namespace)
    later = sum(1 for ev in events[150:] if ev.user_id == u1)
    assert later > 0 and decode_user(got[u1]).n == later  # a new state: later clicks only
    others = {u: sum(1 for ev in events if ev.user_id == u) for u in got if u != u1}
    assert all(decode_user(got[u]).n == n for u, n in others.items())
    # a replay of the whole topic forgets u1 at the same offset: the same state
    replay = f"{namespace}-replay"
    run_online(_job(stack, topic, replay), _holder())
    assert redis_state(redis_client, replay) == got
    for ns in (other, replay):
        for k in redis_client.scan_iter(match=f"diam:{ns}:*"):
            redis_client.delete(k)


def test_user_keys_everywhere_finds_the_same_keys_in_one_scan_as_in_one_each(
        namespace, redis_client) -> None:
    """``diam forget`` of many users walks the keyspace once (one SCAN over every user key,
    filtered in Python); it must find exactly what a SCAN per user finds."""
    tag = namespace[1:9]  # user ids of this test alone
    users = [f"{tag}-f{i}" for i in range(6)]
    other = f"{namespace}-other"
    RedisWriter(redis_client, namespace).write_batch([(u, _uv(1)) for u in users])
    RedisWriter(redis_client, other).write_batch([(u, _uv(1)) for u in users[:3]])
    try:
        asked = [*users, users[0], f"{tag}-nobody"]
        assert len(set(asked)) >= ONE_SCAN_FROM  # the one-scan path
        once = user_keys_everywhere(redis_client, asked)
        each = {u: user_keys_everywhere(redis_client, [u])[u] for u in once}  # a SCAN each
        assert list(once) == [*users, f"{tag}-nobody"]
        assert {u: sorted(k) for u, k in once.items()} == {u: sorted(k) for u, k in each.items()}
        assert sorted(once[users[0]]) == sorted([user_key(namespace, users[0]).encode(),
                                                 user_key(other, users[0]).encode()])
        assert once[users[5]] == [user_key(namespace, users[5]).encode()]
        assert once[f"{tag}-nobody"] == []
    finally:
        drop_namespace(redis_client, other)


@pytest.mark.partitions(1)
@pytest.mark.timeout(150)  # without the rule the bounded run waits for ever: fail sooner
def test_a_store_older_than_the_topics_retention_resumes_at_its_oldest_record(
        stack, topic, namespace, redis_client, tmp_path, caplog) -> None:
    """A recovery store whose offset retention has deleted resumes at the oldest record still
    there, with a warning naming the lost offsets; librdkafka's default reset (to the newest)
    would have skipped every record retained since."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    events = click_stream(n_users=4, n_events=120, seed=9)
    payloads = click_payloads(events)
    produce(stack.settings.kafka, topic, payloads[:40])
    rec = tmp_path / "recovery"
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    produce(stack.settings.kafka, topic, payloads[40:])
    admin = AdminClient(stack.settings.kafka.client_config())
    for fut in admin.delete_records([TopicPartition(topic, 0, 70)]).values():
        fut.result(30)  # "retention" removed offsets 40..69, never read by the store's run
    with caplog.at_level(logging.WARNING, logger="streams.kafka_source"):
        run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    assert "resumes at offset 40, but the topic's oldest record is 70" in caplog.text, caplog.text
    assert "records 40..69 are gone; resuming at 70" in caplog.text
    learnt = {u: decode_user(v).n for u, v in redis_state(redis_client, namespace).items()}
    want: dict[str, int] = {}
    for ev in events[:40] + events[70:]:
        want[ev.user_id] = want.get(ev.user_id, 0) + 1
    assert learnt == want


@pytest.mark.partitions(1)
@pytest.mark.timeout(180)
def test_a_store_resumed_on_a_re_created_topic_is_refused_with_why(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """A topic deleted and re-created under the same name starts again at offset 0; a recovery
    store written for the old one resumes past its end. Resuming there (librdkafka restarts at
    the oldest record) would have every stored user skip the new topic's clicks at offsets they
    applied from the old one, without a word: the run refuses at start and says what to do, and
    writes nothing."""
    from confluent_kafka.admin import AdminClient

    events = click_stream(n_users=4, n_events=60, seed=11)
    payloads = click_payloads(events)
    produce(stack.settings.kafka, topic, payloads)
    rec = tmp_path / "recovery"
    run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    before = redis_state(redis_client, namespace)
    assert before
    admin = AdminClient(stack.settings.kafka.client_config())
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
    deadline = time.monotonic() + 60
    while topic in admin.list_topics(timeout=10).topics:  # deleted in the background
        assert time.monotonic() < deadline, "the topic was not deleted"
        time.sleep(0.5)
    create_topic(stack, topic, 1)
    produce(stack.settings.kafka, topic, payloads[:20])
    with pytest.raises(Exception) as err:
        run_online(_job(stack, topic, namespace, recovery_dir=rec), _holder())
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(chain)
    assert "resumes at offset 60, past the topic's end (20)" in text, text
    assert "empty recovery directory" in text
    assert redis_state(redis_client, namespace) == before


@pytest.mark.partitions(1)
@pytest.mark.timeout(240)
def test_idle_users_are_evicted_by_the_topics_clock_and_a_replay_learns_the_same(
        stack, topic, namespace, redis_client) -> None:
    """A tailing run with eviction on, pushes otherwise due in ten minutes. Once a later
    record has moved the partition's clock (its records' timestamps) half a second past a
    user's last click, the user is dropped, and their last push reaches Redis
    (``streams.redis_sink.RELEASED``). Users who click again later start over from the base
    and are dropped again. A bounded replay of the same topic into a fresh namespace, too
    fast for any user to be dropped, writes the very same bytes: idleness is read on the
    topic's clock, not the wall clock."""
    import threading

    from streams.events import ClickEvent, encode_event

    kafka = stack.settings.kafka
    events = click_stream(n_users=5, n_events=60, seed=13)
    first, second = events[:40], events[40:]

    def tick() -> None:
        # a click on an item the base does not know: it moves the clock and is never pushed
        time.sleep(1.0)
        produce(kafka, topic, [(b"tick", encode_event(ClickEvent("tick", "no-such-item", events[-1].ts)))])

    def counts(evs) -> dict[str, int]:  # type: ignore[no-untyped-def]
        out: dict[str, int] = {}
        for ev in evs:
            out[ev.user_id] = out.get(ev.user_id, 0) + 1
        return out

    def wait_for(want: dict[str, int], evicted: int) -> None:
        deadline, got = time.monotonic() + 60, {}
        while time.monotonic() < deadline and (got != want or stats.total().evictions < evicted):
            got = {u: decode_user(v).n for u, v in redis_state(redis_client, namespace).items()}
            time.sleep(0.2)
        assert got == want
        assert stats.total().evictions >= evicted  # (the tick user may be one more)

    flow = FlowConfig(push_every_events=10_000, push_every_ms=600_000, epoch_interval_s=0.2,
                      evict_idle_s=0.5)
    stop = threading.Event()
    job = dataclasses.replace(_job(stack, topic, namespace), flow=flow, bounded=False, stop=stop)
    stats = FlowStats()
    run = threading.Thread(target=run_online, args=(job, _holder(), stats), daemon=True)
    run.start()
    replay_ns = f"{namespace}r"
    try:
        produce(kafka, topic, click_payloads(first))
        tick()
        wait_for(counts(first), len(counts(first)))
        produce(kafka, topic, click_payloads(second))
        tick()
        # the second clicks alone: their users started over, and were dropped again
        wait_for({**counts(first), **counts(second)}, len(counts(first)) + len(counts(second)))
        stop.set()
        run.join(60)
        assert not run.is_alive()
        live = redis_state(redis_client, namespace)
        again = FlowStats()
        run_online(dataclasses.replace(_job(stack, topic, replay_ns), flow=flow), _holder(), again)
        assert redis_state(redis_client, replay_ns) == live
        # every user of both waves (and the tick user) came back after the idle time on the
        # clock: started over in the state (the replay: too fast to drop them), or anew once
        # dropped (the live run); the counters say which
        users = set(counts(events)) | {"tick"}
        back = len(set(counts(first)) & set(counts(second))) + 1
        for s in (stats.total(), again.total()):
            assert s.users - len(users) == back, s  # each return is one more state
            assert s.ended == s.evictions + s.restarts, s  # no tombstones here
        assert again.total().restarts > 0  # the replay's users came back while still held
        # the live run's came back once dropped (only the tick user may still be held)
        assert stats.total().restarts <= 1
    finally:
        stop.set()
        for key in redis_client.scan_iter(match=f"diam:{replay_ns}:*"):
            redis_client.delete(key)


def test_namespaces_named_lists_the_namespaces_of_a_prefix_once_each(namespace, redis_client) -> None:
    """The demo drops its earlier runs' namespaces by prefix: every namespace starting with
    it, each once, sorted, and none that only shares a shorter prefix."""
    runs = [f"{namespace}-run-{i}" for i in (2, 1)]
    near = f"{namespace}-runx"
    for ns in [*runs, near]:
        RedisWriter(redis_client, ns).write_batch([(f"u{i}", _uv(1)) for i in range(3)])
    redis_client.set(generation_key(runs[0]), b"token")
    try:
        assert namespaces_named(redis_client, f"{namespace}-run-") == sorted(runs)
        assert namespaces_named(redis_client, f"{namespace}-run") == sorted([*runs, near])
        assert namespaces_named(redis_client, f"{namespace}-nothing") == []
    finally:
        for ns in [*runs, near]:
            drop_namespace(redis_client, ns)
