"""A key of another type than a hash where ``diam forget``'s markers of a clicks topic belong
(by name, or by topic id: ``serving_cache.keys``), left there by another tool or a hand-typed
``redis-cli SET``, is refused at the start of ``diam run``, ``diam replay`` and ``diam forget``
with one error line naming the key, its type and what to do (exit 1, nothing started, no
tombstone written, the key untouched), not a WRONGTYPE traceback; real Kafka and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving_cache.forgotten import MarkersNotAHash
from serving_cache.keys import forgotten_key, forgotten_key_by_name, user_key
from streams.forget_markers import forget_markers_of, topic_id
from streams.kafka_io import watermarks
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce
from tests.integration.test_run_refusals import _refused_without_start
from tests.integration.test_topic_typos import _cli, _settings


@pytest.fixture
def keys(stack, redis_client, topic) -> Iterator[tuple[str, str]]:
    """The topic's two marker keys (by name, by its id), removed after the test."""
    pair = (forgotten_key_by_name(topic), forgotten_key(topic, topic_id(stack.settings.kafka, topic)))
    yield pair
    redis_client.delete(*pair)


def _left(redis_client, key: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    redis_client.delete(key)
    {"string": lambda: redis_client.set(key, "x"),
     "list": lambda: redis_client.rpush(key, "x"),
     "set": lambda: redis_client.sadd(key, "x")}[kind]()


@pytest.mark.parametrize("which, kind", [(0, "string"), (1, "list"), (1, "set")])
def test_the_markers_lookup_refuses_a_key_that_is_not_a_hash(
        stack, redis_client, topic, keys, which, kind) -> None:
    key = keys[which]
    _left(redis_client, key, kind)
    with pytest.raises(MarkersNotAHash) as err:
        forget_markers_of(stack.settings.kafka, redis_client, topic)
    assert (err.value.key, err.value.kind, err.value.topic) == (key, kind, topic)
    assert redis_client.type(key) == kind.encode()  # untouched: nothing claimed or merged
    redis_client.delete(key)
    # a hash there (or nothing) is the markers: read as before
    redis_client.hset(keys[0], mapping={"u1": 3})
    adoption = forget_markers_of(stack.settings.kafka, redis_client, topic)
    assert adoption.topic_id is not None and adoption.merged == 1
    assert redis_client.hget(keys[1], "u1") == b"3"


def test_run_replay_and_forget_refuse_it_in_one_line_before_starting(
        stack, redis_client, namespace, topic, keys, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={  # removed with the topic
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})})
    for key in keys:
        _left(redis_client, key, "string")
        for args in (["run", "--bounded", "--topic", topic, "--namespace", namespace,
                      "--no-recovery"],
                     ["replay", "--topic", topic, "--namespace", namespace, "--no-progress"],
                     ["forget", "u1", "u2", "--topic", topic]):
            res = _cli(s, *args)
            assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
            _refused_without_start(res, 1, f"Redis key {key!r} holds a string, not a hash",
                                   f"redis-cli DEL {key!r}")
            assert "Traceback" not in res.output and "WRONGTYPE" not in res.output, res.output
        assert redis_client.get(key) == b"x"
        # diam forget refused before its tombstones: nothing was written to the topic
        assert all(hi == 0 for _, hi in watermarks(s.kafka, topic).values())
        redis_client.delete(key)
    # the key gone, the same forget goes through (the refusal above can fail)
    res = _cli(s, "forget", "u1", "--topic", topic)
    assert res.exit_code == 0, res.output
    assert redis_client.hget(keys[1], "u1") is not None


def test_replay_refuses_it_before_clear_empties_the_namespace(
        stack, redis_client, namespace, topic, keys, tmp_path) -> None:
    """``diam replay --clear`` into a namespace an earlier run filled: a marker key of another
    type refuses the replay before ``--clear`` deletes anything (before, the check ran inside
    the replay, after the namespace had been emptied)."""
    s = _settings(stack, tmp_path)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})})
    held = user_key(namespace, "earlier")
    redis_client.set(held, b"an earlier run's value")
    # a range with a record: --clear of an empty range is refused on its own (diam replay)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=1, n_events=2, seed=3)))
    try:
        _left(redis_client, keys[1], "string")
        res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--no-progress",
                   "--clear")
        _refused_without_start(res, 1, f"Redis key {keys[1]!r} holds a string, not a hash")
        assert "cleared" not in res.output, res.output
        assert redis_client.get(held) == b"an earlier run's value"
    finally:
        redis_client.delete(held)
