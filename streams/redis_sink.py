"""Bytewax sink writing user vectors to Redis through the write-if-newer writer.

Writes run on a background thread per sink partition, so the dataflow computes the next batch
while Redis executes the previous one (a pipelined write of a few hundred users waits ~10 ms
on the server; on the dataflow's own thread that wait was a fifth of a tailing run's time).
Batches queued while a write is in flight are merged, newest value per user, into one write.

Nothing is lost by not waiting:

- the queue is bounded, so a slow or absent Redis stalls the dataflow (backpressure) instead
  of growing memory; an outage is retried with backoff and never drops a batch;
- ``close`` (end of a bounded run, shutdown) drains the queue, and an error on the writer
  thread is raised in the dataflow at the next batch;
- after a crash, writes still queued are gone, but every user in a recovery snapshot is
  marked for a push when resumed (``streams.online``), so the resumed run re-writes them.
  Write-if-newer makes the repeats harmless.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client

__all__ = ["RedisVectorSink"]

log = logging.getLogger(__name__)

_STOP = None


class _Partition(StatelessSinkPartition[tuple[str, UserVectors]]):
    observer: Callable[[list[tuple[str, UserVectors]], float], None] | None = None
    """Called on the writer thread after each acknowledged write with its items and seconds
    (``streams.metrics``: Redis write latency and freshness are measured where writes happen)."""

    def __init__(self, writer: RedisWriter, max_backoff_s: float, max_queued: int = 32) -> None:
        self.writer = writer
        self.max_backoff_s = max_backoff_s
        self.written = 0
        self._q: queue.Queue[list[tuple[str, UserVectors]] | None] = queue.Queue(max_queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="diam-redis-writer", daemon=True)
        self._thread.start()

    def write_batch(self, items: list[tuple[str, UserVectors]]) -> None:
        self._raise()
        if items:
            self._q.put(list(items))  # blocks while the queue is full: backpressure

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing user vectors to Redis failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            batch = self._q.get()
            stop = batch is _STOP
            items = [] if batch is None else batch
            while not stop:  # merge whatever queued up meanwhile into one write
                try:
                    more = self._q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                else:
                    items.extend(more)
            if items and self._error is None:
                try:
                    t0 = time.perf_counter()
                    self._write(items)
                    if self.observer is not None and items:
                        self.observer(items, time.perf_counter() - t0)
                except BaseException as exc:  # surfaced on the dataflow thread
                    self._error = exc
            if stop:
                return

    def _write(self, items: list[tuple[str, UserVectors]]) -> None:
        backoff = 0.05
        while True:
            try:
                self.written += self.writer.write_batch(items)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # An outage stalls the writer (and, once the queue is full, the dataflow) and
                # retries; it never drops the batch. Writes are idempotent (write-if-newer),
                # so a partial batch re-sent is harmless.
                log.warning("Redis unavailable (%s); retrying in %.2fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)


class RedisVectorSink(DynamicSink[tuple[str, UserVectors]]):
    """Write ``(user_id, UserVectors)`` items into namespace ``cfg.namespace``."""

    observer: Callable[[list[tuple[str, UserVectors]], float], None] | None = None
    """Given to every partition: see ``_Partition.observer``."""

    def __init__(self, cfg: RedisConfig, namespace: str | None = None, max_backoff_s: float = 5.0) -> None:
        self.cfg = cfg
        self.namespace = namespace or cfg.namespace
        self.max_backoff_s = max_backoff_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        writer = RedisWriter(redis_client(self.cfg), self.namespace, self.cfg.pipeline_batch,
                             self.cfg.keys_per_call)
        part = _Partition(writer, self.max_backoff_s)
        part.observer = self.observer
        return part
