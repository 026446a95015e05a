"""The online dataflow against the real Kafka broker and Redis server of the local stack."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest

from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from streams.config import FlowConfig
from streams.kafka_io import consume_all, ensure_topic
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.helpers import (
    click_payloads,
    expected_from_topic,
    kill_then_resume,
    produce,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _job(stack, topic: str, ns: str, **kw) -> OnlineJob:
    # Side outputs go to the test's own topics, never to the live diam.drift / diam.deadletter.
    s = stack.settings
    kafka = s.kafka.model_copy(update={"drift_topic": f"{topic}.drift",
                                       "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=s.redis, flow=FLOW, topic=topic, namespace=ns,
                     bounded=True, **kw)


def _holder():
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)


def test_events_in_exact_state_out(stack, topic, namespace, redis_client) -> None:
    events = click_stream(n_users=9, n_events=300, seed=11)
    produce(stack.settings.kafka, topic, click_payloads(events))
    stats = FlowStats()
    run_online(_job(stack, topic, namespace), _holder(), stats)
    want = expected_from_topic(stack.settings.kafka, topic, tiny_learner())
    got = redis_state(redis_client, namespace)
    assert set(got) == set(want)
    for user, st in want.items():
        uv = decode_user(got[user])
        assert (uv.seq, uv.n, uv.k) == (st.seq, st.n_events, st.vectors().shape[0])
        assert np.array_equal(uv.vecs, st.vectors().astype(np.float16).astype(np.float32))
    assert stats.as_dict()["valid"] == 300


def test_malformed_events_are_dead_lettered_and_valid_ones_still_arrive(stack, topic, namespace,
                                                                        redis_client) -> None:
    dlq = f"{topic}.dlq"
    ensure_topic(stack.settings.kafka, dlq, partitions=1)
    kafka = stack.settings.kafka.model_copy(update={"deadletter_topic": dlq})
    good = click_stream(n_users=3, n_events=30, seed=2)
    bad = [
        (b"u0", b"\xc1\xc1 not an event"),
        (b"u0", json.dumps({"user_id": "u0", "item_id": 3}).encode()),
        (b"u0", json.dumps({"user_id": "u:0", "item_id": 3, "ts": 880000000000}).encode()),
        (b"u0", b"x" * 20_000),
        # an int no 64-bit field holds (was learnt, then unencodable: OverflowError)
        (b"u0", json.dumps({"user_id": "u0", "item_id": 3, "ts": 880000000000,
                            "dwell_ms": 10**40}).encode()),
    ]
    payloads = click_payloads(good[:10]) + bad[:2] + click_payloads(good[10:20]) + bad[2:] \
        + click_payloads(good[20:])
    produce(kafka, topic, payloads)
    job = _job(stack, topic, namespace)
    job.kafka = kafka.model_copy(update={"drift_topic": f"{topic}.drift"})
    run_online(job, _holder())

    dead = list(consume_all(kafka, dlq))
    got = sorted(_reason_of(h) for h in _headers(kafka, dlq))
    assert got == [
        "dwell_ms: 10000000... (41 digits) exceeds the limit of 86400000 (a day in ms)",
        "payload: 20000 bytes exceeds the limit of 16384",
        "ts: missing",
        "undecodable: neither msgpack nor JSON",
        "user_id: contains ':' (allowed: letters and digits and _ . @ + - and the equals sign)",
    ]
    assert {r.value for r in dead} == {v for _, v in bad}
    users = {ev.user_id for ev in good}
    stored = redis_state(redis_client, namespace)
    assert set(stored) == users
    assert sum(decode_user(v).n for v in stored.values()) == len(good)


def test_a_record_too_large_to_dead_letter_whole_and_an_unkeyed_click_stop_nobody(
        stack, topic, namespace, redis_client) -> None:
    """Two records that used to break the dataflow, on the real broker: a value near the
    broker's 1 MiB limit (its dead letter, produced whole, exceeded the producer's 1,000,000
    bytes and failed the run on every restart) and a valid click without a key (accepted, then
    dropped by the learner's offset check when a keyed click of the same user on another
    partition had a higher offset). Both are dead-lettered with their reason, the big one cut
    to ``deadletter_max_bytes`` and saying so, and every user's keyed clicks are learnt."""
    from confluent_kafka import Producer

    from streams.events import encode_event

    dlq = f"{topic}.dlq"
    ensure_topic(stack.settings.kafka, dlq, partitions=1)
    kafka = stack.settings.kafka.model_copy(update={"deadletter_topic": dlq})
    good = click_stream(n_users=3, n_events=30, seed=4)
    produce(kafka, topic, click_payloads(good[:15]))
    big = b"\x00" * 1_010_000
    p = Producer({**kafka.client_config(), "message.max.bytes": 1_048_000})
    p.produce(topic, key=b"user1", value=big)
    assert p.flush(30) == 0
    unkeyed = encode_event(dataclasses.replace(good[0], ts=good[0].ts + 1))
    produce(kafka, topic, [(None, unkeyed)])
    produce(kafka, topic, click_payloads(good[15:]))
    job = _job(stack, topic, namespace)
    job.kafka = kafka.model_copy(update={"drift_topic": f"{topic}.drift"})
    run_online(job, _holder())

    heads = _headers(kafka, dlq)
    assert sorted(_reason_of(h) for h in heads) == [
        "key: missing (events must be keyed by user_id so that a user's clicks stay in order)",
        f"payload: {len(big)} bytes exceeds the limit of {FLOW.max_event_bytes}",
    ]
    dead = {r.key: r.value for r in consume_all(kafka, dlq)}
    assert dead[None] == unkeyed
    assert dead[b"user1"] == big[:FLOW.deadletter_max_bytes]
    cut = [h for h in heads if "diam.truncated" in h]
    assert len(cut) == 1 and cut[0]["diam.truncated"] == f"key 5 bytes, value {len(big)} bytes".encode()
    # and `diam deadletters` (read_deadletters) says which dead letter was cut, from what
    from streams.kafka_io import read_deadletters

    assert [r["truncated"] for r in read_deadletters(kafka, dlq) if r["truncated"]] == [
        f"key 5 bytes, value {len(big)} bytes"]
    stored = redis_state(redis_client, namespace)
    assert set(stored) == {ev.user_id for ev in good}
    assert sum(decode_user(v).n for v in stored.values()) == len(good)


def _headers(kafka, topic):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**kafka.client_config(), "group.id": "t", "enable.auto.commit": "false"})
    c.assign([TopicPartition(topic, 0, 0)])
    out, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline:
        msgs = c.consume(100, 0.5)
        if not msgs and out:
            break
        out.extend(dict(m.headers() or []) for m in msgs if m.error() is None)
    c.close()
    return out


def _reason_of(h: dict) -> str:
    return h["diam.reason"].decode()


def test_stale_write_never_overwrites_newer(redis_client, namespace) -> None:
    w = RedisWriter(redis_client, namespace)

    def uv(seq: int) -> UserVectors:
        return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2,
                           vecs=np.full((1, 2), seq, np.float32), ts=seq, n=seq)

    assert w.write_batch([("a", uv(10)), ("a", uv(3)), ("b", uv(1))]) == 2
    assert w.last_skipped == []  # a's older entry never left the batch
    assert w.write_batch([("a", uv(9)), ("b", uv(1))]) == 0  # older and equal: skipped
    assert w.last_skipped == [("a", uv(9)), ("b", uv(1))]  # which entries, as sent
    assert decode_user(redis_client.get(user_key(namespace, "a"))).seq == 10
    redis_client.script_flush()  # a restarted Redis has no cached script
    assert w.write_batch([("a", uv(11)), ("b", uv(1))]) == 1
    assert w.last_skipped == []  # sent again: b's skip is not told from a retry's (not counted)
    assert decode_user(redis_client.get(user_key(namespace, "a"))).seq == 11


@pytest.mark.parametrize("keys_per_call", [1, 3, 100])
def test_write_if_newer_across_script_calls(redis_client, namespace, keys_per_call) -> None:
    # one script call covers up to keys_per_call users; stale and fresh writes mixed across
    # the calls of one pipeline each get their own verdict
    w = RedisWriter(redis_client, namespace, keys_per_call=keys_per_call)

    def uv(seq: int) -> UserVectors:
        return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2,
                           vecs=np.full((1, 2), seq, np.float32), ts=seq, n=seq)

    assert w.write_batch([(f"u{i}", uv(10 + i)) for i in range(8)]) == 8
    batch = [(f"u{i}", uv(10 + i + (1 if i % 3 == 0 else -1))) for i in range(8)] + [("new", uv(1))]
    assert w.write_batch(batch) == 1 + sum(1 for i in range(8) if i % 3 == 0)
    # the skipped entries are told apart across the calls of the pipeline
    assert w.last_skipped == [e for i, e in enumerate(batch[:8]) if i % 3 != 0]
    for i in range(8):
        want = 11 + i if i % 3 == 0 else 10 + i
        got = decode_user(redis_client.get(user_key(namespace, f"u{i}")))
        assert (got.seq, float(got.vecs[0, 0])) == (want, float(want))
    assert decode_user(redis_client.get(user_key(namespace, "new"))).seq == 1
    with pytest.raises(ValueError, match="keys_per_call"):
        RedisWriter(redis_client, namespace, keys_per_call=0)


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40 + 5])
def test_write_if_newer_reads_every_seq_encoding(redis_client, namespace, seq) -> None:
    # the script reads seq straight from the codec's bytes (fixint and uint8..uint64 forms)
    w = RedisWriter(redis_client, namespace)

    def uv(q: int) -> UserVectors:
        return UserVectors(seq=q, model="m", k=1, d=0.5, dim=2, vecs=np.full((1, 2), 1, np.float32), ts=q)

    assert w.write_batch([("a", uv(seq))]) == 1
    if seq > 0:
        assert w.write_batch([("a", uv(seq - 1))]) == 0
    assert w.write_batch([("a", uv(seq))]) == 0
    assert w.write_batch([("a", uv(seq + 1))]) == 1
    assert decode_user(redis_client.get(user_key(namespace, "a"))).seq == seq + 1


def test_write_if_newer_respects_values_of_another_layout(redis_client, namespace) -> None:
    # a value whose map does not start {v, seq} (another writer, an older codec) still guards
    w = RedisWriter(redis_client, namespace)
    body = {"seq": 1000, "v": 1, "model": b"m", "k": 1, "d": 0.5, "dim": 2, "vecs": b"\0" * 4, "ts": 1}
    redis_client.set(user_key(namespace, "a"), msgpack.packb(body, use_bin_type=False))
    uv = UserVectors(seq=999, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1)
    assert w.write_batch([("a", uv)]) == 0
    assert w.write_batch([("a", dataclasses.replace(uv, seq=1001))]) == 1
    redis_client.set(user_key(namespace, "b"), b"not msgpack")  # unparseable: overwritten
    assert w.write_batch([("b", uv)]) == 1


def test_one_and_two_workers_same_redis_state(stack, topic, namespace, redis_client) -> None:
    events = click_stream(n_users=12, n_events=240, seed=4)
    produce(stack.settings.kafka, topic, click_payloads(events))
    one = _holder()
    run_online(_job(stack, topic, namespace), one)
    ns2 = f"{namespace}-w2"
    try:
        two = _holder()
        run_online(_job(stack, topic, ns2, workers=2), two)
        a, b = redis_state(redis_client, namespace), redis_state(redis_client, ns2)
        assert a and a == b
        # the two workers share one learner, whose compiled calls then release the GIL
        assert two.learner.release_gil and not one.learner.release_gil
    finally:
        for k in redis_client.scan_iter(match=f"diam:{ns2}:*"):
            redis_client.delete(k)


def test_partition_split_processes_give_the_one_process_state(stack, topic, namespace,
                                                              redis_client) -> None:
    # Scaling out without a Bytewax cluster: independent runs over disjoint partitions.
    events = click_stream(n_users=12, n_events=240, seed=6)
    produce(stack.settings.kafka, topic, click_payloads(events))
    run_online(_job(stack, topic, namespace), _holder())
    from streams.kafka_io import partition_ids

    parts = partition_ids(stack.settings.kafka, topic)
    assert len(parts) >= 2, "the test topic needs two partitions or more"
    ns2 = f"{namespace}-split"
    try:
        half = len(parts) // 2
        for subset in (parts[:half], parts[half:]):
            run_online(_job(stack, topic, ns2, partitions=subset), _holder())
        a, b = redis_state(redis_client, namespace), redis_state(redis_client, ns2)
        assert a and a == b
    finally:
        for k in redis_client.scan_iter(match=f"diam:{ns2}:*"):
            redis_client.delete(k)


def test_process_kill_and_resume_gives_the_uninterrupted_state(stack, topic, namespace, redis_client,
                                                               tmp_path) -> None:
    # enough events that the run is still going a moment after its first write (the dataflow
    # takes ~0.3 s for 4000 events since the learner is compiled; at 16000 a fast box could
    # finish before the kill, three tries running)
    events = click_stream(n_users=20, n_events=40000, seed=9)
    produce(stack.settings.kafka, topic, click_payloads(events))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic, {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.1", "DIAM_FLOW_BATCH_SIZE": "50"})
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt),
           "--bounded"]
    # Uninterrupted reference run.
    subprocess.run(cmd + ["--namespace", namespace], env=env, check=True, timeout=180,
                   capture_output=True)
    want = redis_state(redis_client, namespace)
    # Killed run: SIGKILL once it has written something, then resume from the recovery store.
    try:
        partial, got = kill_then_resume(cmd, env, redis_client, namespace, tmp_path, want)
        assert partial != want, "the kill came too late to interrupt anything (5 tries)"
        assert got == want, "the resumed run's Redis state differs from the uninterrupted run's"
    finally:
        for k in redis_client.scan_iter(match=f"diam:{namespace}-kill*"):
            redis_client.delete(k)


def test_a_second_run_into_the_same_namespace_counts_the_pushes_redis_kept_out(
        stack, topic, namespace, redis_client) -> None:
    # The same events again into a namespace that holds them: every push is not newer than
    # what Redis holds, and the run says so (the summary's "kept out by Redis as not newer",
    # diam_flow_redis_stale_pushes_total) instead of reporting the pushes as if written.
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=12, n_events=300, seed=4)))
    first, again = FlowStats(), FlowStats()
    run_online(_job(stack, topic, namespace), _holder(), first)
    want = redis_state(redis_client, namespace)
    run_online(_job(stack, topic, namespace), _holder(), again)
    a, b = first.as_dict(), again.as_dict()
    assert a["pushes"] > 0 and a["stale_pushes"] == 0
    # every push is kept out (each user's last one carries the first run's seq, the others are
    # older); the writer merges a user's pushes queued meanwhile into one write, counted once
    assert b["pushes"] == a["pushes"] and len(want) <= b["stale_pushes"] <= b["pushes"]
    assert redis_state(redis_client, namespace) == want


def test_runs_into_two_namespaces_mark_their_dead_letters_and_drift_events(
        stack, topic, redis_client) -> None:
    """Two runs of one topic into two namespaces share the dead-letter and drift topics: each
    record says its run's namespace, so `diam deadletters --namespace`, the user view and the
    plots read one run's, and one bad record refused by both runs is two dead letters, not a
    resumed run's copy."""
    from streams.kafka_io import read_deadletters
    from streams.tail import drift_bodies, user_drift_events

    dlq, drift = f"{topic}.dlq", f"{topic}.drift"
    for t in (dlq, drift):
        ensure_topic(stack.settings.kafka, t, partitions=1)
    events = click_stream(n_users=6, n_events=400, seed=4)
    produce(stack.settings.kafka, topic, click_payloads(events[:200]) + [(b"u0", b"\xc1 bad")]
            + click_payloads(events[200:]))
    spaces = [f"{topic}-a", f"{topic}-b"]
    try:
        for ns in spaces:
            run_online(_job(stack, topic, ns), _holder())
        kafka = stack.settings.kafka
        every = read_deadletters(kafka, dlq)
        assert sorted(str(r["namespace"]) for r in every) == spaces
        assert all(r["copies"] == 1 for r in every)
        for ns in spaces:
            (mine,) = read_deadletters(kafka, dlq, namespace=ns)
            assert mine["namespace"] == ns and mine["value"] == b"\xc1 bad"
        bodies = {ns: drift_bodies(kafka, 10_000, drift, namespace=ns).events for ns in spaces}
        assert bodies[spaces[0]], "the tiny learner made no drift events: nothing was checked"
        for ns, got in bodies.items():
            assert {b["namespace"] for b in got} == {ns}
        # the same events in, the same drift events out: only the namespace differs
        strip = [sorted(json.dumps({k: v for k, v in b.items() if k != "namespace"},
                                    sort_keys=True) for b in bodies[ns]) for ns in spaces]
        assert strip[0] == strip[1]
        user = str(bodies[spaces[0]][0]["user_id"])
        assert {b["namespace"] for b in user_drift_events(kafka, user, 100, drift,
                                                           namespace=spaces[1])} == {spaces[1]}
    finally:
        for ns in spaces:
            for k in redis_client.scan_iter(f"diam:{ns}:*"):
                redis_client.delete(k)


@pytest.mark.partitions(1)
def test_a_re_created_topic_s_reject_is_listed_not_called_a_copy(stack, topic, namespace) -> None:
    """A topic deleted and re-created under its name numbers its records from 0 again: the new
    topic's reject at offset 0 is another record than the old one's, told apart by the topic id
    the run writes in the dead letter (``diam.topic_id``), not counted as its repeated copy."""
    from streams.forget_markers import topic_id
    from streams.kafka_io import delete_topics, read_deadletters

    kafka = stack.settings.kafka
    for t in (f"{topic}.dlq", f"{topic}.drift"):
        ensure_topic(kafka, t, partitions=1)
    ids = []
    for bad in (b"\xc1 old", b"\xc1 new"):
        if ids:  # the second time on a topic of the same name, re-created
            delete_topics(kafka, [topic])
            ensure_topic(kafka, topic, partitions=1)
        produce(kafka, topic, [(b"u0", bad)])
        run_online(_job(stack, topic, namespace), _holder())
        ids.append(topic_id(kafka, topic))
    assert ids[0] is not None and ids[0] != ids[1]
    got = read_deadletters(kafka, f"{topic}.dlq", namespace=namespace)
    assert [(r["offset"], r["value"], r["copies"]) for r in got] == [
        (0, b"\xc1 old", 1), (0, b"\xc1 new", 1)]
    assert [r.get("topic_id") for r in got] == ids


@pytest.mark.partitions(1)
def test_a_rejected_record_s_future_timestamp_does_not_make_users_idle(
        stack, new_topic, redis_client) -> None:
    """With eviction on, the partition's event clock (``RawRecord.clock_ms``) decides idleness:
    a garbage record stamped 50 minutes ahead (the broker accepts up to an hour) is refused, so
    it must not move the clock, or every user of the partition would start over at their next
    click. The same clicks with the garbage record stamped as its neighbours: the same bytes."""
    from confluent_kafka import Producer

    flow = FLOW.model_copy(update={"evict_idle_s": 1800.0})
    payloads = click_payloads(click_stream(n_users=6, n_events=400, seed=9))
    now = int(time.time() * 1000)
    spaces, topics = [], []
    for ahead_ms in (50 * 60_000, 0):
        topic = new_topic(1)
        p = Producer(stack.settings.kafka.client_config())
        for i, (key, value) in enumerate(payloads[:200] + [(b"u0", b"\xc1 bad")] + payloads[200:]):
            p.produce(topic, key=key, value=value, timestamp=now + (ahead_ms if i == 200 else 0))
        assert p.flush(30) == 0
        for side in (f"{topic}.dlq", f"{topic}.drift"):
            ensure_topic(stack.settings.kafka, side, partitions=1)
        ns = f"{topic}-ns"
        stats = FlowStats()
        run_online(dataclasses.replace(_job(stack, topic, ns), flow=flow), _holder(), stats)
        assert stats.as_dict()["rejected"] == 1
        spaces.append(ns)
        topics.append(topic)
    try:
        got = [redis_state(redis_client, ns) for ns in spaces]
        assert len(got[0]) == 6 and got[0] == got[1]
    finally:
        for ns in spaces:
            for k in redis_client.scan_iter(match=f"diam:{ns}:*"):
                redis_client.delete(k)
