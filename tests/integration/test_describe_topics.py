"""``streams.kafka_io.describe_topics``, the one broker round ``diam produce`` checks its topics
with: on the real broker it reports what the separate reads report (partitions, configuration,
low/high offsets), None for a missing topic, and creates nothing."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient

from streams.kafka_io import (
    delete_topics,
    describe_topics,
    ensure_topic,
    partition_ids,
    topic_config,
    watermarks,
)
from tests.integration.helpers import produce


def test_describe_topics_agrees_with_the_separate_reads(stack) -> None:
    kafka = stack.settings.kafka
    plain, compacted, missing = (f"h3.{uuid.uuid4().hex[:12]}" for _ in range(3))
    ensure_topic(kafka, plain, partitions=3)
    ensure_topic(kafka, compacted, partitions=1, config={"cleanup.policy": "compact"})
    try:
        produce(kafka, plain, [(f"u{i}".encode(), b"x") for i in range(7)])
        got = describe_topics(kafka, [plain, compacted, missing])
        assert got[missing] is None
        for name in (plain, compacted):
            state = got[name]
            assert state is not None
            assert state.partitions == partition_ids(kafka, name)
            assert state.marks == watermarks(kafka, name)
            assert state.config["cleanup.policy"] == topic_config(kafka, name)["cleanup.policy"]
        assert got[plain].held == 7 and got[compacted].held == 0  # type: ignore[union-attr]
        assert got[compacted].config["cleanup.policy"] == "compact"  # type: ignore[union-attr]
        assert describe_topics(kafka, [missing]) == {missing: None}
        listed = AdminClient(kafka.client_config()).list_topics(timeout=30).topics
        assert missing not in listed  # asked about twice, created by neither
    finally:
        delete_topics(kafka, [plain, compacted])
