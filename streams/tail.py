"""The latest records of a topic, for people looking at the system (the ``/ui`` page).

Reads at most ``per_partition`` records from the end of each partition with a consumer that
joins no group and commits nothing, so looking never moves anybody's offsets.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, NamedTuple

from streams.config import KafkaConfig
from streams.drift import parse_drift_record, unique_drift_bodies
from streams.kafka_io import RawRecord, consume_all, of_namespace

__all__ = ["DriftBodies", "drift_bodies", "latest_alerts", "tail", "user_drift_events"]


def tail(cfg: KafkaConfig, topic: str, per_partition: int, timeout: float = 5.0,
         missing_ok: bool = True) -> list[RawRecord]:
    """The last ``per_partition`` records of every partition of ``topic``, by timestamp then
    partition and offset. A missing topic gives an empty list, or with ``missing_ok=False``
    raises :class:`streams.kafka_io.UnknownTopic` (a reader that must tell a typo from "none")."""
    try:
        out = list(consume_all(cfg, topic, timeout, last=per_partition))
    except RuntimeError:  # no such topic
        if not missing_ok:
            raise
        return []
    out.sort(key=lambda r: (r.ts_ms, r.partition, r.offset))
    return out


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


def user_drift_events(cfg: KafkaConfig, user_id: str, n: int, topic: str | None = None,
                      scan: int = 20_000, namespace: str | None = None) -> list[dict[str, Any]]:
    """The last ``n`` drift events of ``user_id`` among the last ``scan`` records of each
    partition of the drift topic (events are keyed by user), oldest first, each once: a
    dataflow resumed after a crash produces its uncommitted epoch's events again. Given
    ``namespace``, only the events of runs into that Redis namespace (and unmarked ones)."""
    key = user_id.encode()
    recs = [r for r in tail(cfg, topic or cfg.drift_topic, scan) if r.key == key]
    bodies = [b for b in map(_json, recs)
              if b is not None and of_namespace(b.get("namespace"), namespace)]
    return [dict(b) for b in unique_drift_bodies(bodies)][-n:]


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
