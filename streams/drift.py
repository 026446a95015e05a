"""Drift monitor logic: tumbling event-time windows over the learner's drift events, and alerts.

Pure (no Kafka, no Bytewax, no wall clock): :class:`DriftMonitor` takes parsed
:class:`DriftRecord` s one by one and returns what they caused — :class:`Alert` s and, when a
window closes, its :class:`WindowSummary`. ``streams.drift_flow`` wraps it in a dataflow.

Per window (``window_ms``, default one minute, aligned to the epoch) it counts K_u changes
globally and per user, *reversals* (a change that undoes the user's previous change in the same
window: A→B→A), the swing of d_u (max − min of the values the events carry in ``detail`` keys ``d``,
``d_from``, ``d_to``), guard trips,
rollbacks and freezes. Per-user conditions alert as soon as they are met (the detection delay is
then a handful of events, not a window); global counts alert when the window closes, which
happens once the event time of every partition passes its end by ``lateness_ms``. The global
K_u change count per window also feeds a River Page-Hinkley detector.

Lateness is judged for what is windowed. A user's windows follow that user's own event time:
the learner emits a batch user by user, so a partition holds one user's events (hours or days
of a dataset's timestamps) before the next user's earlier ones, while each user's own are in
order. A record is dropped as late (``late``) only when its user's own newest event is past its
window's end by ``lateness_ms``. A record whose global window the partition watermark has
already closed still counts in its user's window and per-user alerts; it is missing from that
window's global counts and counted in ``after_close``.

>>> m = DriftMonitor(DriftConfig(flip_reversals=1))
>>> evs = [DriftRecord("k_change", "u1", 1_000 + i, i, {"k_from": a, "k_to": b})
...        for i, (a, b) in enumerate([(2, 3), (3, 2)])]
>>> [a.kind for e in evs for a in m.add(e) if isinstance(a, Alert)]
['k_flip_flop']
>>> [s.k_changes for s in m.flush()]
[2]

Effectively once: a dataflow resumed after a crash produces again the drift events of the epoch
it had not committed. A record's identity (:func:`drift_identity`) is its user and source
offset (one user's clicks live in one partition of a topic, so the offset names the click) plus
its kind and detail, within its source topic; a user's records of one topic arrive in offset
order, so within one known topic the monitor keeps per user the newest offset and what it
carried, and counts a lower offset as a repeat (``duplicates``) instead of accounting it twice.
Offsets of two topics (one namespace fed from two click topics, or a topic deleted and
re-created) say nothing of each other: a record from another topic than the user's previous one
starts the comparison over. A record without a topic (written before drift records said it,
e.g. by a run still on an older release during a rolling upgrade) may come from either topic,
so its offset says nothing of a known topic's: it repeats only a record of the same identity
among the user's last :data:`MAX_KEPT_IDENTITIES` accounted whose topic may be its own
(:func:`same_topic`), and a record with a topic repeats such a record without one (a producer
upgraded after a crash emits its uncommitted epoch again, now saying its topic).
Readers that list records (``streams.tail``, ``diam inspect --plot``) drop repeats with
:func:`unique_drift_bodies`.

>>> m = DriftMonitor()
>>> rec = DriftRecord("freeze", "u1", 1_000, 7)
>>> m.add(rec), m.add(rec), m.duplicates
([], [], 1)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from streams.config import DriftConfig
from streams.events import _TS_EARLIEST_MS, _TS_LATEST_MS

D_RANGE = (0.0, 1.0)
"""The values d_u takes in a drift event's ``detail`` (:data:`D_KEYS`): the online learner
writes ``d`` as the sigmoid of its d_u logit (``online_model.online``'s events, rounded to four
digits), so a probability. A record carrying another value there (``1e308``, ``-1e308``,
``NaN``, a string) is no drift event: its swing would be infinite (an alert valued
``Infinity``, which is not JSON)."""

D_KEYS = ("d", "d_from", "d_to")
"""The ``detail`` keys that carry d_u."""


def _d_valid(v: object) -> bool:
    """Whether ``v`` is a d_u value (:data:`D_RANGE`): a number, not a bool; NaN is not."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and D_RANGE[0] <= v <= D_RANGE[1])


_INT64 = (-(2**63), 2**63 - 1)
"""The offsets a drift record may carry: Kafka's are 64-bit (negative: none, a foreign
producer's record); a JSON number has no bound."""

__all__ = [
    "Alert",
    "D_RANGE",
    "DriftConfig",
    "DriftMonitor",
    "DriftRecord",
    "QUIET_CAP",
    "SEQ_STRIDE",
    "TopUser",
    "WindowSummary",
    "drift_identity",
    "drift_position",
    "format_alert",
    "parse_drift_record",
    "same_topic",
    "unique_drift_bodies",
]

MAX_DEDUPE_USERS = 2_000_000
"""Users the monitor remembers (least recently active forgotten first): their newest drift record,
to recognise repeats, and their open windows (~400 bytes each)."""

MAX_KEPT_IDENTITIES = 64
"""Identities (offset, kind and detail, topic) of a user's newest accounted records that a
record of which either side has no topic is compared with (a repeat comes within one
uncommitted epoch of its original: a handful of a user's records)."""

KINDS = ("k_change", "guard_trip", "rollback", "freeze", "reanchor")

QUIET_CAP = 1000
"""Most windows without drift events closed at once (zero summaries, zeros for the detector):
a gap longer than that closes its last ``QUIET_CAP`` windows only, and the next summary says
how many it skipped (``WindowSummary.quiet_skipped``)."""


@dataclass(frozen=True)
class DriftRecord:
    """One drift event of the online learner (``DriftEvent.to_dict()``)."""

    kind: str
    user_id: str
    ts_ms: int
    offset: int
    detail: dict[str, Any] = field(default_factory=dict)
    namespace: str | None = None
    """The Redis namespace of the run that wrote it (``streams.online.drift_record``); None
    for records written before drift events carried one."""
    topic: str | None = None
    """The clicks topic the run learnt it from, whose offset ``offset`` is
    (``streams.online.drift_record``); None for records written before drift events said it."""


Identity = tuple[str | None, str, int, str]


def same_topic(a: object, b: object) -> bool:
    """Whether records of source topics ``a`` and ``b`` may be the same record (their offsets
    compare): the same topic, or either unknown (not a string: a record written before drift
    records said their topic). The one rule of it, for the monitor and the readers
    (:func:`unique_drift_bodies`). It is not an equivalence (``t1`` and ``t4`` each match an
    unknown topic, not each other), so the topic is kept beside :func:`drift_identity`, never
    in it.

    >>> same_topic("t1", "t1"), same_topic("t1", "t4"), same_topic(None, "t4")
    (True, False, True)
    """
    return not isinstance(a, str) or not isinstance(b, str) or a == b


def drift_identity(kind: object, user_id: object, offset: object, detail: object,
                   namespace: object = None) -> Identity | None:
    """What makes a drift record the same record when a resumed producer emits it again,
    together with its source topic (:func:`same_topic`): ``(namespace, user, source offset,
    kind and detail)``: two runs of one topic into two namespaces write the same events but
    for their namespace, and neither repeats the other; nor do two topics' records at the same
    offset (:func:`same_topic` tells them apart). None for a record without a source offset (a
    foreign producer's), which cannot be told apart from a genuine repeat and is always kept.

    >>> drift_identity("k_change", "u1", 7, {"k_to": 3, "k_from": 2})
    (None, 'u1', 7, 'k_change {"k_from": 2, "k_to": 3}')
    >>> drift_identity("freeze", "u1", 7, {}, "a") != drift_identity("freeze", "u1", 7, {}, "b")
    True
    >>> drift_identity("freeze", "u1", -1, {}) is None
    True
    """
    try:
        off = int(offset)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    if off < 0:
        return None
    ns = namespace if isinstance(namespace, str) else None
    return ns, str(user_id), off, f"{kind} {json.dumps(detail, sort_keys=True, default=str)}"


def unique_drift_bodies(bodies: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``bodies`` (JSON drift records) in their order, each record once (its first copy): a
    body is a repeat of an earlier one of the same identity (:func:`drift_identity`) whose
    topic may be its own (:func:`same_topic`: a body without a topic repeats one with any);
    bodies without an identity are all kept.

    >>> rec = {"kind": "freeze", "user_id": "u", "ts_ms": 5, "offset": 1}
    >>> len(unique_drift_bodies([rec, dict(rec), {**rec, "offset": 2}]))
    2
    >>> len(unique_drift_bodies([rec, {**rec, "topic": "t1"}, {**rec, "topic": "t4"}]))
    1
    >>> len(unique_drift_bodies([{**rec, "topic": "t1"}, {**rec, "topic": "t4"}, rec]))
    2
    """
    seen: dict[Identity, list[object]] = {}  # the topics kept of each identity
    out = []
    for b in bodies:
        ident = drift_identity(b.get("kind"), b.get("user_id"), b.get("offset", -1),
                               b.get("detail") or {}, b.get("namespace"))
        if ident is not None:
            topic, kept = b.get("topic"), seen.setdefault(ident, [])
            if any(same_topic(topic, t) for t in kept):
                continue
            kept.append(topic)
        out.append(b)
    return out


SEQ_STRIDE = 1024
"""The most partitions a drift topic may have (:func:`drift_position`'s stride): a fixed
number, not the topic's partition count, so that partitions added to the topic never give two
records one place nor renumber the old ones. ``diam drift run`` refuses a topic with more
(``streams.drift_flow.check_partitions``). A place stays exact in a JSON number (a double,
integers to 2**53) for offsets below 2**43 (8.8e12 records in a partition: 278 years at a
million records a second)."""


def drift_position(partition: int, offset: int) -> int:
    """The place of the record at ``offset`` of ``partition`` in a drift topic:
    ``offset * SEQ_STRIDE + partition + 1``, the one rule of an alert's ``seq``
    (:class:`Alert`). It orders the partitions round-robin, so it does not depend on the order
    they were read in nor on how many partitions the topic has (:data:`SEQ_STRIDE`: partitions
    added while a monitor runs, or between two runs, neither collide with the others nor
    renumber them). A partition id of :data:`SEQ_STRIDE` or more has no place (ValueError).

    >>> drift_position(0, 9), drift_position(1, 9), drift_position(0, 10)
    (9217, 9218, 10241)
    """
    if not 0 <= partition < SEQ_STRIDE:
        raise ValueError(f"partition {partition} of a drift topic: alerts' seq numbers "
                         f"partitions 0 to {SEQ_STRIDE - 1} only (streams.drift.SEQ_STRIDE)")
    return offset * SEQ_STRIDE + partition + 1


def parse_drift_record(raw: bytes | str | None) -> DriftRecord | None:
    """Parse a JSON drift record; None when it is not one (the caller counts those).

    >>> parse_drift_record(b'{"kind": "freeze", "user_id": "u", "ts_ms": 5, "offset": 1}')
    DriftRecord(kind='freeze', user_id='u', ts_ms=5, offset=1, detail={}, namespace=None, topic=None)
    >>> parse_drift_record(b'{"kind": "freeze", "user_id": "u", "ts_ms": 5, "offset": 1, '
    ...                    b'"namespace": "live", "topic": "diam.clicks"}').topic
    'diam.clicks'
    >>> parse_drift_record(b"nope") is None
    True

    An event time outside years 1..9999 (``streams.events``' rule: JSON's ``Infinity``,
    ``1e400``, ``NaN``, ``1e300``) or an offset outside the 64-bit integers is no drift event:

    >>> [parse_drift_record('{"kind": "freeze", "user_id": "u", "ts_ms": %s, "offset": %s}' % v)
    ...  for v in (("Infinity", 1), ("1e400", 1), ("NaN", 1), ("1e300", 1), (5, "-Infinity"),
    ...            (5, 2 ** 63))]
    [None, None, None, None, None, None]

    Nor is one whose d_u (``detail`` keys ``d``, ``d_from``, ``d_to``) is outside
    :data:`D_RANGE`:

    >>> [parse_drift_record('{"kind": "k_change", "user_id": "u", "ts_ms": 5, "offset": 1, '
    ...                     '"detail": {%s}}' % d) is None
    ...  for d in ('"d": 0.25', '"d": 1e308, "d_from": -1e308', '"d_to": NaN', '"d": "x"')]
    [False, True, True, True]
    """
    if raw is None:
        return None
    try:
        body = json.loads(raw)
        detail = body.get("detail") or {}
        if not isinstance(detail, dict):
            return None
        ns, topic = body.get("namespace"), body.get("topic")
        ts_ms, offset = int(body["ts_ms"]), int(body.get("offset", -1))
        if not (_TS_EARLIEST_MS <= ts_ms <= _TS_LATEST_MS and _INT64[0] <= offset <= _INT64[1]):
            return None  # an event time no datetime can print, an offset no Kafka topic has
        if not all(_d_valid(detail[k]) for k in D_KEYS if k in detail):
            return None  # a d_u no learner writes (D_RANGE)
        return DriftRecord(str(body["kind"]), str(body["user_id"]), ts_ms, offset, detail,
                           ns if isinstance(ns, str) else None,
                           topic if isinstance(topic, str) else None)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None  # OverflowError: JSON's Infinity (or 1e400) as ts_ms or offset


UserKey = tuple[str | None, str]
"""A user as the monitor tells users apart: ``(namespace, user id)``. Runs into two Redis
namespaces share the drift topic and often their user ids (a shadow run of the same clicks):
their two users u1 are two users, each with its own counts, K_u changes and d_u range."""


class TopUser(NamedTuple):
    """A user an alert names: its id, its count (or d_u swing), the Redis namespace of the run
    whose drift events these are (None for records written before events carried one) and, in
    an alert about K_u changes, the user's most recent K_u change in the window, ``(from, to)``
    (None when its changes did not say)."""

    user_id: str
    value: float
    namespace: str | None = None
    k: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"user_id": self.user_id, "value": self.value}
        if self.namespace is not None:
            entry["namespace"] = self.namespace
        if self.k is not None:
            entry["k_from"], entry["k_to"] = self.k
        return entry


@dataclass(frozen=True)
class Alert:
    """What goes to ``diam.alerts``; ``ts_ms`` is the event time.

    ``seq`` is the place in the drift topic of the record that raised the alert
    (:func:`drift_position` of its partition and offset): for a per-user alert the record that
    crossed the threshold, for a window's alert the newest (by that place) of the records its
    global counts hold. It is a function of the records alone, neither of the order in which
    the partitions were read (a monitor resumed after a kill -9 re-reads its last epoch in
    another interleaving and numbers its alerts as before) nor of what the alerts topic already
    holds, so a replay of the same drift records gives the same per-user alerts with the same
    ``seq``, and a consumer that keys alerts on ``(source, seq, kind)`` takes a replayed alert
    for the one it already has. Detection delays are measured in it, and it goes on across
    runs of the monitor (``--recovery-dir``, ``--from-end``: offsets are the topic's) and
    partitions added to the topic (:data:`SEQ_STRIDE`). It restarts only when the drift topic
    is deleted and re-created. (A window's global counts,
    and so its alerts, may differ between interleavings on a backlog: see ``after_close``.)

    Records given without a place (:meth:`DriftMonitor.add` without ``drift_offset``: a
    stream with one reading order, e.g. the tests' and :mod:`streams.drift_testing`'s) are
    numbered by the monitor's own count instead: ``start_position`` plus the drift events
    accounted so far.

    ``top_users``: the users it names (:class:`TopUser`), each with its namespace and, in the
    alerts about K_u changes, its last K_u change in the window (in the record, ``namespace``,
    ``k_from`` and ``k_to`` of its ``top_users`` entry; records written before they existed
    have none of them)."""

    kind: str
    window_start_ms: int
    window_end_ms: int
    value: float
    threshold: float
    top_users: list[TopUser]
    seq: int
    ts_ms: int
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = {"start_ms": d.pop("window_start_ms"), "end_ms": d.pop("window_end_ms")}
        d["top_users"] = [t.to_dict() for t in self.top_users]
        return d


@dataclass(frozen=True)
class WindowSummary:
    """The aggregates of one closed window (exported as Prometheus gauges)."""

    start_ms: int
    end_ms: int
    events: int
    users: int
    k_changes: int
    users_changed: int
    flip_users: int
    max_d_swing: float
    guard_trips: int
    rollbacks: int
    freezes: int
    reanchors: int
    late: int = 0
    """Records dropped since the previous summary because their user's window had closed."""
    quiet_skipped: int = 0
    """Windows without drift events just before this one that were skipped, not closed one by
    one: a gap in event time longer than :data:`QUIET_CAP` windows."""


@dataclass
class _Window:
    """A window's aggregates across users, closed by the partitions' watermark."""

    start: int
    end: int
    kinds: Counter[str] = field(default_factory=Counter)
    per_kind_user: dict[str, Counter[UserKey]] = field(default_factory=dict)
    last_change: dict[UserKey, tuple[int, int]] = field(default_factory=dict)
    flip_users: set[UserKey] = field(default_factory=set)
    max_d_swing: float = 0.0
    users: set[UserKey] = field(default_factory=set)
    position: int | None = None
    """The newest place (:func:`drift_position`) of the records in its global counts: its
    alerts' ``seq`` (None: records given without one)."""


@dataclass
class _UserWindow:
    """One user's window, closed by that user's own event time."""

    start: int
    end: int
    k_changes: int = 0
    last_change: tuple[int, int] | None = None
    reversals: int = 0
    d_range: tuple[float, float] | None = None
    fired: set[str] = field(default_factory=set)


@dataclass
class _User:
    """What the monitor keeps per (namespace, user)."""

    offset: int = -1
    """Newest source offset accounted (-1: none carried one), of ``topic``."""
    topic: str | None = None
    """The source topic of the newest record that carried an offset and a topic (None: none
    did yet; a monitor snapshot written before records said their topic reads None)."""
    idents: set[str] = field(default_factory=set)
    """Kinds and details of the records at ``offset``."""
    kept: dict[tuple[int, str], list[str | None]] | None = None
    """The user's last :data:`MAX_KEPT_IDENTITIES` accounted identities (source offset, kind
    and detail) and their topics, oldest first: what a record of which either side has no
    topic repeats (None: a monitor snapshot written before it was kept)."""
    newest_ms: int | None = None
    """The user's newest event time: a window of the user's that ends ``lateness_ms`` or more
    before it is closed."""
    windows: dict[int, _UserWindow] = field(default_factory=dict)


def _k_pair(detail: dict[str, Any]) -> tuple[int, int] | None:
    for a, b in (("k_from", "k_to"), ("from", "to"), ("old", "new")):
        if a in detail and b in detail:
            try:
                return int(detail[a]), int(detail[b])
            except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
                return None
    return None


K_ALERTS = frozenset({"k_churn", "k_flip_flop", "k_change_rate", "k_change_drift"})
"""Alerts about K_u changes: their users carry their last K_u change (``TopUser.k``)."""


def _d_values(detail: dict[str, Any]) -> list[float]:
    """The d_u values ``detail`` carries (:data:`D_KEYS`), those in :data:`D_RANGE` only (a
    record parsed by :func:`parse_drift_record` has no other)."""
    return [float(detail[k]) for k in D_KEYS if k in detail and _d_valid(detail[k])]


Output = Alert | WindowSummary


class DriftMonitor:
    """Windowed aggregation and alerting over drift records; picklable (a recovery snapshot).

    ``add`` returns the alerts and window summaries an event caused, ``close_until`` and
    ``flush`` close windows explicitly (end of input, or an idle stream)."""

    def __init__(self, cfg: DriftConfig | None = None, partitions: Iterable[int] = (),
                 start_position: int = 0) -> None:
        self.cfg = cfg or DriftConfig()
        # records of the drift topic before where this monitor started reading: alerts' seq
        # continues from the previous run's (see Alert)
        self.start_position = start_position
        self._position: int | None = None  # the place of the record being accounted
        self.seen = 0
        self.late = 0
        """Records dropped: their user's own event time had passed their window by lateness."""
        self.after_close = 0
        """Records counted in their user's window but not in its global counts: the partitions'
        watermark had closed it (a batch's later users, a partition read far ahead)."""
        self.duplicates = 0
        # least recently active first (dict order): past the cap the oldest user goes
        self._users: dict[UserKey, _User] = {}
        self._late_reported = 0
        self._open: dict[int, _Window] = {}
        self._expected = set(partitions)  # partitions that must report before windows close
        self._idle: set[int] = set()
        self._part_max: dict[int, int] = {}  # newest event time per partition
        self._closed_upto: int | None = None  # every window starting before this is closed
        from river import drift as river_drift  # slow to import; readers of records skip it

        self._ph = river_drift.PageHinkley(min_instances=self.cfg.ph_min_windows,
                                           delta=self.cfg.ph_delta,
                                           threshold=self.cfg.ph_threshold, mode="up")

    def configure(self, cfg: DriftConfig, partitions: Iterable[int] = ()) -> None:
        """Take ``cfg``'s thresholds and detector settings (a monitor resumed from its recovery
        store by a run with other options: what its start line and alerts say must be what
        it does). The Page-Hinkley detector keeps its state (the mean and cumulative sums of
        the windows it has seen) and applies the new allowance, threshold and minimum from its
        next window on, as River's detector reads them at each update. The window length
        stays the store's (``streams.drift_flow.check_store`` refuses another). ``partitions``
        (this run's: the topic may have gained some since the snapshot) are added to those
        windows wait for, so a new partition's records are not taken for late ones."""
        self.cfg = cfg
        self._expected |= set(partitions)
        self._ph.min_instances = cfg.ph_min_windows
        self._ph.delta = cfg.ph_delta
        self._ph.threshold = cfg.ph_threshold

    # -- input ------------------------------------------------------------------------------
    def add(self, rec: DriftRecord, partition: int = 0,
            drift_offset: int | None = None) -> list[Output]:
        """Account one record read from ``partition`` of the drift topic, at ``drift_offset``
        there (None: not said; see :class:`Alert` for the ``seq`` it gives alerts).

        Event time advances per partition: a window's global counts close when every partition
        (those given at construction and those seen, minus the ones marked idle) has passed its
        end by ``lateness_ms``, so catching up on a backlog one partition batch at a time does
        not make the other partitions' records late. A user's window closes by that user's own
        event time (see the module's docstring). A repeat of a record already accounted (a
        resumed producer) only counts in ``duplicates``."""
        key = (rec.namespace, rec.user_id)  # runs into two namespaces: two users
        user = self._user(key)
        if self._repeat(user, rec):
            self.duplicates += 1
            return []
        self.seen += 1
        self._position = (None if drift_offset is None
                          else drift_position(partition, drift_offset))
        self._idle.discard(partition)
        w_ms, lateness = self.cfg.window_ms, self.cfg.lateness_ms
        start = rec.ts_ms - rec.ts_ms % w_ms
        newest = rec.ts_ms if user.newest_ms is None else max(user.newest_ms, rec.ts_ms)
        user.newest_ms = newest
        if start + w_ms <= newest - lateness:
            self.late += 1
            return []
        for s in [s for s, uw in user.windows.items() if uw.end <= newest - lateness]:
            del user.windows[s]
        uwin = user.windows.get(start)
        if uwin is None:
            uwin = user.windows[start] = _UserWindow(start, start + w_ms)
        out: list[Output] = self._account_user(uwin, key, rec)
        wm = self.watermark()
        if (self._closed_upto is not None and start < self._closed_upto) or (
                wm is not None and start + w_ms <= wm):  # its global counts are (to be) closed
            self.after_close += 1
        else:
            win = self._open.get(start)
            if win is None:
                win = self._open[start] = _Window(start, start + w_ms)
            self._account(win, uwin, key, rec)
            if self._position is not None:
                win.position = max(getattr(win, "position", None) or 0, self._position)
        if rec.ts_ms > self._part_max.get(partition, rec.ts_ms - 1):
            self._part_max[partition] = rec.ts_ms
        return out + self.advance()

    def _user(self, key: UserKey) -> _User:
        """``key``'s state, now the most recently active user."""
        user = self._users.pop(key, None)
        if user is None:
            user = _User()
        self._users[key] = user
        # a repeat comes within seconds of its original (one uncommitted epoch) and a user's
        # window is open for one window's length of its own events, so only a table smaller
        # than the users active in that time could miss either
        if len(self._users) > MAX_DEDUPE_USERS:
            del self._users[next(iter(self._users))]
        return user

    @staticmethod
    def _repeat(user: _User, rec: DriftRecord) -> bool:
        full = drift_identity(rec.kind, rec.user_id, rec.offset, rec.detail, rec.namespace)
        if full is None:  # a foreign producer's record: cannot tell, count it
            return False
        ident = full[-1]
        kept = user.kept
        if kept is None:  # an older snapshot's user: what it kept of its newest offset
            kept = user.kept = {(user.offset, i): [user.topic] for i in user.idents
                                if user.offset >= 0}
        topics = kept.get((rec.offset, ident))
        if topics is not None and any(same_topic(rec.topic, t) for t in topics):
            return True  # the same identity, and the same topic or either unknown
        if rec.topic is not None:  # the offset rule holds within one known topic
            # user.topic None with an offset: a snapshot from before records said their
            # topic, whose offsets were accounted as one topic: compare with them once
            if user.offset >= 0 and user.topic is not None and rec.topic != user.topic:
                user.offset = -1  # another topic's offsets: start over
            user.topic = rec.topic
            if user.offset >= 0 and (rec.offset < user.offset or (
                    rec.offset == user.offset and ident in user.idents)):
                return True
            if rec.offset == user.offset:
                user.idents.add(ident)
            else:
                user.offset, user.idents = rec.offset, {ident}
        kept.setdefault((rec.offset, ident), []).append(rec.topic)
        if len(kept) > MAX_KEPT_IDENTITIES:
            del kept[next(iter(kept))]
        return False

    def watermark(self) -> int | None:
        """Event time up to which every window may close; None while a partition has not
        reported yet."""
        active = (self._expected | self._part_max.keys()) - self._idle
        if not active or any(p not in self._part_max for p in active):
            return None
        return min(self._part_max[p] for p in active) - self.cfg.lateness_ms

    def mark_idle(self, partition: int) -> None:
        """Stop waiting for ``partition`` (the caller saw no input from it for a while) until
        its next record."""
        self._idle.add(partition)

    def advance(self) -> list[Output]:
        """Close what the current watermark allows."""
        wm = self.watermark()
        return [] if wm is None else self.close_until(wm)

    def _account_user(self, uwin: _UserWindow, u: UserKey, rec: DriftRecord) -> list[Output]:
        """Per-user counts and alerts of ``rec`` in its user's window."""
        cfg = self.cfg
        out: list[Output] = []
        if rec.kind == "k_change":
            uwin.k_changes += 1
            pair = _k_pair(rec.detail)
            prev = uwin.last_change
            if pair is not None:
                if prev is not None and pair[1] == prev[0] and pair[0] == prev[1]:
                    uwin.reversals += 1
                uwin.last_change = pair
            if uwin.k_changes >= cfg.user_changes:
                out += self._user_alert(uwin, "k_churn", u, uwin.k_changes, cfg.user_changes, rec)
            if uwin.reversals >= cfg.flip_reversals:
                out += self._user_alert(uwin, "k_flip_flop", u, uwin.reversals,
                                        cfg.flip_reversals, rec)
        ds = _d_values(rec.detail)
        if ds:
            lo, hi = uwin.d_range or (ds[0], ds[0])
            lo, hi = min(lo, *ds), max(hi, *ds)
            uwin.d_range = (lo, hi)
            if hi - lo >= cfg.d_swing:
                out += self._user_alert(uwin, "d_swing", u, round(hi - lo, 6), cfg.d_swing, rec)
        return out

    @staticmethod
    def _account(win: _Window, uwin: _UserWindow, u: UserKey, rec: DriftRecord) -> None:
        """Global counts of ``rec``, its user's part taken from its user's window."""
        win.kinds[rec.kind] += 1
        win.per_kind_user.setdefault(rec.kind, Counter())[u] += 1
        win.users.add(u)
        if uwin.last_change is not None:
            win.last_change[u] = uwin.last_change
        if uwin.reversals:
            win.flip_users.add(u)
        if uwin.d_range is not None:
            win.max_d_swing = max(win.max_d_swing, uwin.d_range[1] - uwin.d_range[0])

    def _user_alert(self, uwin: _UserWindow, kind: str, user: UserKey, value: float,
                    threshold: float, rec: DriftRecord) -> list[Output]:
        if kind in uwin.fired:  # one alert per user, kind and window
            return []
        uwin.fired.add(kind)
        k = uwin.last_change if kind in K_ALERTS else None
        return [Alert(kind, uwin.start, uwin.end, float(value), float(threshold),
                      [TopUser(user[1], float(value), user[0], k)], self._seq_now(), rec.ts_ms,
                      {"offset": rec.offset})]

    @property
    def seq(self) -> int:
        """The monitor's own count: ``start_position`` plus the drift events accounted, an
        alert's ``seq`` when its records came without a place (see :class:`Alert`)."""
        return self.start_position + self.seen

    def _seq_now(self) -> int:
        """The ``seq`` of a per-user alert raised by the record being accounted."""
        pos = getattr(self, "_position", None)
        return self.seq if pos is None else pos

    def _window_seq(self, win: _Window) -> int:
        """The ``seq`` of ``win``'s alerts."""
        pos = getattr(win, "position", None)
        return self.seq if pos is None else pos

    # -- closing ----------------------------------------------------------------------------
    def close_until(self, watermark_ms: int) -> list[Output]:
        """Close every window that ends at or before ``watermark_ms``: the open ones, and
        the windows without any drift event since the last one closed (zero summaries)."""
        out: list[Output] = []
        for start in sorted(s for s, w in self._open.items() if w.end <= watermark_ms):
            out.extend(self._close(self._open.pop(start)))
        w_ms = self.cfg.window_ms
        out.extend(self._close_quiet(watermark_ms - watermark_ms % w_ms))
        return out

    def flush(self) -> list[Output]:
        """Close every open window (end of a bounded input)."""
        out: list[Output] = []
        for start in sorted(self._open):
            out.extend(self._close(self._open.pop(start)))
        return out

    def _close_quiet(self, before: int) -> list[Output]:
        """Close the windows without any drift event from the last closed one's end up to
        the one starting at ``before`` (excluded), in order: each a :class:`WindowSummary` of
        zeros, so the window gauges go back to 0 after a busy window, and a zero for the
        detector, or a quiet fleet would look like a busy one. Capped at :data:`QUIET_CAP`
        windows (the last ones) so a long gap stays cheap (event time jumping from a dataset's
        1997 to today is millions of windows): the ones before them are skipped, neither
        summarised nor fed to the detector, and the first summary after them says how many
        (``quiet_skipped``). Nothing before a first window closed."""
        if self._closed_upto is None or before <= self._closed_upto:
            return []
        w_ms = self.cfg.window_ms
        first = max(self._closed_upto, before - QUIET_CAP * w_ms)
        skipped = (first - self._closed_upto) // w_ms
        self._closed_upto = first  # the skipped ones count as closed
        out: list[Output] = []
        for start in range(first, before, w_ms):
            out.extend(self._summarise(_Window(start, start + w_ms), skipped))
            skipped = 0
        return out

    def _close(self, win: _Window) -> list[Output]:
        """Close ``win``: first the quiet windows before it (:meth:`_close_quiet`), then its
        own summary and alerts."""
        return self._close_quiet(win.start) + self._summarise(win)

    def _summarise(self, win: _Window, quiet_skipped: int = 0) -> list[Output]:
        """``win``'s summary and global alerts, the windows before it already closed; never
        closes another window (a quiet window's must not recurse into the ones before it)."""
        cfg = self.cfg
        out: list[Output] = []
        self._closed_upto = win.end
        changes = win.per_kind_user.get("k_change", Counter())
        summary = WindowSummary(
            start_ms=win.start, end_ms=win.end, events=sum(win.kinds.values()),
            users=len(win.users), k_changes=win.kinds["k_change"], users_changed=len(changes),
            flip_users=len(win.flip_users), max_d_swing=win.max_d_swing,
            guard_trips=win.kinds["guard_trip"], rollbacks=win.kinds["rollback"],
            freezes=win.kinds["freeze"], reanchors=win.kinds["reanchor"],
            late=self.late - self._late_reported, quiet_skipped=quiet_skipped,
        )
        self._late_reported = self.late
        out.append(summary)
        ts = win.end
        for kind, name, threshold in (("guard_trip", "guard_trips", cfg.guard_trips),
                                      ("rollback", "rollbacks", cfg.rollbacks),
                                      ("freeze", "freezes", cfg.freezes),
                                      ("k_change", "k_change_rate", cfg.k_changes)):
            n = win.kinds[kind]
            if threshold is not None and n >= threshold:
                top = self._top(win, name, win.per_kind_user[kind])
                out.append(Alert(name, win.start, win.end, float(n), float(threshold), top,
                                 self._window_seq(win), ts, {}))
        self._ph.update(_stabilise(summary.k_changes))
        if self._ph.drift_detected:
            out.append(Alert("k_change_drift", win.start, win.end, float(summary.k_changes),
                             cfg.ph_threshold, self._top(win, "k_change_drift", changes),
                             self._window_seq(win), ts,
                             {"detector": "PageHinkley", "series": "k_changes per window"}))
        return out

    def _top(self, win: _Window, kind: str, counts: Counter[UserKey]) -> list[TopUser]:
        # Ties broken by user id, then namespace, so the alert is the same on every replay.
        ranked = sorted(counts.items(), key=lambda uc: (-uc[1], uc[0][1], uc[0][0] or ""))
        return [_top_user(win, kind, u, c) for u, c in ranked[: self.cfg.top_n]]


def _top_user(win: _Window, kind: str, user: UserKey, value: float) -> TopUser:
    """``user`` as ``kind``'s alert names it: with its last K_u change in ``win`` when the
    alert is about K_u changes and its changes said it."""
    k = win.last_change.get(user) if kind in K_ALERTS else None
    return TopUser(user[1], float(value), user[0], k)


def _stabilise(count: int) -> float:
    """Anscombe transform: counts that are roughly Poisson get unit variance at any level, so
    the detector's thresholds mean the same for ten users and for a million."""
    return 2.0 * math.sqrt(count + 0.375)


def format_alert(body: dict[str, Any]) -> str:
    """One readable line for an alert record (``diam drift watch``). A user of a K_u alert is
    followed by its last K_u change in the window: both values for a flip-flop (the user went
    back and forth between them), from and to for the others.

    >>> format_alert({"kind": "k_flip_flop", "window": {"start_ms": 0, "end_ms": 60000},
    ...               "value": 3.0, "threshold": 2.0,
    ...               "top_users": [{"user_id": "u7", "value": 3.0, "k_from": 3, "k_to": 2}]})
    '1970-01-01T00:00:00Z +60s  k_flip_flop  value 3 (threshold 2)  users: u7=3 (K_u 2<->3)'
    >>> format_alert({"kind": "k_churn", "window": {"start_ms": 0, "end_ms": 60000},
    ...               "value": 4.0, "threshold": 4.0,
    ...               "top_users": [{"user_id": "u7", "value": 4.0, "k_from": 5, "k_to": 6}]})
    '1970-01-01T00:00:00Z +60s  k_churn  value 4 (threshold 4)  users: u7=4 (K_u 5->6)'

    A record written before alerts carried K_u (or an entry without it) reads as it did:

    >>> format_alert({"kind": "k_flip_flop", "window": {"start_ms": 0, "end_ms": 60000},
    ...               "value": 3.0, "threshold": 2.0, "top_users": [{"user_id": "u7", "value": 3.0}]})
    '1970-01-01T00:00:00Z +60s  k_flip_flop  value 3 (threshold 2)  users: u7=3'

    A monitor of every namespace names each user's (``u1@shadow``: the shadow run's user u1):

    >>> format_alert({"kind": "k_churn", "window": {"start_ms": 0, "end_ms": 60000},
    ...               "value": 4.0, "threshold": 4.0,
    ...               "top_users": [{"user_id": "u1", "value": 4.0, "namespace": "shadow"},
    ...                             {"user_id": "u1", "value": 4.0}]})
    '1970-01-01T00:00:00Z +60s  k_churn  value 4 (threshold 4)  users: u1@shadow=4, u1=4'

    A monitor of one namespace's drift events (``diam drift run --namespace``) says which once:

    >>> format_alert({"kind": "d_swing", "window": {"start_ms": 0, "end_ms": 60000},
    ...               "value": 0.5, "threshold": 0.4, "namespace": "shadow"})
    '1970-01-01T00:00:00Z +60s  d_swing  value 0.5 (threshold 0.4)  namespace shadow'
    """
    from datetime import UTC, datetime

    win = body.get("window") or {}
    start, end = int(win.get("start_ms", 0)), int(win.get("end_ms", 0))
    when = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kind = body.get("kind")
    ns = body.get("namespace")
    users = ", ".join(f"{_user_label(t, ns)}={t['value']:g}{_k_note(kind, t)}"
                      for t in body.get("top_users") or [])
    line = (f"{when} +{(end - start) // 1000}s  {kind}  value {body.get('value', 0):g} "
            f"(threshold {body.get('threshold', 0):g})")
    return line + (f"  users: {users}" if users else "") + (f"  namespace {ns}" if ns else "")


def _user_label(entry: Mapping[str, Any], namespace: object) -> str:
    """An alert's user as a line shows it: ``user@namespace`` when the entry says a namespace
    other than the whole alert's."""
    ns = entry.get("namespace")
    return f"{entry['user_id']}@{ns}" if isinstance(ns, str) and ns != namespace else str(
        entry["user_id"])


def _k_note(kind: object, entry: Mapping[str, Any]) -> str:
    """`` (K_u a<->b)`` for a flip-flop, `` (K_u a->b)`` for another K_u alert, or nothing when
    the entry does not carry two integer K_u values."""
    pair = _k_pair(dict(entry))
    if pair is None:
        return ""
    if kind == "k_flip_flop":
        lo, hi = sorted(pair)
        return f" (K_u {lo}<->{hi})"
    return f" (K_u {pair[0]}->{pair[1]})"
