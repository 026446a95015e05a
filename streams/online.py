"""The online dataflow: Kafka clicks → validate → per-user online learning → Redis and drift.

::

    clicks ─► decode ─branch─┬─ DeadLetter ─────────────────────────────┬─► dead letters
                             └─ (user, Learn | Forget) ─► learn (per user) │   (original bytes,
                                   ─branch─┬─ (user, UserVectors | None) ─► Redis  reason in
                                           ├─ (user, DriftEvent) ─► diam.drift      headers)
                                           └─ (user, DeadLetter) ───────────┘

Between steps travel small typed records (:class:`Learn`, :class:`Forget`,
:class:`DeadLetter`), told apart by Bytewax branches. Redis also gets
``(user, RELEASED)`` after an evicted user's last push (``streams.redis_sink``).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeGuard, TypeVar, cast

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink

from online_model import DriftEvent, UserState
from serving_cache.base_record import BaseRecord
from serving_cache.codec import UserVectors, new_vectors
from streams.config import FlowConfig
from streams.events import USER_ID_RE, Click, Rejection, decode_click, validate_user_id
from streams.kafka_io import RawRecord
from streams.kafka_sink import KafkaOut
from streams.redis_sink import RELEASED, Item, Released, resumed_push

_NO_SEEN = np.zeros(0, dtype=np.int32)
T = TypeVar("T")

__all__ = ["Counts", "DeadLetter", "FlowSinks", "FlowStats", "Forget", "Learn", "LearnerHolder",
           "Verdicts", "build_flow", "deadletter_record", "drift_record", "forget_target",
           "record_judge", "skip_forgotten", "source_judge"]


class Learn(NamedTuple):
    """A valid click for the per-user step, with the record it came from (a failure in the
    update dead-letters the record's original bytes; its offset keys the step's randomness)."""

    record: RawRecord
    click: Click


class Forget(NamedTuple):
    """A tombstone keyed by a user (``diam forget``): the per-user step drops the user's state
    at this offset and the sink deletes their key, so a replay of the topic forgets them too."""

    record: RawRecord


class DeadLetter(NamedTuple):
    """A record the dataflow refuses, and why (decoding, validation, or the update itself)."""

    record: RawRecord
    reason: str


class PerThread(Generic[T]):
    """One ``T`` per thread that asks (a dataflow's worker threads), each written by its own
    thread only, so the per-event path takes no lock; :meth:`all` lists them for a reader."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()
        self._all: list[T] = []
        self._lock = threading.Lock()  # taken once per thread, to register its value

    def mine(self) -> T:
        """The calling thread's value, made at its first call."""
        try:
            return cast(T, self._local.value)
        except AttributeError:
            value = self._local.value = self._make()
            with self._lock:
                self._all.append(value)
            return value

    def all(self) -> list[T]:
        with self._lock:
            return list(self._all)


@dataclass
class Counts:
    """One worker thread's counters. Only that thread writes them, so no lock is taken on the
    per-event path; :class:`FlowStats` sums them when read."""

    records: int = 0
    rejected: int = 0
    """Dead-lettered records: refused by decoding or validation, or failed in the update."""
    forgets: int = 0
    """Tombstones (``diam forget``): records, neither valid clicks nor dead letters. Counted
    with ``records`` and ``rejected``, in one place (:func:`_counted_judge`), by whoever judges
    the records: the decode step, or a source given :func:`source_judge`."""
    forgotten_clicks: int = 0
    """Valid clicks not learnt because ``diam forget`` forgot their user after them: the
    user's forget marker, read when the run started (``streams.runner.prepare_online``), lies
    above the click's offset (:func:`skip_forgotten`). Counted by the decode step, among
    ``valid``."""
    ended: int = 0
    """User states ended: forgotten, started over after idleness, or dropped as idle; ``users``
    less this is the number of users held in the state. Declared before ``users`` so that
    :meth:`FlowStats.total`, which reads the fields in this order while workers count, never
    reads more ended than started (the held count can be high for a moment, never below 0)."""
    users: int = 0
    """User states started or resumed: a new user, a user resumed from the recovery store, and
    a user again after a forget or idleness."""
    resumed: int = 0
    """Of ``users``, those resumed from the recovery store. Each is pushed again with the
    state it was resumed with (``resumed_repushes`` when Redis holds it already), and a run
    resumed after a crash reads again the records after the snapshot it resumed from, so its
    next pushes may re-write what Redis holds already too (``stale_pushes``)."""
    evictions: int = 0
    """Users dropped from the state as idle (``FlowConfig.evict_idle_s``)."""
    restarts: int = 0
    """Clicks that started a user held in the state over from the base, ``evict_idle_s`` or
    more after the user's previous click on the partition's event clock (a dropped user's
    return is a new state instead, counted in ``users``)."""
    redis_answered: int = 0
    """Pushes whose Redis write returned: written, kept out as not newer, refused as forgotten,
    or superseded in the same write (counted by ``streams.redis_sink`` on its writer thread,
    once per push). ``pushes`` less this is what Redis has not been sent yet (queued, or
    waiting out an outage): a run stopped at once (a second signal) says how many. Declared
    before ``pushes`` so that :meth:`FlowStats.total`, read while the workers count, never
    reads more answered than pushed."""
    pushes: int = 0
    drift_events: int = 0
    learn_calls: int = 0
    """Calls of the learner's batched step (one per user per source batch, between Forgets):
    valid records over this say how many clicks each compiled call learns."""
    unknown_items: int = 0
    """Valid clicks on items the base does not know: they update the user's signals and clock,
    not the vectors (a user with only such clicks has no vector and is not pushed). Many of
    them mean the item ids do not match the model's (or the catalogue grew since it)."""
    stale_pushes: int = 0
    """Pushes Redis did not write because it held the user at a newer or equal seq (counted by
    ``streams.redis_sink`` on its writer thread, once per user per write: pushes of a user
    merged into one write count once; a re-push after Redis lost data, a write retried
    after an outage and a resumed user's re-push (``resumed_repushes``) are not counted).
    Many of them mean the namespace holds another run's state (seq is a Kafka offset:
    another topic's offsets are not comparable)."""
    resumed_repushes: int = 0
    """Pushes of a user resumed from the recovery store, with the state it was resumed with
    (no click learnt since: every resumed user is pushed again, in case a crash lost the
    write), that Redis did not write because it held the user at that seq or a newer one:
    expected at every resume (after a clean stop, every resumed user's), counted apart from
    ``stale_pushes`` by ``streams.redis_sink`` as those are."""
    forgotten_pushes: int = 0
    """Pushes Redis refused because ``diam forget`` forgot the user after the clicks they were
    learnt from (their tombstone on the topic lies after those clicks; counted by
    ``streams.redis_sink`` on its writer thread, once per user per write): a resumed or
    lagging run, or a replay of a range before the tombstone, would otherwise have written the
    user back."""
    lost_repushes: int = 0
    """Users re-pushed because Redis may have lost data (its generation marker gone or
    replaced, a broken connection, a cluster primary restarted or failed over): every user the
    writer holds, at each re-push, written where Redis's value is older or gone (counted by
    ``streams.redis_sink`` on its writer thread). Not pushes: neither in ``pushes`` nor in the
    acknowledged writes and freshness of ``streams.metrics``."""
    snapshots: int = 0
    """Users' recovery snapshots (``streams.metrics`` groups them by epoch)."""
    snapshot_s: float = 0.0

    @property
    def valid(self) -> int:
        """Valid clicks: records less dead letters and tombstones."""
        return self.records - self.rejected - self.forgets


class FlowStats(Counts):
    """Counters a caller can read while the dataflow runs (progress bars, run summaries,
    metrics). Each worker thread counts into its own :class:`Counts` (``counts()``); the fields
    of this object itself are for callers outside the dataflow (tests, merged runs), and
    ``total()`` adds everything up."""

    def __init__(self) -> None:
        super().__init__()
        self._workers = PerThread(Counts)

    def counts(self) -> Counts:
        """The calling thread's counters."""
        return self._workers.mine()

    def total(self) -> Counts:
        parts = [self, *self._workers.all()]
        return Counts(**{f.name: sum(getattr(c, f.name) for c in parts) for f in fields(Counts)})

    def unwritten(self) -> int:
        """Pushes not yet answered by Redis (``pushes`` less ``redis_answered``): queued for the
        Redis sink, or in a write waiting out an outage. Meaningful for a dataflow whose
        vectors go to ``streams.redis_sink`` (which counts the answers)."""
        t = self.total()
        return max(t.pushes - t.redis_answered, 0)

    def as_dict(self) -> dict[str, float]:
        """Every :class:`Counts` field summed over the workers (``users``: user states started
        or resumed), plus ``valid`` and ``in_state`` (users held now)."""
        t = self.total()
        return {**{f.name: getattr(t, f.name) for f in fields(Counts)},
                "valid": t.valid, "in_state": t.users - t.ended}


@dataclass(frozen=True)
class FlowSinks:
    """Where the dataflow's three outputs go. User vectors arrive as ``(user_id, UserVectors)``
    (``(user_id, None)``: delete the user's key; ``(user_id, RELEASED)``: an evicted user, see
    ``streams.redis_sink``); dead letters and drift events as
    ``(key, KafkaOut)`` pairs (the key names the source partition / the user), the shape
    ``streams.kafka_sink.KafkaEpochSink`` takes; ``TestingSink`` takes anything."""

    vectors: DynamicSink[Item]
    deadletter: Sink[tuple[str, KafkaOut]]
    drift: Sink[tuple[str, KafkaOut]]


class LearnerHolder:
    """The process's current online learner and base version.

    ``maybe_reload`` asks the ``reload`` hook at most every ``check_every_s``; the hook returns
    a new learner when a new base version became active (hot reload). Users are re-anchored lazily, on their
    next event, by comparing the version in their state with the holder's.
    """

    def __init__(self, learner: Any, version: str,
                 reload: Callable[[], tuple[Any, str] | None] | None = None,
                 check_every_s: float = 2.0) -> None:
        self.learner = learner
        self.version = version
        self._reload = reload
        self._counter = reload  # kept after close: its refusals stay readable
        self._check_every_s = check_every_s
        self._next_check = 0.0
        self._checking = threading.Lock()  # one reload at a time (worker threads share this)
        self._shared = False
        self.reloads = 0
        """New base versions picked up since the start (hot reloads; streams.metrics)."""
        self.longest_reload_s = 0.0
        """The longest call of the reload hook so far (a poll, a new snapshot loaded, new items
        appended): the dataflow's worker thread processes nothing meanwhile, so this is its
        longest stall for a reload (bench/loop.py reports it)."""
        self._record: tuple[Any, BaseRecord | None] | None = None  # (learner, its record)
        self._note_base()  # the start's table: what later reloads grow from

    @property
    def refusals(self) -> int:
        """New base versions the reload hook refused (its ``refusals``: a snapshot failing its
        hash or without a manifest, one the stream cannot use; ``diam.app``); 0 for a hook that
        counts none (streams.metrics)."""
        return int(getattr(self._counter, "refusals", 0))

    def share(self) -> None:
        """Worker threads of this process share the learner: its compiled calls release the
        GIL (``OnlineLearner.release_gil``; :meth:`maybe_reload` sets it on the learners a
        reload brings)."""
        self._shared = True
        if hasattr(self.learner, "release_gil"):
            self.learner.release_gil = True

    def close(self) -> None:
        """Ask the reload hook no more and stop what it keeps running: its ``close()`` when it
        has one (a run on the active snapshot follows the catalogue and the clicks topic with
        threads and Kafka consumers of its own, ``diam.app``). Waits for a reload in progress;
        the current learner stays usable. Idempotent. Whoever made the holder closes it when
        the run ends, however it ends."""
        with self._checking:
            hook, self._reload = self._reload, None
        close = getattr(hook, "close", None)
        if close is not None:
            close()

    def maybe_reload(self) -> None:
        if self._reload is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        # several worker threads decode at once: one asks the hook, the others go on (the hook
        # keeps state of its own, and two calls at once could lose the items one of them took)
        if not self._checking.acquire(blocking=False):
            return
        try:
            hook = self._reload
            if now < self._next_check or hook is None:  # None: closed meanwhile
                return
            self._next_check = now + self._check_every_s
            found = hook()
            self.longest_reload_s = max(self.longest_reload_s, time.monotonic() - now)
            if found is not None:  # a new version, or new items appended under the same one
                self.reloads += found[1] != self.version
                self.learner, self.version = found
                self._note_base()  # once per base change, off the per-event path
                if self._shared:
                    self.share()
        finally:
            self._checking.release()

    @property
    def base_record(self) -> BaseRecord | None:
        """Which base the current learner learns on (``serving_cache.base_record``): its
        version, its item table (the last ``meta["content_items"]`` rows appended to the
        version's own, ``BaseView.with_items``) and how many rows it took since this holder
        started on the version (``grown``: new items a reload check found while the run went
        on). Computed once per learner, at the start and at each reload that brings one, so
        the Redis sink may ask at every write. None for a learner without a base (a
        benchmark's stand-in)."""
        cached = self._record
        if cached is None or cached[0] is not self.learner:
            cached = self._note_base()
        return cached[1]

    def _note_base(self) -> tuple[Any, BaseRecord | None]:
        learner = self.learner
        base = getattr(learner, "base", None)
        record = None
        if base is not None:
            prev = None if self._record is None else self._record[1]
            n = len(base.item_ids)
            added = int(base.meta.get("content_items", 0))
            start = (prev.items - prev.grown if prev is not None and prev.version == base.version
                     else n)
            record = BaseRecord.of(base.version, base.item_ids, added,
                                   grown=min(max(n - start, 0), added))
        self._record = (learner, record)
        return self._record

    @property
    def anchor_kind(self) -> str:
        """What anchors users on the current base (``"diam"`` or ``"kmeans"``), pushed with
        the vectors so that a reader of Redis knows which produced them."""
        return str(getattr(getattr(self.learner, "base", None), "anchor_kind", "kmeans"))


DEADLETTER_KEY_BYTES = 1_024
"""Most bytes of a rejected record's key that its dead letter keeps (a user id is at most 128
characters)."""


def deadletter_record(rec: RawRecord, reason: str, max_bytes: int,
                      namespace: str | None = None, topic_id: str | None = None) -> KafkaOut:
    """The dead-letter form of a rejected record: the original key and bytes, the reason and
    the source coordinates in headers (``kcat -f '%h %s'`` shows them), ``diam.namespace``,
    the Redis namespace of the run that refused it (runs into several namespaces may share the
    topic: ``diam deadletters --namespace`` tells them apart), and ``diam.topic_id``, the
    Kafka id of the source topic when the run knows it (a topic deleted and re-created under
    its name starts its offsets again: ``streams.kafka_io.read_deadletters`` tells the two
    records at one offset apart by it). A value longer than
    ``max_bytes`` (``FlowConfig.deadletter_max_bytes``) or a key longer than
    :data:`DEADLETTER_KEY_BYTES` keeps its first bytes, and ``diam.truncated`` gives the
    original sizes: a dead letter as large as the largest record the broker accepts could not
    be produced, and the dataflow would fail on that record after every restart.

    >>> rec = RawRecord("t", 0, 7, b"u1", b"x" * 2_000, 0)
    >>> out = deadletter_record(rec, "payload: too large", max_bytes=1_024)
    >>> len(out.value), dict(out.headers)["diam.truncated"]
    (1024, b'key 2 bytes, value 2000 bytes')
    """
    key = rec.key
    value = rec.value if rec.value is not None else b""
    headers = [
        ("diam.reason", reason.encode()),
        ("diam.topic", rec.topic.encode()),
        ("diam.partition", str(rec.partition).encode()),
        ("diam.offset", str(rec.offset).encode()),
    ]
    if namespace is not None:
        headers.append(("diam.namespace", namespace.encode()))
    if topic_id is not None:
        headers.append(("diam.topic_id", topic_id.encode()))
    if len(value) > max_bytes or (key is not None and len(key) > DEADLETTER_KEY_BYTES):
        headers.append(("diam.truncated", f"key {0 if key is None else len(key)} bytes, "
                                          f"value {len(value)} bytes".encode()))
        value = value[:max_bytes]
        key = None if key is None else key[:DEADLETTER_KEY_BYTES]
    return KafkaOut(key=key, value=value, headers=headers)


def drift_record(event: Any, namespace: str | None = None, topic: str | None = None) -> KafkaOut:
    """A drift event as a JSON record keyed by user, with ``namespace``, the Redis namespace of
    the run that learnt it (runs into several namespaces may share the drift topic; the drift
    monitor and the user view read one namespace's: ``streams.kafka_io.of_namespace``), and
    ``topic``, the clicks topic its ``offset`` belongs to (one namespace may learn from two
    topics, or a re-created one: ``streams.drift.DriftRecord.topic``; absent when unknown)."""
    body = event.to_dict()
    if namespace is not None:
        body["namespace"] = namespace
    if topic is not None:
        body["topic"] = topic
    return KafkaOut(key=str(body["user_id"]).encode(), value=json.dumps(body, sort_keys=True).encode(),
                    headers=[("diam.kind", str(body["kind"]).encode())])


Keyed = tuple[str, Learn | Forget]
"""A valid click or a tombstone, keyed by user for the per-user step."""

Out = UserVectors | None | Released | DriftEvent | DeadLetter
"""What the per-user step emits, keyed by user: vectors to push (None: delete the user's key;
``RELEASED``: the user was evicted, see ``streams.redis_sink``), drift events, and records
whose update failed."""

Snapshot = tuple[str, tuple, int, bool, int, int]
"""What recovery stores per user: ``(user_id, UserState.pack(), events since the last push,
dirty, event clock at the user's last click, its partition)``, a flat tuple because Bytewax
pickles every touched user's snapshot at each epoch end on the dataflow's thread, and a tuple
of plain values pickles several times faster than a class instance. A store written before the
clock was kept holds the first four (clock and partition then read -1: unknown)."""


def _clock(rec: RawRecord) -> int:
    """The partition's event clock at ``rec`` (its record timestamp when the source keeps none)."""
    return rec.clock_ms if rec.clock_ms >= 0 else rec.ts_ms


Verdicts = tuple[list[Keyed | DeadLetter], int, int]
""":func:`record_judge`'s answer for a batch: a verdict per record, in order, how many of them
are :class:`DeadLetter` and how many :class:`Forget`."""


def record_judge(cfg: FlowConfig) -> Callable[[list[RawRecord]], Verdicts]:
    """The one rule for what the dataflow makes of each record: a valid click comes out keyed
    for the per-user step, ``(user_id, Learn)``; a null value keyed by a valid user id (``diam
    forget``) as ``(user_id, Forget)``; anything else as a :class:`DeadLetter` with its reason
    (decoding and validation, :func:`streams.events.decode_click`, then the key check). The
    dataflow's decode step and the training corpus read from the topic
    (:func:`streams.topic_corpus.read_clicks`) both call it, so that training accepts, refuses
    and forgets exactly what the online learner does. It works on whole batches because it is
    the dataflow's one Python pass over every event: a call per record would cost it."""
    max_bytes, ts_min, skew = cfg.max_event_bytes, cfg.ts_min_ms, cfg.ts_max_future_ms
    new = tuple.__new__  # a NamedTuple's own constructor is a Python call per event

    def judge(recs: list[RawRecord]) -> Verdicts:
        out: list[Keyed | DeadLetter] = []
        append = out.append
        rejected = forgets = 0
        for rec in recs:
            if rec.value is None and rec.key is not None:
                uid = forget_target(rec.key)
                if uid is not None:
                    append((uid, Forget(rec)))
                    forgets += 1
                    continue
                rejected += 1
                append(DeadLetter(rec, forget_refused(rec.key)))
                continue
            # The upper time bound is the record's own timestamp plus the allowed skew, not the
            # wall clock, so a replay accepts and rejects exactly what the live run did.
            ts = rec.ts_ms
            ev = decode_click(rec.value, max_bytes=max_bytes, ts_min_ms=ts_min,
                              ts_max_ms=ts + skew if ts > 0 else None)
            if not isinstance(ev, Rejection):
                key = rec.key
                if key == ev[0].encode():
                    append((ev[0], new(Learn, (rec, ev))))
                    continue
                # Unkeyed, a user's clicks land on any partition, out of order with each other
                # (the learner, which skips offsets at or below the last applied one, would
                # drop some of them without a word).
                ev = Rejection(("key: missing" if key is None else
                                f"key: record key {key[:64]!r} differs from user_id {ev[0]!r}")
                               + " (events must be keyed by user_id so that a user's clicks "
                               "stay in order)")
            rejected += 1
            append(DeadLetter(rec, ev.reason))
        return out, rejected, forgets
    return judge


def _counted_judge(cfg: FlowConfig, stats: FlowStats
                   ) -> Callable[[list[RawRecord]], tuple[list[Keyed | DeadLetter], int]]:
    """:func:`record_judge` counted: the one place where judged records are counted
    (``records``, ``rejected``, ``forgets``, on the calling worker thread's
    :meth:`FlowStats.counts`), whichever judges them: the decode step, or a source given
    :func:`source_judge` (Bytewax reads a worker's input partitions on that worker's thread).
    Returns the verdicts and how many of them are dead letters."""
    judge = record_judge(cfg)

    def counted(recs: list[RawRecord]) -> tuple[list[Keyed | DeadLetter], int]:
        out, rejected, forgets = judge(recs)
        counts = stats.counts()
        counts.records += len(recs)
        counts.rejected += rejected
        counts.forgets += forgets  # in the batch that counted them as records
        return out, rejected
    return counted


SourceJudge = Callable[[list[RawRecord], int], tuple[list[Keyed | DeadLetter], int]]
""":func:`source_judge`'s judge (``streams.kafka_source.Judge``)."""


def source_judge(cfg: FlowConfig, stats: FlowStats) -> SourceJudge:
    """:func:`record_judge` in the source (``ClickSource``'s ``judge``, given with eviction on,
    where the partition's event clock must know what the dataflow accepts): a batch of one
    partition's records becomes its verdicts, which the source emits instead of the records,
    and the partition's event clock after the batch. The verdicts are counted here, into
    ``stats`` (the flow's: :func:`build_flow` with ``judged=True``, whose decode step
    (:func:`_decoder`) then neither judges nor counts them again). The source reads the records with the running maximum of their
    timestamps from ``start``, the clock before the batch; the clock moves on the records the
    dataflow accepts only (a click or a forget): a dead-lettered record's timestamp (up to an
    hour ahead, the broker's ``message.timestamp.after.max.ms``) would make every user of the
    partition idle (``FlowConfig.evict_idle_s``). A batch without a dead letter keeps the clocks
    it was read with; else one pass gives every record the running maximum over the accepted
    ones, in its verdict too."""
    judge = _counted_judge(cfg, stats)

    def judged(recs: list[RawRecord], start: int) -> tuple[list[Keyed | DeadLetter], int]:
        out, rejected = judge(recs)
        if not recs:
            return out, start
        if not rejected:
            return out, recs[-1].clock_ms
        clock = start
        for i, (rec, verdict) in enumerate(zip(recs, out, strict=True)):
            dead = type(verdict) is DeadLetter
            if rec.ts_ms > clock and not dead:
                clock = rec.ts_ms
            if rec.clock_ms != clock:  # after a refused record that had moved it
                rec = rec._replace(clock_ms=clock)
                if isinstance(verdict, DeadLetter):
                    out[i] = verdict._replace(record=rec)
                else:
                    out[i] = (verdict[0], verdict[1]._replace(record=rec))
        return out, clock
    return judged


def skip_forgotten(verdicts: list[Keyed | DeadLetter], markers: Mapping[str, int]
                   ) -> tuple[list[Keyed | DeadLetter], list[str]]:
    """The one rule for a click ``diam forget`` forgot before anything learnt it: ``verdicts``
    (:func:`record_judge`'s, in order) less the clicks whose user's marker in ``markers``
    (user -> tombstone offset, ``serving_cache.forgotten.stored_markers``) lies above the
    click's offset, and the user of each click left out, in order. Tombstones and dead letters
    are kept. The dataflow's decode step (with the markers read at the run's start) and the
    training corpus read from the topic (``streams.topic_corpus.clicks_of``) both call it; the
    Redis writer refuses a push learnt below the marker by the same rule, for the forgets that
    come while a run is live.

    >>> from streams.events import ClickEvent, encode_event
    >>> judge = record_judge(FlowConfig())
    >>> recs = [RawRecord("t", 0, o, u.encode(), encode_event(ClickEvent(u, "i1", 10**12 + o)), 0)
    ...         for o, u in enumerate(["u1", "u2", "u1"])]
    >>> kept, skipped = skip_forgotten(judge(recs)[0], {"u1": 2, "u9": 1})
    >>> [(u, v.record.offset) for u, v in kept], skipped
    ([('u2', 1), ('u1', 2)], ['u1'])
    """
    kept: list[Keyed | DeadLetter] = []
    skipped: list[str] = []
    get, keep, skip = markers.get, kept.append, skipped.append
    for v in verdicts:
        if not isinstance(v, DeadLetter):
            user, what = v
            floor = get(user)
            if floor is not None and type(what) is Learn and what.record.offset < floor:
                skip(user)
                continue
        keep(v)
    return kept, skipped


def _decoder(cfg: FlowConfig, holder: LearnerHolder, stats: FlowStats,
             markers: Mapping[str, int] | None = None, judged: bool = False
             ) -> Callable[[list[Any]], list[Keyed | DeadLetter]]:
    """The dataflow's decode step: :func:`record_judge` over each batch, counted
    (:func:`_counted_judge`). A hot reload is checked once per batch, not per event.
    ``judged``: the source was given :func:`source_judge`, so its batches are verdicts,
    judged and counted there already: the step passes them on (chosen once, here).
    ``markers``: ``diam forget``'s markers of the topic known when the run started (user ->
    tombstone offset): a click below its user's marker is not learnt (:func:`skip_forgotten`,
    counted as ``forgotten_clicks``), so a replay or a run restarted behind a tombstone emits
    no drift event and no vector learnt from it. Without markers the step does nothing more
    than one test per batch. A forget while the run is live is the tombstone's and the Redis
    writer's (the per-user step drops the state at the tombstone; the writer refuses a push
    learnt below the marker)."""
    judge = None if judged else _counted_judge(cfg, stats)
    floors = markers or None  # the hot path tests this once per batch

    def decode_batch(recs: list[Any]) -> list[Keyed | DeadLetter]:
        holder.maybe_reload()
        out = cast(list[Keyed | DeadLetter], recs) if judge is None else judge(recs)[0]
        if floors is not None:
            out, skipped = skip_forgotten(out, floors)
            stats.counts().forgotten_clicks += len(skipped)
        return out
    return decode_batch


def forget_target(key: bytes) -> str | None:
    """The user a tombstone (a record with this key and no value) asks to forget; None when
    the key is not a valid user id (the record is then dead-lettered with
    :func:`forget_refused`'s reason).

    >>> forget_target(b"u42"), forget_target(b"a:b")
    ('u42', None)
    """
    try:
        uid = key.decode()
    except UnicodeDecodeError:
        return None
    return uid if USER_ID_RE.fullmatch(uid) else None


def forget_refused(key: bytes) -> str:
    """The dead-letter reason of a tombstone whose key :func:`forget_target` refuses: a forget
    request, not an empty click, and why its key names no user (``validate_user_id``'s words).

    >>> forget_refused(b"a:b")
    "forget: the tombstone's key b'a:b' is not a valid user id (user_id: contains ':' (allowed: letters and digits and _ . @ + - and the equals sign))"
    """
    try:
        why = validate_user_id(key.decode()) or "user_id: refused"
    except UnicodeDecodeError:
        why = "user_id: not UTF-8"
    return f"forget: the tombstone's key {key[:64]!r} is not a valid user id ({why})"


class _DropSchedule:
    """When an idle user is looked at, on the wall clock (``FlowConfig.evict_idle_s``): that
    long after their last click, then, each time their partition's event clock has not come
    that far on this worker yet, after a wait twice the last (every wake costs a recovery
    snapshot at the epoch's end), up to 8 times the idle time. Whether the user *is* idle is
    the event clock's (:meth:`_UserLogic._idle`); this only says when to ask. The wall clock
    decides when a user is dropped, never what anyone learns."""

    __slots__ = ("at", "idle_ms", "idle_s", "wait_s")

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.idle_ms = round(idle_s * 1000)  # the same idle time on the event clock
        self.clicked()

    def clicked(self) -> None:
        self.at = time.time() + self.idle_s
        self.wait_s = 0.0

    def later(self) -> None:
        self.wait_s = min(max(2 * self.wait_s, self.idle_s / 4, 1.0), max(8 * self.idle_s, 1.0))
        self.at = time.time() + self.wait_s


class _UserLogic(StatefulBatchLogic[Learn | Forget, Out, Snapshot]):
    """One user's learner state and push bookkeeping.

    Push cadence uses the wall clock (it only decides *when* vectors are written, never what
    they are). The next notification time is computed once when the state turns dirty, because
    Bytewax asks ``notify_at`` after every batch of every key.

    Idleness (``FlowConfig.evict_idle_s``) is read on the partition's event clock
    (:attr:`RawRecord.clock_ms`), never the wall clock, so that what the user learns is a
    function of the topic alone: a click that comes ``evict_idle_s`` or more after the user's
    last one on that clock starts the user over from the base, whether or not the user was
    dropped from the state meanwhile. Dropping (to free memory and the recovery store) is only
    *checked* on the wall clock (:class:`_DropSchedule`); it happens once this worker has
    processed a record of the user's partition that far on: every later click of the user then
    lies that far on too, and would start over anyway. The partition's records reach this
    worker in offset order, and Bytewax runs a key's notification after the batches that
    arrived with it. This holds while a user's clicks stay on one partition (events keyed by
    user; adding partitions to the topic moves users, and breaks their order anyway).
    """

    def __init__(self, holder: LearnerHolder, cfg: FlowConfig, resume: Snapshot | tuple | None,
                 counts: Counts | None = None, clocks: dict[int, int] | None = None,
                 markers: Mapping[str, int] | None = None) -> None:
        self.holder, self.cfg = holder, cfg
        self.counts = counts if counts is not None else Counts()  # built on the user's worker thread
        self.clocks: dict[int, int] = clocks if clocks is not None else {}  # same thread
        self.user_id = ""
        self.state: UserState | None = None  # None: no user yet, or forgotten
        self.since_push, self.dirty = 0, False
        self.clock, self.part = -1, -1  # the event clock and partition of the last click
        self._drop = None if cfg.evict_idle_s is None else _DropSchedule(cfg.evict_idle_s)
        self._last_push = time.time()
        self._due: datetime | None = None
        self._resumed_seq: int | None = None  # the seq of the state resumed with
        self._stale: Snapshot | tuple | None = None  # a forgotten user's resumed snapshot
        if resume is not None:
            self.user_id, packed, self.since_push, self.dirty = resume[:4]
            if len(resume) > 4:
                self.clock, self.part = resume[4], resume[5]
            self.state = UserState.unpack(packed)
            self.counts.users += 1  # held again in this process's state
            self.counts.resumed += 1
            if markers and self.state.seq < markers.get(self.user_id, -1):
                # forgotten (``diam forget``) after the clicks this state learnt, while the
                # run was down: its tombstone may never reach this step (gone with the
                # topic's retention, or before where the run resumes), so the state goes
                # here, not at the tombstone; the next notification deletes the user's key
                # and discards the state (the recovery store keeps it until then: a crash
                # before comes back here). A click first makes a new user, as after a Forget.
                self._stale = resume
                self.state, self.dirty = None, False
                self.counts.ended += 1
                self._due = datetime.now(UTC)
                return
            if self.dirty:
                self._due = datetime.now(UTC)
                self._resumed_seq = self.state.seq

    def _push(self) -> UserVectors:
        st = self.state
        assert st is not None
        self.since_push, self.dirty = 0, False
        self._last_push = time.time()
        self._due = None
        self.counts.pushes += 1
        V = st.V
        seen = st.last_items(self.cfg.seen_items) if self.cfg.seen_items else _NO_SEEN
        uv = new_vectors(st.seq, st.version, V.shape[0], st.d, V.shape[1], V.copy(), st.last_ts,
                         st.n_events, self.holder.anchor_kind, seen)
        if st.seq == self._resumed_seq:  # the resumed state again: the sink counts it apart
            return resumed_push(uv)
        return uv

    def _end(self, unpushed: bool) -> list[Out]:
        """End the user's state, as idleness does (a start-over or a drop): first the last push
        of the clicks not pushed yet, if ``unpushed``."""
        last: list[Out] = [self._push()] if unpushed else []
        self.state = None
        self.dirty = False
        self._due = None
        self.counts.ended += 1
        return last

    def on_batch(self, values: list[Learn | Forget]) -> tuple[list[Out], bool]:
        drop = self._drop
        idle_ms = None
        if drop is not None:
            drop.clicked()
            idle_ms = drop.idle_ms
        learner = self.holder.learner
        counts = self.counts
        out: list[Out] = []
        state = self.state
        start = 0  # the first value applied to the current state
        i, n = 0, len(values)
        while i < n:
            value = values[i]
            if isinstance(value, Forget):
                # the user's state is dropped here and the sink deletes their key, in order
                # with the pushes; clicks after it start a new state
                out.append(None)
                if state is not None:
                    counts.ended += 1
                state = self.state = None
                self._due, self.dirty = None, False
                i = start = i + 1
                continue
            # the user's clicks up to the next Forget (or the batch's end), learnt together
            j = i + 1
            while j < n and not isinstance(values[j], Forget):
                j += 1
            if idle_ms is not None:
                # ... and up to the first click that comes idle_ms after the one before it
                rec = value[0]
                c = _clock(rec)
                if state is not None and self.clock >= 0 and c - self.clock >= idle_ms:
                    # idle too long: the user starts over from the base, as if dropped
                    # (with the last push a drop gives)
                    out += self._end(self.dirty or (i > start and state.n_recent > 0))
                    counts.restarts += 1
                    state = None
                    start = i
                k = i + 1
                while k < j:
                    ck = _clock(values[k][0])
                    if ck - c >= idle_ms:
                        break
                    c = ck
                    k += 1
                j = k
                self.clock, self.part = c, rec.partition
                if c > self.clocks.get(rec.partition, -1):
                    self.clocks[rec.partition] = c
            if state is None:
                self.user_id = value[1][0]
                state = self.state = learner.new_state(self.user_id)
                self.since_push = 0
                counts.users += 1
            # The learner skips offsets it has applied already (at-least-once input after a
            # resume) and re-anchors a user whose state predates the current base version.
            # The last line of defence: a click whose update fails comes back as its
            # exception and is dead-lettered with its type; the user's learning goes on. The
            # learner advanced ``seq`` first, so a replay fails (and skips) identically.
            run = cast(list[Learn], values[i:j])
            counts.learn_calls += 1
            clicks = [(c[1], c[2], r.offset, c[3]) for r, c in run]
            counts.unknown_items += learner.unknown_items(clicks)
            results = learner.apply_many(state, clicks)
            # most clicks give nothing (an empty tuple): look at each only when one gave
            # something (drift events, or the exception that failed it: both are true)
            for (rec, _), res in zip(run, results, strict=True) if any(results) else ():
                if isinstance(res, Exception):
                    out.append(DeadLetter(rec, f"learn: {type(res).__name__} in the online update"))
                    counts.rejected += 1
                elif res:
                    out += res
                    counts.drift_events += len(res)
            i = j
        if state is None:
            return out, StatefulBatchLogic.DISCARD
        self.since_push += len(values) - start
        # A user who has clicked only items the base does not know has no vector yet (all
        # zeros): nothing worth serving, so nothing is pushed until a known item arrives.
        self.dirty = state.n_recent > 0
        if not self.dirty:
            return out, StatefulBatchLogic.RETAIN
        cfg = self.cfg
        if self.since_push >= cfg.push_every_events or (time.time() - self._last_push) * 1000 >= cfg.push_every_ms:
            out.append(self._push())
        elif self._due is None:
            self._due = datetime.fromtimestamp(self._last_push + cfg.push_every_ms / 1000, UTC)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._drop is None:
            return self._due
        look = datetime.fromtimestamp(self._drop.at, UTC)
        return look if self._due is None or look < self._due else self._due

    def _idle(self) -> bool:
        """The user's partition is ``evict_idle_s`` past their last click on its event clock,
        as far as this worker has processed it (see the class docstring). A user resumed from
        a store written before the clock was kept, who has not clicked since, has no clock:
        for them idleness is the wall clock's (what that store's run used)."""
        assert self._drop is not None
        if self.clock < 0:
            return True  # on_notify checks only once the wall clock says idle
        return self.clocks.get(self.part, -1) - self.clock >= self._drop.idle_ms

    def on_notify(self) -> tuple[list[Out], bool]:
        if self.state is None:  # resumed after a forget (``__init__``), no click since
            self._due = None
            return [None], StatefulBatchLogic.DISCARD
        drop = self._drop
        if drop is not None and time.time() >= drop.at:
            if not self._idle():
                drop.later()  # the partition's clock has not come that far here yet
                return self._flush()
            # idle too long: pushed one last time if needed, then dropped from the state (its
            # key stays in Redis, until ``RedisConfig.user_ttl_s`` if set); a returning user
            # starts over from the base, as a new one. RELEASED has the sink let go of the
            # user and wait for that last push before this epoch can commit.
            held = self.state is not None and self.state.n_recent > 0  # the sink holds them
            last = self._end(self.dirty)
            self.counts.evictions += 1
            return ([*last, RELEASED] if held else last), StatefulBatchLogic.DISCARD
        return self._flush()

    def _flush(self) -> tuple[list[Out], bool]:
        if self.dirty:
            return [self._push()], StatefulBatchLogic.RETAIN
        self._due = None
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Out], bool]:
        return self.on_notify()

    def snapshot(self) -> Snapshot:
        if self.state is None:  # resumed after a forget, not discarded yet: kept as it was
            assert self._stale is not None
            return cast(Snapshot, self._stale)
        t0 = time.perf_counter()
        # Marked dirty whenever the user has vectors: Redis writes are asynchronous
        # (streams.redis_sink), so a push made before this epoch ended may not have reached
        # Redis when a crash comes; a resumed user is therefore pushed again (idempotent).
        out = (self.user_id, self.state.pack(), self.since_push, self.state.n_recent > 0,
               self.clock, self.part)
        self.counts.snapshots += 1
        self.counts.snapshot_s += time.perf_counter() - t0
        return out


def _is_dead(item: Keyed | DeadLetter) -> TypeGuard[DeadLetter]:
    return type(item) is DeadLetter


def _is_side(item: tuple[str, Out]) -> bool:
    return isinstance(item[1], (DriftEvent, DeadLetter))


def _is_drift(item: tuple[str, Out]) -> TypeGuard[tuple[str, DriftEvent]]:
    return isinstance(item[1], DriftEvent)


def build_flow(source: Source[RawRecord], sinks: FlowSinks, cfg: FlowConfig,
               holder: LearnerHolder, flow_id: str = "diam-online",
               stats: FlowStats | None = None, namespace: str | None = None,
               topic: str | None = None, markers: Mapping[str, int] | None = None,
               judged: bool = False) -> Dataflow:
    """The online dataflow over ``source``'s :class:`RawRecord` items.

    The same builder runs under ``TestingSource`` in unit tests and over :class:`ClickSource`
    against the real broker. Decoding works on whole batches (``flat_map_batch``): it is the
    one step that does Python work on every event before the per-user step. ``judged``: the
    source was given :func:`source_judge` with ``stats`` (its items are the dataflow's
    verdicts, judged and counted there: the step does neither again). Errors are data:
    dead letters from decoding and from the update leave by their own branches, marked with
    ``namespace`` (the run's Redis namespace) when given, as its drift events are. Drift
    records say ``topic``, the clicks topic read (default: ``source.topic``, a ClickSource's).
    ``markers``: ``diam forget``'s markers known at the start (user -> tombstone offset): the
    decode step does not pass on a click below its user's marker (:func:`_decoder`).
    """
    counted = stats if stats is not None else FlowStats()
    if topic is None:
        src_topic = getattr(source, "topic", None)
        topic = src_topic if isinstance(src_topic, str) else None
    flow = Dataflow(flow_id)
    raw: Stream[RawRecord] = op.input("clicks", flow, source)
    decode = _decoder(cfg, holder, counted, markers, judged)
    decoded = op.branch("decode-errors", op.flat_map_batch("decode", raw, decode), _is_dead)
    keyed: KeyedStream[Learn | Forget] = decoded.falses  # type: ignore[assignment]
    # per worker thread: the event clock of the newest record of each partition that this
    # worker's per-user step has processed (_UserLogic's idleness reads it)
    clocks: PerThread[dict[int, int]] = PerThread(dict)
    learned = op.stateful_batch("learn", keyed, lambda resume: _UserLogic(
        holder, cfg, resume, counted.counts(), clocks.mine(), markers))
    side = op.branch("side-outputs", learned, _is_side)
    drift_or_failed = op.branch("drift-or-failed", side.trues, _is_drift)
    op.output("redis", side.falses, sinks.vectors)  # type: ignore[arg-type, misc]
    op.output("drift", op.map("to-drift", drift_or_failed.trues, lambda kv: (kv[0], drift_record(kv[1], namespace, topic))),
              sinks.drift)
    failed = op.map("learn-failed", drift_or_failed.falses, lambda kv: cast(DeadLetter, kv[1]))
    dead = op.merge("deadletters", decoded.trues, failed)
    topic_id = getattr(sinks.vectors, "topic_id", None)  # the Redis sink's, for forget markers
    op.output("deadletter", op.map("to-deadletter", dead, lambda dl: (
        str(dl.record.partition), deadletter_record(dl.record, dl.reason, cfg.deadletter_max_bytes,
                                                namespace, topic_id))),
              sinks.deadletter)
    return flow
