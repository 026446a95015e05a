"""Kafka helpers: a bounded/tailing source for the dataflows, a sink that checks deliveries, and
admin helpers (topic creation, offset ranges, offsets-for-times).

The source differs from ``bytewax.connectors.kafka.KafkaSource`` in three ways that the online
dataflow and replays need: it emits a light :class:`RawRecord` (no per-message dataclass with
latency and headers), it can stop at given end offsets (a replay range, or the high watermarks
seen at start for a bounded run), and it resumes from its own snapshot, so Bytewax recovery owns
the offsets as with the stock source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import KafkaConfig
from streams.kafka_health import BrokerHealth

log = logging.getLogger(__name__)

__all__ = [
    "BrokerHealth",
    "RecoveryMismatch",
    "RawRecord",
    "ClickSource",
    "KafkaOut",
    "KafkaRecordSink",
    "KafkaEpochSink",
    "ensure_topic",
    "delete_topics",
    "partition_ids",
    "UnknownTopic",
    "watermarks",
    "offsets_for_time",
    "consume_all",
    "read_partition",
    "raw_record",
    "RangeStalled",
    "read_deadletters",
]


class RawRecord(NamedTuple):
    """One consumed Kafka record, as the dataflow sees it. ``ts_ms`` is the record timestamp.

    ``clock_ms`` is the partition's event clock at this record: the largest record timestamp
    in the partition up to and including it, from where the run (or the recovery store it
    resumed, which keeps the clock) started reading. It never goes back, and a replay of the
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


class KafkaOut(NamedTuple):
    """One record to produce: key, value and headers."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _offset(m: Message) -> int:
    """The offset of a consumed (error-free) message; librdkafka always sets one there."""
    off = m.offset()
    assert off is not None
    return off


def _bytes(v: str | bytes | None) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


def _admin(cfg: KafkaConfig) -> AdminClient:
    return AdminClient(cfg.client_config())


def ensure_topic(cfg: KafkaConfig, topic: str, partitions: int | None = None, timeout: float = 30.0,
                 config: dict[str, str] | None = None) -> None:
    """Create ``topic`` when missing (replication 1 on the local stack, topic ``config`` such as
    compaction); wait until it is visible. An existing topic is left as it is."""
    admin = _admin(cfg)
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


def partition_ids(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> list[int]:
    """Partition ids of ``topic``; :class:`UnknownTopic` when it does not exist.

    Reads the metadata of every topic rather than of ``topic`` alone: a metadata request that
    names a topic makes a broker with ``auto.create.topics.enable`` (Kafka's default, and the
    local stack's) create it, so a misspelt topic would be created empty and a replay or a
    dead-letter listing of it would report success with nothing read."""
    md = _admin(cfg).list_topics(timeout=timeout)
    t = md.topics.get(topic)
    if t is None:
        raise UnknownTopic(f"topic {topic!r} does not exist at {cfg.bootstrap}")
    if t.error is not None:
        raise RuntimeError(f"cannot read partitions of topic {topic!r}: {t.error.str()}")
    return sorted(t.partitions)


def _consumer(cfg: KafkaConfig) -> Consumer:
    conf = cfg.client_config()
    conf.update({"group.id": "diam-offsets", "enable.auto.commit": "false"})
    return Consumer(conf)


def watermarks(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}``; ``high`` is the offset the next record will get."""
    c = _consumer(cfg)
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            for p in partition_ids(cfg, topic, timeout)
        }
    finally:
        c.close()


def offsets_for_time(cfg: KafkaConfig, topic: str, ts_ms: int, timeout: float = 30.0) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= ``ts_ms`` (the high watermark
    when there is none), resolved by the broker (ListOffsets by timestamp)."""
    c = _consumer(cfg)
    try:
        parts = partition_ids(cfg, topic, timeout)
        found = c.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in parts], timeout=timeout)
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


class _SharedConsumer:
    """One librdkafka consumer for all the partitions of a topic that one worker reads.

    Bytewax polls a worker's partitions one after another. With a consumer per partition,
    each poll of a caught-up partition waited out its timeout while the others' records aged.
    Here one consumer fetches for all of them and hands each record to its partition's
    buffer; per-partition order and offsets (the recovery snapshots) are unchanged. The
    :class:`ClickSource` keeps one per worker thread.

    A partition's records wait in its buffer until Bytewax polls it; an idle partition that
    fills keeps handing a backlogged one its records, so :meth:`fill` fetches nothing while the
    buffers hold more than ``max_buffered`` records in all (librdkafka's own queue is bounded
    by its settings): a backlog on one partition cannot grow the process's memory.

    A watchdog guards against a partition librdkafka stops fetching while the broker is up
    (``KafkaConfig.stuck_client_s``): it then rebuilds the consumer at every partition's
    next offset, so nothing is skipped or read twice.
    """

    def __init__(self, conf: dict[str, str | int | float | bool], topic: str, batch: int,
                 health: BrokerHealth, stall_s: float = 0.0) -> None:
        self.health = health
        self._conf = conf
        self.consumer = Consumer(self.health.client_config(conf))
        self.topic, self.batch = topic, batch
        self.max_buffered = 4 * batch
        self.buffers: dict[int, deque[Message]] = {}
        self._next_probe = 0.0
        self.stall_s = stall_s
        self._next: dict[int, int] = {}  # per partition: the offset after the last one buffered
        self._moved: dict[int, float] = {}  # per partition: when it last delivered (or was added)
        self._next_watch = 0.0
        self.rebuilds = 0
        """Consumers rebuilt by the watchdog since the start."""

    def add(self, part: int, start: int) -> deque[Message]:
        buf: deque[Message] = deque()
        self.buffers[part] = buf
        self._next[part], self._moved[part] = start, time.monotonic()
        self.consumer.incremental_assign([TopicPartition(self.topic, part, start)])
        return buf

    def remove(self, part: int) -> bool:
        """Stop reading ``part``; False when it was not read here (released already)."""
        if self.buffers.pop(part, None) is None:
            return False
        self._next.pop(part, None)
        self._moved.pop(part, None)
        self.consumer.incremental_unassign([TopicPartition(self.topic, part)])
        return True

    def fill(self) -> None:
        if len(self.buffers) > 1 and sum(map(len, self.buffers.values())) > self.max_buffered:
            return  # the partitions holding them are polled next: nothing is read ahead further
        # A short wait: a worker polls its partitions in turn, and an idle one must not hold
        # up the rest (Bytewax's own Kafka source waits 1 ms too).
        msgs = self.consumer.consume(self.batch, 0.001)
        if self.health.down_since is not None:
            self._probe()
        now = time.monotonic()
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == err._PARTITION_EOF:
                    continue
                if err.retriable():
                    continue  # librdkafka retries by itself; a broker outage stalls here
                raise RuntimeError(f"consuming {self.topic}[{m.partition()}]: {err}")
            buf = self.buffers.get(m.partition() or 0)
            if buf is not None:
                buf.append(m)
        if msgs:  # the watchdog's bookkeeping, per partition rather than per record
            for part, buf in self.buffers.items():
                if buf:
                    off = buf[-1].offset()
                    assert off is not None
                    if off + 1 != self._next[part]:
                        self._next[part], self._moved[part] = off + 1, now
        if self.stall_s > 0 and now >= self._next_watch:
            self._next_watch = now + min(self.stall_s, 5.0)
            self._watch(now)

    def _watch(self, now: float) -> None:
        """Rebuild the consumer when a partition that has been quiet for ``stall_s`` has
        records beyond its next offset, as a fresh client sees them, while the broker is up."""
        quiet = [p for p, t in self._moved.items() if now - t >= self.stall_s]
        if not quiet or self.health.down_since is not None:
            return
        fresh = Consumer(self.health.client_config(self._conf))
        behind: dict[int, int] = {}
        try:
            for p in quiet:
                high = fresh.get_watermark_offsets(TopicPartition(self.topic, p), timeout=2.0)[1]
                if high > self._next[p]:
                    behind[p] = high
                else:
                    self._moved[p] = now  # caught up, merely idle: look again in stall_s
        except KafkaException:
            return  # the cluster does not answer for it either: an outage, not a stuck client
        finally:
            fresh.close()
        if not behind:
            return
        log.warning("Kafka consumer of %s stuck: partition(s) %s delivered nothing for %.0f s "
                    "while the broker holds records from offset %s on (high watermark %s); "
                    "rebuilding the consumer at its next offsets", self.topic, sorted(behind),
                    self.stall_s, [self._next[p] for p in sorted(behind)],
                    [behind[p] for p in sorted(behind)])
        old, self.consumer = self.consumer, Consumer(self.health.client_config(self._conf))
        self.consumer.incremental_assign(
            [TopicPartition(self.topic, p, self._next[p]) for p in self.buffers])
        for p in self.buffers:
            self._moved[p] = now
        self.rebuilds += 1
        try:
            old.close()
        except KafkaException:
            pass  # the stuck client's close may fail; the new one owns the partitions

    def _probe(self) -> None:
        # records already fetched say nothing about the broker now: ask it for metadata, at
        # most once a second while it is thought down
        now = time.monotonic()
        if now < self._next_probe:
            self.health.check()
            return
        self._next_probe = now + 1.0
        try:
            self.consumer.list_topics(self.topic, timeout=0.5)
        except KafkaException:
            self.health.check()
            return
        self.health.up()

    def close(self) -> None:
        self.consumer.close()


SourceSnapshot = tuple[int, int]
"""What :class:`ClickSource` keeps per partition in the recovery store: ``(next offset, event
clock)`` (see :attr:`RawRecord.clock_ms`; a store written before the clock was kept holds the
offset alone, and the clock then restarts from the first record read)."""


class _ClickPartition(StatefulSourcePartition[RawRecord, SourceSnapshot]):
    def __init__(self, source: ClickSource, shared: _SharedConsumer, part: int, start: int,
                 end: int | None, clock: int = -1) -> None:
        self._source, self._shared = source, shared
        self._topic, self._part, self._end = source.topic, part, end
        self._stop = source.stop
        self._next = start
        self._clock = clock
        self._batch = source.batch_size
        self._buf = shared.add(part, start)

    def next_batch(self) -> list[RawRecord]:
        if (self._end is not None and self._next >= self._end) or (
                self._stop is not None and self._stop.is_set()):
            # a stop request ends the input like a bounded end: the last epoch closes, its
            # snapshot (this partition's next offset) is kept, and a restart resumes there
            self._release()
            raise StopIteration()
        buf = self._buf
        if not buf:
            self._shared.fill()
        out: list[RawRecord] = []
        clock = self._clock
        while buf and len(out) < self._batch:
            m = buf.popleft()
            off = m.offset()  # always set on a consumed, error-free message
            assert off is not None
            if self._end is not None and off >= self._end:
                self._next = self._end
                buf.clear()
                break
            ts = m.timestamp()[1]
            if ts > clock:
                clock = ts
            out.append(RawRecord(self._topic, self._part, off, _bytes(m.key()), _bytes(m.value()),
                                 ts, clock))
            self._next = off + 1
        self._clock = clock
        return out

    def snapshot(self) -> SourceSnapshot:
        return self._next, self._clock

    def position(self) -> int:
        """The next offset this partition reads (``streams.metrics`` reports it)."""
        return self._next

    def _release(self) -> None:
        self._source._release(self._shared, self._part)

    def close(self) -> None:
        self._release()


class RecoveryMismatch(RuntimeError):
    """The recovery store does not belong to the topic it is resumed on (its offsets lie past
    the topic's end): refused at start, before any record is read. Only offsets tell: a
    re-created topic that has already grown past the store's offsets is not detected (the
    store keeps offsets, not Kafka's topic id)."""


class ClickSource(FixedPartitionedSource[RawRecord, SourceSnapshot]):
    """Every partition of ``topic`` as a Bytewax input partition.

    ``start``/``end``: per-partition offsets (end exclusive). ``bounded=True`` without ``end``
    stops at the high watermarks read when the dataflow starts. A resumed dataflow continues
    from its recovery snapshot, not from ``start``. ``partitions``: read only these (a process
    of a partition-split deployment; events are keyed by user, so a user's clicks all live in
    one partition and per-user state needs no exchange between processes). ``stop``: once set,
    every partition ends its input at its next batch (a clean stop of a tailing run).
    ``health``: the run's view of the broker, shared with its sinks so that an outage is
    logged once for the run (default: this source's own).
    """

    def __init__(self, cfg: KafkaConfig, topic: str, *, start: dict[int, int] | None = None,
                 end: dict[int, int] | None = None, bounded: bool = False,
                 batch_size: int = 1000, partitions: list[int] | None = None,
                 stop: threading.Event | None = None,
                 health: BrokerHealth | None = None) -> None:
        self.cfg, self.topic = cfg, topic
        self.health = health or BrokerHealth(cfg.bootstrap)
        self.stop = stop
        self.partitions = None if partitions is None else sorted(set(partitions))
        self.start, self.end, self.bounded = start, end, bounded
        self.batch_size = batch_size
        self._marks: dict[int, tuple[int, int]] | None = None
        # worker thread -> its shared consumer: Bytewax builds and polls a worker's partitions
        # on that worker's thread
        self._consumers: dict[int, _SharedConsumer] = {}
        self._lock = threading.Lock()

    def _watermarks(self) -> dict[int, tuple[int, int]]:
        # read once for all partitions of this process: each read is a metadata request plus
        # one ListOffsets per partition, and a bounded run's end must be one consistent cut
        if self._marks is None:
            self._marks = watermarks(self.cfg, self.topic)
        return self._marks

    def list_parts(self) -> list[str]:
        known = partition_ids(self.cfg, self.topic)
        if self.partitions is not None:
            missing = sorted(set(self.partitions) - set(known))
            if missing:
                raise ValueError(f"topic {self.topic!r} has partitions {known}, not {missing}")
            known = self.partitions
        return [f"{p}-{self.topic}" for p in known]

    def build_part(self, step_id: str, for_part: str,
                   resume: SourceSnapshot | int | None) -> _ClickPartition:
        part = int(for_part.split("-", 1)[0])
        resume_state, clock = (resume, -1) if resume is None or isinstance(resume, int) else resume
        start = resume_state
        if start is None:
            start = (self.start or {}).get(part, OFFSET_BEGINNING)
        end = (self.end or {}).get(part) if self.end is not None else None
        if end is None and self.bounded:
            end = self._watermarks()[part][1]
        if start == OFFSET_BEGINNING:
            start = self._watermarks()[part][0]
        elif resume_state is not None and resume_state > (high := self._watermarks()[part][1]):
            # librdkafka would restart at the oldest record, whose offsets the users' states
            # have applied already (from the old topic): the learner would skip those clicks
            raise RecoveryMismatch(
                f"partition {part} of {self.topic!r}: the recovery store resumes at offset "
                f"{resume_state}, past the topic's end ({high}). The topic was deleted and "
                "re-created (or the broker lost records) after the store was written, and the "
                "store's users learnt from the records that are gone; resuming would skip the new "
                "topic's clicks at offsets they already applied. Start with an empty recovery "
                "directory (the new topic is then learnt from its start), or point the run at "
                "the topic the store was written for")
        elif resume_state is not None and resume_state < (low := self._watermarks()[part][0]):
            log.warning("partition %d of %r: the recovery store resumes at offset %d, but the "
                        "topic's oldest record is %d (deleted by retention while the dataflow "
                        "was down?): records %d..%d are gone; resuming at %d", part, self.topic,
                        resume_state, low, resume_state, low - 1, low)
            start = low
        return _ClickPartition(self, self._consumer(part), part, start, end, clock)

    def _consumer(self, part: int) -> _SharedConsumer:
        """The calling worker thread's consumer, created with its first partition."""
        key = threading.get_ident()
        with self._lock:
            shared = self._consumers.get(key)
            if shared is None or part in shared.buffers:  # (stale: a run that never closed)
                conf = self.cfg.consumer_config()
                # an offset below the log start (retention overtook the dataflow) restarts at
                # the oldest record still there: librdkafka's default, the newest, would skip
                # the whole backlog (``build_part`` warns when it is a resume offset)
                conf.update({"group.id": "diam-dataflow-unused", "enable.auto.commit": "false",
                             "enable.partition.eof": "false", "auto.offset.reset": "earliest"})
                shared = self._consumers[key] = _SharedConsumer(
                    conf, self.topic, self.batch_size, self.health,
                    stall_s=self.cfg.stuck_client_s)
            return shared

    def _release(self, shared: _SharedConsumer, part: int) -> None:
        """A partition is done: its consumer closes with the thread's last partition."""
        with self._lock:
            if shared.remove(part) and not shared.buffers:
                for key, known in list(self._consumers.items()):
                    if known is shared:
                        del self._consumers[key]
                shared.close()


class _Producing:
    """A producer to one topic that remembers delivery failures (shared by the sinks)."""

    def __init__(self, cfg: KafkaConfig, topic: str, health: BrokerHealth) -> None:
        conf = cfg.client_config()
        # linger 0: the sinks wait for delivery (per batch, or at each epoch end), so lingering
        # only adds that much to every wait. No delivery timeout (0): a broker outage of any
        # length stalls the epoch's flush instead of failing the records and the dataflow.
        # Not idempotent: after a broker restart an idempotent producer must get a producer id
        # from the transaction coordinator first, which on a loaded 2-core box took a minute
        # (bench/faults.py broker_restart: the dataflow stalled in its epoch flush meanwhile).
        # One request in flight keeps the order (the drift monitor relies on a user's records
        # arriving in offset order); a retry may write a record twice, which our consumers drop
        # by its identity like the repeats of a resumed run (source partition and offset).
        conf.update({"linger.ms": "0", "message.timeout.ms": "0", "enable.idempotence": "false",
                     "acks": "all", "max.in.flight.requests.per.connection": "1"})
        self.health, self._conf = health, conf
        self.producer, self.topic = Producer(self.health.client_config(conf)), topic
        self.failed, self.last_error = 0, ""  # delivery failures, from librdkafka's callbacks
        self.stall_s = cfg.stuck_client_s
        self.rebuilds = 0
        """Producers rebuilt by :meth:`flush`'s watchdog since the start."""
        # records produced and not yet delivered, by number, to produce again on a rebuilt
        # producer; a callback of an older producer (``gen``) is ignored
        self._pending: dict[int, KafkaOut] = {}
        self._n = self._gen = 0

    def _delivered(self, n: int, gen: int, err: object) -> None:
        if gen != self._gen:
            return  # the rebuilt producer owns this record now
        self._pending.pop(n, None)
        if err is not None:
            self.failed += 1
            self.last_error = str(err)
        elif self.health.down_since is not None:
            self.health.up()

    def produce(self, items: Iterable[KafkaOut]) -> None:
        for rec in items:
            n = self._n = self._n + 1
            self._pending[n] = rec
            self._send(n, rec)

    def _send(self, n: int, rec: KafkaOut) -> None:
        gen = self._gen
        while True:
            try:
                self.producer.produce(self.topic, key=rec.key, value=rec.value,
                                      headers=list(rec.headers),  # type: ignore[arg-type]
                                      on_delivery=lambda err, _m: self._delivered(n, gen, err))
                return
            except BufferError:  # local queue full: serve callbacks, then retry
                self.producer.poll(0.1)

    def flush(self) -> None:
        """Wait until every record produced so far is delivered (or failed: :meth:`check`).

        An outage of any length is waited out. A producer that delivers nothing for
        ``KafkaConfig.stuck_client_s`` while a fresh client finds every partition of the
        topic led is stuck (librdkafka can lose a partition's leader for good after a broker
        restart, confluentinc/librdkafka#5430): it is replaced and the undelivered records are
        produced again, in their order. One in flight may then be written twice; the readers
        of these topics drop repeats by the record's identity, like a resumed run's."""
        left, since = len(self.producer), time.monotonic()
        while True:
            now_left = self.producer.flush(1.0)
            if now_left == 0:  # every callback has run: nothing is pending
                return
            if now_left < left:
                left, since = now_left, time.monotonic()
            elif self.stall_s > 0 and time.monotonic() - since >= self.stall_s:
                if self._rebuild():
                    left, since = len(self.producer), time.monotonic()
                else:
                    since = time.monotonic()  # the cluster is not ready either: wait on

    def _rebuild(self) -> bool:
        """Replace a stuck producer and produce its undelivered records again; False when a
        fresh client does not find the topic led (an outage: librdkafka's retries are right)."""
        if self.health.down_since is not None:
            return False
        fresh = Producer(self.health.client_config(self._conf))
        try:
            md = fresh.list_topics(self.topic, timeout=2.0)
        except KafkaException:
            return False
        parts = md.topics[self.topic].partitions if self.topic in md.topics else {}
        if not parts or any(p.leader < 0 for p in parts.values()):
            fresh.flush(0)
            return False
        log.warning("Kafka producer to %s stuck: %d record(s) undelivered for %.0f s while the "
                    "broker leads every partition; producing them again on a new producer",
                    self.topic, len(self._pending), self.stall_s)
        old, self.producer = self.producer, fresh
        self._gen += 1
        self.rebuilds += 1
        old.purge(in_queue=True, in_flight=True, blocking=False)
        for n in sorted(self._pending):
            self._send(n, self._pending[n])
        return True

    def check(self) -> None:
        if self.failed:
            raise RuntimeError(f"{self.failed} record(s) to {self.topic!r} were not delivered: {self.last_error}")


class _RecordSinkPartition(StatelessSinkPartition[KafkaOut]):
    def __init__(self, out: _Producing) -> None:
        self._out = out

    def write_batch(self, items: list[KafkaOut]) -> None:
        self._out.produce(items)
        # A stateless sink has no epoch hook: waiting for delivery per batch is what makes a
        # failure surface before the epoch closes, so recovery re-emits the records.
        self._out.flush()
        self._out.check()

    def close(self) -> None:
        self._out.flush()


class KafkaRecordSink(DynamicSink[KafkaOut]):
    """Produce :class:`KafkaOut` records to ``topic``, waiting for delivery after every batch;
    a delivery failure stops the dataflow (and recovery replays it) instead of being ignored.
    For low-volume outputs (alerts); a busy stream wants :class:`KafkaEpochSink`.
    ``health``: as :class:`ClickSource`'s."""

    def __init__(self, cfg: KafkaConfig, topic: str, health: BrokerHealth | None = None) -> None:
        self.cfg, self.topic = cfg, topic
        self.health = health or BrokerHealth(cfg.bootstrap)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RecordSinkPartition:
        return _RecordSinkPartition(_Producing(self.cfg, self.topic, self.health))


class _EpochSinkPartition(StatefulSinkPartition[KafkaOut, None]):
    def __init__(self, out: _Producing) -> None:
        self._out = out

    def write_batch(self, values: list[KafkaOut]) -> None:
        self._out.produce(values)
        self._out.producer.poll(0)  # serve delivery reports; failures surface here too
        self._out.check()

    def snapshot(self) -> None:
        # Bytewax takes this at every epoch end, before it commits the epoch: everything the
        # epoch produced is then delivered, or the dataflow stops and recovery replays it.
        self._out.flush()
        self._out.check()

    def close(self) -> None:
        self._out.flush()
        self._out.check()


class KafkaEpochSink(FixedPartitionedSink[KafkaOut, None]):
    """Produce ``(key, KafkaOut)`` items to ``topic`` without waiting per batch: delivery is
    awaited once per epoch (in the partition's snapshot), so a record is never lost to a crash
    yet the worker does not stall on a broker round trip for every batch that carries one.
    One sink partition (the key only routes to it). ``health``: as :class:`ClickSource`'s."""

    def __init__(self, cfg: KafkaConfig, topic: str, health: BrokerHealth | None = None) -> None:
        self.cfg, self.topic = cfg, topic
        self.health = health or BrokerHealth(cfg.bootstrap)

    def list_parts(self) -> list[str]:
        return ["0"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _EpochSinkPartition:
        return _EpochSinkPartition(_Producing(self.cfg, self.topic, self.health))


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
            msgs = c.consume(batch, 0.2)
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


def _messages(cfg: KafkaConfig, topic: str, timeout: float, last: int | None = None) -> Iterable[Message]:
    """Every error-free message currently in ``topic`` (all partitions, up to the high
    watermarks read at the start; with ``last``, only each partition's last ``last``),
    partition by partition. The consumer joins no group and commits nothing. Raises
    :class:`RangeStalled` when a partition stalls for ``timeout`` seconds (:func:`read_partition`)."""
    marks = watermarks(cfg, topic)
    c = _consumer(cfg)
    try:
        for p, (low, high) in marks.items():
            start = low if last is None else max(low, high - last)
            if high > start:
                yield from read_partition(c, topic, p, start, high, timeout)
    finally:
        c.close()


def consume_all(cfg: KafkaConfig, topic: str, timeout: float = 10.0,
                last: int | None = None) -> Iterable[RawRecord]:
    """Every record currently in ``topic`` (all partitions, up to the high watermarks), or
    only the last ``last`` of each partition. Raises :class:`RangeStalled` when a partition
    delivers nothing for ``timeout`` seconds before its high watermark."""
    for m in _messages(cfg, topic, timeout, last):
        yield raw_record(m)


def raw_record(m: Message) -> RawRecord:
    """A consumed message as the :class:`RawRecord` the dataflow and the readers take."""
    return RawRecord(m.topic() or "", m.partition() or 0, _offset(m), _bytes(m.key()),
                     _bytes(m.value()), m.timestamp()[1])


def read_deadletters(cfg: KafkaConfig, topic: str | None = None, timeout: float = 10.0,
                     dedupe: bool = True) -> list[dict[str, object]]:
    """Every dead-lettered record: its reason and source coordinates (from the headers) and the
    original bytes, partition by partition in offset order; ``ts_ms`` is when the dead letter
    was written (its record timestamp); ``truncated`` is None, or the
    original sizes of a record whose dead letter kept only its first bytes
    (``FlowConfig.deadletter_max_bytes``).

    A dataflow resumed after a crash dead-letters again the records of the epoch it had not
    committed, so one source record can appear more than once. Its identity is its source
    ``(topic, partition, offset)``; with ``dedupe`` each appears once, the first copy, with
    ``copies`` saying how many the topic holds. Records without source headers are kept as
    they are.
    """
    out: list[dict[str, object]] = []
    seen: dict[tuple[str | None, int, int], dict[str, object]] = {}
    for m in _messages(cfg, topic or cfg.deadletter_topic, timeout):
        raw_h: list[tuple[str, str | bytes | None]] = list(m.headers() or [])  # type: ignore[arg-type]
        h = {k: (_bytes(v) or b"").decode(errors="replace") for k, v in raw_h}
        rec: dict[str, object] = {
            "reason": h.get("diam.reason"), "topic": h.get("diam.topic"),
            "partition": _int(h.get("diam.partition")), "offset": _int(h.get("diam.offset")),
            "key": m.key(), "value": m.value(), "truncated": h.get("diam.truncated"),
            "copies": 1, "ts_ms": m.timestamp()[1]}
        ident = (h.get("diam.topic"), _int(h.get("diam.partition")), _int(h.get("diam.offset")))
        if dedupe and ident[0] is not None and ident[2] >= 0:
            first = seen.get(ident)
            if first is not None:
                first["copies"] = int(first["copies"]) + 1  # type: ignore[call-overload]
                continue
            seen[ident] = rec
        out.append(rec)
    return out


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1
