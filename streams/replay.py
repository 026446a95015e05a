"""Replay a time or offset range of the clicks topic through the online dataflow into a namespace
of its own (``diam replay``).

The replay is the online dataflow itself (:func:`streams.runner.run_online`), bounded by per
partition start and end offsets and without recovery, so the same range and base give the same
Redis values bit for bit: the learner is deterministic per user and the last push of every
user happens at the end of the input. Its drift events and dead letters go to topics of its own
(``<topic>.replay.<namespace>``), so a replay never trips the live drift monitor.

Bounds (``parse_bound``): an ISO-8601 time (resolved by the broker's offsets-for-times over
record timestamps), a plain offset applied to every partition, or ``partition:offset`` pairs;
partitions a pair list leaves out are unbounded on that side.

>>> parse_bound("2024-05-01T12:00:00Z")
Bound(time_ms=1714564800000, offset=None, offsets=None)
>>> parse_bound("0:10,3:7").offsets
{0: 10, 3: 7}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from serving_cache.config import RedisConfig
from serving_cache.keys import validate_namespace
from streams.config import FlowConfig, KafkaConfig
from streams.kafka_io import offsets_for_time, watermarks
from streams.online import FlowStats, LearnerHolder

__all__ = ["Bound", "ReplayError", "ReplayRange", "ReplayReport", "parse_bound", "resolve_range",
           "run_replay", "replay_topics", "namespace_topics", "replay_flow_id", "topic_collision",
           "check_topic_collision", "PROTECTED_NAMESPACES", "TIME_BOUNDS_HINT"]

#: Why a time-bounded range may hold nothing (``diam replay``, ``diam train``/``evaluate``).
TIME_BOUNDS_HINT = ("the bounds read the records' Kafka timestamps (when they were produced; "
                    "`diam produce` stamps them with the wall clock), not the events' own ts")

#: Namespaces a replay refuses to write: serving reads them.
PROTECTED_NAMESPACES = frozenset({"live"})


class ReplayError(ValueError):
    """A replay cannot run as asked; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Bound:
    """One end of a replay range: exactly one field is set."""

    time_ms: int | None = None
    offset: int | None = None
    offsets: dict[int, int] | None = None


def parse_bound(text: str) -> Bound:
    """``2024-05-01T12:00:00Z`` | ``1234`` | ``0:100,1:80``; naive times are UTC."""
    text = text.strip()
    if not text:
        raise ReplayError("empty bound: pass an ISO time, an offset or partition:offset pairs")
    if text.isdigit():
        return Bound(offset=int(text))
    if ":" in text and all(part.strip().replace(":", "", 1).isdigit() for part in text.split(",")):
        pairs: dict[int, int] = {}
        for part in text.split(","):
            p, off = part.split(":")
            if int(p) in pairs:
                raise ReplayError(f"partition {p} given twice in {text!r}")
            pairs[int(p)] = int(off)
        return Bound(offsets=pairs)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ReplayError(
            f"cannot read {text!r} as a bound: use an ISO time (2024-05-01T12:00:00Z), "
            "an offset (1234) or partition:offset pairs (0:100,1:80)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Bound(time_ms=int(when.timestamp() * 1000))


@dataclass(frozen=True)
class ReplayRange:
    """Per-partition ``[start, end)`` offsets of a replay."""

    topic: str
    start: dict[int, int]
    end: dict[int, int]
    clamped: tuple[str, ...] = ()
    """An offset given for a partition that lay outside what it holds, one line each (the
    range was clamped to the partition; a bound past its end is most likely a mistake)."""

    @property
    def size(self) -> int:
        return sum(self.end[p] - self.start[p] for p in self.start)

    def describe(self) -> str:
        return ", ".join(f"{p}:[{self.start[p]},{self.end[p]})" for p in sorted(self.start))


def _resolve(kafka: KafkaConfig, topic: str, bound: Bound | None, marks: dict[int, tuple[int, int]],
             side: int) -> dict[int, int]:
    if bound is None:
        return {p: m[side] for p, m in marks.items()}
    if bound.time_ms is not None:
        return offsets_for_time(kafka, topic, bound.time_ms)
    if bound.offset is not None:
        return {p: bound.offset for p in marks}
    assert bound.offsets is not None
    unknown = sorted(set(bound.offsets) - set(marks))
    if unknown:
        raise ReplayError(f"topic {topic!r} has no partition {unknown[0]} (it has {sorted(marks)})")
    return {p: bound.offsets.get(p, m[side]) for p, m in marks.items()}


def resolve_range(kafka: KafkaConfig, topic: str, start: Bound | None, end: Bound | None,
                  options: tuple[str, str] = ("--from", "--to")) -> ReplayRange:
    """Offsets of a replay; missing bounds are the topic's low / high watermarks. Offsets outside
    what the topic still holds are clamped to it (retention may have deleted the head).
    ``options``: the command's names of the start and end bounds, as the messages say them."""
    since, until = options
    if (start is not None and end is not None and start.time_ms is not None
            and end.time_ms is not None and start.time_ms > end.time_ms):
        raise ReplayError(f"{since} is a later time than {until}: the range is empty (the end "
                          "is exclusive, as for offsets)")
    marks = watermarks(kafka, topic)
    lo = _resolve(kafka, topic, start, marks, 0)
    hi = _resolve(kafka, topic, end, marks, 1)
    s, e = {}, {}
    clamped = []
    given = [b is not None and b.time_ms is None for b in (start, end)]  # offsets, not times
    for p, (low, high) in marks.items():
        s[p] = min(max(lo[p], low), high)
        e[p] = min(max(hi[p], low), high)
        for i, side, asked, got in ((0, since, lo[p], s[p]), (1, until, hi[p], e[p])):
            if given[i] and asked != got:
                clamped.append(f"partition {p}: {side} offset {asked} is outside what it holds "
                               f"[{low}, {high}); {got} used")
        if s[p] > e[p]:
            raise ReplayError(f"partition {p}: range starts at offset {s[p]} after its end {e[p]} "
                              f"(is {since} later than {until}?)")
    return ReplayRange(topic, s, e, tuple(clamped))


def replay_topics(kafka: KafkaConfig, namespace: str) -> KafkaConfig:
    """The Kafka settings of a replay: its drift events and dead letters go to topics of its own."""
    return kafka.model_copy(update={
        "drift_topic": f"{kafka.drift_topic}.replay.{namespace}",
        "deadletter_topic": f"{kafka.deadletter_topic}.replay.{namespace}",
    })


def replay_flow_id(namespace: str) -> str:
    """The Bytewax flow id of a replay into ``namespace``: Bytewax 0.21 refuses a ``.`` in a
    flow id (``bytewax.dataflow.Dataflow.__post_init__``; it joins step ids with dots) and a
    namespace may hold dots (``serving_cache.keys.validate_namespace``), so they become ``_``.
    The id is a label only (a replay keeps no recovery store, where it would name the state),
    so ``a.b`` and ``a_b`` sharing one is harmless.

    >>> replay_flow_id("a.b.c")
    'diam-replay-a_b_c'
    """
    return f"diam-replay-{namespace.replace('.', '_')}"


def topic_collision(kafka: KafkaConfig, namespace: str, existing: Iterable[str]) -> str | None:
    """Why a replay into ``namespace`` cannot create its own topics (:func:`replay_topics`) beside
    the topics ``existing``, in one line naming the topic in the way and what to do, or None.
    Kafka refuses a topic whose name differs from an existing one's only by ``.`` against ``_``
    (the two give one metric name), so namespaces ``a.b`` and ``a_b`` cannot both have replay
    topics; found after the claim and the partition record were written, the broker's refusal
    read as "is the stack up?".

    >>> from streams.config import KafkaConfig
    >>> k = KafkaConfig()
    >>> print(topic_collision(k, "a_b", ["diam.drift.replay.a.b", "diam.clicks"]))
    the replay's topic diam.drift.replay.a_b collides with the existing topic diam.drift.replay.a.b of namespace 'a.b' (Kafka refuses topic names that differ only by '.' and '_'): replay into another namespace, or `diam drop a.b` first (it deletes that namespace's keys and topics)
    >>> topic_collision(k, "a.b", ["diam.drift.replay.a.b", "diam.deadletter.replay.a.b"]) is None
    True
    """
    own = replay_topics(kafka, namespace)
    folded = {t.replace(".", "_"): t for t in existing}
    for mine, base in ((own.deadletter_topic, kafka.deadletter_topic),
                       (own.drift_topic, kafka.drift_topic)):
        other = folded.get(mine.replace(".", "_"))
        if other is None or other == mine:
            continue
        prefix = f"{base}.replay."
        if other.startswith(prefix):
            ns = other[len(prefix):]
            return (f"the replay's topic {mine} collides with the existing topic {other} of "
                    f"namespace {ns!r} (Kafka refuses topic names that differ only by '.' and "
                    f"'_'): replay into another namespace, or `diam drop {ns}` first (it deletes "
                    "that namespace's keys and topics)")
        return (f"the replay's topic {mine} collides with the existing topic {other} (Kafka "
                "refuses topic names that differ only by '.' and '_'): replay into another "
                f"namespace, or delete topic {other}")
    return None


def check_topic_collision(kafka: KafkaConfig, namespace: str) -> None:
    """Raise :class:`ReplayError` when :func:`topic_collision` refuses ``namespace``'s topics
    on the broker's topics (one metadata request naming no topic: none is created); the Kafka
    client's errors when the broker does not answer."""
    from streams.kafka_io import _admin, _logs_on_failure

    admin = _admin(kafka)
    with _logs_on_failure(admin):
        have = admin.list_topics(timeout=30.0).topics
    refused = topic_collision(kafka, namespace, have)
    if refused is not None:
        raise ReplayError(refused)


def namespace_topics(kafka: KafkaConfig, namespace: str) -> tuple[list[str], list[str]]:
    """The dead-letter and drift topics that hold ``namespace``'s records:
    ``(deadletter topics, drift topics)``, each the shared topic of ``kafka`` (a live ``diam
    run``'s, shared by namespaces and marked with theirs) followed by the replay's own
    (:func:`replay_topics`) when the broker has it: a namespace can be written by a replay and
    by a run, so both are read (``diam deadletters --namespace``, ``diam inspect namespace
    --plot``). One metadata request, naming no topic (none is created)."""
    from streams.kafka_io import _admin, _logs_on_failure

    own = replay_topics(kafka, namespace)
    admin = _admin(kafka)
    with _logs_on_failure(admin):
        have = admin.list_topics(timeout=30.0).topics
    return ([kafka.deadletter_topic] + ([own.deadletter_topic] if own.deadletter_topic in have
                                        else []),
            [kafka.drift_topic] + ([own.drift_topic] if own.drift_topic in have else []))


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did."""

    namespace: str
    range: ReplayRange
    records: int
    valid: int
    users: int
    deadlettered: int
    drift_events: int
    pushes: int
    wall_s: float
    forgets: int = 0
    """Tombstones replayed (users forgotten): records = valid + dead-lettered + forgets."""
    forgotten_clicks: int = 0
    """Of ``valid``, the clicks not learnt: ``diam forget`` forgot their user after them (the
    markers read at the replay's start, ``streams.online.skip_forgotten``)."""
    forgotten_pushes: int = 0
    """Pushes refused because ``diam forget`` forgot the user after the replayed clicks they
    were learnt from (a range that ends before the user's tombstone)."""

    def lines(self) -> list[str]:
        rate = self.records / self.wall_s if self.wall_s > 0 else 0.0
        return [
            f"replayed {self.records:,} events of {self.range.topic} "
            f"({self.range.describe()}) into namespace {self.namespace!r}",
            f"  users {self.users:,}  valid {self.valid:,}"
            + (f" ({self.forgotten_clicks:,} skipped as forgotten)" if self.forgotten_clicks
               else "") + f"  forgets {self.forgets:,}  "
            f"dead-lettered {self.deadlettered:,}  "
            f"drift events {self.drift_events:,}  redis pushes {self.pushes:,}"
            + (f" ({self.forgotten_pushes:,} refused: users forgotten after these clicks)"
               if self.forgotten_pushes else ""),
            f"  wall time {self.wall_s:.2f} s ({rate:,.0f} events/s)",
        ]


def check_namespace(namespace: str, serving_namespace: str | None = None, verb: str = "replay into"
                    ) -> str:
    """Refuse the namespaces serving reads; return ``namespace`` otherwise. ``verb`` names
    what was refused (``diam drop`` passes "drop").

    >>> check_namespace("live")
    Traceback (most recent call last):
    ...
    streams.replay.ReplayError: refusing to replay into 'live': serving reads it; pass a namespace of its own, e.g. --namespace replay-1
    >>> check_namespace("prod", serving_namespace="prod", verb="drop")
    Traceback (most recent call last):
    ...
    streams.replay.ReplayError: refusing to drop 'prod': serving reads it
    >>> check_namespace("shadow-1", serving_namespace="prod")
    'shadow-1'
    """
    try:
        validate_namespace(namespace)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    if namespace in PROTECTED_NAMESPACES or namespace == serving_namespace:
        hint = ("; pass a namespace of its own, e.g. --namespace replay-1"
                if verb == "replay into" else "")
        raise ReplayError(f"refusing to {verb} {namespace!r}: serving reads it{hint}")
    return namespace


def run_replay(kafka: KafkaConfig, redis: RedisConfig, flow: FlowConfig, rng: ReplayRange,
               namespace: str, holder: LearnerHolder, *, workers: int = 1,
               progress: bool = True, poll_s: float = 0.2,
               stop: threading.Event | None = None, redis_checked: bool = False,
               ) -> ReplayReport:
    """Run the bounded dataflow over ``rng`` into ``namespace`` and report; ``stop`` set (a
    signal, ``diam replay``) ends the input at its next batch, as ``diam run``'s;
    ``redis_checked``: the caller asked ``streams.preflight.check_redis`` already
    (``streams.runner.OnlineJob.redis_checked``: not asked again).

    The dataflow runs in a thread while this one shows a tqdm bar of records read against the
    range size. An error in the dataflow is re-raised here."""
    from tqdm import tqdm

    from streams.runner import OnlineJob, run_online

    check_namespace(namespace)
    job = OnlineJob(kafka=replay_topics(kafka, namespace), redis=redis, flow=flow, topic=rng.topic,
                    namespace=namespace, bounded=True, start=dict(rng.start), end=dict(rng.end),
                    workers=workers, recovery_dir=None, flow_id=replay_flow_id(namespace),
                    stop=stop if stop is not None else threading.Event(),
                    redis_checked=redis_checked)
    # also set by the sink: a refused write ends the input
    stats = FlowStats()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run_online(job, holder, stats)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=target, name="diam-replay", daemon=True)
    thread.start()
    with tqdm(total=rng.size, unit="ev", disable=not progress, desc=f"replay {namespace}") as bar:
        while thread.is_alive():
            thread.join(poll_s)
            bar.update(stats.total().records - bar.n)
        bar.update(stats.total().records - bar.n)
    wall = time.monotonic() - started
    if failure:
        raise failure[0]
    c = stats.total()
    return ReplayReport(namespace, rng, c.records, c.valid, c.users, c.rejected,
                        c.drift_events, c.pushes, wall, forgets=c.forgets,
                        forgotten_pushes=c.forgotten_pushes, forgotten_clicks=c.forgotten_clicks)
