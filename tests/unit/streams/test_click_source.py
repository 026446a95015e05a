"""ClickSource's partitions without a broker (a stand-in for the worker's shared consumer): the
event clock each record carries (``RawRecord.clock_ms``) is the running maximum of the record
timestamps, kept with the next offset in the partition's recovery snapshot, and a store
written before the clock was kept (an offset alone) still resumes."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import FlowConfig, KafkaConfig
from streams.kafka_source import ClickSource
from streams.online import DeadLetter, FlowStats, record_judge, source_judge


class _Msg:
    def __init__(self, offset: int, ts: int, value: bytes = b"{}") -> None:
        self._offset, self._ts, self._value = offset, ts, value

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"u"

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


class _Shared:
    """What a partition asks of the worker's shared consumer: its buffer, and more records."""

    def __init__(self, records: dict[int, list[_Msg]]) -> None:
        self.records = records
        self.buffers: dict[int, deque] = {}

    def add(self, part: int, start: int) -> deque:
        self.buffers[part] = deque(m for m in self.records[part] if m.offset() >= start)
        return self.buffers[part]

    def fill(self) -> None:
        pass


def _source(records: dict[int, list[_Msg]], batch_size: int = 2, judge=None) -> ClickSource:  # type: ignore[no-untyped-def]
    src = ClickSource(KafkaConfig(), "t", batch_size=batch_size, judge=judge)
    src._marks = {p: (0, 100) for p in records}
    shared = _Shared(records)
    src._consumer = lambda part: shared  # type: ignore[method-assign]
    return src


def test_each_record_carries_the_partitions_clock_and_the_snapshot_keeps_it() -> None:
    msgs = [_Msg(5, 1_000), _Msg(6, 3_000), _Msg(7, 2_000), _Msg(8, 2_500), _Msg(9, 4_000)]
    part = _source({0: msgs}).build_part("in", "0-t", (5, 1_500))
    first = part.next_batch()
    assert [(r.offset, r.ts_ms, r.clock_ms) for r in first] == [(5, 1_000, 1_500), (6, 3_000, 3_000)]
    assert part.snapshot() == (7, 3_000) and part.position() == 7
    # a resume from that snapshot reads the clock the run had at the same offset
    again = _source({0: msgs}).build_part("in", "0-t", part.snapshot())
    rest = part.next_batch() + part.next_batch()
    assert [(r.offset, r.clock_ms) for r in rest] == [(7, 3_000), (8, 3_000), (9, 4_000)]
    assert again.next_batch() + again.next_batch() == rest


def test_a_snapshot_holding_the_offset_alone_resumes_with_the_clock_restarted() -> None:
    msgs = [_Msg(5, 1_000), _Msg(6, 3_000), _Msg(7, 2_000)]
    part = _source({0: msgs}).build_part("in", "0-t", 6)
    assert [(r.offset, r.clock_ms) for r in part.next_batch()] == [(6, 3_000), (7, 3_000)]
    fresh = _source({0: msgs}).build_part("in", "0-t", None)
    assert [r.clock_ms for r in fresh.next_batch()] == [1_000, 3_000]


T0 = 1_700_000_000_000
"""Record timestamps of the judged tests start here: the dataflow's judge refuses a click
stamped more than ``FlowConfig.ts_max_future_ms`` after its record."""

GOOD = b'{"user_id": "u", "item_id": 1, "ts": 1700000000000}'


def _judged(msgs: list[_Msg], batch: int, start: int | None = None) -> tuple[list, object]:  # type: ignore[type-arg]
    """Every verdict of the partition read by a source given the dataflow's judge (garbage
    refused, ``GOOD`` accepted), and the partition."""
    part = _source({0: msgs}, batch_size=batch, judge=source_judge(FlowConfig(), FlowStats())).build_part(
        "in", "0-t", None if start is None else (0, start))
    got: list = []  # type: ignore[type-arg]
    while len(got) < len(msgs):
        got += part.next_batch()
    return got, part


def _record(verdict):  # type: ignore[no-untyped-def]
    return verdict.record if isinstance(verdict, DeadLetter) else verdict[1].record


def test_a_refused_record_does_not_move_the_clock() -> None:
    msgs = [_Msg(0, T0 + 1_000, GOOD), _Msg(1, T0 + 9_000, b"bad"), _Msg(2, T0 + 2_000, GOOD),
            _Msg(3, T0 + 8_000, b"bad"), _Msg(4, T0 + 3_000, GOOD)]
    got, part = _judged(msgs, batch=10)
    assert [type(v) is DeadLetter for v in got] == [False, True, False, True, False]
    assert [_record(v).clock_ms - T0 for v in got] == [1_000, 1_000, 2_000, 2_000, 3_000]
    assert part.snapshot() == (5, T0 + 3_000)  # type: ignore[attr-defined]


@given(st.lists(st.tuples(st.integers(-1, 50), st.booleans()), max_size=40),
       st.integers(1, 7), st.integers(-1, 20))
@settings(max_examples=300, deadline=None)
def test_the_clock_is_the_running_maximum_of_the_accepted_timestamps(
        recs: list[tuple[int, bool]], batch: int, start: int) -> None:
    msgs = [_Msg(i, T0 + ts, GOOD if ok else b"bad") for i, (ts, ok) in enumerate(recs)]
    got, part = _judged(msgs, batch, T0 + start)
    want, clock = [], T0 + start
    for ts, ok in recs:
        if ok and T0 + ts > clock:
            clock = T0 + ts
        want.append(clock)
    assert [_record(v).clock_ms for v in got] == want
    assert part.snapshot() == (len(msgs), clock)  # type: ignore[attr-defined]
    # the verdicts are the dataflow's own over the records as the source gave them
    judge = record_judge(FlowConfig())
    assert got == judge([_record(v) for v in got])[0]
    # without refusals, the records are exactly those of a source that judges nothing
    plain = _source({0: [_Msg(i, T0 + ts, GOOD) for i, (ts, _) in enumerate(recs)]}, batch_size=batch)
    a = plain.build_part("in", "0-t", (0, T0 + start))
    good, _ = _judged([_Msg(i, T0 + ts, GOOD) for i, (ts, _) in enumerate(recs)], batch, T0 + start)
    read: list = []  # type: ignore[type-arg]
    while len(read) < len(msgs):
        read += a.next_batch()
    assert [_record(v) for v in good] == read
