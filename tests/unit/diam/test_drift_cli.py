"""``diam drift run``: its closing line and its help (no services: the dataflow is replaced)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import streams.drift_flow
from diam.cli import main
from diam.settings import load_settings
from streams.drift import Alert


@pytest.fixture
def invoke(isolated_env):
    isolated_env.setenv("DIAM_KAFKA_DRIFT_TOPIC", "my.drift")

    def run(*args: str):
        return CliRunner().invoke(main, ["drift", "run", *args],
                                  obj={"settings": load_settings()})

    return run


def test_a_bounded_run_ends_with_the_counts_on_stderr(invoke, monkeypatch) -> None:
    seen = {}

    def fake_run_drift(kafka, cfg, *, topic, metrics, on_output, **kw):
        seen["topic"] = topic
        m = metrics
        m.read.inc(10)
        m.unparsed.inc(1)
        m.late.inc(3)
        m.duplicates.inc(2)
        alert = Alert("k_churn", 0, 60_000, 4.0, 4.0, [("u1", 4.0)], 5, 1_000)
        m.observe(alert)
        on_output(alert)

    monkeypatch.setattr(streams.drift_flow, "run_drift", fake_run_drift)
    res = invoke("--bounded")
    assert res.exit_code == 0, res.output
    assert seen["topic"] == "my.drift"
    assert res.stdout.startswith("ALERT ")
    assert res.stderr.splitlines()[-1] == ("drift monitor done: 11 records read (1 not drift "
                                           "events, 2 duplicates, 3 dropped as late), "
                                           "1 alerts raised")


def test_help_names_the_settings_behind_the_topics_and_says_late_events_are_dropped(invoke) -> None:
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "[default: settings kafka.drift_topic]" in text
    assert "[default: settings kafka.alerts_topic]" in text
    assert "diam.drift]" not in text
    assert "Late events" in text and "dropped" in text and "interleaves its partitions" in text
