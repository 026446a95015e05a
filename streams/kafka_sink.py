"""The Bytewax sinks of the dataflows: produce :class:`KafkaOut` records to a topic and check
that they were delivered, so that a failure stops the dataflow (and recovery replays the epoch)
instead of losing records. :class:`KafkaEpochSink` waits for delivery once per epoch (busy
outputs), :class:`KafkaRecordSink` after every batch (low-volume outputs such as alerts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import NamedTuple

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import KafkaException, Producer

from streams.config import KafkaConfig
from streams.kafka_health import BrokerHealth

log = logging.getLogger(__name__)

__all__ = ["KafkaOut", "KafkaRecordSink", "KafkaEpochSink"]


class KafkaOut(NamedTuple):
    """One record to produce: key, value and headers."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


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
