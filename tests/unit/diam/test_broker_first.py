"""``diam run`` and ``diam drift run`` ask the broker before their start line: one that does not
answer is one ``Error:`` naming it within ``BROKER_ANSWER_S`` seconds, not a start line and a
minute of silence (no services: Kafka and Redis are closed ports, the dataflows replaced).

A closed port never answers, so each command here waits out the whole wait: the tests run it
at ``SHORT_WAIT_S`` (the commands read ``streams.kafka_io.BROKER_ANSWER_S`` when they run);
``test_help_gives_the_wait`` checks the real value."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import diam.app
import streams.drift_flow
import streams.kafka_io
import streams.runner
from streams.kafka_io import BROKER_ANSWER_S

SHORT_WAIT_S = 1.0


@pytest.fixture(autouse=True)
def short_wait(monkeypatch) -> float:
    """The broker's wait at ``SHORT_WAIT_S``: what is said, and in which order, does not
    depend on its length (the real one is 5 s per command)."""
    monkeypatch.setattr(streams.kafka_io, "BROKER_ANSWER_S", SHORT_WAIT_S)
    return SHORT_WAIT_S


@pytest.fixture
def dataflows(monkeypatch):
    """The dataflows replaced by fakes that record they ran; ``diam run``'s base is a stub."""
    ran: list[str] = []
    holder = SimpleNamespace(version="v-stub", learner=SimpleNamespace(warm_up=lambda: None))
    monkeypatch.setattr(diam.app, "load_holder", lambda *a, **kw: holder)
    monkeypatch.setattr(streams.runner, "run_online", lambda *a, **kw: ran.append("run"))
    monkeypatch.setattr(streams.drift_flow, "run_drift", lambda *a, **kw: ran.append("drift"))
    return ran


@pytest.mark.parametrize("args, start", [
    (["run", "--bounded", "--topic", "t1", "--namespace", "unit"], "online dataflow:"),
    (["drift", "run", "--bounded", "--topic", "t1", "--alerts-topic", "t2"], "drift monitor:"),
])
def test_a_broker_that_does_not_answer_is_an_error_before_the_start_line(
        offline_cli, dataflows, short_wait, args, start) -> None:
    from diam.settings import load_settings

    bootstrap = load_settings().kafka.bootstrap
    t0 = time.monotonic()
    res = offline_cli(*args)
    took = time.monotonic() - t0
    assert res.exit_code == 1, res.output
    assert start not in res.output, res.output
    assert dataflows == []
    last = res.output.strip().splitlines()[-1]
    assert last == (f"Error: Kafka at {bootstrap} is not usable (no answer within "
                    f"{short_wait:g} s); check DIAM_KAFKA_BOOTSTRAP={bootstrap} (not the "
                    "local stack's address)"), res.output
    assert took < short_wait + 10, took


def test_a_base_that_cannot_be_used_is_said_before_the_broker(offline_cli, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = offline_cli("run", "--bounded", "--checkpoint", str(empty))
    assert res.exit_code == 1, res.output
    assert "cannot use the base" in res.output and "Kafka" not in res.output, res.output


def test_a_refused_client_property_is_a_configuration_error(offline_cli, dataflows,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("DIAM_KAFKA_EXTRA", '{"no.such.property": "1"}')
    res = offline_cli("drift", "run", "--bounded")
    assert res.exit_code == 1, res.output
    assert "the Kafka client refused its configuration" in res.output, res.output
    assert dataflows == []


@pytest.mark.parametrize("command", [["run"], ["drift", "run"]])
def test_help_gives_the_wait(offline_cli, command) -> None:
    res = offline_cli(*command, "--help")
    assert f"within {BROKER_ANSWER_S:g} s" in " ".join(res.output.split()), res.output
