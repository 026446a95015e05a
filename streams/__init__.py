"""Event schema and codec, Bytewax dataflows (online learning, replay, drift monitor), Kafka
helpers and the event producer."""

from streams.config import FlowConfig, KafkaConfig
from streams.producer import ProduceReport, produce_dataset, produce_raw

__all__ = ["FlowConfig", "KafkaConfig", "ProduceReport", "produce_dataset", "produce_raw"]
