"""What ``diam forget`` says it deleted (review serverev item 4): a user named twice is one
tombstone and one line, and a user whose key a running dataflow deleted first (it reads the
tombstone) is counted where they were, not "deleted in 0 namespace(s)"."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from diam.cli import main
from serving_cache import RedisWriter, UserVectors
from serving_cache.keys import forgotten_key, forgotten_key_by_name
from streams.config import FlowConfig
from streams.forget_markers import topic_id
from streams.kafka_io import watermarks
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_config, tiny_learner
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _settings(stack, topic: str):  # type: ignore[no-untyped-def]
    kafka = stack.settings.kafka.model_copy(update={
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq",
        "forgotten_topic": f"{topic}.forgotten"})
    return stack.settings.model_copy(update={"kafka": kafka, "online": tiny_config(), "flow": FLOW})


def _forget(s, topic: str, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["forget", *args, "--topic", topic], obj={"settings": s})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture
def markers(redis_client, topic) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """The forget markers' hashes the test made, deleted after it."""
    keys: list[str] = [forgotten_key_by_name(topic)]
    yield keys
    redis_client.delete(*keys)


def _mark(s, topic: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    keys.append(forgotten_key(topic, topic_id(s.kafka, topic)))


def test_a_user_named_twice_is_one_tombstone(stack, topic, namespace, redis_client,
                                             markers) -> None:
    s = _settings(stack, topic)
    _mark(s, topic, markers)
    user = f"{namespace[1:9]}-twice"
    RedisWriter(redis_client, namespace).write_batch([(user, UserVectors(
        seq=1, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1))])
    out = _forget(s, topic, user, user)
    assert "tombstone(s) for 1 user(s)" in out, out
    assert sum(high for _, high in watermarks(s.kafka, topic).values()) == 1  # old code: 2
    assert out.count(f"{user}: deleted in 1 namespace(s) ({namespace})") == 1, out


@pytest.mark.partitions(1)
def test_a_key_a_running_dataflow_deleted_first_is_counted(stack, topic, namespace,
                                                           redis_client, markers) -> None:
    s = _settings(stack, topic)
    _mark(s, topic, markers)
    tag = namespace[1:9]  # user ids of this test alone: forget deletes in every namespace
    events = [dataclasses.replace(ev, user_id=f"{tag}-{ev.user_id}")
              for ev in click_stream(n_users=4, n_events=60, seed=3)]
    produce(s.kafka, topic, click_payloads(events))
    stop = threading.Event()
    learner = tiny_learner()
    job = OnlineJob(kafka=s.kafka, redis=s.redis, flow=FLOW, topic=topic, namespace=namespace,
                    bounded=False, stop=stop)
    run = threading.Thread(target=run_online, args=(job, LearnerHolder(learner,
                                                                       learner.base.version)))
    run.start()
    try:
        users = sorted({ev.user_id for ev in events})
        deadline = time.monotonic() + 60
        while not set(users) <= set(redis_state(redis_client, namespace)):
            assert time.monotonic() < deadline, "the dataflow pushed no users"
            time.sleep(0.1)
        lines = []
        for user in users:
            out = _forget(s, topic, user)
            line = next(ln for ln in out.splitlines() if ln.startswith(f"{user}: "))
            lines.append(line)
            # old code: "deleted in 0 namespace(s)" whenever the dataflow deleted it first
            assert line.startswith(f"{user}: deleted in 1 namespace(s) ({namespace}"), out
        assert not set(users) & set(redis_state(redis_client, namespace))
    finally:
        stop.set()
        run.join(60)
    print("\n".join(lines))
