"""Write a prepared dataset to Kafka as click events (``diam produce``).

Every event becomes a msgpack :class:`~streams.events.ClickEvent` keyed by its user id, so one
user's clicks share a partition and stay in order. The record timestamp is the producer's wall
clock, not the event time: MovieLens times are from 1997 and the broker's time-based retention
would delete such records at its next check.

Throughput mode batches hard (linger, lz4); ``rate`` turns on a token bucket. Idempotence is on,
so a retried batch is never written twice. Every delivery report is counted: a failure ends up
in :class:`ProduceReport` (count and the first messages), never silently dropped.

>>> b = TokenBucket(rate=10, burst=2, clock=iter([0.0, 0.0, 0.0, 0.0, 0.05, 0.2]).__next__)
>>> [round(b.take(), 3) for _ in range(5)]  # 2 tokens at t=0, then wait; half a token at 0.05 s
[0.0, 0.0, 0.1, 0.05, 0.0]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.config import KafkaConfig
from streams.events import ClickEvent, encode_event

if TYPE_CHECKING:
    from online_model.datasets import PreparedDataset

__all__ = ["ProduceReport", "TokenBucket", "produce_dataset", "produce_raw"]

_MAX_ERRORS = 20  # delivery error messages kept verbatim; the count covers the rest
_CHUNK = 4096  # events converted from numpy per step; bounds memory and paces the progress bar

# librdkafka settings for bulk loading; anything in KafkaConfig (incl. ``extra``) overrides them.
_THROUGHPUT = {
    "linger.ms": "50",  # fill batches: ~60-byte events need thousands per request to be cheap
    "batch.num.messages": "20000",
    "batch.size": "1048576",
    "compression.type": "lz4",
    "queue.buffering.max.messages": "1000000",
    "queue.buffering.max.kbytes": "262144",
    "enable.idempotence": "true",  # retries never duplicate a click
    "message.timeout.ms": "60000",  # a dead broker surfaces as delivery errors within a minute
}
_PACED = {**_THROUGHPUT, "linger.ms": "5"}  # a paced stream should look live, not bursty


@dataclass
class ProduceReport:
    """What happened: records acknowledged by the broker, records that failed (with the first
    error messages) and wall time."""

    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.interrupted

    @property
    def rate(self) -> float:
        """Acknowledged records per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class TokenBucket:
    """Allows ``rate`` events per second with bursts up to ``burst``. ``take()`` consumes a token
    and returns 0.0, or returns how long to wait before one is available (consuming nothing)."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # A 20 ms burst lets the producer hand librdkafka small batches instead of single
        # records, while keeping the rate accurate over any window longer than that.
        self.capacity = float(burst) if burst is not None else max(1.0, self.rate * 0.02)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class _Sender:
    """One producer plus delivery accounting shared by :func:`produce_dataset` and
    :func:`produce_raw`."""

    def __init__(self, cfg: KafkaConfig, topic: str, rate: float | None) -> None:
        from confluent_kafka import Producer

        conf: dict[str, Any] = dict(_PACED if rate else _THROUGHPUT)
        conf.update(cfg.client_config())
        conf["error_cb"] = self._on_error
        self.producer = Producer(conf)
        self.topic = topic
        self.bucket = TokenBucket(rate) if rate else None
        self.report = ProduceReport()
        self.queued = 0

    def _note(self, text: str) -> None:
        if len(self.report.errors) < _MAX_ERRORS:
            self.report.errors.append(text)

    def _on_error(self, err: Any) -> None:
        # Client-level errors (e.g. all brokers down) are retried by librdkafka; the affected
        # records fail through their delivery reports once message.timeout.ms passes.
        self._note(f"client: {err}")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.report.sent += 1
        else:
            self.report.failed += 1
            self._note(f"{msg.topic()}[{msg.partition()}] key={msg.key()!r}: {err.str()}")

    def send(self, key: bytes | None, value: bytes | None) -> None:
        if self.bucket is not None:
            while (wait := self.bucket.take()) > 0:
                self.producer.poll(wait)  # sleeps, and serves delivery reports meanwhile
        while True:
            try:
                self.producer.produce(
                    self.topic, value=value, key=key, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain it
                self.producer.poll(0.05)
        self.queued += 1
        if self.queued % 1000 == 0:
            self.producer.poll(0)

    def finish(self, started: float, flush_timeout: float) -> ProduceReport:
        left = self.producer.flush(flush_timeout)
        if left:
            self.report.failed += left
            self._note(f"{left} record(s) still undelivered after a {flush_timeout:.0f} s flush")
        self.report.seconds = time.perf_counter() - started
        return self.report


def _run(
    cfg: KafkaConfig,
    topic: str,
    records: Iterator[tuple[bytes | None, bytes | None]],
    total: int | None,
    rate: float | None,
    progress: bool,
    flush_timeout: float,
    stop: threading.Event | None = None,
    create: bool = True,
) -> ProduceReport:
    from tqdm import tqdm

    from streams.kafka_io import ensure_topic

    if create:
        ensure_topic(cfg, topic, cfg.partitions, timeout=15.0)
    sender = _Sender(cfg, topic, rate)
    started = time.perf_counter()
    with tqdm(
        total=total, desc=f"produce {topic}", unit="ev", unit_scale=True, disable=not progress
    ) as bar:
        try:
            step = 0
            for key, value in records:
                if stop is not None and stop.is_set():  # SIGTERM or Ctrl-C, as the next except
                    sender.report.interrupted = True
                    break
                sender.send(key, value)
                step += 1
                if step == _CHUNK:
                    bar.update(step)
                    bar.set_postfix(
                        acked=sender.report.sent, failed=sender.report.failed, refresh=False
                    )
                    step = 0
            bar.update(step)
        except KeyboardInterrupt:  # deliver what is queued and report it, rather than lose it
            sender.report.interrupted = True
        if progress:
            bar.set_postfix_str("flushing", refresh=True)
        report = sender.finish(started, flush_timeout)
        bar.set_postfix(acked=report.sent, failed=report.failed)
    return report


def _dataset_records(ds: PreparedDataset, limit: int | None) -> Iterator[tuple[bytes, bytes]]:
    n = len(ds.ts_ms) if limit is None else min(limit, len(ds.ts_ms))
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        users = ds.user_ids[start:stop].tolist()  # plain str/int, not numpy scalars
        items = ds.item_ids[start:stop].tolist()
        times = ds.ts_ms[start:stop].tolist()
        for u, i, t in zip(users, items, times, strict=True):
            yield u.encode("utf-8"), encode_event(ClickEvent(user_id=u, item_id=i, ts=t))


def produce_dataset(
    ds: PreparedDataset,
    kafka_cfg: KafkaConfig,
    topic: str,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = False,
    flush_timeout: float = 120.0,
    stop: threading.Event | None = None,
    create: bool = True,
) -> ProduceReport:
    """Produce the first ``limit`` events of ``ds`` (all when None) in time order to ``topic``,
    created with ``kafka_cfg.partitions`` partitions when missing; at ``rate`` events/s or as
    fast as possible when ``rate`` is None. Once ``stop`` is set (a signal handler, e.g.
    ``diam produce``'s SIGTERM), or on KeyboardInterrupt, no further event is queued: those
    queued are flushed and counted, and the report says ``interrupted``. ``create=False`` skips
    the metadata request that looks for the topic: for a caller that has just described it
    (``diam produce``, :func:`~streams.kafka_io.describe_topics`)."""
    total = len(ds.ts_ms) if limit is None else min(limit, len(ds.ts_ms))
    return _run(kafka_cfg, topic, _dataset_records(ds, limit), total, rate, progress,
                flush_timeout, stop, create)


def produce_raw(
    kafka_cfg: KafkaConfig,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes | None]],
    rate: float | None = None,
    flush_timeout: float = 60.0,
) -> ProduceReport:
    """Produce raw ``(key, value)`` records unchanged (tests use it to inject malformed bytes)."""
    return _run(kafka_cfg, topic, iter(items), None, rate, False, flush_timeout)
