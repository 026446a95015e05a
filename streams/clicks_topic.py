"""Which topics may receive records keyed by user id (clicks, ``diam forget``'s tombstones).

The one owner of the rule, called by ``diam produce`` and ``diam forget`` before they write
anything. A record keyed by a user id on the compacted item catalogue replaces (a tombstone:
deletes) the item of the same id once the log is compacted, and MovieLens' user and item ids
overlap; on the dead-letter, drift, alerts and models topics it is a record no reader expects.

>>> cfg = KafkaConfig(items_topic="f.items")
>>> side_topic_role(cfg, "f.items")
'the item catalogue (settings kafka.items_topic)'
>>> side_topic_role(cfg, "f.cat", catalogue="f.cat")
'the item catalogue this command writes (--items-topic)'
>>> side_topic_role(cfg, "diam.clicks") is None
True
"""

from __future__ import annotations

from streams.config import KafkaConfig
from streams.kafka_io import partition_ids, topic_config

__all__ = ["not_for_clicks", "side_topic_role"]


def side_topic_role(cfg: KafkaConfig, topic: str, catalogue: str | None = None) -> str | None:
    """What ``topic`` is when it is one of the configured topics that are not clicks topics
    (or ``catalogue``, a catalogue topic the command names itself), else None. Asks no broker."""
    roles = {cfg.models_topic: "the retrain decisions topic (settings kafka.models_topic)",
             cfg.alerts_topic: "the drift-alert topic (settings kafka.alerts_topic)",
             cfg.drift_topic: "the drift-event topic (settings kafka.drift_topic)",
             cfg.deadletter_topic: "the dead-letter topic (settings kafka.deadletter_topic)",
             cfg.items_topic: "the item catalogue (settings kafka.items_topic)"}
    if catalogue is not None:
        roles[catalogue] = "the item catalogue this command writes (--items-topic)"
    return roles.get(topic)


def not_for_clicks(cfg: KafkaConfig, topic: str, catalogue: str | None = None,
                   timeout: float = 30.0) -> str | None:
    """Why ``topic`` must not receive records keyed by user id, in one line naming it and what
    it is, or None when it may. A configured side topic (:func:`side_topic_role`) is refused
    without asking the broker; any other topic is refused when the broker reports it
    compacted. Raises :class:`~streams.kafka_io.UnknownTopic` when the topic does not exist
    (found without creating it: ``produce`` creates it as a clicks topic, ``forget`` refuses
    it), and the Kafka client's errors when the broker does not answer."""
    role = side_topic_role(cfg, topic, catalogue)
    if role is not None:
        return f"{topic} is {role}, not a clicks topic"
    partition_ids(cfg, topic, timeout=timeout)  # UnknownTopic, and describe_configs needs one
    policy = topic_config(cfg, topic, timeout=timeout).get("cleanup.policy", "")
    if "compact" in policy.split(","):
        return (f"{topic} is compacted (cleanup.policy={policy}), as no clicks topic is: a "
                "record keyed by a user id there replaces (a tombstone: deletes) whatever "
                "record has that id as its key, an item of a catalogue")
    return None
