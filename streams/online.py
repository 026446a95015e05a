"""The online dataflow: Kafka clicks → validate → per-user online learning → Redis and drift.

::

    clicks ─► decode+validate ─┬─bad─► dead-letter (original bytes; reason in headers)
                               └─ok──► key by user ─► learn (stateful, per user)
                                                   ├─► vectors ─► Redis (write-if-newer)
                                                   └─► drift events ─► diam.drift

The per-user step calls :class:`online_model.OnlineLearner` — the very function the offline
prequential evaluation calls — and coalesces pushes: a user's vectors are emitted after
``push_every_events`` events, or ``push_every_ms`` after the last push, and always at the end
of a bounded input. Vectors depend only on the user's own events and their offsets, so the
same events give the same Redis state under any worker count, and after a crash and resume.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink

from serving_cache.codec import UserVectors
from streams.config import FlowConfig
from streams.events import ClickEvent, Rejection, decode_event
from streams.kafka_io import KafkaOut, RawRecord

__all__ = ["FlowSinks", "FlowStats", "LearnerHolder", "build_flow", "deadletter_record", "drift_record"]


class FlowStats:
    """Counters a caller can read while the dataflow runs (progress bars, run summaries).

    Updated from every worker thread of the process; the lock keeps counts exact.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records = 0
        self.valid = 0
        self.rejected = 0
        self.users = 0
        self.pushes = 0
        self.drift_events = 0
        self.last_offsets: dict[int, int] = {}

    def _count(self, rec: RawRecord, ok: bool) -> None:
        with self._lock:
            self.records += 1
            if ok:
                self.valid += 1
            else:
                self.rejected += 1
            self.last_offsets[rec.partition] = rec.offset

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"records": self.records, "valid": self.valid, "rejected": self.rejected,
                    "users": self.users, "pushes": self.pushes, "drift_events": self.drift_events}


@dataclass(frozen=True)
class FlowSinks:
    """Where the dataflow's three outputs go."""

    vectors: DynamicSink[tuple[str, UserVectors]]
    deadletter: DynamicSink[KafkaOut]
    drift: DynamicSink[KafkaOut]


class LearnerHolder:
    """The process's current online learner and base version.

    ``refresh`` is called at most every few seconds from the dataflow; it returns a new learner
    when a new base version became active (hot reload). Users are re-anchored lazily, on their
    next event, by comparing the version in their state with the holder's.
    """

    def __init__(self, learner: Any, version: str,
                 reload: Callable[[], tuple[Any, str] | None] | None = None,
                 check_every_s: float = 2.0) -> None:
        self.learner = learner
        self.version = version
        self._reload = reload
        self._check_every_s = check_every_s
        self._next_check = 0.0

    def maybe_reload(self) -> None:
        if self._reload is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        found = self._reload()
        if found is not None and found[1] != self.version:
            self.learner, self.version = found


def deadletter_record(rec: RawRecord, reason: str) -> KafkaOut:
    """The dead-letter form of a rejected record: the original key and bytes untouched, the
    reason and the source coordinates in headers (``kcat -f '%h %s'`` shows them)."""
    return KafkaOut(
        key=rec.key,
        value=rec.value if rec.value is not None else b"",
        headers=[
            ("diam.reason", reason.encode()),
            ("diam.topic", rec.topic.encode()),
            ("diam.partition", str(rec.partition).encode()),
            ("diam.offset", str(rec.offset).encode()),
        ],
    )


def drift_record(event: Any) -> KafkaOut:
    """A drift event as a JSON record keyed by user."""
    body = event.to_dict()
    return KafkaOut(key=str(body["user_id"]).encode(), value=json.dumps(body, sort_keys=True).encode(),
                    headers=[("diam.kind", str(body["kind"]).encode())])


def _decoder(cfg: FlowConfig, stats: FlowStats | None = None
             ) -> Callable[[RawRecord], tuple[RawRecord, ClickEvent | Rejection]]:
    def decode(rec: RawRecord) -> tuple[RawRecord, ClickEvent | Rejection]:
        rv = _decode(rec)
        if stats is not None:
            stats._count(rec, isinstance(rv[1], ClickEvent))
        return rv

    def _decode(rec: RawRecord) -> tuple[RawRecord, ClickEvent | Rejection]:
        # The upper time bound is the record's own timestamp plus the allowed skew, not the
        # wall clock, so a replay accepts and rejects exactly what the live run did.
        ts_max = rec.ts_ms + cfg.ts_max_future_ms if rec.ts_ms > 0 else None
        ev = decode_event(rec.value, max_bytes=cfg.max_event_bytes, ts_min_ms=cfg.ts_min_ms,
                          ts_max_ms=ts_max)
        if isinstance(ev, ClickEvent) and rec.key is not None and rec.key != ev.user_id.encode():
            return rec, Rejection(
                f"key: record key {rec.key[:64]!r} differs from user_id {ev.user_id!r} "
                "(events must be keyed by user so that a user's clicks stay in order)"
            )
        return rec, ev
    return decode


@dataclass
class _UserSnap:
    """What recovery stores per user: the learner state and the push bookkeeping."""

    user_id: str
    state: Any
    since_push: int
    dirty: bool


class _UserLogic(StatefulBatchLogic[tuple[int, ClickEvent], tuple[str, Any], _UserSnap]):
    def __init__(self, holder: LearnerHolder, cfg: FlowConfig, resume: _UserSnap | None,
                 stats: FlowStats | None) -> None:
        self.holder, self.cfg, self.stats = holder, cfg, stats
        self.snap = resume
        self._last_push = time.monotonic()

    def _push(self) -> tuple[str, Any]:
        s = self.snap
        assert s is not None
        st = s.state
        s.since_push, s.dirty = 0, False
        self._last_push = time.monotonic()
        if self.stats is not None:
            self.stats._add("pushes")
        vecs = st.vectors()
        return ("v", (s.user_id, UserVectors(seq=int(st.seq), model=str(st.version), k=int(vecs.shape[0]),
                                           d=float(st.d), dim=int(vecs.shape[1]), vecs=vecs,
                                           ts=int(st.last_ts), n=int(st.n_events))))

    def on_batch(self, values: list[tuple[int, ClickEvent]]) -> tuple[list[tuple[str, Any]], bool]:
        holder = self.holder
        out: list[tuple[str, Any]] = []
        for offset, ev in values:
            if self.snap is None:
                self.snap = _UserSnap(ev.user_id, holder.learner.new_state(ev.user_id), 0, False)
                if self.stats is not None:
                    self.stats._add("users")
            s = self.snap
            # The learner skips offsets it has applied already (at-least-once input after a
            # resume) and re-anchors a user whose state predates the current base version.
            drifts = holder.learner.apply(s.state, ev.item_id, ev.ts, offset, ev.session_id)
            if drifts:
                out.extend(("x", d) for d in drifts)
                if self.stats is not None:
                    self.stats._add("drift_events", len(drifts))
            s.since_push += 1
            s.dirty = True
        s = self.snap
        if s is not None and s.dirty and (
            s.since_push >= self.cfg.push_every_events
            or (time.monotonic() - self._last_push) * 1000 >= self.cfg.push_every_ms
        ):
            out.append(self._push())
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.snap is None or not self.snap.dirty:
            return None
        due = self.cfg.push_every_ms / 1000 - (time.monotonic() - self._last_push)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, due))

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        if self.snap is not None and self.snap.dirty:
            return [self._push()], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        return self.on_notify()

    def snapshot(self) -> _UserSnap:
        assert self.snap is not None
        return _UserSnap(self.snap.user_id, copy.deepcopy(self.snap.state), self.snap.since_push,
                         self.snap.dirty)


def build_flow(source: Source[RawRecord], sinks: FlowSinks, cfg: FlowConfig,
               holder: LearnerHolder, flow_id: str = "diam-online",
               stats: FlowStats | None = None) -> Dataflow:
    """The online dataflow over ``source``'s :class:`RawRecord` items.

    The same builder runs under ``TestingSource`` in unit tests and over :class:`ClickSource`
    against the real broker.
    """
    flow = Dataflow(flow_id)
    raw: Stream[RawRecord] = op.input("clicks", flow, source)
    decoded = op.map("decode", raw, _decoder(cfg, stats))
    split = op.branch("valid", decoded, lambda rv: isinstance(rv[1], ClickEvent))
    op.output("deadletter", op.map("to-deadletter", split.falses,
                                   lambda rv: deadletter_record(rv[0], rv[1].reason)),
              sinks.deadletter)

    keyed = op.key_on("by-user", op.map("offset-event", split.trues, lambda rv: (rv[0].offset, rv[1])),
                      lambda oe: oe[1].user_id)

    def maybe_reload(item: Any) -> Any:
        holder.maybe_reload()
        return item

    keyed = op.map_value("hot-reload", keyed, maybe_reload)
    learned = op.stateful_batch("learn", keyed, lambda resume: _UserLogic(holder, cfg, resume, stats))
    tagged = op.key_rm("unkey", learned)
    outs = op.branch("kind", tagged, lambda t: t[0] == "v")
    op.output("redis", op.map("vectors", outs.trues, lambda t: t[1]), sinks.vectors)
    op.output("drift", op.map("to-drift", outs.falses, lambda t: drift_record(t[1])), sinks.drift)
    return flow
