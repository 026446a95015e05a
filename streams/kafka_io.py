"""Kafka administration and bounded reads: topic creation and deletion, a topic's partitions,
offset ranges and offsets-for-times, and reading a bounded range of a partition, a whole topic
or its dead letters as :class:`RawRecord`, the record type the dataflows take.

The Bytewax source that feeds the dataflows is :mod:`streams.kafka_source`; the sinks that
produce their outputs are :mod:`streams.kafka_sink`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from streams.config import KafkaConfig

__all__ = [
    "BROKER_ANSWER_S",
    "BOUNDED_READ_CONF",
    "RawRecord",
    "broker_answers",
    "reading_consumer",
    "ensure_topic",
    "delete_topics",
    "partition_ids",
    "UnknownTopic",
    "TopicState",
    "describe_topics",
    "topic_config",
    "watermarks",
    "offsets_for_time",
    "consume_all",
    "read_partition",
    "read_to_ends",
    "end_timestamps",
    "raw_record",
    "RangeStalled",
    "merge_copies",
    "read_deadletters",
    "of_namespace",
]


class RawRecord(NamedTuple):
    """One consumed Kafka record, as the dataflow sees it. ``ts_ms`` is the record timestamp.

    ``clock_ms`` is the partition's event clock at this record: the largest record timestamp
    in the partition up to and including it, from where the run (or the recovery store it
    resumed, which keeps the clock) started reading, over the records the dataflow accepts
    when the source is given its judge (``ClickSource``'s ``judge``, with eviction on): a
    dead-lettered record's timestamp never moves it. It never goes back, and a replay of the
    partition from its start, or a resume, reads the same clock at the same offset; a replay of
    a range starts the clock at the range's first record (its users start fresh too). The
    online dataflow decides a user's idleness by it (``FlowConfig.evict_idle_s``). -1 where
    the source keeps none (the dataflow then reads ``ts_ms``).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ts_ms: int
    clock_ms: int = -1


def _offset(m: Message) -> int:
    """The offset of a consumed (error-free) message; librdkafka always sets one there."""
    off = m.offset()
    assert off is not None
    return off


def _bytes(v: str | bytes | None) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


def _admin(cfg: KafkaConfig) -> AdminClient:
    return AdminClient(cfg.client_config())  # type: ignore[arg-type]  # the stub omits logger


@contextmanager
def _logs_on_failure(client: AdminClient | Consumer) -> Iterator[None]:
    """Serve ``client``'s queued log lines when a call fails, then raise. librdkafka's lines
    wait on the poll queue (``streams.kafka_log``) and these calls never poll: without this, a
    refused TLS handshake or login would leave only "Broker transport failure" to read."""
    try:
        yield
    except Exception:
        client.poll(0)  # never assigned here: logs and errors only, no record is taken
        raise


BROKER_ANSWER_S = 5.0
"""How long a command that needs the broker before it starts (``diam run``, ``diam drift
run``) waits for it to answer one metadata request before it gives up with an error naming
it. A local or a loaded remote broker answers in milliseconds; the calls after it keep their
own, longer timeouts (a topic being created, a consumer group joining)."""


def broker_answers(cfg: KafkaConfig, timeout: float = BROKER_ANSWER_S) -> None:
    """One metadata request: returns as soon as a broker of ``cfg.bootstrap`` answers, raises
    ``KafkaException`` (``_TRANSPORT``) when none has within ``timeout`` seconds. Asks for no
    topic (a request that names one makes a broker with ``auto.create.topics.enable`` create
    it)."""
    admin = _admin(cfg)
    with _logs_on_failure(admin):
        admin.list_topics(timeout=timeout)


def ensure_topic(cfg: KafkaConfig, topic: str, partitions: int | None = None, timeout: float = 30.0,
                 config: dict[str, str] | None = None) -> None:
    """Create ``topic`` when missing (replication 1 on the local stack, topic ``config`` such as
    compaction); wait until it is visible. An existing topic is left as it is."""
    admin = _admin(cfg)
    with _logs_on_failure(admin):
        _ensure_topic(admin, cfg, topic, partitions, timeout, config)


def _ensure_topic(admin: AdminClient, cfg: KafkaConfig, topic: str, partitions: int | None,
                  timeout: float, config: dict[str, str] | None) -> None:
    md = admin.list_topics(timeout=timeout)
    known = md.topics.get(topic)
    if known is not None and known.error is None and known.partitions:
        return  # the usual case: one metadata request
    if topic not in md.topics:
        fut = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions or cfg.partitions, replication_factor=1,
                      config=dict(config or {}))]
        )[topic]
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic!r} did not become visible within {timeout:.0f}s")


def delete_topics(cfg: KafkaConfig, topics: Iterable[str], timeout: float = 30.0) -> list[str]:
    """Delete ``topics`` and wait for the broker's answers; return the ones it deleted. A topic
    that does not exist is skipped; any other refusal raises.

    The AdminClient must outlive the answers: ``AdminClient(...).delete_topics(...)`` on a
    temporary destroys the handle before the request is sent, every future fails with
    ``_DESTROY`` and nothing is deleted (the tests and benchmarks had left 4,000 topics on
    the local broker that way, slowing its start to minutes)."""
    names = list(dict.fromkeys(topics))
    if not names:
        return []
    admin = _admin(cfg)
    gone: list[str] = []
    with _logs_on_failure(admin):
        for name, fut in admin.delete_topics(names, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
            else:
                gone.append(name)
    return gone


class UnknownTopic(RuntimeError):
    """A topic that a read names does not exist on the broker (a typo, or nothing written yet)."""


def partition_ids(cfg: KafkaConfig, topic: str, timeout: float = 30.0,
                  admin: AdminClient | None = None) -> list[int]:
    """Partition ids of ``topic``; :class:`UnknownTopic` when it does not exist. ``admin``: a
    client to ask with (a caller that asks again and again), else one made for the call.

    Reads the metadata of every topic rather than of ``topic`` alone: a metadata request that
    names a topic makes a broker with ``auto.create.topics.enable`` (Kafka's default, and the
    local stack's) create it, so a misspelt topic would be created empty and a replay or a
    dead-letter listing of it would report success with nothing read."""
    admin = admin if admin is not None else _admin(cfg)
    with _logs_on_failure(admin):
        md = admin.list_topics(timeout=timeout)
    return _partitions_in(md, cfg, topic)


def _partitions_in(md: ClusterMetadata, cfg: KafkaConfig, topic: str) -> list[int]:
    """``topic``'s partition ids in a metadata answer of every topic; :class:`UnknownTopic` when
    it is not there, ``RuntimeError`` when the broker reports an error for it."""
    t = md.topics.get(topic)
    if t is None:
        raise UnknownTopic(f"topic {topic!r} does not exist at {cfg.bootstrap}")
    if t.error is not None:
        raise RuntimeError(f"cannot read partitions of topic {topic!r}: {t.error.str()}")
    return sorted(t.partitions)


class TopicState(NamedTuple):
    """What a command checks about an existing topic before it writes there
    (:func:`describe_topics`): its partitions, its configuration as the broker reports it
    (defaults included, e.g. ``cleanup.policy``) and each partition's ``(low, high)`` offsets,
    as :func:`watermarks` gives them (``high`` the last stable offset)."""

    partitions: list[int]
    config: dict[str, str]
    marks: dict[int, tuple[int, int]]

    @property
    def held(self) -> int:
        """How many records the topic holds (high minus low, summed over its partitions)."""
        return sum(hi - lo for lo, hi in self.marks.values())


def describe_topics(cfg: KafkaConfig, topics: Iterable[str],
                    timeout: float = 30.0) -> dict[str, TopicState | None]:
    """Each of ``topics`` as a :class:`TopicState`, None for one that does not exist, from one
    round of requests on one admin connection: one metadata request of every topic (naming none,
    so that no broker creates a misspelt one: :func:`partition_ids`), then the existing topics'
    configurations and their earliest and latest offsets, asked together.

    What ``diam produce`` checks before it writes (compaction, records already held, existence)
    is read here once rather than by a connection and a metadata request per check. Raises
    ``RuntimeError`` when the broker reports an error for a topic, and the Kafka client's errors
    when it does not answer."""
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import ConfigResource, OffsetSpec

    names = list(dict.fromkeys(topics))
    admin = _admin(cfg)
    with _logs_on_failure(admin):
        md = admin.list_topics(timeout=timeout)
        parts: dict[str, list[int]] = {}
        for name in names:
            try:
                parts[name] = _partitions_in(md, cfg, name)
            except UnknownTopic:
                continue
        if not parts:
            return dict.fromkeys(names)
        res = {n: ConfigResource(ConfigResource.Type.TOPIC, n)  # type: ignore[attr-defined]
               for n in parts}
        confs = admin.describe_configs(list(res.values()), request_timeout=timeout)
        tps = [TopicPartition(n, p) for n, ps in parts.items() for p in ps]
        # the ends as watermarks() takes them: the last stable offsets (an admin client's
        # default is read_uncommitted, the high watermarks: past an open transaction)
        lows = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps},
                                  isolation_level=IsolationLevel.READ_COMMITTED,
                                  request_timeout=timeout) if tps else {}
        highs = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                   isolation_level=IsolationLevel.READ_COMMITTED,
                                   request_timeout=timeout) if tps else {}
        low = {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in lows.items()}
        high = {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in highs.items()}
        out: dict[str, TopicState | None] = dict.fromkeys(names)
        for n, ps in parts.items():
            conf = confs[res[n]].result(timeout)
            out[n] = TopicState(ps, {k: str(e.value) for k, e in conf.items()},
                                {p: (low[n, p], high[n, p]) for p in ps})
    return out


def topic_config(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> dict[str, str]:
    """``topic``'s configuration as the broker reports it, defaults included (e.g.
    ``cleanup.policy``: ``delete``, or ``compact`` for the item catalogue). The topic must
    exist (:func:`partition_ids` says so first, without creating it)."""
    from confluent_kafka.admin import ConfigResource

    admin = _admin(cfg)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)  # type: ignore[attr-defined]
    with _logs_on_failure(admin):
        conf = admin.describe_configs([res])[res].result(timeout)
    return {name: str(entry.value) for name, entry in conf.items()}


BOUNDED_READ_CONF = {"fetch.wait.max.ms": "10", "isolation.level": "read_committed"}
"""The client settings of every consumer that reads a bounded range (:func:`read_partition`'s
callers) or takes its ends (:func:`watermarks`). A fetch of a partition that holds nothing new
is held by the broker up to ``fetch.wait.max.ms`` (librdkafka's default 500 ms), and the next
partition assigned is only fetched after it: a bounded read, which assigns its partitions one
after the other, waited half a second for each partition after the first.

``isolation.level`` (librdkafka's default, named so that ``KafkaConfig.extra`` cannot move it):
the end of a partition is its last stable offset, what was committed when it is asked
(:func:`watermarks`)."""


def reading_consumer(cfg: KafkaConfig) -> Consumer:
    """A consumer for bounded reads by offset (:func:`read_partition`, watermarks): assigned,
    never subscribed, committing nothing (its group id is never used to store offsets)."""
    conf = cfg.client_config()
    conf.update({"group.id": "diam-offsets", "enable.auto.commit": "false", **BOUNDED_READ_CONF})
    return Consumer(conf)


def watermarks(cfg: KafkaConfig, topic: str, timeout: float = 30.0,
               partitions: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}``; given ``partitions``, only those of them that the topic
    has. ``high`` is the partition's end: the one rule of this project for where a bounded read
    of it ends (a bounded run, ``diam replay``, the click-first catch-up, ``diam drift watch
    --exit-at-end``, :func:`consume_all`).

    The end is the last stable offset, asked with ``isolation.level=read_committed``
    (:data:`BOUNDED_READ_CONF`): the offset the next record will get, except while a producer
    holds a transaction open on the partition, where it is that transaction's first offset.
    A read_committed consumer delivers nothing at or past it until the transaction ends, so an
    end at the high watermark would wait for the transaction; at the last stable offset a
    bounded read ends promptly with what was committed when it started, and the open
    transaction's records (and any written after it began) are not part of it, even once
    committed."""
    c = reading_consumer(cfg)
    try:
        parts = partition_ids(cfg, topic, timeout)
        if partitions is not None:
            wanted = set(partitions)
            parts = [p for p in parts if p in wanted]
        with _logs_on_failure(c):
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                    for p in parts}
    finally:
        c.close()


def offsets_for_time(cfg: KafkaConfig, topic: str, ts_ms: int, timeout: float = 30.0) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= ``ts_ms`` (the high watermark
    when there is none), resolved by the broker (ListOffsets by timestamp)."""
    c = reading_consumer(cfg)
    try:
        parts = partition_ids(cfg, topic, timeout)
        with _logs_on_failure(c):
            found = c.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in parts],
                                        timeout=timeout)
            out: dict[int, int] = {}
            for tp in found:
                if tp.offset < 0:  # no record at or after ts_ms
                    out[tp.partition] = c.get_watermark_offsets(
                        TopicPartition(topic, tp.partition), timeout=timeout
                    )[1]
                else:
                    out[tp.partition] = tp.offset
            return out
    finally:
        c.close()


def read_to_ends(c: Consumer, topic: str, ends: Mapping[int, int]) -> list[int]:
    """The partitions of ``ends`` (partition -> end offset, exclusive) that ``c`` has read up to
    their end: the one rule for "a partition is read to its end" of the readers that stop at
    ends taken from the watermarks (a bounded dataflow, the click-first catch-up, ``diam drift
    watch --exit-at-end``).

    It asks the consumer's position, the offset it reads next, which librdkafka moves past
    offsets that hold nothing to deliver (a transaction's commit or abort marker, an aborted
    transaction's records, records compacted away) as ``consume`` passes them; the offset of
    the last record delivered plus one never reaches an end taken at such an offset. Once it
    holds, ``c.consume`` has returned every record of the partition below the end. One local
    call, no request to the broker; a partition ``c`` has not read from yet is not read."""
    if not ends:
        return []
    return [tp.partition for tp in c.position([TopicPartition(topic, p) for p in ends])
            if tp.error is None and tp.offset >= 0 and tp.offset >= ends[tp.partition]]


class RangeStalled(TimeoutError):
    """A bounded read of a partition made no progress for its stall time before its end."""


def read_partition(c: Consumer, topic: str, partition: int, start: int, end: int,
                   stall_s: float, batch: int = 500) -> Iterator[Message]:
    """The error-free messages of ``topic[partition]`` in ``[start, end)``, in offset order,
    read with ``c`` (assigned here, unassigned at the end); the one way this project reads a
    bounded range of a partition. Offsets that hold no record (transaction markers, records
    compacted away) are passed by the consumer's position.

    Raises :class:`RangeStalled` when the partition makes no progress for ``stall_s`` seconds
    before ``end`` (a broker gone, or records deleted by retention under the reader): a
    reader never returns part of a range as if it were all of it."""
    c.assign([TopicPartition(topic, partition, start)])
    try:
        nxt, last_progress = start, time.monotonic()
        while nxt < end:
            moved = False
            # no more than the range still holds: consume() returns when it has the number
            # asked for, else only at its timeout (500 asked of a 10-record range waited
            # 0.2 s every time, seconds over a topic's partitions)
            msgs = c.consume(min(batch, end - nxt), 0.2)
            for m in msgs:
                if m.error() is not None:
                    continue
                off = _offset(m)
                if off >= end:
                    nxt = end
                    break
                yield m
                nxt, moved = off + 1, True
            if nxt < end and not msgs:
                pos = c.position([TopicPartition(topic, partition)])[0].offset
                if pos > nxt:  # past offsets without a record
                    nxt, moved = pos, True
            if moved:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                raise RangeStalled(f"{topic}[{partition}]: no record at offset {nxt} within "
                                   f"{stall_s:g} s (reading up to offset {end})")
    finally:
        c.unassign()


def end_timestamps(cfg: KafkaConfig, topic: str, stall_s: float = 3.0,
                   timeout: float = 30.0) -> dict[int, list[int]]:
    """``{partition: [first, last]}``: the record timestamps (ms) at each partition's low
    watermark and at its high watermark minus one, as the broker holds them now; one where
    they are the same record, none where the offset holds no record (a transaction marker).
    Partitions holding nothing are left out, so an empty topic gives ``{}``.

    Raises :class:`RangeStalled` when a record does not arrive within ``stall_s`` seconds,
    :class:`UnknownTopic` for a topic the broker does not have, and ``KafkaException`` when
    the broker does not answer the watermarks within ``timeout``."""
    marks = watermarks(cfg, topic, timeout=timeout)
    out: dict[int, list[int]] = {}
    c = reading_consumer(cfg)
    try:
        for p, (lo, hi) in marks.items():
            if hi > lo:
                out[p] = [m.timestamp()[1] for at in sorted({lo, hi - 1})
                          for m in read_partition(c, topic, p, at, at + 1, stall_s)]
    finally:
        c.close()
    return out


def _messages(cfg: KafkaConfig, topic: str, timeout: float, last: int | None = None,
              partitions: Iterable[int] | None = None) -> Iterable[Message]:
    """Every error-free message currently in ``topic`` (all partitions, or those of
    ``partitions`` the topic has; up to the high watermarks read at the start; with ``last``,
    only each partition's last ``last``), partition by partition. The consumer joins no group
    and commits nothing. Raises :class:`RangeStalled` when a partition stalls for ``timeout``
    seconds (:func:`read_partition`)."""
    marks = watermarks(cfg, topic, partitions=partitions)
    c = reading_consumer(cfg)
    try:
        for p, (low, high) in marks.items():
            start = low if last is None else max(low, high - last)
            if high > start:
                yield from read_partition(c, topic, p, start, high, timeout)
    finally:
        c.close()


def consume_all(cfg: KafkaConfig, topic: str, timeout: float = 10.0,
                last: int | None = None,
                partitions: Iterable[int] | None = None) -> Iterable[RawRecord]:
    """Every record currently in ``topic`` (all partitions, or those of ``partitions`` the
    topic has; up to the high watermarks), or only the last ``last`` of each partition. Raises
    :class:`RangeStalled` when a partition delivers nothing for ``timeout`` seconds before its
    high watermark."""
    for m in _messages(cfg, topic, timeout, last, partitions):
        yield raw_record(m)


def raw_record(m: Message) -> RawRecord:
    """A consumed message as the :class:`RawRecord` the dataflow and the readers take."""
    return RawRecord(m.topic() or "", m.partition() or 0, _offset(m), _bytes(m.key()),
                     _bytes(m.value()), m.timestamp()[1])


def of_namespace(marked: object, namespace: str | None) -> bool:
    """Whether a drift event or dead letter ``marked`` with a Redis namespace (its body's
    ``namespace``, its ``diam.namespace`` header; None when written before records carried one)
    belongs to ``namespace`` (None: any). Runs into several namespaces may share the drift and
    dead-letter topics (``streams.online.drift_record``); an unmarked record is shown to all.

    >>> of_namespace("a", "a"), of_namespace("b", "a"), of_namespace(None, "a"), of_namespace("b", None)
    (True, False, True, True)
    """
    return namespace is None or marked is None or marked == namespace


def read_deadletters(cfg: KafkaConfig, topic: str | None = None, timeout: float = 10.0,
                     dedupe: bool = True, namespace: str | None = None) -> list[dict[str, object]]:
    """Every dead-lettered record: its reason and source coordinates (from the headers) and the
    original bytes, partition by partition in offset order; ``ts_ms`` is when the dead letter
    was written (its record timestamp); ``truncated`` is None, or the
    original sizes of a record whose dead letter kept only its first bytes
    (``FlowConfig.deadletter_max_bytes``); ``namespace`` is the Redis namespace of the run that
    refused it (None before dead letters carried it); ``topic_id`` the Kafka id of the source
    topic (None when the run did not know it, or before dead letters carried it). Given
    ``namespace``, only that namespace's (:func:`of_namespace`).

    A dataflow resumed after a crash dead-letters again the records of the epoch it had not
    committed, so one source record can appear more than once. Its identity is its source
    ``(topic, partition, offset)``, the topic's id (a topic deleted and re-created under its
    name numbers its records from 0 again: its rejects are other records) and namespace (two
    runs into two namespaces each refuse it); with ``dedupe`` each appears once, the first
    copy, with ``copies`` saying how many the topic holds. Records without source headers are
    kept as they are; records without a topic id are one record per ``(topic, partition,
    offset, namespace)``, as before ids were written.
    """
    out: list[dict[str, object]] = []
    for m in _messages(cfg, topic or cfg.deadletter_topic, timeout):
        raw_h: list[tuple[str, str | bytes | None]] = list(m.headers() or [])  # type: ignore[arg-type]
        h = {k: (_bytes(v) or b"").decode(errors="replace") for k, v in raw_h}
        ns = h.get("diam.namespace")
        if not of_namespace(ns, namespace):
            continue
        rec: dict[str, object] = {
            "reason": h.get("diam.reason"), "topic": h.get("diam.topic"),
            "partition": _int(h.get("diam.partition")), "offset": _int(h.get("diam.offset")),
            "key": m.key(), "value": m.value(), "truncated": h.get("diam.truncated"),
            "copies": 1, "ts_ms": m.timestamp()[1], "namespace": ns,
            "topic_id": h.get("diam.topic_id")}
        out.append(rec)
    return merge_copies(out) if dedupe else out


def merge_copies(recs: list[dict[str, object]]) -> list[dict[str, object]]:
    """:func:`read_deadletters`' records with each source record once (the first copy, in
    order), its ``copies`` the sum of its copies': the one rule of a dead letter's identity
    (source topic, partition, offset, namespace and the topic's Kafka id; a record without
    source headers is kept as it is), also across topics (``diam deadletters --namespace`` reads
    the shared topic and a replay's own, which may both hold a record).

    >>> a = {"topic": "t", "partition": 0, "offset": 5, "namespace": "n", "topic_id": "x", "copies": 1}
    >>> [r["copies"] for r in merge_copies([a, dict(a), dict(a, namespace="m"), dict(a, offset=-1)])]
    [2, 1, 1]
    """
    out: list[dict[str, object]] = []
    seen: dict[tuple[object, ...], dict[str, object]] = {}
    for rec in recs:
        ident = (rec["topic"], rec["partition"], rec["offset"], rec["namespace"], rec["topic_id"])
        if rec["topic"] is not None and int(rec["offset"]) >= 0:  # type: ignore[call-overload]
            first = seen.get(ident)
            if first is not None:
                first["copies"] = int(first["copies"]) + int(rec["copies"])  # type: ignore[call-overload]
                continue
            seen[ident] = rec
        out.append(rec)
    return out


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1
