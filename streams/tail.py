"""The latest records of a topic, for people looking at the system (the ``/ui`` page).

Reads at most ``per_partition`` records from the end of each partition with a consumer that
joins no group and commits nothing, so looking never moves anybody's offsets.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any, NamedTuple

from streams.config import KafkaConfig
from streams.drift import parse_drift_record, unique_drift_bodies
from streams.kafka_io import RawRecord, consume_all, of_namespace, partition_ids

__all__ = ["DriftBodies", "drift_bodies", "key_partition", "latest_alerts", "tail",
           "user_drift_events"]


def tail(cfg: KafkaConfig, topic: str, per_partition: int, timeout: float = 5.0,
         missing_ok: bool = True, partitions: Iterable[int] | None = None) -> list[RawRecord]:
    """The last ``per_partition`` records of every partition of ``topic`` (or of those of
    ``partitions`` that it has), by timestamp then partition and offset. A missing topic gives
    an empty list, or with ``missing_ok=False`` raises :class:`streams.kafka_io.UnknownTopic`
    (a reader that must tell a typo from "none")."""
    try:
        out = list(consume_all(cfg, topic, timeout, last=per_partition, partitions=partitions))
    except RuntimeError:  # no such topic
        if not missing_ok:
            raise
        return []
    out.sort(key=_time_order)
    return out


def _time_order(r: RawRecord) -> tuple[int, int, int]:
    return r.ts_ms, r.partition, r.offset


def _json(rec: RawRecord) -> dict[str, Any] | None:
    try:
        body = json.loads(rec.value or b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def latest_alerts(cfg: KafkaConfig, n: int, topic: str | None = None,
                  namespace: str | None = None, scan: int = 2_000) -> list[dict[str, Any]]:
    """The drift monitor's last ``n`` alerts (JSON bodies), oldest first; given ``namespace``,
    those of monitors of that Redis namespace and of every namespace (``diam drift run
    --namespace``), among the last ``scan`` records of each partition (other namespaces'
    alerts may be the newest ones)."""
    recs = tail(cfg, topic or cfg.alerts_topic, n if namespace is None else max(n, scan))
    return [b for b in map(_json, recs)
            if b is not None and of_namespace(b.get("namespace"), namespace)][-n:]


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a producer with librdkafka's default partitioner (``consistent_random``,
    which the dataflow's sinks use: ``streams.kafka_sink``) sends a non-empty ``key`` to: its
    CRC-32 modulo the number of partitions.

    >>> key_partition(b"259", 4)
    2
    """
    return zlib.crc32(key) % partitions


def _key_partitioned(cfg: KafkaConfig) -> bool:
    """Whether records are placed by :func:`key_partition`: librdkafka's default partitioner,
    unless ``KafkaConfig.extra`` names another one."""
    return cfg.client_config().get("partitioner", "consistent_random") in (
        "consistent_random", "consistent")


def user_drift_events(cfg: KafkaConfig, user_id: str, n: int, topic: str | None = None,
                      scan: int = 20_000, namespace: str | None = None,
                      timeout: float = 5.0) -> list[dict[str, Any]]:
    """The last ``n`` drift events of ``user_id`` among the last ``scan`` records of the
    partition of the drift topic that holds the user's key (events are keyed by user id,
    :func:`key_partition`; every partition when a configured partitioner places keys some other
    way), oldest first, each once: a dataflow resumed after a crash produces its uncommitted
    epoch's events again. Given ``namespace``, only the events of runs into that Redis
    namespace (and unmarked ones). A missing topic gives an empty list.

    One partition, not all: the /ui user view calls this per request, and reading the last
    20,000 records of each of 4 partitions took 1.7 s of it.

    Records written before the topic's partition count was raised sit in the partition the key
    went to under the smaller count, and are not read: finding them means reading every
    partition the key went to under a smaller count (``crc32 % m`` for each ``m`` below the
    current one), 1 to 3 more of 4 for most users, since most hold fewer events than the view
    asks for: the 1.7 s per request again for a topic that was never raised (the tooling creates
    it at ``kafka.partitions``). Nor are keyed records that a producer with another partitioner
    put elsewhere.
    """
    topic = topic or cfg.drift_topic
    key = user_id.encode()
    try:
        count = len(partition_ids(cfg, topic, timeout))
    except RuntimeError:  # no such topic
        return []
    if not key or not _key_partitioned(cfg):
        return _user_events(tail(cfg, topic, scan, timeout), key, namespace)[-n:]
    p = key_partition(key, count)
    return _user_events(tail(cfg, topic, scan, timeout, partitions=[p]), key, namespace)[-n:]


def _user_events(recs: list[RawRecord], key: bytes, namespace: str | None) -> list[dict[str, Any]]:
    """The JSON bodies of the records keyed ``key`` among ``recs`` (in time order), of
    ``namespace``, each once (:func:`streams.drift.unique_drift_bodies`)."""
    bodies = [b for b in map(_json, (r for r in recs if r.key == key))
              if b is not None and of_namespace(b.get("namespace"), namespace)]
    return [dict(b) for b in unique_drift_bodies(bodies)]


class DriftBodies(NamedTuple):
    """What :func:`drift_bodies` read: the drift events, and how many records were not one."""

    events: list[dict[str, Any]]
    """Each a ``DriftRecord`` as a dict (``kind``, ``user_id``, ``ts_ms``, ``offset``, ...)."""
    not_drift: int
    """Records that :func:`streams.drift.parse_drift_record` refused (skipped, counted)."""


def drift_bodies(cfg: KafkaConfig, per_partition: int, topic: str | None = None,
                 namespace: str | None = None) -> DriftBodies:
    """The drift events among the last ``per_partition`` records of each partition of the
    drift topic, in time order, each once (repeats of a resumed producer dropped); given
    ``namespace``, only that Redis namespace's (and unmarked ones). A record that is not a
    drift event (``parse_drift_record``, the one parser) is skipped and counted, as ``diam drift
    run`` does. Raises :class:`streams.kafka_io.UnknownTopic` for a topic that does not exist:
    a typo is not "no drift events"."""
    events, not_drift = [], 0
    for rec in tail(cfg, topic or cfg.drift_topic, per_partition, missing_ok=False):
        parsed = parse_drift_record(rec.value)
        if parsed is None:
            not_drift += 1
        elif of_namespace(parsed.namespace, namespace):
            events.append(asdict(parsed))
    return DriftBodies([dict(b) for b in unique_drift_bodies(events)], not_drift)
