"""A topic that a read names but that does not exist is an error, and nothing creates it.

A metadata request naming a topic makes a broker with ``auto.create.topics.enable`` (Kafka's
default, and the local stack's) create it empty; the reads used to do that, so a misspelt
topic replayed "0 records" into a fresh namespace and listed "0 dead-lettered records" with
rc 0, leaving a new 4-partition topic behind each time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from diam.cli import main
from online_model.config import OnlineConfig
from serving_cache import RedisWriter
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.kafka_io import UnknownTopic, partition_ids, watermarks
from streams.replay import Bound, resolve_range
from tests.flowkit import N_ITEMS, click_stream
from tests.integration.helpers import click_payloads, produce, redis_state
from tests.integration.test_lifecycle import _uv


def _cli(settings, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), obj={"settings": settings})


def _exists(settings, topic: str) -> bool:  # type: ignore[no-untyped-def]
    return topic in AdminClient(settings.kafka.client_config()).list_topics(timeout=30).topics


def _settings(stack, tmp_path):  # type: ignore[no-untyped-def]
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    publish(write_checkpoint(tmp_path / "ck", n_items=N_ITEMS, dim=16, k_max=4, seed=0), store)
    return stack.settings.model_copy(update={"online": OnlineConfig(dim=16, k_max=4),
                                             "snapshot": store.cfg})


def test_reads_of_a_topic_that_does_not_exist_are_refused_and_create_nothing(
        stack, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    typo = f"t.typo{uuid.uuid4().hex[:12]}"
    try:
        partition_ids(s.kafka, typo)
        raise AssertionError("partition_ids of a missing topic returned")
    except UnknownTopic as exc:
        assert "does not exist" in str(exc)
    for args in (["replay", "--topic", typo, "--namespace", namespace, "--no-progress"],
                 ["run", "--bounded", "--topic", typo, "--namespace", namespace],
                 ["deadletters", "--topic", typo]):
        res = _cli(s, *args)
        assert res.exit_code == 2, (args, res.output)
        assert f"topic {typo!r} does not exist" in res.output, res.output
    # the settings' own dead-letter topic before any dataflow created it: nothing rejected yet
    fresh = s.model_copy(update={"kafka": s.kafka.model_copy(update={"deadletter_topic": typo})})
    res = _cli(fresh, "deadletters")
    assert res.exit_code == 0 and res.output.startswith("0 dead-lettered record(s)"), res.output
    assert "does not exist" in res.output
    assert not _exists(s, typo)


def test_deadletters_refuses_a_topic_without_dead_letter_headers(stack, topic) -> None:
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=3, n_events=9, seed=1)))
    res = _cli(stack.settings, "deadletters", "--topic", topic)
    assert res.exit_code == 2 and "not a dead-letter topic" in res.output, res.output


def test_replay_clear_checks_the_range_before_it_deletes(stack, topic, namespace, redis_client,
                                                         tmp_path) -> None:
    """A typo in --from must not cost the namespace someone was about to diff."""
    s = _settings(stack, tmp_path)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=9, seed=1)))
    RedisWriter(redis_client, namespace).write_batch([("u1", _uv(1)), ("u2", _uv(1))])
    before = redis_state(redis_client, namespace)
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--clear",
               "--from", "9:0", "--no-progress")
    assert res.exit_code == 1 and "partition 9" in res.output, res.output
    assert "cleared" not in res.output
    assert redis_state(redis_client, namespace) == before and len(before) == 2


def test_a_replay_bound_outside_a_partition_is_clamped_with_a_warning(stack, topic) -> None:
    """An offset past a partition's end is most likely a mistake: the replay says which
    partition it clamped, and a bound inside every partition says nothing."""
    kafka = stack.settings.kafka
    produce(kafka, topic, click_payloads(click_stream(n_users=4, n_events=40, seed=2)))
    marks = watermarks(kafka, topic)
    rng = resolve_range(kafka, topic, Bound(offsets={0: 999_999}), None)
    assert rng.start[0] == rng.end[0] == marks[0][1]
    assert rng.clamped == (f"partition 0: --from offset 999999 is outside what it holds "
                           f"[{marks[0][0]}, {marks[0][1]}); {marks[0][1]} used",)
    assert resolve_range(kafka, topic, Bound(offsets={0: 0}), None).clamped == ()
    assert resolve_range(kafka, topic, None, None).clamped == ()


def test_forget_and_the_drift_readers_refuse_a_topic_that_does_not_exist(
        stack, namespace, redis_client, tmp_path) -> None:
    """``diam forget`` wrote its tombstones to a misspelt topic (creating it; no dataflow would
    forget the user) and said it had; ``drift run --bounded`` and ``drift watch --exit-at-end``
    created the topic and reported nothing. Each now refuses it, and creates nothing."""
    s = stack.settings.model_copy(update={"redis": stack.settings.redis.model_copy(
        update={"namespace": namespace})})
    typo = f"t.typo{uuid.uuid4().hex[:12]}"
    RedisWriter(redis_client, namespace).write_batch([("u1", _uv(1))])
    for args in (["forget", "u1", "--topic", typo],
                 ["drift", "run", "--bounded", "--topic", typo],
                 ["drift", "watch", "--exit-at-end", "--topic", typo]):
        res = _cli(s, *args)
        assert res.exit_code == 2, (args, res.output)
        assert f"topic {typo!r} does not exist" in res.output, res.output
    assert "not touched" in _cli(s, "forget", "u1", "--topic", typo).output
    assert redis_state(redis_client, namespace)  # the refused forget deleted nothing
    assert not _exists(s, typo)
    res = _cli(s, "forget", "u1", "--topic", typo, "--redis-only")
    assert res.exit_code == 0 and not redis_state(redis_client, namespace), res.output


def test_a_replay_from_a_later_time_than_its_end_is_refused(stack, topic, namespace,
                                                            tmp_path) -> None:
    s = _settings(stack, tmp_path)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=9, seed=1)))
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress",
               "--from", "2024-01-20T00:00:00Z", "--to", "2024-01-10T00:00:00Z")
    assert res.exit_code == 1 and "--from is a later time than --to" in res.output, res.output
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress",
               "--from", "2001-01-10T00:00:00Z", "--to", "2001-01-20T00:00:00Z")
    assert res.exit_code == 0, res.output
    assert (f"warning: the range --from 2001-01-10T00:00:00Z --to 2001-01-20T00:00:00Z selected "
            f"no record of {topic} (its records' timestamps run from ") in res.stderr, res.output


def test_a_replay_whose_range_selects_nothing_says_so_and_where_the_records_are(
        stack, topic, new_topic, namespace, tmp_path) -> None:
    # "0 records" alone reads like a replay that worked; deadletters with nothing to list also
    # exits 0, so this warns and exits 0
    s = _settings(stack, tmp_path)
    before = datetime.now(UTC).date().isoformat()
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=9, seed=1)))
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress",
               "--from", "2030-01-01")
    assert res.exit_code == 0, res.output
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert line.startswith(f"warning: the range --from 2030-01-01 selected no record of {topic} "
                           f"(its records' timestamps run from {before}T"), line
    assert "Kafka timestamps" in line and "0 records" in res.stderr
    empty = new_topic(2)
    res = _cli(s, "replay", "--topic", empty, "--namespace", namespace, "--no-progress", "--clear")
    assert res.exit_code == 0, res.output
    assert f"warning: {empty} holds no record to replay (the whole topic)" in res.stderr


def test_inspecting_an_empty_namespace_says_it_may_be_a_typo(stack, namespace) -> None:
    res = CliRunner().invoke(main, ["inspect", "namespace", "--namespace",
                                  namespace], obj={"settings": stack.settings})
    assert res.exit_code == 0 and "0 users" in res.stdout, res.output
    assert f"namespace {namespace!r} holds no users" in res.stderr and "a typo?" in res.stderr
