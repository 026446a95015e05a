"""``diam produce`` writes clicks to a clicks topic only: the configured catalogue,
dead-letter, drift, alerts and models topics and the command's own --items-topic are refused
by name before any record (catalogue or click) is produced and before any broker is asked
(Kafka is a closed port: a command that got further would say it is not usable). The rule is
``diam forget``'s (streams.not_for_clicks)."""

from __future__ import annotations

import pytest

import streams.catalog
import streams.producer
from online_model.synth import SynthParams, write_synth


@pytest.fixture
def data(tmp_path):
    out = tmp_path / "synth"
    write_synth(SynthParams(users=5, items=20, categories=4, events_per_user=4, seed=1,
                            max_interests=2), out)
    return str(out)


@pytest.fixture
def run(offline_cli, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("a record was produced")

    monkeypatch.setattr(streams.producer, "produce_dataset", never)
    monkeypatch.setattr(streams.catalog, "publish_items", never)
    return offline_cli


def _refused(r, *words: str, hint: str = "--topic") -> None:
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and hint in error[0], r.output
    for word in (*words, "not a clicks topic", "nothing was written"):
        assert word in error[0], (word, r.output)
    assert "not usable" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("setting, role", [
    ("items", "the item catalogue"), ("deadletter", "the dead-letter topic"),
    ("drift", "the drift-event topic"), ("alerts", "the drift-alert topic"),
    ("models", "the retrain decisions topic")])
def test_produce_refuses_the_configured_side_topics(run, isolated_env, data, setting,
                                                    role) -> None:
    name = f"f2.side-{setting}"
    isolated_env.setenv(f"DIAM_KAFKA_{setting.upper()}_TOPIC", name)
    _refused(run("produce", "--data", data, "--topic", name, "--limit", "5", "--catalog"),
             f"{name} is {role}")


def test_produce_refuses_its_own_items_topic_as_the_clicks_topic(run, data) -> None:
    _refused(run("produce", "--data", data, "--catalog", "--items-topic", "f2.c1", "--topic",
                 "f2.c1", "--limit", "5"),
             "f2.c1 is the item catalogue this command writes (--items-topic)")


def test_a_clicks_setting_naming_the_catalogue_is_refused_naming_the_setting(
        run, isolated_env, data) -> None:
    isolated_env.setenv("DIAM_KAFKA_CLICKS_TOPIC", "f2.same")
    isolated_env.setenv("DIAM_KAFKA_ITEMS_TOPIC", "f2.same")
    _refused(run("produce", "--data", data, "--limit", "5"),
             "f2.same is the item catalogue", hint="DIAM_KAFKA_CLICKS_TOPIC")


@pytest.mark.parametrize("items, role", [
    ("diam.clicks", "the configured clicks topic"),
    ("f2.side-dlq", "the dead-letter topic"),
])
def test_produce_refuses_a_catalogue_topic_that_is_not_a_catalogue(run, isolated_env, data,
                                                                   items, role) -> None:
    isolated_env.setenv("DIAM_KAFKA_DEADLETTER_TOPIC", "f2.side-dlq")
    r = run("produce", "--data", data, "--topic", "f2.clicks", "--limit", "5", "--catalog",
            "--items-topic", items)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "--items-topic" in error[0], r.output
    assert f"{items} is {role}" in error[0], r.output
    assert "not an item catalogue: nothing was written" in error[0], r.output


def test_produce_refuses_the_clicks_topic_as_its_items_topic_naming_the_option(run, data) -> None:
    """The mistake is --items-topic: the error names it, not DIAM_KAFKA_CLICKS_TOPIC (which the
    user never set; before: 'Invalid value for DIAM_KAFKA_CLICKS_TOPIC ... is the item catalogue
    this command writes')."""
    r = run("produce", "--data", data, "--catalog", "--items-topic", "diam.clicks",
            "--limit", "5")
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, r.output
    assert "--items-topic" in error[0] and "DIAM_KAFKA_CLICKS_TOPIC" not in error[0], r.output
    assert "diam.clicks is the configured clicks topic" in error[0], r.output
    assert "nothing was written" in error[0] and "not usable" not in r.output, r.output
