"""The Bytewax source of the dataflows: every partition of a click topic as an input partition
(:class:`ClickSource`), read by one shared consumer per worker thread.

It differs from ``bytewax.connectors.kafka.KafkaSource`` in three ways that the online
dataflow and replays need: it emits a light :class:`~streams.kafka_io.RawRecord` (no
per-message dataclass with latency and headers), it can stop at given end offsets (a replay
range, or the high watermarks seen at start for a bounded run), and it resumes from its own
snapshot, so Bytewax recovery owns the offsets as with the stock source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from streams.config import ClientConfig, KafkaConfig
from streams.kafka_health import BrokerHealth
from streams.kafka_io import (
    RawRecord,
    _admin,
    _bytes,
    partition_ids,
    read_to_ends,
    watermarks,
)

log = logging.getLogger(__name__)

__all__ = ["PARTITION_WATCH_S", "ClickSource", "RecoveryMismatch"]

PARTITION_WATCH_S = 5.0
"""How often a tailing :class:`ClickSource` asks the broker for its topic's partition count
(one metadata request, on a thread of its own, off the records' path)."""


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

    def __init__(self, conf: ClientConfig, topic: str, batch: int,
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
        # read to the end past offsets without a record (a transaction's marker last): idle too
        for p in read_to_ends(self.consumer, self.topic, behind):
            del behind[p]
            self._moved[p] = now
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

Judge = Callable[[list[RawRecord], int], tuple[list[Any], int]]
"""What the dataflow makes of a batch of one partition's records, read with clocks that are the
running maximum of their timestamps from the clock before the batch (the second argument): the
items to emit instead of the records, and the partition's clock after the batch, moved only by
the records the dataflow accepts (``streams.online.source_judge``: the dataflow's own verdicts,
counted there, so that its decode step, built with ``judged=True``, neither judges nor counts
the records again)."""


class _ClickPartition(StatefulSourcePartition[Any, SourceSnapshot]):
    def __init__(self, source: ClickSource, shared: _SharedConsumer, part: int, start: int,
                 end: int | None, clock: int = -1) -> None:
        self._source, self._shared = source, shared
        self._topic, self._part, self._end = source.topic, part, end
        self._stop = source.stop
        self._next = start
        self._clock = clock
        self._batch = source.batch_size
        self._judge = source.judge
        self._buf = shared.add(part, start)

    def next_batch(self) -> list[Any]:
        if (self._end is not None and self._next >= self._end) or (
                self._stop is not None and self._stop.is_set()):
            # a stop request ends the input like a bounded end: the last epoch closes, its
            # snapshot (this partition's next offset) is kept, and a restart resumes there
            self._release()
            raise StopIteration()
        buf = self._buf
        if not buf:
            self._shared.fill()
            if not buf and self._end is not None and read_to_ends(
                    self._shared.consumer, self._topic, {self._part: self._end}):
                # read to the end, the last offsets without a record to deliver (a
                # transaction's commit or abort marker, aborted records): ends at the next
                # batch, its snapshot the end, as when a record at the end is read
                self._next = self._end
                return []
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
        if self._judge is not None and out:
            items, self._clock = self._judge(out, self._clock)
            return items
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


class ClickSource(FixedPartitionedSource[Any, SourceSnapshot]):
    """Every partition of ``topic`` as a Bytewax input partition.

    ``start``/``end``: per-partition offsets (end exclusive). ``bounded=True`` without ``end``
    stops at the high watermarks read when the dataflow starts. A resumed dataflow continues
    from its recovery snapshot, not from ``start``. ``partitions``: read only these (a process
    of a partition-split deployment; events are keyed by user, so a user's clicks all live in
    one partition and per-user state needs no exchange between processes). ``stop``: once set,
    every partition ends its input at its next batch (a clean stop of a tailing run).
    ``health``: the run's view of the broker, shared with its sinks so that an outage is
    logged once for the run (default: this source's own).

    ``watch``: a tailing source (neither ``bounded`` nor ``end``) watches the topic's partition
    count every :data:`PARTITION_WATCH_S` seconds from when the dataflow lists its partitions,
    against ``partition_count`` (default: the count it lists then). Once the count grew, it sets
    ``stop`` (every partition ends its input at its next batch, as on SIGTERM, its position
    kept) and :attr:`grown` says ``(was, now)``: clicks are keyed by user, so some users' new
    clicks now land on new partitions, whose offsets their state cannot order
    (``streams.runner`` then refuses to go on). It never reads the new partitions.

    ``judge``: what the dataflow makes of the records (:data:`Judge`): the source then emits
    its items (the dataflow's verdicts) instead of the records, each record judged here once,
    and the partition's event clock (:attr:`RawRecord.clock_ms`) moves on the records the
    dataflow accepts only, never on one it dead-letters (None: records, the clock moved by
    every one).
    """

    def __init__(self, cfg: KafkaConfig, topic: str, *, start: dict[int, int] | None = None,
                 end: dict[int, int] | None = None, bounded: bool = False,
                 batch_size: int = 1000, partitions: list[int] | None = None,
                 stop: threading.Event | None = None,
                 health: BrokerHealth | None = None, watch: bool = False,
                 partition_count: int | None = None, judge: Judge | None = None) -> None:
        self.cfg, self.topic = cfg, topic
        self.judge = judge
        self.health = health or BrokerHealth(cfg.bootstrap)
        self.watch = watch and not bounded and end is None
        # a watching source stops itself when the topic's partition count grows
        self.stop = stop if stop is not None or not self.watch else threading.Event()
        self.partitions = None if partitions is None else sorted(set(partitions))
        self.start, self.end, self.bounded = start, end, bounded
        self.batch_size = batch_size
        self._marks: dict[int, tuple[int, int]] | None = None
        # worker thread -> its shared consumer: Bytewax builds and polls a worker's partitions
        # on that worker's thread
        self._consumers: dict[int, _SharedConsumer] = {}
        self._lock = threading.Lock()
        self.partition_count = partition_count
        self.grown: tuple[int, int] | None = None
        """``(was, now)`` once the watch saw the topic's partition count grow (else None)."""
        self._watch: threading.Thread | None = None
        self._unwatch = threading.Event()

    def _watermarks(self) -> dict[int, tuple[int, int]]:
        # read once for all partitions of this process: each read is a metadata request plus
        # one ListOffsets per partition, and a bounded run's end must be one consistent cut
        if self._marks is None:
            self._marks = watermarks(self.cfg, self.topic)
        return self._marks

    def list_parts(self) -> list[str]:
        known = partition_ids(self.cfg, self.topic)
        self._start_watch(len(known))
        if self.watch and self.partition_count is not None:
            known = known[:self.partition_count]  # grown since the checks: the watch stops it
        if self.partitions is not None:
            missing = sorted(set(self.partitions) - set(known))
            if missing:
                raise ValueError(f"topic {self.topic!r} has partitions {known}, not {missing}")
            known = self.partitions
        return [f"{p}-{self.topic}" for p in known]

    def _start_watch(self, listed: int) -> None:
        """Watch the partition count of a tailing source (once per source: every worker lists)."""
        if not self.watch:
            return  # a bounded run reads the cut taken at start (the next run is refused)
        with self._lock:
            if self._watch is not None:
                return
            was = self.partition_count if self.partition_count is not None else listed
            self._watch = threading.Thread(target=self._watch_count, args=(was,), daemon=True,
                                           name=f"partitions-of-{self.topic}")
            self._watch.start()

    def _watch_count(self, was: int) -> None:
        stop = self.stop
        assert stop is not None  # set for every tailing source
        admin = _admin(self.cfg)
        interval = 0.0  # the first look at once: the count may have changed since the checks
        while not self._unwatch.wait(interval):
            interval = PARTITION_WATCH_S
            try:
                now = len(partition_ids(self.cfg, self.topic, PARTITION_WATCH_S, admin=admin))
            except (KafkaException, RuntimeError):
                continue  # a broker outage (logged by the run's health) or a deleted topic
            if now > was:
                self.grown = (was, now)
                log.warning("topic %r grew from %d to %d partitions while this run read it: "
                          "stopping at the next batch, without reading the new partitions",
                          self.topic, was, now)
                stop.set()
                return

    def close_watch(self) -> None:
        """End the partition-count watch (the run ended); nothing when there is none."""
        self._unwatch.set()

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
