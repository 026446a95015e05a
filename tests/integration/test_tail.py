"""``streams.tail.user_drift_events`` over a real 4-partition topic: it reads only the partition
that holds the user's key (the producers' default partitioner) and finds what a scan of every
partition finds; ``tail`` reads the partitions it is given."""

from __future__ import annotations

import json

from streams.kafka_io import consume_all
from streams.tail import key_partition, tail, user_drift_events
from tests.integration.helpers import produce


def _event(user: str, i: int) -> dict[str, object]:
    return {"kind": "k_change", "user_id": user, "ts_ms": 1_700_000_000_000 + i, "offset": i,
            "detail": {}}


def test_user_drift_events_read_the_users_partition_only(stack, topic) -> None:
    kafka = stack.settings.kafka
    users = [f"u{i}" for i in range(12)]
    produce(kafka, topic, [(u.encode(), json.dumps(_event(u, i)).encode())
                           for i in range(60) for u in users[i % 12:i % 12 + 1]])
    recs = list(consume_all(kafka, topic, 10))
    assert {r.partition for r in recs} == {0, 1, 2, 3}
    for r in recs:  # the rule the producers follow, which the reader reproduces
        assert r.partition == key_partition(r.key or b"", 4)
    for u in users:
        got = user_drift_events(kafka, u, 100, topic=topic)
        assert [e["offset"] for e in got] == [i for i in range(60) if users[i % 12] == u]
    # a record of u0 on another partition than its key's (a producer with another
    # partitioner) is not read: one partition is scanned, not four
    other = (key_partition(b"u0", 4) + 1) % 4
    from confluent_kafka import Producer

    p = Producer(kafka.client_config())
    p.produce(topic, key=b"u0", value=json.dumps(_event("u0", 999)).encode(), partition=other)
    assert p.flush(30) == 0
    assert 999 not in [e["offset"] for e in user_drift_events(kafka, "u0", 100, topic=topic)]


def test_tail_reads_the_partitions_given(stack, topic) -> None:
    kafka = stack.settings.kafka
    produce(kafka, topic, [(f"u{i}".encode(), json.dumps(_event(f"u{i}", i)).encode())
                           for i in range(40)])
    every = tail(kafka, topic, 100)
    assert {r.partition for r in every} == {0, 1, 2, 3}
    some = tail(kafka, topic, 100, partitions=[1, 3, 7])  # 7: not a partition of the topic
    assert some == [r for r in every if r.partition in (1, 3)] and some
    assert tail(kafka, topic, 2, partitions=[2]) == [r for r in every if r.partition == 2][-2:]


def test_user_drift_events_of_a_missing_topic_are_none(stack) -> None:
    assert user_drift_events(stack.settings.kafka, "u0", 10, topic="fix1.no-such-drift") == []
