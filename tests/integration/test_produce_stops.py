"""``diam produce`` against the real broker: a compacted topic is refused with nothing written
(a click keyed by user 259 would replace catalogue item 259 at compaction)."""

from __future__ import annotations

import uuid

from click.testing import CliRunner

from diam.cli import main
from online_model.synth import SynthParams, write_synth
from streams.kafka_io import UnknownTopic, delete_topics, ensure_topic, watermarks


def _held(kafka, topic: str) -> int:  # type: ignore[no-untyped-def]
    try:
        return sum(hi - lo for lo, hi in watermarks(kafka, topic, timeout=10).values())
    except UnknownTopic:
        return 0


def test_produce_refuses_a_compacted_topic_and_writes_nothing(stack, tmp_path) -> None:
    kafka = stack.settings.kafka
    compacted = f"f2.{uuid.uuid4().hex[:16]}"
    ensure_topic(kafka, compacted, partitions=1, config={"cleanup.policy": "compact"})
    data = tmp_path / "d"
    write_synth(SynthParams(users=5, items=20, categories=4, events_per_user=4, seed=1,
                            max_interests=2), data)
    try:
        r = CliRunner().invoke(main, ["produce", "--data", str(data), "--topic", compacted,
                                      "--limit", "5", "--no-progress"],
                               obj={"settings": stack.settings})
        assert r.exit_code == 2 and "--topic" in r.output, r.output
        assert f"{compacted} is compacted (cleanup.policy=compact)" in r.output, r.output
        assert "nothing was written" in r.output and "Traceback" not in r.output
        assert _held(kafka, compacted) == 0
    finally:
        delete_topics(kafka, [compacted])

