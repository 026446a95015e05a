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

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink

from online_model import UserState
from serving_cache.codec import UserVectors, new_vectors
from streams.config import FlowConfig
from streams.events import _USER_ID_RE, Click, Rejection, decode_click
from streams.kafka_io import KafkaOut, RawRecord

_NO_SEEN = np.zeros(0, dtype=np.int32)

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
        # users' recovery snapshots (streams.metrics groups them by epoch); added without the
        # lock, from the worker thread that owns the user
        self.snapshots = 0
        self.snapshot_s = 0.0

    def _count_batch(self, recs: list[RawRecord], decoded: list[tuple[Any, Any]]) -> None:
        # once per input batch, not per record: a lock round trip per event is measurable
        if not recs:
            return
        rejected = sum(1 for first, _ in decoded if type(first) is not str)
        last: dict[int, int] = {}
        for rec in recs:
            last[rec.partition] = rec.offset
        with self._lock:
            self.records += len(recs)
            self.valid += len(recs) - rejected
            self.rejected += rejected
            self.last_offsets.update(last)

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"records": self.records, "valid": self.valid, "rejected": self.rejected,
                    "users": self.users, "pushes": self.pushes, "drift_events": self.drift_events}


@dataclass(frozen=True)
class FlowSinks:
    """Where the dataflow's three outputs go. Dead letters and drift events arrive as
    ``(key, KafkaOut)`` pairs (the key names the source partition / the user), the shape
    ``streams.kafka_io.KafkaEpochSink`` takes; ``TestingSink`` takes anything."""

    vectors: DynamicSink[tuple[str, UserVectors]]
    deadletter: Sink[tuple[str, KafkaOut]]
    drift: Sink[tuple[str, KafkaOut]]


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
        self.reloads = 0
        """New base versions picked up since the start (hot reloads; streams.metrics)."""

    def maybe_reload(self) -> None:
        if self._reload is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        found = self._reload()
        if found is not None:  # a new version, or new items appended under the same one
            self.reloads += found[1] != self.version
            self.learner, self.version = found

    @property
    def anchor_kind(self) -> str:
        """What anchors users on the current base (``"diam"`` or ``"kmeans"``), pushed with
        the vectors so that a reader of Redis knows which produced them."""
        return str(getattr(getattr(self.learner, "base", None), "anchor_kind", "kmeans"))


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


def _decoder(cfg: FlowConfig) -> Callable[[list[RawRecord]], list[tuple[Any, Any]]]:
    """Decode and validate a batch in one pass. A valid click comes out already keyed for the
    per-user step, ``(user_id, (record, click))`` (the record rides along so that a failure in
    the learning step can dead-letter its original bytes); a rejected record as
    ``(record, Rejection)``.
    The two are told apart by the type of the first element (``str`` or :class:`RawRecord`),
    so neither downstream filter allocates. One pass instead of decode-then-key: at a 10k-record
    batch, the second pass over cold records and its tuples cost ~3 µs per event."""
    max_bytes, ts_min, skew = cfg.max_event_bytes, cfg.ts_min_ms, cfg.ts_max_future_ms

    def decode_batch(recs: list[RawRecord]) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        append = out.append
        for rec in recs:
            if rec.value is None and rec.key is not None:
                # A tombstone keyed by a user (``diam forget``): the per-user step forgets the
                # user at this offset, so a replay of the topic forgets them too.
                uid = forget_target(rec.key)
                if uid is not None:
                    append((uid, (rec, None)))
                    continue
            # The upper time bound is the record's own timestamp plus the allowed skew, not the
            # wall clock, so a replay accepts and rejects exactly what the live run did.
            ts = rec.ts_ms
            ev = decode_click(rec.value, max_bytes=max_bytes, ts_min_ms=ts_min,
                              ts_max_ms=ts + skew if ts > 0 else None)
            if type(ev) is tuple:
                key = rec.key
                if key is None or key == ev[0].encode():
                    append((ev[0], (rec, ev)))
                    continue
                ev = Rejection(
                    f"key: record key {key[:64]!r} differs from user_id {ev[0]!r} "
                    "(events must be keyed by user so that a user's clicks stay in order)"
                )
            append((rec, ev))
        return out
    return decode_batch


def forget_target(key: bytes) -> str | None:
    """The user a tombstone (a record with this key and no value) asks to forget; None when
    the key is not a valid user id (the record is then dead-lettered like any empty one).

    >>> forget_target(b"u42"), forget_target(b"a:b")
    ('u42', None)
    """
    try:
        uid = key.decode()
    except UnicodeDecodeError:
        return None
    return uid if _USER_ID_RE.fullmatch(uid) else None


@dataclass
class _UserSnap:
    """What recovery stores per user: the learner state and the push bookkeeping."""

    user_id: str
    state: Any
    since_push: int
    dirty: bool


class _UserLogic(StatefulBatchLogic[tuple[RawRecord, Click], tuple[str, Any], Any]):
    """One user's learner state and push bookkeeping.

    Push cadence uses the wall clock (it only decides *when* vectors are written, never what
    they are). The next notification time is computed once when the state turns dirty, because
    Bytewax asks ``notify_at`` after every batch of every key.
    """

    def __init__(self, holder: LearnerHolder, cfg: FlowConfig, resume: _UserSnap | None,
                 stats: FlowStats | None, recovery: bool = True) -> None:
        self.holder, self.cfg, self.stats = holder, cfg, stats
        self.recovery = recovery
        if isinstance(resume, tuple):  # what ``snapshot`` stores: (user, packed state, since, dirty)
            uid, packed, since_push, dirty = resume
            resume = _UserSnap(uid, UserState.unpack(packed), since_push, dirty)
        elif isinstance(resume, _UserSnap) and isinstance(resume.state, bytes):
            # written by a release before the packed form (a pickled state object)
            raise RuntimeError(
                f"the recovery store holds user {resume.user_id!r} in an older snapshot format; "
                "resume it with the diam-stream release that wrote it, or start a new store "
                "(another --recovery-dir, or delete this one: the run then re-reads the topic)")
        self.snap = resume
        self._last_push = self._seen = time.time()
        self._due: datetime | None = None
        if resume is not None and resume.dirty:
            self._due = datetime.now(UTC)

    def _push(self) -> tuple[str, Any]:
        s = self.snap
        assert s is not None
        st = s.state
        s.since_push, s.dirty = 0, False
        self._last_push = time.time()
        self._due = None
        # (counted per output batch by the "vectors" step, not here: a lock per push shows)
        V = st.V
        seen = st.recent[-self.cfg.seen_items:] if self.cfg.seen_items else _NO_SEEN
        return ("v", (s.user_id, new_vectors(st.seq, st.version, V.shape[0], st.d, V.shape[1], V.copy(),
                                             st.last_ts, st.n_events, self.holder.anchor_kind,
                                             seen)))

    def _forget(self, values: list[tuple[RawRecord, Click | None]]) -> tuple[list[tuple[str, Any]], bool]:
        """A batch holding a forget (``(record, None)``): the user's state is dropped there and
        the sink deletes their key (``(user, None)``); clicks after it start a new state."""
        out: list[tuple[str, Any]] = []
        start = 0
        for i, (rec, click) in enumerate(values):
            if click is None:
                if i > start:
                    out += self.on_batch(values[start:i])[0]  # type: ignore[arg-type]
                uid = self.snap.user_id if self.snap is not None else rec.key.decode()  # type: ignore[union-attr]
                self.snap, self._due = None, None
                out.append(("v", (uid, None)))
                start = i + 1
        if start < len(values):
            out += self.on_batch(values[start:])[0]  # type: ignore[arg-type]
        return out, StatefulBatchLogic.DISCARD if self.snap is None else StatefulBatchLogic.RETAIN

    def on_batch(self, values: list[tuple[RawRecord, Click]]) -> tuple[list[tuple[str, Any]], bool]:
        self._seen = time.time()
        if any(v[1] is None for v in values):
            return self._forget(values)  # type: ignore[arg-type]
        learner = self.holder.learner
        out: list[tuple[str, Any]] = []
        s = self.snap
        if s is None:
            uid = values[0][1][0]
            s = self.snap = _UserSnap(uid, learner.new_state(uid), 0, False)
            if self.stats is not None:
                self.stats._add("users")
        state = s.state
        for rec, (_, item_id, ts, session_id) in values:
            # The learner skips offsets it has applied already (at-least-once input after a
            # resume) and re-anchors a user whose state predates the current base version.
            try:
                drifts = learner.apply(state, item_id, ts, rec.offset, session_id)
            except Exception as exc:  # noqa: BLE001 - one record must not stop every user
                # The last line of defence: an event that makes the update itself fail is
                # dead-lettered with the exception's type, and the user's learning goes on.
                # The learner advanced ``seq`` first, so a replay fails (and skips) identically.
                out.append(("e", (str(rec.partition), deadletter_record(
                    rec, f"learn: {type(exc).__name__} in the online update"))))
                continue
            if drifts:
                out.extend(("x", d) for d in drifts)
        s.since_push += len(values)
        # A user who has clicked only items the base does not know has no vector yet (all
        # zeros): nothing worth serving, so nothing is pushed until a known item arrives.
        s.dirty = state.n_recent > 0
        if not s.dirty:
            return out, StatefulBatchLogic.RETAIN
        cfg = self.cfg
        if s.since_push >= cfg.push_every_events or (time.time() - self._last_push) * 1000 >= cfg.push_every_ms:
            out.append(self._push())
        elif self._due is None:
            self._due = datetime.fromtimestamp(self._last_push + cfg.push_every_ms / 1000, UTC)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        idle = self.cfg.evict_idle_s
        if idle is None:
            return self._due
        evict = datetime.fromtimestamp(self._seen + idle, UTC)
        return evict if self._due is None or evict < self._due else self._due

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        idle = self.cfg.evict_idle_s
        if idle is not None and time.time() - self._seen >= idle:
            # idle too long: pushed one last time if needed, then dropped from the state (its
            # key stays in Redis, until ``RedisConfig.user_ttl_s`` if set); a returning user
            # starts over from the base, as a new one
            last = [self._push()] if self.snap is not None and self.snap.dirty else []
            return last, StatefulBatchLogic.DISCARD
        if self.snap is not None and self.snap.dirty:
            return [self._push()], StatefulBatchLogic.RETAIN
        self._due = None
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        return self.on_notify()

    def snapshot(self) -> _UserSnap | tuple:
        assert self.snap is not None
        if not self.recovery:
            # Bytewax asks every touched key for a snapshot at each epoch end even when no
            # recovery store will keep it; without one, the live object is enough (it is
            # never written anywhere), and pickling ~2 KB per user per epoch is not free.
            return self.snap
        # Bytewax pickles every touched key's snapshot at each epoch end, on the dataflow's
        # thread: a flat tuple of plain values is both the copy and cheap to pickle (~6 µs per
        # user; pickling the state object and a dataclass cost ~30). At 5k events/s over a few
        # thousand users this is what the epoch-end pause is made of.
        s = self.snap
        t0 = time.perf_counter()
        # Marked dirty whenever the user has vectors: Redis writes are asynchronous
        # (streams.redis_sink), so a push made before this epoch ended may not have reached
        # Redis when a crash comes; a resumed user is therefore pushed again (idempotent).
        out = (s.user_id, s.state.pack(), s.since_push, s.state.n_recent > 0)
        if self.stats is not None:
            self.stats.snapshots += 1
            self.stats.snapshot_s += time.perf_counter() - t0
        return out


def build_flow(source: Source[RawRecord], sinks: FlowSinks, cfg: FlowConfig,
               holder: LearnerHolder, flow_id: str = "diam-online",
               stats: FlowStats | None = None, recovery: bool = True) -> Dataflow:
    """The online dataflow over ``source``'s :class:`RawRecord` items.

    The same builder runs under ``TestingSource`` in unit tests and over :class:`ClickSource`
    against the real broker. Stateless steps work on whole batches (``flat_map_batch``): a
    per-item Bytewax operator costs microseconds of Python call overhead per event, and the
    stream is meant to run at tens of thousands of events per second per process.
    ``recovery=False`` (no recovery store) skips pickling the per-user snapshots.
    """
    decode = _decoder(cfg)

    def decode_batch(recs: list[RawRecord]) -> list[tuple[Any, Any]]:
        holder.maybe_reload()  # hot reload is checked once per batch, not per event
        out = decode(recs)
        if stats is not None:
            stats._count_batch(recs, out)
        return out

    def valid_keyed(batch: list[tuple[Any, Any]]) -> list[tuple[str, tuple[RawRecord, Click]]]:
        return [x for x in batch if type(x[0]) is str]

    def rejected(batch: list[tuple[Any, Any]]) -> list[tuple[str, KafkaOut]]:
        return [(str(rec.partition), deadletter_record(rec, ev.reason))
                for rec, ev in batch if type(rec) is not str]

    flow = Dataflow(flow_id)
    raw: Stream[RawRecord] = op.input("clicks", flow, source)
    decoded = op.flat_map_batch("decode", raw, decode_batch)
    bad = op.flat_map_batch("rejected", decoded, rejected)
    # Already (user_id, value) pairs: the keyed stream that the stateful step routes by user.
    keyed: KeyedStream[tuple[RawRecord, Click]] = op.flat_map_batch("by-user", decoded, valid_keyed)  # type: ignore[assignment]
    learned = op.stateful_batch("learn", keyed, lambda resume: _UserLogic(holder, cfg, resume, stats, recovery))
    def vectors(batch: list[tuple[str, tuple[str, Any]]]) -> list[Any]:
        out = [t[1] for _, t in batch if t[0] == "v"]
        if stats is not None and out:
            stats._add("pushes", len(out))
        return out

    def drifts(batch: list[tuple[str, tuple[str, Any]]]) -> list[tuple[str, KafkaOut]]:
        out = [(u, drift_record(t[1])) for u, t in batch if t[0] == "x"]
        if stats is not None and out:
            stats._add("drift_events", len(out))
        return out

    def failed(batch: list[tuple[str, tuple[str, Any]]]) -> list[tuple[str, KafkaOut]]:
        out = [t[1] for _, t in batch if t[0] == "e"]
        if stats is not None and out:
            stats._add("valid", -len(out))
            stats._add("rejected", len(out))
        return out

    op.output("redis", op.flat_map_batch("vectors", learned, vectors), sinks.vectors)
    op.output("drift", op.flat_map_batch("to-drift", learned, drifts), sinks.drift)
    learn_failed = op.flat_map_batch("learn-failed", learned, failed)
    op.output("deadletter", op.merge("deadletters", bad, learn_failed), sinks.deadletter)
    return flow
