"""A forgotten user's clicks below their marker are not learnt again: ``diam replay`` of the
topic into a fresh namespace, after ``diam forget``, emits no drift event and pushes no value
learnt from the clicks before the tombstone (the markers are read at the replay's start), learns
the user's later clicks as a new user's, and writes every other user bit for bit as a run over
the same records without a marker does. Real Kafka and Redis (the local stack)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import decode_user
from serving_cache.keys import forgotten_key
from streams.config import FlowConfig
from streams.forget_markers import topic_id
from streams.kafka_io import consume_all, watermarks
from tests.flowkit import click_stream, tiny_config
from tests.integration.helpers import click_payloads, produce, redis_state, write_tiny_checkpoint

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture
def namespaces(redis_client) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Two fresh namespaces of this helper's own prefix, cleared after the test."""
    tag = uuid.uuid4().hex[:12]
    made = [f"forgetskip_{tag}_a", f"forgetskip_{tag}_b"]
    yield made
    for ns in made:
        for k in list(redis_client.scan_iter(match=f"diam:{ns}:*", count=1000)):
            redis_client.delete(k)


def _drift(stack, topic: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    return [json.loads(r.value) for r in consume_all(stack.settings.kafka, topic)
            if r.value is not None]


def _offset(rec: dict) -> int:  # type: ignore[type-arg]
    return int(rec["offset"])


def test_a_replay_after_a_forget_learns_nothing_from_the_forgotten_clicks(
        stack, new_topic, redis_client, namespaces, tmp_path) -> None:
    # user ids of this test alone (forget deletes them in every namespace), the same at each
    # run: the learner's randomness is keyed by user and offset
    events = [dataclasses.replace(ev, user_id=f"forgetskip-{ev.user_id}")
              for ev in click_stream(n_users=6, n_events=240, seed=8)]
    forgotten = "forgetskip-user1"
    payloads = click_payloads(events)
    topic, plain = new_topic(1, "forgetskip_t"), new_topic(1, "forgetskip_t")
    kafka = stack.settings.kafka
    mark = forgotten_key(topic, topic_id(kafka, topic))
    try:
        produce(kafka, topic, payloads[:120])
        env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
               "DIAM_REDIS_URL": stack.redis_url}
        subprocess.run([sys.executable, "-m", "diam", "forget", forgotten, "--topic", topic],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        tomb = watermarks(kafka, topic)[0][1] - 1
        assert tomb == 120 and int(redis_client.hget(mark, forgotten)) == tomb
        produce(kafka, topic, payloads[120:])
        # the same records, tombstone included, on a topic without a marker: the replay the
        # other is compared with (what a replay did before the markers were read)
        produce(kafka, plain, payloads[:120] + [(forgotten.encode(), None)] + payloads[120:])
        ckpt = tmp_path / "ckpt"
        write_tiny_checkpoint(ckpt)

        def replay(clicks: str, ns: str) -> dict:  # type: ignore[type-arg]
            s = stack.settings.model_copy(update={
                "kafka": kafka.model_copy(update={"drift_topic": f"{clicks}.drift",
                                                  "deadletter_topic": f"{clicks}.dlq"}),
                "online": tiny_config(), "flow": FLOW})
            res = CliRunner().invoke(main, ["replay", "--topic", clicks, "--namespace", ns,
                                            "--checkpoint", str(ckpt), "--no-progress", "--json"],
                                     obj={"settings": s})
            assert res.exit_code == 0, res.output
            return dict(json.loads(res.output.strip().splitlines()[-1]))

        report, plain_report = replay(topic, namespaces[0]), replay(plain, namespaces[1])
        below = sum(1 for ev in events[:120] if ev.user_id == forgotten)
        later = sum(1 for ev in events[120:] if ev.user_id == forgotten)
        assert below > 5 and later > 5
        assert (report["forgotten_clicks"], report["forgotten_pushes"]) == (below, 0)
        assert report["valid"] == 240 and report["forgets"] == 1
        assert plain_report["forgotten_clicks"] == 0

        drift = _drift(stack, f"{topic}.drift.replay.{namespaces[0]}")
        old = _drift(stack, f"{plain}.drift.replay.{namespaces[1]}")
        # without the marker the forgotten clicks were learnt: drift events below the tombstone
        assert any(d["user_id"] == forgotten and _offset(d) < tomb for d in old)
        assert not [d for d in drift if d["user_id"] == forgotten and _offset(d) < tomb], \
            "the replay learnt the forgotten clicks again"
        strip = ("namespace", "topic")  # the run's own, not learnt

        def learnt(ds: list[dict], keep) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
            return sorted(({k: v for k, v in d.items() if k not in strip} for d in ds if keep(d)),
                          key=lambda d: json.dumps(d, sort_keys=True))
        # everything else, the forgotten user's events after the tombstone included, as without
        assert learnt(drift, lambda d: True) == learnt(
            old, lambda d: d["user_id"] != forgotten or _offset(d) > tomb)

        got, want = redis_state(redis_client, namespaces[0]), redis_state(redis_client,
                                                                          namespaces[1])
        assert got == want and len(got) == 6  # bit for bit, the forgotten user as a new one
        uv = decode_user(got[forgotten])
        assert uv.seq > tomb and uv.n == later
    finally:
        redis_client.delete(mark)
