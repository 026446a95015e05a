"""Which of ``diam forget``'s markers a command of a clicks topic reads and records: those of
the topic the name holds now, told apart by Kafka's topic id (``serving_cache.keys
.forgotten_key``). A topic deleted and created again under the same name has a new id and
restarts its offsets at 0; the old topic's markers must neither bind it nor be lost.

``diam run``, ``diam replay`` (through ``streams.runner.prepare_online``, before a run says
it started) and ``diam forget`` call :func:`forget_markers_of` once at their start; the writer
is handed the id (``serving_cache`` talks to no broker).

Redis is not where the markers last: a FLUSHALL, a restart without persistence or a failover
to an empty replica takes them, and a replay of a range ending before a tombstone would then
write the forgotten user again. Their durable copy is a compacted Kafka topic
(``KafkaConfig.forgotten_topic``, one partition), one record per clicks topic, topic id and
user (:func:`marker_record`), written by ``diam forget`` after the tombstone and before the
Redis hash. :func:`restore_markers` merges it into the Redis hash (a user's higher offset
wins, as every merge of markers: idempotent, and a forget made meanwhile is never lowered),
and writes to the topic the markers Redis holds that it lacks (recorded before this copy
existed, adopted from the name-only hash, or whose record a failed forget did not write).
It runs at every command's start (:func:`forget_markers_of`), in the running dataflow's
writer when it finds the key set lost (``streams.redis_sink``, before its re-push) and on
``diam forget --restore-markers``.

Why this topic, not the clicks topic's own tombstones: finding the tombstones means reading
the whole clicks topic, every click of every user since its retention began, at each start
and each loss; the marker topic holds one record per forgotten user (compaction keeps the
newest), so its read costs what the markers' hash does, whatever the clicks topic's size. It
also outlives the clicks' retention: a recovery store lagging behind a tombstone that
retention deleted is still refused its push.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from serving_cache.forgotten import (
    Adoption,
    MarkersUnusable,
    adopt_name_only_markers,
    hold_markers,
    merge_markers,
    stored_markers,
)
from serving_cache.keys import forgotten_key
from streams.config import KafkaConfig

__all__ = ["MARKERS_TOPIC_CONFIG", "MarkersTopicUnfit", "forget_markers_of", "marker_record",
           "read_markers", "restore_markers", "topic_id", "write_markers"]

log = logging.getLogger(__name__)

MARKERS_TOPIC_CONFIG = {"cleanup.policy": "compact"}
"""How the markers' topic is created (one partition): compacted, so that the newest record of
each (clicks topic, topic id, user) is kept forever and nothing else grows."""


class MarkersTopicUnfit(MarkersUnusable):
    """The markers' topic exists but is not compacted alone: retention would delete markers."""

    def __init__(self, cfg: KafkaConfig, policy: str) -> None:
        self.topic, self.policy = cfg.forgotten_topic, policy
        super().__init__(
            f"topic {cfg.forgotten_topic!r} (settings kafka.forgotten_topic) keeps the durable "
            f"copy of diam forget's markers and must be compacted alone (cleanup.policy=compact)"
            f", but it has cleanup.policy={policy}: retention would delete markers and a "
            "forgotten user could be written again after Redis lost its data. Refused before "
            "reading or writing it: set its policy (kafka-configs.sh --alter --entity-type "
            f"topics --entity-name {cfg.forgotten_topic} --add-config cleanup.policy=compact) "
            "or name another topic in kafka.forgotten_topic")


def marker_record(topic: str, topic_id: str | None, user: str, offset: int
                  ) -> tuple[bytes, bytes]:
    """The record of one marker on the markers' topic, ``(key, value)``: the key is the Redis
    hash's name and the user (unique per clicks topic, topic id and user: user ids hold no
    ':'), the value JSON. The one owner of the format (:func:`read_markers` parses it).

    >>> marker_record("diam.clicks", "ea2bss0mSlqGLpiDao5Wgg", "59", 1234)
    ... # doctest: +NORMALIZE_WHITESPACE
    (b'diam::forgotten:diam.clicks:ea2bss0mSlqGLpiDao5Wgg:59',
     b'{"offset":1234,"topic":"diam.clicks","topic_id":"ea2bss0mSlqGLpiDao5Wgg","user":"59"}')
    """
    key = f"{forgotten_key(topic, topic_id)}:{user}".encode()
    value = json.dumps({"topic": topic, "topic_id": topic_id, "user": user,
                        "offset": int(offset)}, sort_keys=True, separators=(",", ":"))
    return key, value.encode()


def _parse(value: bytes | None) -> tuple[str, str | None, str, int] | None:
    if value is None:
        return None
    try:
        m = json.loads(value)
        out = (m["topic"], m["topic_id"], m["user"], m["offset"])
    except (ValueError, TypeError, KeyError):
        return None
    ok = (isinstance(out[0], str) and (out[1] is None or isinstance(out[1], str))
          and isinstance(out[2], str) and type(out[3]) is int)
    return out if ok else None


def read_markers(cfg: KafkaConfig, topic: str, tid: str | None, timeout: float = 30.0
                 ) -> dict[str, int]:
    """The markers of clicks topic ``topic`` (id ``tid``) that the markers' topic holds now,
    user -> the highest tombstone offset among its records ({} when the topic does not exist
    yet). A record that is not a marker (another tool's, a tombstone) is passed over with a
    warning naming its offset. Raises :class:`MarkersTopicUnfit` for a topic not compacted
    alone, the Kafka client's errors when the broker does not answer."""
    return _read_markers(cfg, topic, tid, timeout)[0]


def _read_markers(cfg: KafkaConfig, topic: str, tid: str | None, timeout: float
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """:func:`read_markers`, and each user's newest record's offset (what compaction keeps)."""
    from streams.kafka_io import consume_all, describe_topics

    state = describe_topics(cfg, [cfg.forgotten_topic], timeout=timeout)[cfg.forgotten_topic]
    if state is None:
        return {}, {}
    if (policy := state.config.get("cleanup.policy", "")) != "compact":
        raise MarkersTopicUnfit(cfg, policy)
    found: dict[str, int] = {}
    newest: dict[str, int] = {}
    if not state.held:
        return found, newest
    for rec in consume_all(cfg, cfg.forgotten_topic, timeout=timeout):
        m = _parse(rec.value)
        if m is None:
            log.warning("%s[%d] offset %d is not a forget marker (a JSON object of topic, "
                        "topic_id, user, offset): passed over", rec.topic, rec.partition,
                        rec.offset)
            continue
        if m[0] == topic and m[1] == tid:
            found[m[2]] = max(found.get(m[2], -1), m[3])
            newest[m[2]] = m[3]  # one partition: read in the order written
    return found, newest


def write_markers(cfg: KafkaConfig, topic: str, tid: str | None, offsets: Mapping[str, int],
                  timeout: float = 30.0) -> None:
    """Write ``offsets`` (user -> tombstone offset) of clicks topic ``topic`` (id ``tid``) to
    the markers' topic, created compacted when missing, and wait until the broker has them all.
    Raises ``RuntimeError`` naming the first errors when some were not delivered."""
    from confluent_kafka import Producer

    from streams.kafka_io import ensure_topic

    if not offsets:
        return
    ensure_topic(cfg, cfg.forgotten_topic, partitions=1, timeout=timeout,
                 config=MARKERS_TOPIC_CONFIG)
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err:
            errors.append(str(err))

    p = Producer({**cfg.client_config(), "enable.idempotence": "true"})
    for user, off in sorted(offsets.items()):
        key, value = marker_record(topic, tid, user, off)
        p.produce(cfg.forgotten_topic, key=key, value=value, on_delivery=delivered)
    left = p.flush(timeout)
    if errors or left:
        raise RuntimeError(f"forget markers to {cfg.forgotten_topic!r} not delivered ({left} "
                           f"pending): {'; '.join(errors[:3])}")


_REREADS = 3  # reads of the topic after writing to it, each after a rewrite of lowered markers


def restore_markers(cfg: KafkaConfig, client: Any, topic: str, tid: str | None,
                    timeout: float = 30.0) -> tuple[int, int]:
    """Make the Redis hash of ``topic``'s markers (id ``tid``) and the markers' topic agree:
    the topic's markers merged into the hash (a user's higher offset wins: idempotent, a marker
    a forget wrote meanwhile is never lowered; a thousand users per call), then, once every
    call is done, the hash marked whole, which makes it exist with no marker as well
    (:func:`serving_cache.forgotten.hold_markers`: the writer's check fails closed without the
    mark, so a push between two merge calls writes nothing),
    then the hash's markers whose newest record on the topic is lower or missing written to the
    topic. Returns ``(restored, recorded)``: markers added to (or raised in) Redis, markers
    written to the topic. One key per Redis script call. Raises :class:`MarkersTopicUnfit`,
    the Kafka client's and Redis's errors."""
    durable, newest = _read_markers(cfg, topic, tid, timeout)
    restored = merge_markers(client, topic, tid, durable)
    hold_markers(client, topic, tid)  # last: the hash holds every marker now
    # compaction keeps a user's newest record, not the highest: a user whose newest is below
    # the hash's offset is written again, as one the topic lacks
    missing = {u: off for u, off in stored_markers(client, topic, tid).items()
               if newest.get(u, -1) < off}
    write_markers(cfg, topic, tid, missing, timeout=timeout)
    # A forget racing this call writes its record to the topic before the hash, so a lower
    # offset written here (read from the hash before the forget's write) can land after the
    # forget's record and be the newest. Read the topic again once it has ours: every record
    # before ours is in it, and a user whose newest record is below its highest gets the
    # highest written again (after ours). A forget's record after ours is the newest already.
    for _ in range(_REREADS if missing else 0):
        highest, newest = _read_markers(cfg, topic, tid, timeout)
        lowered = {u: off for u, off in highest.items() if newest[u] < off}
        if not lowered:
            break
        log.warning("markers' topic %s: the newest record of %d user(s) of %s was below an "
                    "earlier one (a forget raced the restore): the highest written again",
                    cfg.forgotten_topic, len(lowered), topic)
        write_markers(cfg, topic, tid, lowered, timeout=timeout)
    return restored, len(missing)

_NO_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # Kafka's zero Uuid: what a broker without topic ids reports
_URL_SAFE = str.maketrans("+/", "-_")


def topic_id(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> str | None:
    """Kafka's id of the topic named ``topic`` now (base64url, as Kafka's tools print it), or None
    when the broker assigns topics no id (before Kafka 2.8). Raises
    :class:`~streams.kafka_io.UnknownTopic` when it does not exist (asked without creating
    it: describing a topic never auto-creates it), and the Kafka client's errors when the
    broker does not answer."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection

    from streams.kafka_io import UnknownTopic, _admin, _logs_on_failure

    admin = _admin(cfg)
    try:
        with _logs_on_failure(admin):
            desc = admin.describe_topics(TopicCollection([topic]),
                                         request_timeout=timeout)[topic].result(timeout)
    except KafkaException as exc:
        code = exc.args[0].code()
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise UnknownTopic(f"topic {topic!r} does not exist at {cfg.bootstrap}") from None
        if code == KafkaError._UNSUPPORTED_FEATURE:  # a broker too old to describe topics
            return None
        raise
    tid = getattr(desc, "topic_id", None)
    # librdkafka prints the id in standard base64; Kafka (kafka-topics.sh --describe) in the
    # URL-safe alphabet, which is what an operator will look for in Redis
    text = "" if tid is None else str(tid).translate(_URL_SAFE).rstrip("=")
    return None if text in ("", _NO_ID) else text


def forget_markers_of(cfg: KafkaConfig, client: Any, topic: str, timeout: float = 30.0
                      ) -> Adoption:
    """The start of a command that reads or records ``diam forget``'s markers of clicks topic
    ``topic``: its topic id (:func:`topic_id`, ``Adoption.topic_id``), after adopting the
    markers an earlier release recorded under the name alone when they are that id's
    (``serving_cache.forgotten``: they belong to the topic that held the name when this
    release first saw them; the name-only hash is kept for the earlier release's processes).
    Then the markers are restored from their durable copy and the copy completed
    (:func:`restore_markers`: ``Adoption.restored``, ``Adoption.recorded``).
    ``Adoption.line()`` is the one-line notice to show, if any. ``client``: a Redis client
    (``redis.Redis`` or ``RedisCluster``) of the store the markers are in. Raises
    ``serving_cache.forgotten.MarkersNotAHash`` when a key of the markers holds something else
    than a hash, :class:`MarkersTopicUnfit` when the markers' topic is not compacted alone
    (the command refuses to start: their messages say what to do)."""
    tid = topic_id(cfg, topic, timeout=timeout)
    adoption = adopt_name_only_markers(client, topic, tid)
    restored, recorded = restore_markers(cfg, client, topic, tid, timeout=timeout)
    return replace(adoption, restored=restored, recorded=recorded)
