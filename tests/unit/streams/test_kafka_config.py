"""``KafkaConfig``'s topics obey Kafka's topic-name rule, the one the commands' topic options
are checked with (``streams.config.topic_name_problem``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.config import KafkaConfig

TOPICS = ["clicks_topic", "deadletter_topic", "drift_topic", "alerts_topic", "items_topic",
          "models_topic", "forgotten_topic"]


@pytest.mark.parametrize("field", TOPICS)
@pytest.mark.parametrize("name", ["bad topic", "", "..", "x" * 250, "items/v2"])
def test_an_illegal_topic_is_refused_by_field_and_rule(field, name) -> None:
    with pytest.raises(ValidationError) as info:
        KafkaConfig(**{field: name})
    (err,) = info.value.errors()
    assert err["loc"] == (field,)
    assert err["msg"].endswith("is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, "
                               "not '.' or '..')"), err["msg"]


@pytest.mark.parametrize("field", TOPICS)
def test_legal_topics_pass(field) -> None:
    assert getattr(KafkaConfig(**{field: "fix.a_b-C9"}), field) == "fix.a_b-C9"
