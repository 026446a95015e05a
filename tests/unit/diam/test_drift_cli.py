"""``diam drift run``: its closing line and its help (no services: the dataflow is replaced)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import streams.drift_flow
from diam.cli import main
from diam.settings import load_settings
from streams.drift import Alert, TopUser


@pytest.fixture
def invoke(isolated_env):
    isolated_env.setenv("DIAM_KAFKA_DRIFT_TOPIC", "my.drift")
    # the broker asked before the start line (tests/unit/diam/test_broker_first.py) answers
    isolated_env.setattr("streams.kafka_io.broker_answers", lambda *a, **kw: None)

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
        m.other.inc(4)
        seen["namespace"] = kw["namespace"]
        alert = Alert("k_churn", 0, 60_000, 4.0, 4.0, [TopUser("u1", 4.0, "shadow")], 5, 1_000)
        m.observe(alert)
        on_output(alert)

    monkeypatch.setattr(streams.drift_flow, "run_drift", fake_run_drift)
    res = invoke("--bounded", "--namespace", "shadow")
    assert res.exit_code == 0, res.output
    assert (seen["topic"], seen["namespace"]) == ("my.drift", "shadow")
    assert res.stdout.startswith("ALERT ")
    assert "my.drift (namespace shadow) -> " in res.stderr
    assert res.stderr.splitlines()[-1] == ("drift monitor done: 15 records read (1 not drift "
                                           "events, 4 of other namespaces, 2 duplicates, "
                                           "3 dropped as late, 0 after their window closed: "
                                           "in their users' windows, not in the window "
                                           "totals), 1 alerts raised")


def test_help_names_the_settings_behind_the_topics_and_says_late_events_are_dropped(invoke) -> None:
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "[default: settings kafka.drift_topic]" in text
    assert "[default: settings kafka.alerts_topic]" in text
    assert "diam.drift]" not in text
    assert "Late events are judged per user" in text and "dropped" in text
    assert "batch user by user" in text and "interleaves its partitions" in text


@pytest.fixture
def held(monkeypatch):
    """Record the metrics port the run serves and, instead of sleeping, what a scraper reads
    then: ``held["scrapes"]`` one ``(seconds, body)`` per hold."""
    import urllib.request

    import diam.commands
    import diam.commands.drift as drift_cmd

    held: dict = {"scrapes": []}
    serve = drift_cmd.serve_registry

    def serve_and_note(registry, port):
        held["port"] = serve(registry, port)
        return held["port"]

    def scrape_instead_of_sleeping(seconds):
        with urllib.request.urlopen(f"http://127.0.0.1:{held['port']}/metrics", timeout=10) as r:
            held["scrapes"].append((seconds, r.read().decode()))

    monkeypatch.setattr(drift_cmd, "serve_registry", serve_and_note)
    monkeypatch.setattr(diam.commands.time, "sleep", scrape_instead_of_sleeping)  # hold_metrics
    return held


def _one_alert_then(end):
    def fake_run_drift(kafka, cfg, *, metrics, on_output, **kw):
        alert = Alert("k_churn", 0, 60_000, 4.0, 4.0, [TopUser("u1", 4.0)], 5, 1_000)
        metrics.read.inc(4)
        metrics.observe(alert)
        on_output(alert)
        end()

    return fake_run_drift


@pytest.mark.parametrize("how", ["bounded end", "ctrl-c"])
def test_metrics_hold_serves_the_final_counts_after_the_run_ends(invoke, monkeypatch, held,
                                                                how) -> None:
    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(streams.drift_flow, "run_drift",
                        _one_alert_then(ctrl_c if how == "ctrl-c" else lambda: None))
    res = invoke("--bounded", "--metrics-port", "0", "--metrics-hold", "2.5")
    assert res.exit_code == 0, res.output
    end = "stopped" if how == "ctrl-c" else "done"
    assert res.stderr.splitlines()[-1].startswith(f"drift monitor {end}: 4 records read")
    [(seconds, body)] = held["scrapes"]
    assert seconds == 2.5
    assert 'diam_drift_alerts_total{kind="k_churn"} 1.0' in body
    assert "diam_drift_records_total 4.0" in body


def test_no_hold_without_a_metrics_port_or_with_a_zero_hold(invoke, monkeypatch, held) -> None:
    monkeypatch.setattr(streams.drift_flow, "run_drift", _one_alert_then(lambda: None))
    assert invoke("--bounded", "--metrics-hold", "5").exit_code == 0
    assert invoke("--bounded", "--metrics-port", "0").exit_code == 0
    assert held["scrapes"] == []


def test_a_negative_metrics_hold_is_a_usage_error(invoke) -> None:
    res = invoke("--bounded", "--metrics-hold", "-1")
    assert res.exit_code == 2 and "--metrics-hold" in res.output


def test_help_explains_the_metrics_hold_the_k_u_values_and_seq(invoke) -> None:
    text = " ".join(invoke("--help").output.split())
    assert "--metrics-hold" in text and "final counts" in text
    assert "k_from and k_to" in text
    assert "whatever order the partitions are read in" in text and "same seq" in text
    assert "(source, seq, kind)" in text


@pytest.mark.parametrize("option", ["--window-s", "--lateness-s", "--d-swing", "--idle-close-s",
                                    "--metrics-hold"])
@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_a_duration_or_swing_that_is_not_a_usable_number_is_a_usage_error(invoke, monkeypatch,
                                                                         option, value) -> None:
    ran = []
    monkeypatch.setattr(streams.drift_flow, "run_drift", lambda *a, **kw: ran.append(1))
    res = invoke("--bounded", "--metrics-port", "0", option, value)
    if option == "--d-swing" and value == "1e300":  # a swing no user reaches: never alerts
        assert res.exit_code == 0 and ran == [1], res.output
        return
    assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output
    assert ran == []


def _bytewax_failure(step_fn) -> BaseException:
    """What bytewax's run_main raises when ``step_fn`` raises in a map step (a real dataflow)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    flow = Dataflow("f")
    op.output("out", op.map("step", op.input("in", flow, TestingSource([1])), step_fn),
              TestingSink([]))
    try:
        run_main(flow)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the dataflow did not fail")


def test_a_python_error_in_a_step_is_named_as_such_and_a_kafka_error_names_the_broker() -> None:
    """A step's own fault (int(inf) here) says its type, message and line, not "Kafka at";
    the Kafka source's RuntimeError, wrapped the same way, still names the broker."""
    from diam.commands.drift import dataflow_error

    def overflow(_x: int) -> int:
        return int(float("inf"))

    def consume(_x: int) -> int:
        raise RuntimeError("consuming t[0]: Broker: Unknown topic or partition")

    msg = dataflow_error(_bytewax_failure(overflow), "127.0.0.1:9").message
    assert msg.startswith("the drift monitor failed: OverflowError: cannot convert float "
                          "infinity to integer at test_drift_cli.py:"), msg
    assert 'in step "f.step' in msg and "Kafka" not in msg
    msg = dataflow_error(_bytewax_failure(consume), "127.0.0.1:9").message
    assert msg == "Kafka at 127.0.0.1:9: consuming t[0]: Broker: Unknown topic or partition"


def test_help_and_docs_say_what_a_recovery_store_resumes(invoke) -> None:
    """seq is no resumed state (it is the record's place in the topic): --help and the
    dataflow's docstring listed it among what the store keeps."""
    import streams.drift_flow

    text = " ".join(invoke("--help").output.split())
    assert "seq included" not in text and "repeats seen" not in text
    assert "the detector and what it saw of each user to tell repeats included" in text
    doc = " ".join((streams.drift_flow.__doc__ or "").split())
    assert "the detector, ``seq``" not in doc
    assert "which is no resumed state but the place of the record" in doc
