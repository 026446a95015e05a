"""Bytewax sink writing user vectors to Redis through the write-if-newer writer."""

from __future__ import annotations

import logging
import time

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client

__all__ = ["RedisVectorSink"]

log = logging.getLogger(__name__)


class _Partition(StatelessSinkPartition[tuple[str, UserVectors]]):
    def __init__(self, writer: RedisWriter, max_backoff_s: float) -> None:
        self.writer = writer
        self.max_backoff_s = max_backoff_s
        self.written = 0

    def write_batch(self, items: list[tuple[str, UserVectors]]) -> None:
        backoff = 0.05
        while True:
            try:
                self.written += self.writer.write_batch(items)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # An outage stalls the dataflow and retries; it never drops the batch. The
                # writes are idempotent (write-if-newer), so a partial batch re-sent is harmless.
                log.warning("Redis unavailable (%s); retrying in %.2fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)


class RedisVectorSink(DynamicSink[tuple[str, UserVectors]]):
    """Write ``(user_id, UserVectors)`` items into namespace ``cfg.namespace``."""

    def __init__(self, cfg: RedisConfig, namespace: str | None = None, max_backoff_s: float = 5.0) -> None:
        self.cfg = cfg
        self.namespace = namespace or cfg.namespace
        self.max_backoff_s = max_backoff_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        writer = RedisWriter(redis_client(self.cfg), self.namespace, self.cfg.pipeline_batch)
        return _Partition(writer, self.max_backoff_s)
