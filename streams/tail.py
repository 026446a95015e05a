"""The latest records of a topic, for people looking at the system (the ``/ui`` page).

Reads at most ``per_partition`` records from the end of each partition with a consumer that
joins no group and commits nothing, so looking never moves anybody's offsets.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.config import KafkaConfig
from streams.kafka_io import RawRecord, partition_ids

__all__ = ["tail", "latest_alerts", "user_drift_events"]


def tail(cfg: KafkaConfig, topic: str, per_partition: int, timeout: float = 5.0) -> list[RawRecord]:
    """The last ``per_partition`` records of every partition of ``topic``, by timestamp then
    partition and offset. A missing topic gives an empty list."""
    conf = dict(cfg.client_config())
    conf.update({"group.id": "diam-ui-tail", "enable.auto.commit": "false",
                 "enable.partition.eof": "false"})
    c = Consumer(conf)
    out: list[RawRecord] = []
    try:
        try:
            parts = partition_ids(cfg, topic, timeout)
        except RuntimeError:
            return []
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            start = max(low, high - per_partition)
            if high <= start:
                continue
            c.assign([TopicPartition(topic, p, start)])
            nxt, deadline = start, time.monotonic() + timeout
            while nxt < high and time.monotonic() < deadline:
                for m in c.consume(500, 0.2):
                    if m.error() is not None:
                        continue
                    off = m.offset()
                    assert off is not None
                    k, v = m.key(), m.value()
                    out.append(RawRecord(topic, p, off, k if isinstance(k, bytes) else None,
                                         v if isinstance(v, bytes) else None, m.timestamp()[1]))
                    nxt = off + 1
            c.unassign()
    finally:
        c.close()
    out.sort(key=lambda r: (r.ts_ms, r.partition, r.offset))
    return out


def _json(rec: RawRecord) -> dict[str, Any] | None:
    try:
        body = json.loads(rec.value or b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def latest_alerts(cfg: KafkaConfig, n: int, topic: str | None = None) -> list[dict[str, Any]]:
    """The drift monitor's last ``n`` alerts (JSON bodies), oldest first."""
    recs = tail(cfg, topic or cfg.alerts_topic, n)
    return [b for b in map(_json, recs) if b is not None][-n:]


def user_drift_events(cfg: KafkaConfig, user_id: str, n: int, topic: str | None = None,
                      scan: int = 20_000) -> list[dict[str, Any]]:
    """The last ``n`` drift events of ``user_id`` among the last ``scan`` records of each
    partition of the drift topic (events are keyed by user), oldest first."""
    key = user_id.encode()
    recs = [r for r in tail(cfg, topic or cfg.drift_topic, scan) if r.key == key]
    return [b for b in map(_json, recs) if b is not None][-n:]
