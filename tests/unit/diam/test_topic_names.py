"""A topic option's value must be a legal Kafka topic name: refused while the options are
parsed, naming the option, before any client is made (Kafka is pointed at a closed port, so a
command that got further would fail differently)."""

from __future__ import annotations

import pytest


@pytest.fixture
def run(offline_cli):
    return offline_cli


@pytest.mark.parametrize("args", [
    ["produce", "--topic", "bad topic", "--limit", "1"],
    ["produce", "--topic", "..", "--limit", "1"],
    ["produce", "--topic", "x" * 250, "--limit", "1"],
    ["produce", "--items-topic", "items/v2", "--catalog"],
    ["forget", "--topic", "bad topic", "u1"],
    # every command's topic options share the one check (diam.commands.topic_name)
    ["run", "--topic", "bad topic", "--bounded"],
    ["deadletters", "--topic", "bad topic"],
    ["replay", "--topic", "bad topic", "--from", "0"],
    ["drift", "run", "--topic", "bad topic", "--bounded"],
    ["drift", "run", "--alerts-topic", "bad topic", "--bounded"],
    ["drift", "watch", "--topic", "bad topic"],
    ["retrain", "--topic", "bad topic", "--once"],
    ["train", "--topic", "bad topic"],
    ["train", "--items-topic", "bad topic"],
    ["evaluate", "--topic", "bad topic"],
    ["inspect", "namespace", "--drift-topic", "bad topic"],
])
def test_an_illegal_topic_name_is_a_usage_error(run, args) -> None:
    option = next(a for a in args if a.endswith("topic"))
    r = run(*args)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert option in r.output and "is not a Kafka topic name" in r.output, r.output
    assert "not usable" not in r.output and "Traceback" not in r.output


def test_legal_names_pass_the_option_check(run) -> None:
    # gets past parsing: what fails is the missing dataset, not the name
    r = run("produce", "--topic", "fix3.a_b-C9", "--data", "/tmp/fix3/no-such-dataset")
    assert r.exit_code == 1 and "not a Kafka topic name" not in r.output, r.output


@pytest.mark.parametrize("setting, role", [
    ("items", "the item catalogue"), ("deadletter", "the dead-letter topic"),
    ("drift", "the drift-event topic"), ("alerts", "the drift-alert topic"),
    ("models", "the retrain decisions topic")])
def test_forget_refuses_the_configured_side_topics(run, isolated_env, setting, role) -> None:
    """A tombstone keyed by user 259 on the catalogue deletes item 259: refused by name, before
    any broker is asked (the closed port would fail otherwise) or any key deleted."""
    name = f"fix3.side-{setting}"
    isolated_env.setenv(f"DIAM_KAFKA_{setting.upper()}_TOPIC", name)
    r = run("forget", "--topic", name, "259")
    assert r.exit_code == 2 and "--topic" in r.output, r.output
    assert f"{name} is {role}" in r.output and "not a clicks topic" in r.output, r.output
    assert "nothing was written" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("setting", ["CLICKS", "DEADLETTER", "DRIFT", "ALERTS", "ITEMS",
                                     "MODELS"])
def test_an_illegal_topic_in_the_environment_is_a_settings_error(isolated_env, setting) -> None:
    """Any command, one line: the variable, the setting and the rule; no traceback."""
    from click.testing import CliRunner

    from diam.cli import main

    isolated_env.setenv(f"DIAM_KAFKA_{setting}_TOPIC", "bad topic")
    r = CliRunner().invoke(main, ["stack", "status"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.count("\n") == 1 and r.output.startswith("Error: "), r.output
    assert f"DIAM_KAFKA_{setting}_TOPIC" in r.output, r.output
    assert f"kafka.{setting.lower()}_topic" in r.output, r.output
    assert "'bad topic' is not a Kafka topic name (1-249 of" in r.output, r.output
    assert "Value error" not in r.output and "Traceback" not in r.output
