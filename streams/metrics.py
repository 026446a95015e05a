"""Prometheus metrics of the online dataflow (``diam run --metrics-port``).

Everything is read or counted where it happens, and nothing is added to the per-event path:

- records, valid events, users in state and pushes come from :class:`streams.online.FlowStats`,
  read when Prometheus scrapes (a custom collector), never copied per event;
- each source partition's position (the next offset it will read) is noted once per input
  batch by :class:`MeteredSource`; the lag is the broker's high watermark, asked at scrape
  time, minus that position, for the partitions this process reads;
- dead letters by reason and drift events by kind (K_u changes, guard trips, rollbacks,
  freezes, re-anchors) are counted per output batch by :class:`CountingSink` from the headers
  the dataflow already writes;
- Redis write latency and freshness (event time to Redis acknowledgement) are observed by the
  Redis sink's writer thread once per write (:meth:`FlowMetrics.observe_redis_write`), into
  numpy bucket counts. Acknowledged values and freshness samples are the pushes Redis
  took, one rule (``streams.redis_sink._Partition._acked``): those of the users whose key
  the write set (a push superseded by a newer one of its user in the same write counts: the
  key holds what it learnt), not those Redis kept out as not newer
  (``_redis_stale_pushes_total``, ``_redis_resumed_repushes_total``: a restart's re-pushes
  of what Redis holds are no new values) or refused as forgotten
  (``_redis_forgotten_pushes_total``), nor the held users re-pushed after Redis lost data
  (``_redis_lost_repushes_total``); the clicks the decode step skipped as forgotten are
  ``_forgotten_clicks_total`` (``streams.online.skip_forgotten``);
- the epoch-end flush of the Kafka side outputs is timed in their sink partitions' snapshot;
- the epoch-end pause is timed from the source's side: from a partition's epoch snapshot to its
  next poll, the worker closes the epoch (every touched user's state snapshot, the recovery
  writes, the side outputs' flush) and finishes the batch in flight, so this is an upper bound
  of what an epoch end holds the input back;
- the epoch's state snapshot duration is measured, not bounded: Bytewax 0.21 has no Python hook
  at epoch ends (its own ``partd_write_duration_seconds`` and ``snapshot_duration_seconds`` live
  in the Rust engine and are exported only by its dataflow API server), so the per-user step
  times its own ``snapshot`` calls (each worker thread's :class:`~streams.online.Counts`
  ``snapshot_s``, summed) and each epoch's sum is observed at the next epoch end's first source
  snapshot. It covers packing every touched user's state into the tuple Bytewax asks for at
  each epoch end (asked with or without a recovery store); it does not cover Bytewax pickling
  those tuples and writing them to the recovery database, nor the side outputs' flush
  (``diam_flow_epoch_flush_seconds``).
  With several workers in one process their epoch ends interleave, and an observation can
  hold parts of two workers' epochs;
- hot reloads (a new base version taken by :class:`~streams.online.LearnerHolder`) are
  counted next to the base version gauge, and so are the announced versions refused (its
  ``refusals``).

Every series carries a ``process`` label, so one-process, partition-split and Bytewax-cluster
runs export the same names and a dashboard sums or splits them by process.

>>> m = FlowMetrics(process="p0")
>>> m.positions[0] = 7
>>> m.observe_redis_write([], 0.002)
>>> text = m.exposition().decode()
>>> 'diam_flow_redis_write_seconds_count{process="p0"} 1.0' in text
True
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["FlowMetrics", "MeteredSource", "CountingSink", "instrument", "process_label",
           "reason_class", "serve_metrics",
           "METRIC_NAMES"]

# Bucket upper bounds in seconds. Freshness spans a tailing run's tens of milliseconds up to a
# catch-up after an outage; a Redis write is a pipelined batch of a few hundred users.
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
FLUSH_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

METRIC_NAMES = (
    "diam_flow_records_total", "diam_flow_events_valid_total", "diam_flow_events_rejected_total",
    "diam_flow_dead_letters_total", "diam_flow_users", "diam_flow_pushes_total",
    "diam_flow_learn_calls_total", "diam_flow_user_evictions_total", "diam_flow_user_restarts_total",
    "diam_flow_unknown_item_clicks_total", "diam_flow_redis_stale_pushes_total",
    "diam_flow_redis_resumed_repushes_total",
    "diam_flow_redis_forgotten_pushes_total", "diam_flow_redis_lost_repushes_total",
    "diam_flow_forgets_total", "diam_flow_forgotten_clicks_total", "diam_flow_users_resumed_total",
    "diam_flow_drift_events_emitted_total", "diam_flow_drift_events_total",
    "diam_flow_redis_acked_total", "diam_flow_redis_write_seconds", "diam_flow_freshness_seconds",
    "diam_flow_epoch_flush_seconds", "diam_flow_epoch_pause_seconds",
    "diam_flow_consumer_position", "diam_flow_high_watermark",
    "diam_flow_consumer_lag", "diam_flow_base_version", "diam_flow_uptime_seconds",
    "diam_flow_watermark_errors_total", "diam_flow_hot_reloads_total",
    "diam_flow_snapshot_refusals_total",
    "diam_flow_epoch_state_snapshot_seconds", "diam_flow_state_snapshots_total",
)
"""Every series name a scrape of ``diam run`` returns (histograms add ``_bucket``, ``_sum``,
``_count``; lag, position and watermark appear once a partition is read)."""


def reason_class(reason: str) -> str:
    """The bounded label of a dead-letter reason: the field or check it names.

    >>> reason_class("ts: 12 is before the earliest accepted time 0 (epoch ms)")
    'ts'
    >>> reason_class("context.device: expected a scalar, got list")
    'context'
    >>> reason_class("key: record key b'x' differs from user_id 'y'")
    'key'
    """
    head = reason.split(":", 1)[0].split(".", 1)[0].strip()
    return head if head.isidentifier() and len(head) <= 32 else "other"


class _Hist:
    """A fixed-bucket histogram fed with whole arrays (one ``searchsorted`` per batch, not a
    locked ``observe`` per value)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last one is +Inf
        self.total = 0.0

    def observe(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bucket (Prometheus' "le")
        idx = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.total += float(values.sum())

    def family(self, name: str, doc: str, labels: list[str], values: list[str]) -> Metric:
        fam = HistogramMetricFamily(name, doc, labels=labels)
        cum = np.cumsum(self.counts)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", float(cum[-1])))
        fam.add_metric(values, buckets, self.total)
        return fam


def _le(b: float) -> str:
    return repr(float(b))


class FlowMetrics:
    """The metrics of one dataflow process, registered as a collector in ``registry``.

    ``stats`` is the run's :class:`~streams.online.FlowStats`; ``holder`` its
    :class:`~streams.online.LearnerHolder` (for the base version); ``kafka`` and ``topic``
    let a scrape ask the broker for high watermarks.
    """

    def __init__(self, stats: Any = None, holder: Any = None, process: str = "0",
                 kafka: Any = None, topic: str | None = None) -> None:
        self.stats, self.holder, self.process = stats, holder, process
        self.kafka, self.topic = kafka, topic
        self.positions: dict[int, int] = {}
        """Partition -> next offset its source partition will read (set by MeteredSource)."""
        self.marks: dict[int, int] = {}
        self.rejected: Counter[str] = Counter()
        self.drift: Counter[str] = Counter()
        self.acked = 0
        self.write = _Hist(WRITE_BUCKETS)
        self.fresh = _Hist(FRESHNESS_BUCKETS)
        self.flush = _Hist(FLUSH_BUCKETS)
        self.pause = _Hist(FLUSH_BUCKETS)
        self.state_snap = _Hist(FLUSH_BUCKETS)
        self._snap_seen = (0, 0.0)  # FlowStats (snapshots, snapshot_s) at the last epoch end
        self.watermark_errors = 0
        self._lock = threading.Lock()
        # a scrape waits for the broker under its own lock: never under _lock, which the Redis
        # writer thread takes after every write (a slow broker must not stall Redis writes)
        self._scrape_lock = threading.Lock()
        self._consumer: Any = None
        self._started = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- hooks called by the dataflow ----------------------------------------------------------
    def observe_redis_write(self, items: list[tuple[str, Any]], seconds: float) -> None:
        """One acknowledged Redis write that took ``seconds`` and took ``items`` (``(user_id,
        UserVectors)``, the pushes it took: maybe none). Freshness is the acknowledgement time
        minus each value's event time."""
        now_ms = time.time() * 1000.0
        ts = np.fromiter((uv.ts for _, uv in items), dtype=np.float64, count=len(items))
        fresh = np.maximum(now_ms - ts, 0.0) / 1000.0
        with self._lock:
            self.acked += len(items)
            self.write.observe(np.array([seconds]))
            self.fresh.observe(fresh)

    def count_out(self, counter: Counter[str], header: str, values: list[Any],
                  classify: Any = None) -> None:
        """Count KafkaOut ``values`` by the value of ``header``."""
        found: Counter[str] = Counter()
        for rec in values:
            for k, v in rec.headers:
                if k == header:
                    text = v.decode(errors="replace")
                    found[classify(text) if classify else text] += 1
                    break
        with self._lock:
            counter.update(found)

    def observe_flush(self, seconds: float) -> None:
        with self._lock:
            self.flush.observe(np.array([seconds]))

    def observe_pause(self, seconds: float) -> None:
        with self._lock:
            self.pause.observe(np.array([seconds]))

    def epoch_end(self) -> None:
        """A source partition's epoch snapshot: the users' state snapshots taken since the
        previous one (the previous epoch end's) become one observation of the epoch's state
        snapshot duration. The other partitions of the same epoch end find nothing new."""
        if self.stats is None:
            return
        total = self.stats.total()
        n, secs = total.snapshots, total.snapshot_s
        with self._lock:
            n0, s0 = self._snap_seen
            if n > n0:
                self.state_snap.observe(np.array([max(secs - s0, 0.0)]))
                self._snap_seen = (n, secs)

    # -- the collector -------------------------------------------------------------------------
    def _watermarks(self) -> dict[int, int]:
        """High watermarks of the partitions this process reads, asked now (one ListOffsets
        per partition); the last known ones when the broker does not answer."""
        if self.kafka is None or self.topic is None or not self.positions:
            return self.marks
        from confluent_kafka import Consumer, TopicPartition

        try:
            if self._consumer is None:
                conf = dict(self.kafka.client_config())
                conf.update({"group.id": "diam-metrics", "enable.auto.commit": "false"})
                self._consumer = Consumer(conf)
            for p in sorted(self.positions):
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=2.0, cached=False)
                self.marks[p] = int(high)
        except Exception:  # a scrape must answer; the error count says the lag is stale
            self.watermark_errors += 1
        if self._consumer is not None:
            # librdkafka's log lines wait on the poll queue (streams.kafka_log) and this client
            # is never assigned: served here, once a scrape, they neither pile up through a
            # broker outage nor hide a refused handshake
            self._consumer.poll(0)
        return self.marks

    def collect(self) -> Iterator[Metric]:
        lab, pv = ["process"], [self.process]
        st = self.stats.as_dict() if self.stats is not None else {}

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(name, doc, labels=lab)
            c.add_metric(pv, value)
            return c

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=lab)
            g.add_metric(pv, value)
            return g

        yield counter("diam_flow_records", "Records read from the input topic",
                      st.get("records", 0))
        yield counter("diam_flow_events_valid", "Valid click events", st.get("valid", 0))
        yield counter("diam_flow_events_rejected", "Rejected records (dead-lettered)",
                      st.get("rejected", 0))
        yield counter("diam_flow_forgets", "Tombstones applied (diam forget): the user's state "
                      "and key dropped", st.get("forgets", 0))
        yield counter("diam_flow_forgotten_clicks", "Valid clicks not learnt: diam forget forgot "
                      "their user after them (the markers read at the run's start)",
                      st.get("forgotten_clicks", 0))
        yield gauge("diam_flow_users", "Users held in this process's state", st.get("in_state", 0))
        yield counter("diam_flow_users_resumed", "Users resumed from the recovery store (their "
                      "first pushes may re-write what Redis holds)", st.get("resumed", 0))
        yield counter("diam_flow_user_evictions", "Idle users dropped from the state "
                      "(evict_idle_s)", st.get("evictions", 0))
        yield counter("diam_flow_user_restarts", "Clicks that started a user still held in the "
                      "state over from the base, evict_idle_s or more after their previous one on "
                      "the event clock (a dropped user's return is a new state instead)",
                      st.get("restarts", 0))
        yield counter("diam_flow_unknown_item_clicks", "Valid clicks on items the base does not "
                      "know (they update the signals, not the vectors)",
                      st.get("unknown_items", 0))
        yield counter("diam_flow_pushes", "User vectors emitted towards Redis", st.get("pushes", 0))
        yield counter("diam_flow_redis_stale_pushes", "Pushes Redis did not write: it held the "
                      "user at a newer or equal seq (a run resumed after a crash re-reading, or "
                      "another run's state in the namespace; not a resumed user's re-push)",
                      st.get("stale_pushes", 0))
        yield counter("diam_flow_redis_resumed_repushes", "Re-pushes of users resumed from the "
                      "recovery store (the state they were resumed with, pushed again in case a "
                      "crash lost the write) that Redis already held at that seq or a newer one: "
                      "expected at every restart, not stale writes",
                      st.get("resumed_repushes", 0))
        yield counter("diam_flow_redis_forgotten_pushes", "Pushes Redis refused: diam forget "
                      "forgot the user after the clicks they were learnt from",
                      st.get("forgotten_pushes", 0))
        yield counter("diam_flow_redis_lost_repushes", "Users re-pushed because Redis may have "
                      "lost data (its generation marker gone or replaced, a broken connection, "
                      "a cluster primary restarted): every user the writer holds, at each "
                      "re-push; not pushes, not in the acknowledged values or freshness",
                      st.get("lost_repushes", 0))
        yield counter("diam_flow_learn_calls",
                      "Calls of the learner's batched step (a user's clicks of a source batch)",
                      st.get("learn_calls", 0))
        yield counter("diam_flow_drift_events_emitted", "Drift events emitted by the learner",
                      st.get("drift_events", 0))
        yield gauge("diam_flow_uptime_seconds", "Seconds since the metrics started",
                    time.monotonic() - self._started)
        with self._lock:
            rejected, drift = dict(self.rejected), dict(self.drift)
            acked = self.acked
            hists = [
                self.write.family("diam_flow_redis_write_seconds",
                                  "Latency of one pipelined Redis write", lab, pv),
                self.fresh.family("diam_flow_freshness_seconds",
                                  "Event time to Redis acknowledgement, per push Redis took",
                                  lab, pv),
                self.flush.family("diam_flow_epoch_flush_seconds",
                                  "Epoch-end flush of a Kafka side output (dead letters, drift)",
                                  lab, pv),
                self.pause.family("diam_flow_epoch_pause_seconds",
                                  "From a source partition's epoch snapshot to its next poll "
                                  "(epoch-end state snapshots, recovery writes, flushes)", lab, pv),
                self.state_snap.family("diam_flow_epoch_state_snapshot_seconds",
                                       "Per epoch, the users' state snapshot calls (packing the "
                                       "state Bytewax stores; not its pickling or recovery writes)",
                                       lab, pv),
            ]
        dl = CounterMetricFamily("diam_flow_dead_letters", "Dead letters written, by reason",
                                 labels=["process", "reason"])
        for reason, n in sorted(rejected.items()):
            dl.add_metric([self.process, reason], n)
        yield dl
        de = CounterMetricFamily("diam_flow_drift_events",
                                 "Drift events written, by kind (k_change, guard_trip, rollback, "
                                 "freeze, reanchor)", labels=["process", "kind"])
        for kind, n in sorted(drift.items()):
            de.add_metric([self.process, kind], n)
        yield de
        yield counter("diam_flow_redis_acked", "Pushes whose user's key Redis set (not those "
                      "it kept out as not newer or refused, nor re-pushes after a loss)", acked)
        yield counter("diam_flow_state_snapshots", "Users' state snapshots taken at epoch ends",
                      st.get("snapshots", 0))
        yield from hists
        if self.holder is not None:
            v = GaugeMetricFamily("diam_flow_base_version", "1 for the base version in use "
                                  "(changes on a hot reload)", labels=["process", "version"])
            v.add_metric([self.process, str(self.holder.version)], 1)
            yield v
        yield counter("diam_flow_hot_reloads", "New base versions taken while running",
                      getattr(self.holder, "reloads", 0))
        yield counter("diam_flow_snapshot_refusals", "Announced versions refused while running "
                      "(a file failing its hash, no manifest, unusable by the stream); the base "
                      "stays", getattr(self.holder, "refusals", 0))
        yield from self._offsets()
        yield counter("diam_flow_watermark_errors", "Scrapes whose high-watermark request failed",
                      self.watermark_errors)

    def _offsets(self) -> Iterable[Metric]:
        labels = ["process", "topic", "partition"]
        topic = self.topic or ""
        positions = dict(self.positions)
        with self._scrape_lock:  # one scrape at a time asks the broker
            marks = dict(self._watermarks())
        pos = GaugeMetricFamily("diam_flow_consumer_position",
                                "Next offset the dataflow reads, per partition", labels=labels)
        hw = GaugeMetricFamily("diam_flow_high_watermark",
                               "The broker's high watermark, per partition", labels=labels)
        lag = GaugeMetricFamily("diam_flow_consumer_lag",
                                "High watermark minus position, per partition", labels=labels)
        for p, off in sorted(positions.items()):
            lv = [self.process, topic, str(p)]
            pos.add_metric(lv, off)
            if p in marks:
                hw.add_metric(lv, marks[p])
                lag.add_metric(lv, max(marks[p] - off, 0))
        yield pos
        yield hw
        yield lag

    def exposition(self) -> bytes:
        """The text format, as a scrape gets it."""
        return generate_latest(self.registry)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def serve_metrics(metrics: FlowMetrics, port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``metrics`` over HTTP on ``port`` (0: any free port); returns the port bound."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=addr, registry=metrics.registry)
    return int(server.server_port)


# -- wrappers that observe the dataflow's input and outputs -----------------------------------
class _MeteredPartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], part: int,
                 metrics: FlowMetrics) -> None:
        self.inner, self.part, self.metrics = inner, part, metrics
        self.positions = metrics.positions
        self.positions[part] = inner.position()  # type: ignore[attr-defined]
        self._snap_at: float | None = None

    def next_batch(self) -> Iterable[Any]:
        if self._snap_at is not None:
            self.metrics.observe_pause(time.perf_counter() - self._snap_at)
            self._snap_at = None
        batch = self.inner.next_batch()
        # one dict store per batch (atomic under the GIL): the next offset it will read
        self.positions[self.part] = self.inner.position()  # type: ignore[attr-defined]
        return batch

    def next_awake(self) -> Any:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        self._snap_at = time.perf_counter()  # Bytewax asks at every epoch end
        self.metrics.epoch_end()
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class MeteredSource(FixedPartitionedSource[Any, Any]):
    """``inner`` (a partitioned Kafka source whose partition keys are ``"<partition>-<topic>"``
    and whose partitions tell their next offset, ``position()``, as
    ``streams.kafka_source.ClickSource``'s do) with each partition's position noted in
    ``metrics.positions``."""

    def __init__(self, inner: FixedPartitionedSource[Any, Any], metrics: FlowMetrics) -> None:
        self.inner, self.metrics = inner, metrics

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _MeteredPartition:
        part = self.inner.build_part(step_id, for_part, resume_state)
        return _MeteredPartition(part, int(for_part.split("-", 1)[0]), self.metrics)


class _CountingPartition(StatefulSinkPartition[Any, Any]):
    def __init__(self, inner: StatefulSinkPartition[Any, Any], sink: CountingSink) -> None:
        self.inner, self.sink = inner, sink

    def write_batch(self, values: list[Any]) -> None:
        self.inner.write_batch(values)
        s = self.sink
        s.metrics.count_out(s.counter, s.header, values, s.classify)

    def snapshot(self) -> Any:
        t0 = time.perf_counter()
        out = self.inner.snapshot()
        self.sink.metrics.observe_flush(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.inner.close()


class CountingSink(FixedPartitionedSink[Any, Any]):
    """``inner`` (a Kafka sink of KafkaOut records) counting what it writes by a header."""

    def __init__(self, inner: FixedPartitionedSink[Any, Any], metrics: FlowMetrics,
                 counter: Counter[str], header: str, classify: Any = None) -> None:
        self.inner, self.metrics = inner, metrics
        self.counter, self.header, self.classify = counter, header, classify

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self.inner.part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _CountingPartition:
        return _CountingPartition(self.inner.build_part(step_id, for_part, resume_state), self)


def instrument(metrics: FlowMetrics, source: Any, sinks: Any) -> tuple[Any, Any]:
    """The dataflow's source and :class:`~streams.online.FlowSinks` with metrics attached:
    positions from the source, dead letters by reason, drift events by kind, and the Redis
    sink's write hook."""
    from dataclasses import replace

    sinks.vectors.observer = metrics.observe_redis_write
    return MeteredSource(source, metrics), replace(
        sinks,
        deadletter=CountingSink(sinks.deadletter, metrics, metrics.rejected, "diam.reason",
                                reason_class),
        drift=CountingSink(sinks.drift, metrics, metrics.drift, "diam.kind"),
    )


def process_label(process_id: int | None, addresses: str | None,
                  partitions: list[int] | None) -> str:
    """The ``process`` label of a run: its index in a Bytewax cluster, the partitions of a
    partition-split process, or ``main``.

    >>> process_label(1, "h:1;h:2", None), process_label(None, None, [2, 0]), process_label(None, None, None)
    ('proc1', 'parts0-2', 'main')
    """
    if addresses:
        return f"proc{process_id or 0}"
    if partitions is not None:
        return "parts" + "-".join(map(str, sorted(set(partitions))))
    return "main"
