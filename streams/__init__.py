"""Event schema and codec, Bytewax dataflows (online learning, replay, drift monitor), Kafka
helpers and the event producer."""

from streams.config import FlowConfig, KafkaConfig

__all__ = ["FlowConfig", "KafkaConfig"]
