"""``diam run``'s cluster options and metrics port, refused before the start line: an address
listed twice (the process would wait forever for itself), a process id without addresses (it
was ignored), a metrics port that is taken (it printed the start line, then the error)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import SimpleNamespace

import pytest

import diam.app
import diam.commands.run
import streams.preflight
import streams.runner
from diam.commands import stop_on_signals


@pytest.fixture
def no_dataflow(monkeypatch):
    """``diam run`` with a stub base, a broker taken as answering and no dataflow."""
    ran: list[str] = []
    holder = SimpleNamespace(version="v-stub", learner=SimpleNamespace(warm_up=lambda: None),
                             close=lambda: None)
    monkeypatch.setattr(diam.app, "load_holder", lambda *a, **kw: holder)
    monkeypatch.setattr(diam.commands.run, "require_broker", lambda s: None)
    # the start's broker and Redis checks (integration-tested: test_clicks_input_refusals,
    # test_namespace_holders) taken as passed: nothing answers here
    for name in ("refuse_input", "refuse_replay_held"):
        monkeypatch.setattr(diam.commands.run, name, lambda *a: None)
    monkeypatch.setattr(diam.commands.run, "announce_run", lambda *a: lambda: None)
    monkeypatch.setattr(streams.preflight, "check_redis", lambda *a, **kw: None)
    monkeypatch.setattr(streams.runner, "run_online", lambda *a, **kw: ran.append("run"))
    return ran


def test_an_address_listed_twice_is_a_usage_error_naming_it(offline_cli, no_dataflow) -> None:
    res = offline_cli("run", "--bounded", "-a", "127.0.0.1:2101;h:1;127.0.0.1:2101", "-i", "0")
    assert res.exit_code == 2, res.output
    assert "--addresses" in res.output and "127.0.0.1:2101 listed more than once" in res.output
    assert "online dataflow:" not in res.output and no_dataflow == []


@pytest.mark.parametrize("pid", ["0", "1"])
def test_a_process_id_without_addresses_is_a_usage_error(offline_cli, no_dataflow, pid) -> None:
    res = offline_cli("run", "--bounded", "-i", pid)
    assert res.exit_code == 2, res.output
    assert "--process-id" in res.output and "--addresses" in res.output, res.output
    assert no_dataflow == []


def test_a_taken_metrics_port_is_an_error_before_the_start_line(offline_cli, no_dataflow) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        res = offline_cli("run", "--bounded", "--namespace", "unit", "--metrics-port", str(port))
    assert res.exit_code == 1, res.output
    assert f"Error: cannot serve metrics on port {port}" in res.output, res.output
    assert "online dataflow:" not in res.output and no_dataflow == []


def test_a_signal_while_waiting_says_the_run_stops_now() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set from the main thread only")
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    said: list[str] = []
    stop = threading.Event()
    try:
        stop_on_signals(stop, echo=lambda line, err=False: said.append(line),
                        waiting=lambda: "before h:2 answered")
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns here
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert stop.is_set()
    assert said == ["SIGTERM: stopping now, before h:2 answered: nothing was read, so nothing "
                    "is lost"]
