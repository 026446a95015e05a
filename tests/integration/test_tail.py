"""``streams.tail.user_drift_events`` over a real 4-partition topic: it reads only the partition
that holds the user's key (the producers' default partitioner) and finds what a scan of every
partition finds, also for records written before the partition count was raised; ``tail``
reads the partitions it is given."""

from __future__ import annotations

import json
import time

import pytest

import streams.tail
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
    # partitioner) is not read when the key's partition has the n events asked for: one
    # partition is scanned, not four
    other = (key_partition(b"u0", 4) + 1) % 4
    from confluent_kafka import Producer

    p = Producer(kafka.client_config())
    p.produce(topic, key=b"u0", value=json.dumps(_event("u0", 999)).encode(), partition=other)
    assert p.flush(30) == 0
    assert 999 not in [e["offset"] for e in user_drift_events(kafka, "u0", 5, topic=topic)]


def _spy_tail(monkeypatch) -> list[list[int] | None]:
    """The ``partitions`` of every ``tail`` call that ``user_drift_events`` makes."""
    asked: list[list[int] | None] = []

    def spy(*args, partitions=None, **kw):
        asked.append(None if partitions is None else list(partitions))
        return tail(*args, partitions=partitions, **kw)

    monkeypatch.setattr(streams.tail, "tail", spy)
    return asked


def test_tail_reads_the_partitions_given(stack, topic) -> None:
    kafka = stack.settings.kafka
    produce(kafka, topic, [(f"u{i}".encode(), json.dumps(_event(f"u{i}", i)).encode())
                           for i in range(40)])
    every = tail(kafka, topic, 100)
    assert {r.partition for r in every} == {0, 1, 2, 3}
    some = tail(kafka, topic, 100, partitions=[1, 3, 7])  # 7: not a partition of the topic
    assert some == [r for r in every if r.partition in (1, 3)] and some
    assert tail(kafka, topic, 2, partitions=[2]) == [r for r in every if r.partition == 2][-2:]


def _raise_partitions(kafka, topic: str, count: int) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions

    admin = AdminClient(kafka.client_config())
    admin.create_partitions([NewPartitions(topic, count)])[topic].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=30).topics.get(topic)
        if t is not None and len(t.partitions) == count and all(
                p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{topic} has no {count} led partitions after 30 s")


@pytest.mark.partitions(2)
def test_user_drift_events_find_records_written_before_the_partitions_were_raised(
        stack, topic, monkeypatch) -> None:
    kafka = stack.settings.kafka
    users = [f"u{i}" for i in range(12)]
    moved = [u for u in users if key_partition(u.encode(), 2) != key_partition(u.encode(), 4)]
    assert moved and len(moved) < len(users)

    def events(lo: int, hi: int) -> list[tuple[bytes, bytes]]:
        return [(users[i % 12].encode(), json.dumps(_event(users[i % 12], i)).encode())
                for i in range(lo, hi)]

    produce(kafka, topic, events(0, 24))  # two partitions: each user's key % 2
    _raise_partitions(kafka, topic, 4)
    produce(kafka, topic, events(24, 48))  # four: key % 4, another partition for `moved`
    placed = {(r.key, r.partition) for r in consume_all(kafka, topic, 10)}
    assert any((u.encode(), key_partition(u.encode(), 2)) in placed for u in moved)
    asked = _spy_tail(monkeypatch)
    for u in users:
        mine = [i for i in range(48) if users[i % 12] == u]
        assert [e["offset"] for e in user_drift_events(kafka, u, 100, topic=topic)] == mine
    # the key's partition holds the n events asked for: the older partitions are not read
    u = moved[0]
    asked.clear()
    got = user_drift_events(kafka, u, 2, topic=topic)
    assert [e["offset"] for e in got] == [i for i in range(24, 48) if users[i % 12] == u]
    assert asked == [[key_partition(u.encode(), 4)]]


def test_user_drift_events_of_a_missing_topic_are_none(stack) -> None:
    assert user_drift_events(stack.settings.kafka, "u0", 10, topic="fix1.no-such-drift") == []
