"""Event schema and codec, Bytewax dataflows (online learning, replay, drift monitor), Kafka
helpers and the event producer."""

from streams.clicks_topic import (
    catalogue_refusal,
    catalogue_role,
    clicks_refusal,
    input_refusal,
    not_for_catalogue,
    not_for_clicks,
    side_topic_role,
)
from streams.config import FlowConfig, KafkaConfig
from streams.producer import ProduceReport, produce_dataset, produce_raw

__all__ = ["FlowConfig", "KafkaConfig", "ProduceReport", "catalogue_refusal", "catalogue_role",
           "clicks_refusal", "input_refusal", "not_for_catalogue", "not_for_clicks", "produce_dataset",
           "produce_raw", "side_topic_role"]
