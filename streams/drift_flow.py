"""The drift monitor dataflow: ``diam.drift`` → :class:`~streams.drift.DriftMonitor` → ``diam.alerts``.

::

    drift records ─► parse ─┬─ bad ─► counted (diam_drift_unparsed_total)
                            └─ ok ──► one global key ─► monitor (windows, detector; repeats of
                                                        a resumed producer dropped and counted,
                                                        diam_drift_duplicates_total; records of
                                                        closed windows too, diam_drift_late_total,
                                                        and those behind the watermark,
                                                        diam_drift_after_close_total)
                                                        ├─► alerts ─► diam.alerts (JSON)
                                                        └─► window summaries ─► Prometheus gauges

All logic lives in the pure monitor; this module only moves records. Everything is keyed on one
key because the global series and its detector need every event; one process handles tens of
thousands of drift events per second, far above what a fleet emits (a few per user per hour).
A window also closes after ``idle_close_s`` of wall time without input, so a quiet stream still
reports its last minute.

With a recovery store (``run_drift(recovery_dir=...)``, ``diam drift run --recovery-dir``) a
restarted monitor goes on where the last one stopped: Bytewax's SQLite recovery keeps the drift
topic's offsets and the monitor itself (its open windows, what it has seen of each user to tell
repeats, the detector) as of the last epoch; the records after it are read again, and the drift
events written while it was down are accounted, not skipped. Alerts of that last epoch may be
raised again with the same ``seq``, which is no resumed state but the place of the record that
raised them (``streams.drift.drift_position``), whatever order the partitions are read in again
(a consumer keyed on ``(source, seq, kind)`` takes them for the ones it has).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink
from prometheus_client import CollectorRegistry, Counter, Gauge

from serving_cache.json_safe import nan_to_none
from streams.config import KafkaConfig
from streams.drift import (
    SEQ_STRIDE,
    Alert,
    DriftConfig,
    DriftMonitor,
    DriftRecord,
    WindowSummary,
    parse_drift_record,
)
from streams.kafka_health import BrokerHealth
from streams.kafka_io import RawRecord, ensure_topic, of_namespace, partition_ids, watermarks
from streams.kafka_sink import KafkaOut, KafkaRecordSink
from streams.kafka_source import ClickSource

__all__ = ["SUMMARY", "STORE_OWNER", "FLOW_ID", "DriftMetrics", "DriftTopicUnusable",
           "StoreMismatch", "alert_record", "build_drift_flow", "check_monitor_state",
           "check_partitions", "check_store",
           "run_drift"]

OutputFn = Callable[[Alert | WindowSummary], None]

FLOW_ID = "diam-drift"
"""The monitor dataflow's id (:func:`build_drift_flow`'s default): its input step's positions
are kept in a recovery store under ``diam-drift.drift`` (:func:`check_store` looks for them)."""
_INPUT_STEP = "drift"
_MONITOR_STEP = "monitor"

SUMMARY = ("drift monitor {end}: {read} records read ({unparsed} not drift events, "
           "{other} of other namespaces, {duplicates} duplicates, {late} dropped as late, "
           "{after_close} after their window closed: in their users' windows, not in the window "
           "totals), {alerts} alerts raised")
"""The line ``diam drift run`` prints when it ends (``{end}``: done, or stopped), filled by
:meth:`DriftMetrics.summary_line` from the counters: the one place its words are spelled.
Late records are dropped: their user's own newer events had already closed their window. Records
after their window closed are behind the partitions' watermark (a backlog written batch by
batch, user by user): they count in their user's windows (k_churn, k_flip_flop, d_swing) but
not in the window's global totals, whose summary had already gone out. Records of other
namespaces are drift events of runs into another Redis namespace than the one the
monitor watches (``--namespace``)."""


class DriftMetrics:
    """Prometheus metrics of the monitor, in a registry of their own (tests build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("diam_drift_events_total", "Drift events in closed windows", ["kind"],
                              registry=r)
        self.read = Counter("diam_drift_records_total",
                            "Drift events of the watched namespace read (repeats and late ones "
                            "included; other namespaces' are diam_drift_other_namespace_total)",
                            registry=r)
        self.unparsed = Counter("diam_drift_unparsed_total", "Records that were not drift events",
                                registry=r)
        self.other = Counter("diam_drift_other_namespace_total",
                             "Drift events of runs into another Redis namespace than the one "
                             "the monitor watches (--namespace), skipped", registry=r)
        self.late = Counter("diam_drift_late_total",
                            "Records dropped because their user's window had already closed",
                            registry=r)
        self.after_close = Counter("diam_drift_after_close_total",
                                   "Records behind the partitions' watermark: counted in their "
                                   "user's windows, not in the window's global totals",
                                   registry=r)
        self.duplicates = Counter("diam_drift_duplicates_total",
                                  "Repeats of records already accounted (a dataflow resumed after "
                                  "a crash produces its last epoch's drift events again)",
                                  registry=r)
        self.alerts = Counter("diam_drift_alerts_total", "Alerts raised", ["kind"], registry=r)
        self.gauges = {
            name: Gauge(f"diam_drift_window_{name}", doc, registry=r)
            for name, doc in (
                # a window without drift events closes too (zeros), once event time passes it
                ("k_changes", "K_u changes in the last closed window (all users)"),
                ("users_changed", "Users whose K_u changed in the last closed window"),
                ("flip_users", "Users with an A->B->A reversal of K_u in the last closed window"),
                ("max_d_swing", "Largest per-user d_u swing in the last closed window"),
                ("guard_trips", "Guard trips in the last closed window"),
                ("rollbacks", "Rollbacks in the last closed window"),
                ("freezes", "Freezes in the last closed window"),
                ("end_seconds", "Event-time end of the last closed window (epoch seconds)"),
            )
        }

    def observe(self, out: Alert | WindowSummary) -> None:
        if isinstance(out, Alert):
            self.alerts.labels(out.kind).inc()
            return
        for kind, n in (("k_change", out.k_changes), ("guard_trip", out.guard_trips),
                        ("rollback", out.rollbacks), ("freeze", out.freezes),
                        ("reanchor", out.reanchors)):
            self.events.labels(kind).inc(n)
        for name, gauge in self.gauges.items():
            value = out.end_ms / 1000 if name == "end_seconds" else getattr(out, name)
            gauge.set(value)

    def totals(self) -> dict[str, int]:
        """What the run has counted so far, by :data:`SUMMARY`'s field names."""
        def total(name: str) -> int:
            return int(sum(s.value for m in self.registry.collect() for s in m.samples
                           if s.name == name))

        unparsed, other = total("diam_drift_unparsed_total"), total("diam_drift_other_namespace_total")
        return {"read": total("diam_drift_records_total") + unparsed + other,
                "unparsed": unparsed, "other": other,
                "duplicates": total("diam_drift_duplicates_total"),
                "late": total("diam_drift_late_total"),
                "after_close": total("diam_drift_after_close_total"),
                "alerts": total("diam_drift_alerts_total")}

    def summary_line(self, end: str = "done") -> str:
        """:data:`SUMMARY` filled from :meth:`totals`; ``end`` is ``done`` or ``stopped``."""
        return SUMMARY.format(end=end, **self.totals())


def alert_record(alert: Alert, source: str | None = None, namespace: str | None = None
                 ) -> KafkaOut:
    """An alert as a JSON record keyed by its kind; ``source``: the drift topic the monitor
    reads (``seq`` is a place in it, :func:`streams.drift.drift_position`: monitors of several
    drift topics may share the alerts topic, and ``(source, seq, kind)`` tells their alerts
    apart); ``namespace``: the Redis namespace
    whose drift events it watches (``--namespace``; absent: every run's)."""
    body = alert.to_dict()
    if source is not None:
        body["source"] = source
    if namespace is not None:
        body["namespace"] = namespace
    # JSON has no NaN nor Infinity: serving_cache.json_safe's rule, and never written
    value = json.dumps(nan_to_none(body), sort_keys=True, allow_nan=False).encode()
    return KafkaOut(key=alert.kind.encode(), value=value,
                    headers=[("diam.kind", alert.kind.encode())])


class _MonitorLogic(StatefulBatchLogic[tuple[int, int, DriftRecord], Alert | WindowSummary,
                                      DriftMonitor]):
    """Feeds the monitor and supplies the wall-clock half of watermarking the pure class
    leaves out: a partition silent for ``idle_s`` is not waited for, and a stream silent for
    ``idle_s`` closes its open windows."""

    def __init__(self, cfg: DriftConfig, resume: DriftMonitor | None, idle_s: float,
                 partitions: list[int], metrics: DriftMetrics | None = None) -> None:
        self.monitor = (resume if resume is not None
                        else DriftMonitor(cfg, partitions))
        if resume is not None:  # a resumed monitor takes this run's thresholds, its
            # detector's too (its window length and topic are the store's: check_store)
            resume.configure(cfg, partitions)
        self.metrics = metrics
        self.idle = timedelta(seconds=idle_s)
        now = datetime.now(UTC)
        self._last_input = now
        self._last_seen = {p: now for p in partitions}

    def _mark_idle(self, now: datetime) -> None:
        for p, seen in self._last_seen.items():
            if now - seen >= self.idle:
                self.monitor.mark_idle(p)

    def on_batch(self, values: list[tuple[int, int, DriftRecord]]
                 ) -> tuple[list[Alert | WindowSummary], bool]:
        now = self._last_input = datetime.now(UTC)
        out: list[Alert | WindowSummary] = []
        m = self.monitor
        dups, late, after_close = m.duplicates, m.late, m.after_close
        for partition, offset, rec in values:
            self._last_seen[partition] = now
            out.extend(m.add(rec, partition, offset))
        if self.metrics is not None:  # per batch: the summaries' late counts miss the last ones
            self.metrics.read.inc(len(values))
            self.metrics.duplicates.inc(m.duplicates - dups)
            self.metrics.late.inc(m.late - late)
            self.metrics.after_close.inc(m.after_close - after_close)
        self._mark_idle(now)
        return out + self.monitor.advance(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.monitor._open:
            return None
        return min([self._last_input, *self._last_seen.values()]) + self.idle

    def on_notify(self) -> tuple[list[Alert | WindowSummary], bool]:
        now = datetime.now(UTC)
        self._mark_idle(now)
        out = self.monitor.advance()
        if now - self._last_input >= self.idle:
            out += self.monitor.flush()
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Alert | WindowSummary], bool]:
        return self.monitor.flush(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> DriftMonitor:
        return copy.deepcopy(self.monitor)


def build_drift_flow(source: Source[RawRecord], alerts: DynamicSink[KafkaOut], cfg: DriftConfig,
                     *, metrics: DriftMetrics | None = None, on_output: OutputFn | None = None,
                     idle_close_s: float = 10.0, partitions: list[int] | None = None,
                     flow_id: str = FLOW_ID,
                     source_topic: str | None = None, namespace: str | None = None) -> Dataflow:
    """The monitor over ``source``'s records (``RawRecord`` with a JSON drift event as value).

    ``partitions``: the source topic's partitions; windows wait for each of them (or for it to
    be silent ``idle_close_s``) before closing. Alerts' ``seq`` is the place of their record
    in the topic (``streams.drift.drift_position`` of its partition and offset, whatever the
    order ``source`` interleaves the partitions in and however many there are). ``namespace``: only the drift events of runs into
    that Redis namespace are watched (and those written before events carried one; the others
    are counted, ``DriftMetrics.other``); alerts say it, and ``source_topic``
    (:func:`alert_record`)."""
    flow = Dataflow(flow_id)
    raw = op.input(_INPUT_STEP, flow, source)

    def parse(rec: RawRecord) -> tuple[int, int, DriftRecord] | None:
        parsed = parse_drift_record(rec.value)
        if parsed is None:
            if metrics is not None:
                metrics.unparsed.inc()
            return None
        if not of_namespace(parsed.namespace, namespace):
            if metrics is not None:
                metrics.other.inc()
            return None
        return rec.partition, rec.offset, parsed

    parts = list(partitions or [])
    recs = op.filter_map("parse", raw, parse)
    keyed = op.key_on("global", recs, lambda _r: "all")
    outs = op.key_rm("unkey", op.stateful_batch(
        _MONITOR_STEP, keyed,
        lambda resume: _MonitorLogic(cfg, resume, idle_close_s, parts, metrics)))

    def observe(_step: str, out: Alert | WindowSummary) -> None:
        if metrics is not None:
            metrics.observe(out)
        if on_output is not None:
            on_output(out)

    outs = op.inspect("observe", outs, observe)
    only_alerts = op.filter_map("alerts", outs, lambda o: alert_record(o, source_topic, namespace)
                                if isinstance(o, Alert) else None)
    op.output("to-alerts", only_alerts, alerts)
    return flow


STORE_OWNER = "drift-monitor.json"
"""The file in a monitor's recovery store naming what it monitors (:func:`check_store`)."""


class StoreMismatch(RuntimeError):
    """A recovery store that is not this monitor's: says whose it is."""


def check_store(path: Path, topic: str, namespace: str | None, cfg: DriftConfig,
                topic_id: str | None = None) -> bool:
    """Whether ``path`` holds a monitor's recovery store to resume from: positions of the
    monitor's input (:data:`FLOW_ID`'s, read as ``streams.runner`` reads a ``diam run``
    store's); False: none yet, and it is (re)claimed for ``topic``, ``namespace``,
    ``cfg.window_ms`` and ``topic_id`` (:data:`STORE_OWNER`, written whole; None: a broker
    without topic ids, never compared). Call it once the topic is known
    to exist: a run refused before it starts must not claim a store.

    A store holding positions of another drift topic, namespace or window length would resume
    other offsets or windows; one of a topic of the same name that has been deleted and
    re-created since (``topic_id``, Kafka's id of ``topic`` now, differs from the one the store
    recorded) would resume the old topic's offsets in the new one and skip its records; and one
    that is a ``diam run``'s
    (``streams.runner.check_store_owner``: its record, or Bytewax's files without
    :data:`STORE_OWNER`) is another dataflow's: both raise :class:`StoreMismatch`, naming what
    the store is. A store claimed by a run that never wrote a position (it failed before its
    first epoch) holds nothing of anyone's: it is claimed again. A store whose saved monitor
    cannot be read back raises :class:`StoreMismatch` too (:func:`check_monitor_state`)."""
    # the one reader of a store's positions, and the one rule of whose a store is
    from streams.runner import DRIFT_STORE, RecoveryForeign, _store_partitions, check_store_owner

    want: dict[str, object] = {"topic": topic, "namespace": namespace,
                               "window_ms": cfg.window_ms}
    owner = path / STORE_OWNER
    try:
        check_store_owner(path, DRIFT_STORE)
    except RecoveryForeign as exc:
        raise StoreMismatch(str(exc)) from None
    has_files = path.is_dir() and any(path.glob("part-*.sqlite3"))
    has_data = has_files and bool(_store_partitions(path, f"{FLOW_ID}.{_INPUT_STEP}"))
    if owner.exists() and has_data:
        try:
            have = json.loads(owner.read_text())
            if not isinstance(have, dict):
                raise ValueError(f"not a JSON object: {have!r:.80}")
        except (OSError, ValueError) as exc:
            raise StoreMismatch(f"the recovery store {path}: {owner.name} is unreadable "
                                f"({exc}); give the monitor another --recovery-dir") from None
        if {k: have.get(k) for k in want} != want:
            said = ", ".join(f"{k} {have.get(k)!r}" for k in sorted(want)
                             if have.get(k) != want[k])
            wanted = ", ".join(f"{k} {want[k]!r}" for k in sorted(want) if have.get(k) != want[k])
            raise StoreMismatch(f"the recovery store {path} is the drift monitor's of {said}, "
                                f"not {wanted}: resuming it would mix them; give this monitor "
                                "another --recovery-dir")
        had = have.get("topic_id")
        if isinstance(had, str) and topic_id is not None and had != topic_id:
            raise StoreMismatch(
                f"the recovery store {path} was written for topic {topic!r} with id {had}, and "
                f"{topic!r} now has id {topic_id}: it was deleted and re-created since, and "
                "resuming would skip the new topic's records at the offsets the store had "
                "read; give this monitor another (or an emptied) --recovery-dir to read the "
                "new topic from its start")
        if had is None and topic_id is not None:  # a store from before it said the id
            _claim(path, {**have, "topic_id": topic_id})
        check_monitor_state(path)
        return True
    _claim(path, {**want, "topic_id": topic_id})
    return False


def check_monitor_state(path: Path) -> None:
    """Refuse (:class:`StoreMismatch`) a recovery store whose saved monitor, the one a resumed
    run would load (the newest snapshot of the ``monitor`` step at or before the store's
    committed epoch), cannot be read back as a :class:`~streams.drift.DriftMonitor`: Bytewax
    would panic over it after the start line (a Rust backtrace, then Python's
    ``UnpicklingError``). The message names the store and what to do."""
    import pickle
    import sqlite3

    step = f"{FLOW_ID}.{_MONITOR_STEP}"
    dbs = sorted(path.glob("part-*.sqlite3"))

    def query(db: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                return con.execute(sql, args).fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise StoreMismatch(f"the recovery store {path}: cannot read {db.name} ({exc}); "
                                "give this monitor another (or an emptied) --recovery-dir"
                                ) from None

    commits = [int(e) for db in dbs  # type: ignore[call-overload]
               for (e,) in query(db, "SELECT commit_epoch FROM commits")]
    upto = min(commits) if commits else None
    for db in dbs:
        rows = query(db, "SELECT state_key, ser_change FROM snaps AS s WHERE step_id = ? AND "
                     "snap_epoch = (SELECT MAX(snap_epoch) FROM snaps AS t WHERE t.step_id = "
                     "s.step_id AND t.state_key = s.state_key AND (? IS NULL OR "
                     "t.snap_epoch <= ?))", (step, upto, upto))
        for key, blob in rows:
            if blob is None:  # the state was discarded: nothing to load
                continue
            try:
                state = pickle.loads(blob)  # type: ignore[arg-type]
                problem = (None if isinstance(state, DriftMonitor)
                           else f"a {type(state).__name__}, not a drift monitor")
            except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, said once
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                raise StoreMismatch(
                    f"the recovery store {path}: the drift monitor's saved state ({db.name}, "
                    f"{step} {key}) cannot be read ({problem}); give this monitor another (or "
                    "an emptied) --recovery-dir: it starts over from --from-end (the default) "
                    "or --from-beginning, without the saved windows")


def _claim(path: Path, owner: dict[str, object]) -> None:
    """Write :data:`STORE_OWNER` in ``path`` whole (``owner``: what the store is of)."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{STORE_OWNER}.{os.getpid()}"
    tmp.write_text(json.dumps(owner, sort_keys=True) + "\n")
    os.replace(tmp, path / STORE_OWNER)


class DriftTopicUnusable(ValueError):
    """A drift topic the monitor cannot number alerts in: says why."""


def check_partitions(topic: str, parts: list[int]) -> None:
    """Refuse (:class:`DriftTopicUnusable`) a drift topic with a partition id of
    :data:`~streams.drift.SEQ_STRIDE` or more: its records would have no ``seq``
    (``streams.drift.drift_position``).

    >>> check_partitions("diam.drift", list(range(1025)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    streams.drift_flow.DriftTopicUnusable: topic 'diam.drift' has 1025 partitions: ...
    """
    if parts and max(parts) >= SEQ_STRIDE:
        raise DriftTopicUnusable(f"topic {topic!r} has {max(parts) + 1} partitions: alerts' seq "
                                 f"numbers {SEQ_STRIDE} at most (streams.drift.SEQ_STRIDE); "
                                 "monitor a topic with fewer")


def run_drift(kafka: KafkaConfig, cfg: DriftConfig, *, topic: str | None = None,
              alerts_topic: str | None = None, bounded: bool = False, from_end: bool = False,
              metrics: DriftMetrics | None = None, on_output: OutputFn | None = None,
              idle_close_s: float = 10.0, namespace: str | None = None,
              stop: threading.Event | None = None, recovery_dir: Path | None = None) -> bool:
    """Run the monitor on ``topic`` (default the drift topic) until the input ends (``bounded``:
    the high watermarks at start) or forever. ``from_end`` skips what is already in the topic.
    A bounded run reads what the topic holds: one that does not exist raises ``UnknownTopic``
    (a misspelt name would be created and read as "nothing drifted"); a tailing monitor
    creates it, as it may start before the first dataflow writes drift events.

    Alerts' ``seq`` is the place in the topic of the record that raised them
    (``streams.drift.drift_position``): a run over the same records, resumed or not, whatever
    its partitions' interleaving, numbers them the same (:class:`~streams.drift.Alert`).
    ``namespace``: watch only the drift events of runs into that Redis namespace. ``stop``: once
    set, the input ends at its next batch, as a bounded run's end (open windows close, the
    alerts produced are delivered): ``diam drift run`` sets it on SIGINT/SIGTERM.

    ``recovery_dir``: a Bytewax recovery store (created on first use, locked while the run
    lasts): a run on a store that holds a position resumes from it (the monitor's state and
    the offsets after its last epoch; ``from_end`` then only applies to partitions it has no
    position for), so nothing written while it was down is skipped. Returns whether it
    resumed. A store of another topic (or of one re-created since under the same name: Kafka's
    topic id, recorded in the store), namespace or window length raises
    :class:`StoreMismatch`; one in use, ``streams.runner.RecoveryInUse``."""
    from bytewax.testing import run_main

    topic = topic or kafka.drift_topic
    alerts_topic = alerts_topic or kafka.alerts_topic
    recovery, lock, resumed = None, None, False
    if recovery_dir is not None:
        from streams.runner import hold_recovery, prepare_recovery

        lock = hold_recovery(recovery_dir)  # a second monitor on it would undo this one's
    try:
        if not bounded:
            ensure_topic(kafka, topic)
        parts = partition_ids(kafka, topic)  # UnknownTopic for a bounded run's; never creates it
        check_partitions(topic, parts)
        ensure_topic(kafka, alerts_topic)
        if recovery_dir is not None:  # claimed only once the topic is there to read
            from streams.forget_markers import topic_id

            resumed = check_store(recovery_dir, topic, namespace, cfg,
                                  topic_id(kafka, topic))
            recovery = prepare_recovery(recovery_dir)
        _run(kafka, cfg, topic, alerts_topic, bounded, from_end, metrics, on_output,
             idle_close_s, namespace, stop, recovery, run_main, parts)
    finally:
        if lock is not None:
            os.close(lock)
    return resumed


def _run(kafka: KafkaConfig, cfg: DriftConfig, topic: str, alerts_topic: str, bounded: bool,
         from_end: bool, metrics: DriftMetrics | None, on_output: OutputFn | None,
         idle_close_s: float, namespace: str | None, stop: threading.Event | None,
         recovery: object, run_main: Callable[..., None], parts: list[int]) -> None:
    marks = watermarks(kafka, topic)
    start = {p: hi if from_end else lo for p, (lo, hi) in marks.items()}
    # Small batches interleave the partitions finely while catching up on a backlog.
    health = BrokerHealth(kafka.bootstrap)  # one outage line for the monitor's clients
    source = ClickSource(kafka, topic, start=start, bounded=bounded, batch_size=200,
                         health=health, stop=stop)
    flow = build_drift_flow(source, KafkaRecordSink(kafka, alerts_topic, health), cfg,
                            metrics=metrics,
                            on_output=on_output, idle_close_s=idle_close_s,
                            partitions=parts,
                            source_topic=topic, namespace=namespace)
    run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=recovery)
