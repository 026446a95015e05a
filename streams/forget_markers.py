"""Which of ``diam forget``'s markers a command of a clicks topic reads and records: those of
the topic the name holds now, told apart by Kafka's topic id (``serving_cache.keys
.forgotten_key``). A topic deleted and created again under the same name has a new id and
restarts its offsets at 0; the old topic's markers must neither bind it nor be lost.

``diam run``, ``diam replay`` (through ``streams.runner.prepare_online``, before a run says
it started) and ``diam forget`` call :func:`forget_markers_of` once at their start; the writer
is handed the id (``serving_cache`` talks to no broker).
"""

from __future__ import annotations

from typing import Any

from serving_cache.forgotten import Adoption, adopt_name_only_markers
from streams.config import KafkaConfig

__all__ = ["forget_markers_of", "topic_id"]

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
    ``Adoption.line()`` is the one-line notice to show, if any. ``client``: a Redis client
    (``redis.Redis`` or ``RedisCluster``) of the store the markers are in. Raises
    ``serving_cache.forgotten.MarkersNotAHash`` when a key of the markers holds something else
    than a hash (the command refuses to start: its message says what to do)."""
    tid = topic_id(cfg, topic, timeout=timeout)
    return adopt_name_only_markers(client, topic, tid)
