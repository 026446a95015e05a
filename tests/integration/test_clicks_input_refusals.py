"""``diam run``, ``diam replay`` and ``diam train --topic`` refuse a topic that is no clicks
topic (``streams.clicks_topic.input_refusal``) before they write anything; ``diam replay
--clear`` refuses a range that selects no record (or was clamped) before it deletes anything;
a replay claims its namespace (``serving_cache.keys.claim_key``) so that a second replay, or a
``diam run``, into it is refused while it runs. Real broker, real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from serving_cache.keys import claim_key
from streams.kafka_io import delete_topics, ensure_topic, watermarks
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce
from tests.integration.test_topic_typos import _cli, _exists, _settings


@pytest.fixture
def own(stack, tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    """Settings whose side topics are this test's own (``cmdfix.<role>.<tag>``): the live ones
    stay untouched; every topic under them (a replay's own too) is deleted afterwards."""
    base = _settings(stack, tmp_path)
    tag = uuid.uuid4().hex[:10]
    kafka = base.kafka.model_copy(update={
        f"{role}_topic": f"cmdfix.{role}.{tag}"
        for role in ("deadletter", "drift", "alerts", "items", "models", "forgotten")})
    s = base.model_copy(update={"kafka": kafka})
    yield s
    made = AdminClient(s.kafka.client_config()).list_topics(timeout=30).topics
    delete_topics(s.kafka, [t for t in made if t.startswith("cmdfix.") and tag in t])


def _errors(res) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in res.output.splitlines() if line.startswith("Error")]


def _keys_naming(redis_client, name: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    return list(redis_client.scan_iter(match=f"*{name}*", count=1000))


def test_side_topics_and_compacted_topics_are_no_clicks_input(
        own, namespace, redis_client, tmp_path) -> None:
    s, kafka = own, own.kafka
    compacted = kafka.items_topic.replace(".items.", ".compacted.")
    ensure_topic(s.kafka, compacted, partitions=1, config={"cleanup.policy": "compact"})
    produce(s.kafka, compacted, click_payloads(click_stream(n_users=3, n_events=10, seed=1)))
    ensure_topic(s.kafka, kafka.deadletter_topic, partitions=1)  # one side topic that exists
    side = [kafka.deadletter_topic, kafka.drift_topic, kafka.alerts_topic, kafka.items_topic,
            kafka.models_topic, kafka.forgotten_topic,
            f"{kafka.deadletter_topic}.replay.k3", f"{kafka.drift_topic}.replay.k3"]
    for name in [*side, compacted]:
        for args in (["run", "--bounded", "--no-recovery"], ["replay", "--no-progress"]):
            res = _cli(s, *args, "--topic", name, "--namespace", namespace)
            assert res.exit_code == 2, (args, name, res.output)
            assert len(_errors(res)) == 1 and name in _errors(res)[0], res.output
            assert ("not a clicks topic" in res.output or "is compacted" in res.output), \
                res.output
            assert "online dataflow:" not in res.output, res.output
        assert _keys_naming(redis_client, name) == [], name  # no forgotten:<topic> hash
    res = _cli(s, "train", "--topic", kafka.items_topic, "--epochs", "1",
               "--out", str(tmp_path / "ck-out"))
    assert res.exit_code == 2 and "not a clicks topic" in res.output, res.output
    assert not (tmp_path / "ck-out").exists()
    assert list(redis_client.scan_iter(match=f"diam:{namespace}:*")) == []  # no partitions
    # nothing read or written: the dead-letter topic did not grow, the others were not made
    assert all(hi == 0 for _lo, hi in watermarks(s.kafka, kafka.deadletter_topic).values())
    for name in side[1:]:
        assert not _exists(s, name), name


def test_replay_clear_refuses_a_range_of_no_record_and_deletes_nothing(
        own, topic, namespace, redis_client) -> None:
    s = own
    produce(s.kafka, topic, click_payloads(click_stream(n_users=6, n_events=80, seed=3)))
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress")
    assert res.exit_code == 0, res.output
    held = sorted(redis_client.scan_iter(match=f"diam:{namespace}:*"))
    assert held and claim_key(namespace).encode() not in held  # released at the end
    for bound in ("2030-01-01T00:00:00Z", "99999"):  # after the last record; past the end
        res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--clear",
                   "--from", bound, "--no-progress")
        assert res.exit_code == 1, (bound, res.output)
        assert len(_errors(res)) == 1 and "--clear refused" in _errors(res)[0], res.output
        assert "cleared" not in res.output, res.output
        lines = res.output.splitlines()
        assert any(x.startswith("warning:") for x in lines[:lines.index(_errors(res)[0])]), \
            res.output
        assert sorted(redis_client.scan_iter(match=f"diam:{namespace}:*")) == held, bound


def test_a_claimed_namespace_refuses_a_second_replay_and_a_run(
        own, topic, namespace, redis_client) -> None:
    s = own
    produce(s.kafka, topic, click_payloads(click_stream(n_users=6, n_events=40, seed=4)))
    holder = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(namespace), holder)  # a replay running into it
    for args in (["replay", "--no-progress"], ["replay", "--no-progress", "--clear"],
                 ["run", "--bounded", "--no-recovery"]):
        res = _cli(s, *args, "--topic", topic, "--namespace", namespace)
        assert res.exit_code == 1, (args, res.output)
        assert len(_errors(res)) == 1 and holder in _errors(res)[0], res.output
        assert "online dataflow:" not in res.output, res.output
        assert sorted(redis_client.scan_iter(match=f"diam:{namespace}:*")) == \
            [claim_key(namespace).encode()], args  # the holder's claim kept, nothing written
    assert redis_client.get(claim_key(namespace)) == holder.encode()
    # `diam drop` refuses a claim it cannot tell is stale (another host), naming it; --force
    # deletes it; then the replay runs
    res = _cli(s, "drop", namespace, "--yes")
    assert res.exit_code == 1 and holder in res.output, res.output
    assert _cli(s, "drop", namespace, "--yes", "--force").exit_code == 0
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress")
    assert res.exit_code == 0, res.output
    assert redis_client.get(claim_key(namespace)) is None


def test_evaluate_and_retrain_refuse_a_topic_that_is_no_clicks_topic(
        own, redis_client, tmp_path) -> None:
    """``diam evaluate --topic`` and ``diam retrain --topic`` take the one rule too (before:
    evaluate read the dead letters as clicks)."""
    s, kafka = own, own.kafka
    ensure_topic(s.kafka, kafka.deadletter_topic, partitions=1)
    ckpt = tmp_path / "ck"  # own's checkpoint (test_topic_typos._settings)
    for args in (["evaluate", "--checkpoint", str(ckpt)], ["retrain", "--once"]):
        res = _cli(s, *args, "--topic", kafka.deadletter_topic)
        assert res.exit_code == 2, (args, res.output)
        assert len(_errors(res)) == 1 and kafka.deadletter_topic in _errors(res)[0], res.output
        assert "not a clicks topic" in res.output, res.output
