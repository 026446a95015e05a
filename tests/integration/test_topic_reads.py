"""Reading a bounded range of a topic (``streams.kafka_io.read_partition``, behind
``consume_all``, ``end_timestamps``, the catalogue, the dead letters, the drift plots and the
retrainer's last decision) and ``diam deadletters``, against the real broker.

A range reader that gave up at a deadline used to return what it had read as if it were all;
a transaction marker at the end of a partition (an offset with no record) kept it waiting for
that deadline.
"""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from diam.cli import main as cli
from streams.kafka_io import (
    RangeStalled,
    RawRecord,
    UnknownTopic,
    consume_all,
    delete_topics,
    end_timestamps,
    ensure_topic,
    read_deadletters,
    read_partition,
    reading_consumer,
    watermarks,
)
from streams.online import deadletter_record
from tests.integration.helpers import produce


@pytest.mark.partitions(1)
def test_a_range_that_stalls_raises_after_what_it_read(stack, topic) -> None:
    kafka = stack.settings.kafka
    produce(kafka, topic, [(b"u1", f"v{i}".encode()) for i in range(3)])
    c = reading_consumer(kafka)
    got: list[bytes] = []
    try:
        with pytest.raises(RangeStalled, match=r"no record at offset 3 within 1 s \(reading up to offset 5\)"):
            for m in read_partition(c, topic, 0, 0, 5, stall_s=1.0):
                got.append(m.value())
    finally:
        c.close()
    assert got == [b"v0", b"v1", b"v2"]


@pytest.mark.partitions(1)
def test_offsets_without_a_record_are_passed(stack, topic) -> None:
    """A transaction's commit marker takes the last offset; the reader must end at the high
    watermark without a record there, not wait out its stall time and fail."""
    kafka = stack.settings.kafka
    p = Producer({**kafka.client_config(), "transactional.id": f"diam-test-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, key=b"u1", value=f"t{i}".encode())
    p.commit_transaction(30)
    assert watermarks(kafka, topic)[0][1] == 4  # three records and the marker
    got = [r.value for r in consume_all(kafka, topic, timeout=20.0)]
    assert got == [b"t0", b"t1", b"t2"]


@pytest.mark.partitions(3)
def test_end_timestamps_are_each_partitions_first_and_last_records(stack, topic) -> None:
    """What ``diam replay`` says of a range that selected nothing: the record timestamps at
    each partition's ends, one where the partition holds one record, none for an empty one;
    an empty topic gives {} and a missing record raises instead of reading as none."""
    kafka = stack.settings.kafka
    assert end_timestamps(kafka, topic) == {}
    t0 = 1_700_000_000_000
    p = Producer(kafka.client_config())
    # not in time order within partition 0: the ends are by offset, not the extremes
    for part, ts in ((0, t0 + 5000), (0, t0 + 1000), (0, t0 + 3000), (1, t0 + 7000)):
        p.produce(topic, key=b"u1", value=b"v", partition=part, timestamp=ts)
    assert p.flush(30) == 0
    assert end_timestamps(kafka, topic) == {0: [t0 + 5000, t0 + 3000], 1: [t0 + 7000]}
    # a transaction's commit marker at the end of partition 2: no record, no timestamp
    tx = Producer({**kafka.client_config(), "transactional.id": f"diam-test-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    tx.produce(topic, key=b"u1", value=b"t", partition=2, timestamp=t0 + 9000)
    tx.commit_transaction(30)
    assert end_timestamps(kafka, topic)[2] == [t0 + 9000]
    with pytest.raises(UnknownTopic):  # `diam replay` then leaves the span out of its note
        end_timestamps(kafka, f"t.never{uuid.uuid4().hex[:12]}")


def test_deadletters_lists_the_newest_across_partitions_and_filters_by_source(stack, new_topic) -> None:
    kafka = stack.settings.kafka
    dlq = new_topic(partitions=2, prefix="dlq")
    src_a, src_b = f"clicks-a-{uuid.uuid4().hex[:6]}", f"clicks-b-{uuid.uuid4().hex[:6]}"
    p = Producer(kafka.client_config())
    # written in time order, alternately to the two partitions: the newest is on partition 0,
    # so a list read partition by partition would end on the wrong records
    order = [(src_a, 1, 0), (src_b, 0, 1), (src_a, 1, 2), (src_a, 0, 3)]
    for i, (src, part, off) in enumerate(order):  # offsets in the source topics, distinct
        out = deadletter_record(RawRecord(src, 0, off, b"u1", f"bad {off}".encode(), 0), f"reason {off}",
                                max_bytes=1_024)
        p.produce(dlq, key=out.key, value=out.value, headers=out.headers, partition=part,
                  timestamp=1_700_000_000_000 + i * 1000)
    assert p.flush(30) == 0
    assert len(read_deadletters(kafka, dlq)) == 4

    runner, obj = CliRunner(), {"settings": stack.settings}
    res = runner.invoke(cli, ["deadletters", "--topic", dlq, "--last", "2"], obj=obj)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"4 dead-lettered record(s) in {dlq}"
    assert [x.split(": ")[1].split("  ")[0] for x in lines[1:]] == ["reason 2", "reason 3"]

    res = runner.invoke(cli, ["deadletters", "--topic", dlq, "--source-topic", src_a], obj=obj)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"3 dead-lettered record(s) in {dlq} from {src_a}"
    assert [x.split("@")[1].split(":")[0] for x in lines[1:]] == ["0", "2", "3"]

    res = runner.invoke(cli, ["deadletters", "--topic", dlq, "--last", "0"], obj=obj)
    assert res.exit_code == 2 and "0 is not in the range x>=1" in res.output


def test_delete_topics_deletes_what_it_names_and_skips_what_does_not_exist(stack) -> None:
    """The tests' and benchmarks' clean-up: every named topic is gone from the broker's
    metadata afterwards (an AdminClient dropped before its answers deleted none), one that
    never existed is skipped, a repeated name counts once."""
    kafka = stack.settings.kafka
    made = [f"t.del{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for name in made:
        ensure_topic(kafka, name, partitions=2)
    never = f"t.never{uuid.uuid4().hex[:12]}"
    assert sorted(delete_topics(kafka, [*made, made[0], never])) == sorted(made)
    left = AdminClient(kafka.client_config()).list_topics(timeout=30).topics
    assert not {*made, never} & set(left)
    assert delete_topics(kafka, made) == []  # already gone
