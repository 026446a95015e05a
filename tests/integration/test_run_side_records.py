"""What ``diam run`` and ``diam deadletters`` say about the side records of a run, against the
real broker and Redis: a run dead-letters the catalogue's refused records
(``streams.catalog.CatalogDeadLetters``, wired in ``diam/commands/run.py``) and says how many
after its summary; ``diam deadletters --namespace`` of a replay's namespace reads the replay's
own dead-letter topic (``streams.replay.namespace_topics``), not the live one, where it found
nothing before; a record refused into both the shared and the replay's topic is one
record (``streams.kafka_io.merge_copies``)."""

from __future__ import annotations

from click.testing import CliRunner

from diam.cli import main
from streams.kafka_io import read_deadletters
from streams.producer import produce_raw
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce
from tests.integration.test_catalogue_refusals import _publish, _settings


def _cli(s, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), obj={"settings": s})


def test_a_run_dead_letters_the_catalogue_s_refusals_and_says_so(stack, topic, tmp_path) -> None:
    s = _settings(stack, topic, tmp_path)
    offsets = _publish(s)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=30, seed=1)))
    ns = s.redis.namespace
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", ns, "--no-recovery")
    assert res.exit_code == 0, res.output
    assert (f"catalogue: 4 refused record(s) of {s.kafka.items_topic} dead-lettered to "
            f"{s.kafka.deadletter_topic}") in res.stderr, res.stderr
    got = read_deadletters(s.kafka, s.kafka.deadletter_topic, namespace=ns)
    assert sorted(d["offset"] for d in got if d["topic"] == s.kafka.items_topic) == offsets


def test_deadletters_of_a_replay_namespace_reads_the_replay_s_topic(stack, topic, tmp_path) -> None:
    s = _settings(stack, topic, tmp_path)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=30, seed=2)))
    assert produce_raw(s.kafka, topic, [(b"u-bad", b"\xc1 not a click")]).ok
    ns = f"{s.redis.namespace}-r"
    res = _cli(s, "replay", "--topic", topic, "--namespace", ns, "--no-progress")
    assert res.exit_code == 0, res.output
    res = _cli(s, "deadletters", "--namespace", ns)
    assert res.exit_code == 0, res.output
    # before: "0 dead-lettered record(s) in <the live topic> of namespace <ns>"
    # the shared topic does not exist yet (no run): the replay's own alone, named
    assert (f"1 dead-lettered record(s) in {s.kafka.deadletter_topic}.replay.{ns} of namespace "
            f"{ns}") in res.output, res.output
    assert "undecodable" in res.output


def test_deadletters_of_a_namespace_reads_a_run_s_and_a_replay_s_topics(
        stack, topic, tmp_path) -> None:
    """A replay into ns with no reject, then a run into it with two: both counted (before: the
    replay's topic alone, "0 dead-lettered record(s)")."""
    s = _settings(stack, topic, tmp_path)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=30, seed=3)))
    ns = f"{s.redis.namespace}-m"
    res = _cli(s, "replay", "--topic", topic, "--namespace", ns, "--no-progress")
    assert res.exit_code == 0, res.output
    assert produce_raw(s.kafka, topic, [(b"u-bad", b"\xc1 not a click"),
                                        (b"u-bad2", b"\xc1 nor this")]).ok
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", ns, "--no-recovery")
    assert res.exit_code == 0, res.output
    res = _cli(s, "deadletters", "--namespace", ns)
    assert res.exit_code == 0, res.output
    assert (f"2 dead-lettered record(s) in {s.kafka.deadletter_topic} and "
            f"{s.kafka.deadletter_topic}.replay.{ns} of namespace {ns}") in res.output, res.output


def test_a_record_rejected_into_both_topics_of_a_namespace_is_listed_once(
        stack, topic, tmp_path) -> None:
    """A replay and then a run into ns over the same records each refuse the bad one, into the
    replay's own topic and the shared one: one record with a repeated copy (before: listed
    twice, "2 dead-lettered record(s)")."""
    s = _settings(stack, topic, tmp_path)
    produce(s.kafka, topic, click_payloads(click_stream(n_users=3, n_events=30, seed=4)))
    assert produce_raw(s.kafka, topic, [(b"u-bad", b"\xc1 not a click")]).ok
    ns = f"{s.redis.namespace}-b"
    res = _cli(s, "replay", "--topic", topic, "--namespace", ns, "--no-progress")
    assert res.exit_code == 0, res.output
    res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", ns, "--no-recovery")
    assert res.exit_code == 0, res.output
    res = _cli(s, "deadletters", "--namespace", ns)
    assert res.exit_code == 0, res.output
    assert (f"1 dead-lettered record(s) in {s.kafka.deadletter_topic} and "
            f"{s.kafka.deadletter_topic}.replay.{ns} of namespace {ns} (1 repeated copy"
            ) in res.output, res.output
    assert res.output.count("undecodable") == 1, res.output
