"""The online dataflow's Prometheus metrics (streams.metrics), without services."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka_sink import KafkaOut
from streams.metrics import (
    FRESHNESS_BUCKETS,
    METRIC_NAMES,
    FlowMetrics,
    MeteredSource,
    _Hist,
    reason_class,
)
from streams.online import FlowStats


def _samples(m: FlowMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=200))
def test_histogram_buckets_equal_counting_each_value(values: list[float]) -> None:
    h = _Hist(FRESHNESS_BUCKETS)
    h.observe(np.array(values[: len(values) // 2]))
    h.observe(np.array(values[len(values) // 2:]))
    cum = np.cumsum(h.counts)
    for b, c in zip(FRESHNESS_BUCKETS, cum[:-1], strict=True):
        assert c == sum(1 for v in values if v <= b)  # Prometheus' "le"
    assert cum[-1] == len(values)
    assert np.isclose(h.total, sum(values))


class _Part(StatefulSourcePartition[int, int]):
    def __init__(self, start: int, end: int) -> None:
        self.next, self.end = start, end

    def next_batch(self) -> list[int]:
        if self.next >= self.end:
            raise StopIteration()
        batch = list(range(self.next, min(self.next + 3, self.end)))
        self.next = batch[-1] + 1
        return batch

    def snapshot(self) -> int:
        return self.next

    def position(self) -> int:
        return self.next


class _Offsets(FixedPartitionedSource[int, int]):
    """Two partitions shaped like ClickSource's: "<partition>-<topic>", ``position()`` = the
    next offset."""

    ranges = {0: (0, 10), 1: (5, 6)}

    def list_parts(self) -> list[str]:
        return [f"{p}-t" for p in self.ranges]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(*self.ranges[int(for_part.split("-")[0])])


def test_metered_source_notes_each_partitions_position_and_passes_records_through() -> None:
    m = FlowMetrics(process="p")
    out: list[int] = []
    flow = Dataflow("metered")
    op.output("out", op.input("in", flow, MeteredSource(_Offsets(), m)), TestingSink(out))
    run_main(flow, epoch_interval=timedelta(seconds=0))  # an epoch end after every batch
    assert sorted(out) == sorted([*range(10), 5])
    assert m.positions == {0: 10, 1: 6}
    m.marks = {0: 12, 1: 6}  # what the broker would say (no broker here: kafka=None)
    s = _samples(m)
    lag = {dict(k[1])["partition"]: v for k, v in s.items() if k[0] == "diam_flow_consumer_lag"}
    assert lag == {"0": 2.0, "1": 0.0}
    pauses = s[("diam_flow_epoch_pause_seconds_count", (("process", "p"),))]
    assert pauses >= 1  # epoch ends seen from the source, snapshot to next poll


def test_every_name_is_exported_with_the_process_label_and_counts_add_up() -> None:
    stats = FlowStats()
    stats.records, stats.rejected, stats.users, stats.pushes = 9, 2, 3, 4
    stats.ended, stats.evictions, stats.restarts = 2, 1, 5
    class Holder:
        version = "v7"

    m = FlowMetrics(stats, Holder(), process="parts0-1")
    m.positions[0] = 9
    m.marks[0] = 9
    m.count_out(m.rejected, "diam.reason", [
        KafkaOut(b"k", b"", [("diam.reason", b"ts: too old"), ("diam.topic", b"t")]),
        KafkaOut(b"k", b"", [("diam.reason", b"undecodable: neither msgpack nor JSON")]),
    ], reason_class)
    m.count_out(m.drift, "diam.kind", [KafkaOut(b"u", b"{}", [("diam.kind", b"k_change")])] * 3)

    class UV:
        def __init__(self, ts: int) -> None:
            self.ts = ts

    import time
    now = int(time.time() * 1000)
    m.observe_redis_write([("a", UV(now - 40)), ("b", UV(now - 3000))], 0.004)
    s = _samples(m)
    names = {k[0] for k in s}
    for name in METRIC_NAMES:
        assert any(n == name or n.startswith(name + "_") for n in names), name
    assert all(("process", "parts0-1") in k[1] for k in s)
    assert s[("diam_flow_records_total", (("process", "parts0-1"),))] == 9
    assert s[("diam_flow_users", (("process", "parts0-1"),))] == 1  # started 3, ended 2
    assert s[("diam_flow_user_evictions_total", (("process", "parts0-1"),))] == 1
    assert s[("diam_flow_user_restarts_total", (("process", "parts0-1"),))] == 5
    dl = {dict(k[1])["reason"]: v for k, v in s.items() if k[0] == "diam_flow_dead_letters_total"}
    assert dl == {"ts": 1.0, "undecodable": 1.0}
    assert s[("diam_flow_drift_events_total", (("kind", "k_change"), ("process", "parts0-1")))] == 3
    fresh = {dict(k[1])["le"]: v for k, v in s.items() if k[0] == "diam_flow_freshness_seconds_bucket"}
    assert fresh["0.025"] == 0 and fresh["0.05"] == 1 and fresh["2.5"] == 1 and fresh["5.0"] == 2
    assert s[("diam_flow_redis_acked_total", (("process", "parts0-1"),))] == 2


def test_reason_labels_stay_bounded() -> None:
    reasons = Counter(reason_class(r) for r in [
        "payload: empty", "payload: 9 bytes exceeds", "weird reason without colon " * 5,
        "context.device: expected a scalar", "ts: 12 is before"])
    assert set(reasons) == {"payload", "other", "context", "ts"}


def test_hot_reloads_count_new_versions_only() -> None:
    from streams.online import LearnerHolder

    answers = iter([("L2", "v2"), None, ("L2b", "v2"), ("L3", "v3")])  # v2 again: items added
    holder = LearnerHolder("L1", "v1", reload=lambda: next(answers), check_every_s=0.0)
    for _ in range(4):
        holder.maybe_reload()
    m = FlowMetrics(FlowStats(), holder, process="p")
    s = _samples(m)
    assert holder.version == "v3"
    assert s[("diam_flow_hot_reloads_total", (("process", "p"),))] == 2
    assert s[("diam_flow_base_version", (("process", "p"), ("version", "v3")))] == 1


def test_longest_reload_is_the_slowest_hook_call() -> None:
    import time

    from streams.online import LearnerHolder

    waits = iter([0.0, 0.06, 0.0])

    def hook():  # type: ignore[no-untyped-def]
        time.sleep(next(waits))

    holder = LearnerHolder("L1", "v1", reload=hook, check_every_s=0.0)
    holder.maybe_reload()
    assert holder.longest_reload_s < 0.05
    holder.maybe_reload()
    holder.maybe_reload()
    assert 0.06 <= holder.longest_reload_s < 1.0


def test_epoch_state_snapshot_is_the_sum_of_the_users_snapshots_between_epoch_ends() -> None:
    stats = FlowStats()
    m = FlowMetrics(stats, process="p")
    m.epoch_end()  # the first epoch end: no user snapshots yet, nothing observed
    stats.snapshots, stats.snapshot_s = 3, 0.003  # three users snapshotted at that epoch end
    m.epoch_end()  # the next epoch end, partition 0 ...
    m.epoch_end()  # ... and partition 1 of the same epoch end: nothing new
    stats.snapshots, stats.snapshot_s = 4, 0.010
    m.epoch_end()
    s = _samples(m)
    lab = (("process", "p"),)
    assert s[("diam_flow_epoch_state_snapshot_seconds_count", lab)] == 2
    assert np.isclose(s[("diam_flow_epoch_state_snapshot_seconds_sum", lab)], 0.010)
    assert s[("diam_flow_state_snapshots_total", lab)] == 4


def test_the_dataflow_times_its_users_state_snapshots() -> None:
    from bytewax.testing import TestingSource

    from streams.config import FlowConfig
    from streams.online import FlowSinks, LearnerHolder, build_flow
    from tests.flowkit import as_records, click_stream, tiny_learner

    learner = tiny_learner()
    stats = FlowStats()
    flow = build_flow(TestingSource(as_records(click_stream(n_users=4, n_events=60)), batch_size=5),
                      FlowSinks(TestingSink([]), TestingSink([]), TestingSink([])),
                      FlowConfig(push_every_events=3, push_every_ms=60_000),
                      LearnerHolder(learner, learner.base.version), stats=stats)
    run_main(flow, epoch_interval=timedelta(seconds=0))
    total = stats.total()
    assert total.snapshots >= 4  # every touched user at every epoch end
    assert total.snapshot_s > 0.0


def test_every_exported_name_is_documented_in_the_readme() -> None:
    """The README's paragraph on ``diam run --metrics-port`` names every series a scrape
    returns (in full, or as its ``_suffix`` after ``diam_flow``), so the list cannot drift."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = text.index("`diam run --metrics-port` exports")
    section = text[start:text.index("\n\n", start)]
    missing = [n for n in METRIC_NAMES if not re.search(
        rf"`(diam_flow)?{re.escape(n.removeprefix('diam_flow'))}[`{{]", section)]
    assert not missing, f"README's metrics paragraph does not name {missing}"
