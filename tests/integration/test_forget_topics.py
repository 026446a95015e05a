"""``diam forget`` writes its tombstones to a clicks topic only: a compacted topic (where a
null value deletes the record keyed by the same id) is refused, with nothing written."""

from __future__ import annotations

import uuid

from click.testing import CliRunner

from diam.cli import main
from serving_cache.keys import user_key
from streams.kafka_io import delete_topics, ensure_topic, watermarks


def test_forget_refuses_a_compacted_topic_and_writes_nothing(stack, namespace,
                                                             redis_client) -> None:
    kafka = stack.settings.kafka
    compacted = f"fix3.{uuid.uuid4().hex[:16]}"
    ensure_topic(kafka, compacted, partitions=1, config={"cleanup.policy": "compact"})
    user = f"{namespace[1:9]}-259"  # this test's id: forget deletes it in every namespace
    key = user_key(namespace, user)
    redis_client.set(key, b"x")
    try:
        r = CliRunner().invoke(main, ["forget", user, "--topic", compacted],
                               obj={"settings": stack.settings})
        assert r.exit_code == 2 and "--topic" in r.output, r.output
        assert f"{compacted} is compacted (cleanup.policy=compact)" in r.output, r.output
        assert "nothing was written" in r.output and "Traceback" not in r.output
        assert sum(hi - lo for lo, hi in watermarks(kafka, compacted).values()) == 0
        assert redis_client.get(key) == b"x"
    finally:
        delete_topics(kafka, [compacted])
