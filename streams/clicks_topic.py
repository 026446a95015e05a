"""Which topics may receive records keyed by user id (clicks, ``diam forget``'s tombstones),
and which may receive the item catalogue.

The one owner of both rules, called by ``diam produce`` and ``diam forget`` before they write
anything. A record keyed by a user id on the compacted item catalogue replaces (a tombstone:
deletes) the item of the same id once the log is compacted, and MovieLens' user and item ids
overlap; on the dead-letter, drift, alerts and models topics it is a record no reader expects.
The other way round, catalogue records on a clicks topic are dead letters to every dataflow
reading it, and a topic that is not compacted is no catalogue (``streams.catalog`` creates
catalogues compacted: the newest record per item is kept forever).

>>> cfg = KafkaConfig(items_topic="f.items")
>>> side_topic_role(cfg, "f.items")
'the item catalogue (settings kafka.items_topic)'
>>> side_topic_role(cfg, "f.cat", catalogue="f.cat")
'the item catalogue this command writes (--items-topic)'
>>> side_topic_role(cfg, "diam.clicks") is None
True
>>> side_topic_role(cfg, "diam.deadletter.replay.k3")
"a replay's own dead-letter topic (settings kafka.deadletter_topic + .replay.<namespace>)"
>>> catalogue_role(cfg, "diam.clicks")
'the configured clicks topic (settings kafka.clicks_topic)'
>>> catalogue_role(cfg, "f.items") is None
True
"""

from __future__ import annotations

from streams.config import KafkaConfig
from streams.kafka_io import TopicState, UnknownTopic, describe_topics

__all__ = ["catalogue_refusal", "catalogue_role", "clicks_refusal", "input_refusal",
           "not_for_catalogue", "not_for_clicks", "side_topic_role"]


def side_topic_role(cfg: KafkaConfig, topic: str, catalogue: str | None = None) -> str | None:
    """What ``topic`` is when it is one of the configured topics that are not clicks topics, a
    replay's own dead-letter or drift topic (``streams.replay.replay_topics``' names), or
    ``catalogue`` (a catalogue topic the command names itself), else None. Asks no broker."""
    from streams.replay import replay_topics  # its names' one owner (imports this module)

    own = replay_topics(cfg, "")  # the prefixes: <topic>.replay.<namespace>
    for prefix, what in ((own.deadletter_topic, "dead-letter topic (settings "
                          "kafka.deadletter_topic + .replay.<namespace>)"),
                         (own.drift_topic, "drift-event topic (settings kafka.drift_topic + "
                          ".replay.<namespace>)")):
        if topic.startswith(prefix) and len(topic) > len(prefix):
            return f"a replay's own {what}"
    roles = {cfg.forgotten_topic: "the forget markers' topic (settings kafka.forgotten_topic)",
             cfg.models_topic: "the retrain decisions topic (settings kafka.models_topic)",
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
    compacted (:func:`clicks_refusal`). Raises :class:`~streams.kafka_io.UnknownTopic` when
    the topic does not exist (found without creating it: ``produce`` creates it as a clicks
    topic, ``forget`` refuses it), and the Kafka client's errors when the broker does not
    answer."""
    role = side_topic_role(cfg, topic, catalogue)
    if role is not None:
        return f"{topic} is {role}, not a clicks topic"
    state = describe_topics(cfg, [topic], timeout=timeout)[topic]
    if state is None:
        raise UnknownTopic(f"topic {topic!r} does not exist at {cfg.bootstrap}")
    return clicks_refusal(cfg, topic, state, catalogue)


def clicks_refusal(cfg: KafkaConfig, topic: str, state: TopicState | None,
                   catalogue: str | None = None) -> str | None:
    """:func:`not_for_clicks`'s rule on a topic already described (``state``, from
    :func:`~streams.kafka_io.describe_topics`; None: it does not exist, which this rule lets
    pass), so that a command checking several things reads the broker once."""
    role = side_topic_role(cfg, topic, catalogue)
    if role is not None:
        return f"{topic} is {role}, not a clicks topic"
    if state is None:
        return None
    policy = state.config.get("cleanup.policy", "")
    if "compact" in policy.split(","):
        return (f"{topic} is compacted (cleanup.policy={policy}), as no clicks topic is: a "
                "record keyed by a user id there replaces (a tombstone: deletes) whatever "
                "record has that id as its key, an item of a catalogue")
    return None


def input_refusal(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> str | None:
    """Why ``topic`` must not be read as clicks (``diam run``, ``diam replay``, ``diam train
    --topic``), in one line naming it and what it is, or None when it may: a configured side
    topic or a replay's own (:func:`side_topic_role`), refused without asking the broker, or
    an existing topic the broker reports compacted (a catalogue, forget markers). Every record
    of those would be a dead letter, and the dead-letter topic read as clicks feeds itself
    without end. A topic that does not exist passes (each command says so in its own words).
    Raises the Kafka client's errors when the broker does not answer."""
    role = side_topic_role(cfg, topic)
    if role is not None:
        return f"{topic} is {role}, not a clicks topic: nothing was read or written"
    state = describe_topics(cfg, [topic], timeout=timeout)[topic]
    policy = "" if state is None else state.config.get("cleanup.policy", "")
    if "compact" in policy.split(","):
        return (f"{topic} is compacted (cleanup.policy={policy}), as no clicks topic is (an "
                "item catalogue or forget markers, most likely): nothing was read or written")
    return None


def catalogue_role(cfg: KafkaConfig, topic: str) -> str | None:
    """What ``topic`` is when it is a configured topic other than the item catalogue (the clicks
    topic, or a side topic: :func:`side_topic_role`), else None. Asks no broker."""
    if topic == cfg.items_topic:
        return None
    if topic == cfg.clicks_topic:
        return "the configured clicks topic (settings kafka.clicks_topic)"
    return side_topic_role(cfg, topic)


def not_for_catalogue(cfg: KafkaConfig, topic: str, timeout: float = 30.0) -> str | None:
    """Why ``topic`` must not receive the item catalogue, in one line naming it, or None when
    it may: a configured topic that is not the catalogue (:func:`catalogue_role`, without
    asking the broker), or an existing topic the broker reports not compacted
    (:func:`catalogue_refusal`). A topic that does not exist may
    (``streams.catalog.publish_items`` creates it compacted). Raises the Kafka client's errors
    when the broker does not answer."""
    role = catalogue_role(cfg, topic)
    if role is not None:
        return f"{topic} is {role}, not an item catalogue"
    return catalogue_refusal(cfg, topic, describe_topics(cfg, [topic], timeout=timeout)[topic])


def catalogue_refusal(cfg: KafkaConfig, topic: str, state: TopicState | None) -> str | None:
    """:func:`not_for_catalogue`'s rule on a topic already described (``state``, from
    :func:`~streams.kafka_io.describe_topics`; None: it does not exist, and may be created
    compacted). An existing topic that is not compacted is refused, its ``cleanup.policy`` and
    record count named: a clicks topic, most likely."""
    role = catalogue_role(cfg, topic)
    if role is not None:
        return f"{topic} is {role}, not an item catalogue"
    if state is None:
        return None
    policy = state.config.get("cleanup.policy", "")
    if "compact" in policy.split(","):
        return None
    return (f"{topic} is not compacted (cleanup.policy={policy or 'unknown'}) and holds "
            f"{state.held:,} records: not an item catalogue (a catalogue topic is compacted; a "
            "missing one is created so), a clicks topic perhaps, whose dataflows would "
            "dead-letter every item record")
