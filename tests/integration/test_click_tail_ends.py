"""The click-first reader (``streams.new_items.ClickTail`` behind ``ClickFirstFollower``) is
caught up once it has read up to the ends the topic had when it started, also where the last
offsets hold no record to deliver, against the real broker.

It used to wait for a record at each partition's end offset minus one. A transaction's commit
(or abort) marker takes that offset, so on a topic written by a transactional producer the
catch-up never ended: ``diam run`` waited out ``FlowConfig.click_first_catch_up_s`` (30 s) and
started on a base that depended on what had been read by then.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Producer

from streams.events import ClickEvent
from streams.kafka_io import watermarks
from streams.new_items import ClickFirst, ClickFirstFollower, ClickTail
from tests.integration.helpers import click_payloads, produce, produce_aborted

T0 = 1_700_000_000_000
LIMIT_S = 15.0  # the old reader reached it every time: it returned False


def _clicks(items: list[str], user: str = "u1") -> list[ClickEvent]:
    return [ClickEvent(user_id=user, item_id=it, ts=T0 + 1000 * i) for i, it in enumerate(items)]


def _write(kafka, topic: str) -> list[list[ClickEvent]]:  # type: ignore[no-untyped-def]
    """Partition 0: a committed transaction (its marker last); 1: plain records, then a
    committed transaction, then an aborted one (its records and marker last); 2: plain records;
    3: nothing. Returns each partition's committed clicks in offset order."""
    committed = [_clicks(["a", "b", "a", "c"]), _clicks(["b", "d", "d", "e"], "u2"),
                 _clicks(["c", "f", "f"], "u3"), []]
    aborted = _clicks(["x", "x", "x", "a"], "u4")
    plain = Producer(kafka.client_config())
    for part, evs in ((1, committed[1][:2]), (2, committed[2])):
        for key, value in click_payloads(evs):
            plain.produce(topic, key=key, value=value, partition=part)
    assert plain.flush(30) == 0
    tx = Producer({**kafka.client_config(), "transactional.id": f"diam-test-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for part, evs in ((0, committed[0]), (1, committed[1][2:])):
        for key, value in click_payloads(evs):
            tx.produce(topic, key=key, value=value, partition=part)
    tx.commit_transaction(30)
    produce_aborted(tx, topic, click_payloads(aborted), partition=1)
    marks = watermarks(kafka, topic)
    # markers and aborted records: neither transactional partition ends on a record
    assert marks[0][1] == len(committed[0]) + 1
    assert marks[1][1] == len(committed[1]) + 1 + len(aborted) + 1
    assert marks[2][1] == len(committed[2]) and marks[3] == (0, 0)
    return committed


def test_the_follower_catches_up_past_markers_aborted_records_and_empty_partitions(
        stack, new_topic) -> None:
    kafka = stack.settings.kafka
    topic = new_topic(4)
    committed = _write(kafka, topic)
    expected = ClickFirst(min_clicks=2)
    for evs in committed:  # the rule's items do not depend on how partitions interleave
        expected.feed([(ev.item_id, ev.ts) for ev in evs], lambda _: False)
    assert sorted(expected.added) == ["a", "b", "c", "d", "f"]  # never "x": aborted

    follower = ClickFirstFollower(kafka, topic, 2, known=lambda _: False)
    try:
        assert follower.wait_caught_up(LIMIT_S)
        assert follower.caught_up
        assert sorted(it.item_id for it in follower.take()) == ["a", "b", "c", "d", "f"]
    finally:
        assert follower.close()


def test_the_tail_returns_every_committed_click_as_replayed_once_caught_up(stack, new_topic) -> None:
    kafka = stack.settings.kafka
    topic = new_topic(4)
    committed = _write(kafka, topic)
    tail = ClickTail(kafka, topic)
    got: dict[str, list[int]] = {}
    replayed = 0
    try:
        for _ in range(int(LIMIT_S / 0.2)):
            clicks = tail.poll(timeout=0.2)
            assert tail.replayed == len(clicks)  # nothing was written after the start
            replayed += tail.replayed
            for item, ts in clicks:
                got.setdefault(item, []).append(ts)
            if tail.caught_up:
                break
        assert tail.caught_up
        # one more poll: nothing left of what was there (no aborted record comes late)
        assert tail.poll(timeout=0.3) == [] and tail.caught_up
    finally:
        tail.close()
    want: dict[str, list[int]] = {}
    for evs in committed:
        for ev in evs:
            want.setdefault(ev.item_id, []).append(ev.ts)
    assert replayed == sum(map(len, committed))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}


def test_a_click_the_dataflow_dead_letters_creates_no_item(stack, new_topic) -> None:
    """The tail judges records as the dataflow does (``streams.online.record_judge``): unkeyed
    clicks, clicks keyed by another user and tombstones count for no item; only the keyed
    clicks do, so no item becomes recommendable from clicks nobody learnt from."""
    kafka = stack.settings.kafka
    topic = new_topic(1)
    good = click_payloads(_clicks(["n43", "n43"]))
    bad = click_payloads(_clicks(["n42", "n42", "n44"], "u2"))
    produce(kafka, topic, [(None, bad[0][1]), (b"u9", bad[1][1]), (b"u2", None), *good,
                           bad[2]])
    follower = ClickFirstFollower(kafka, topic, 2, known=lambda _: False)
    try:
        assert follower.wait_caught_up(LIMIT_S)
        assert [it.item_id for it in follower.take()] == ["n43"]  # never n42; n44 clicked once
    finally:
        assert follower.close()
