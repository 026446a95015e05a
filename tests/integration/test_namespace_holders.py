"""Who holds a namespace (``serving_cache.holders``), against the real broker and Redis: a live
``diam run`` announces itself (``serving_cache.keys.runs_key``) and a ``diam replay`` (with or
without ``--clear``) or a ``diam drop`` of its namespace is refused, naming it; a replay stopped
by SIGTERM or SIGINT releases its claim and exits 0; a claim whose process is gone on this host
is taken over; ``diam drop`` refuses a live replay's claim unless ``--force``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serving_cache.keys import claim_key, runs_key
from tests.flowkit import click_stream
from tests.integration.helpers import (
    DIM,
    click_payloads,
    produce,
    reading_lines,
    run_env,
    write_tiny_checkpoint,
)
from tests.integration.test_clicks_input_refusals import _errors
from tests.integration.test_topic_typos import _cli


def _env_settings(stack, topic: str):  # type: ignore[no-untyped-def]
    """The settings of a ``run_env`` child, for the commands run in process."""
    kafka = stack.settings.kafka.model_copy(update={
        "drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})
    return stack.settings.model_copy(update={"kafka": kafka, "online": stack.settings.online
                                             .model_copy(update={"dim": DIM, "k_max": 4})})


def _keys(redis_client, ns: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    return sorted(redis_client.scan_iter(match=f"diam:{ns}:*"))


def test_a_live_run_holds_its_namespace_against_replay_and_drop(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=5, n_events=60, seed=7)))
    s = _env_settings(stack, topic)
    proc = subprocess.Popen([sys.executable, "-m", "diam", "run", "--tail", "--topic", topic,
                             "--checkpoint", str(ckpt), "--namespace", namespace,
                             "--no-recovery"],
                            env=run_env(stack, topic), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def on_line(_name: str, line: str) -> None:
        lines.append(line)
        if line.startswith("online dataflow:"):
            started.set()

    with reading_lines(proc, on_line):
        assert started.wait(120), "no start line:\n" + "".join(lines)
        deadline = time.monotonic() + 60
        while not any(redis_client.scan_iter(match=f"diam:{namespace}:u:*")):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        members = redis_client.zrange(runs_key(namespace), 0, -1)
        assert len(members) == 1 and f"diam run pid {proc.pid} ".encode() in members[0], members
        time.sleep(1.0)  # the run's pushes settle
        before = _keys(redis_client, namespace)
        for args in (["replay", "--no-progress"], ["replay", "--no-progress", "--clear"]):
            res = _cli(s, *args, "--topic", topic, "--namespace", namespace, "--checkpoint",
                       str(ckpt))
            assert res.exit_code == 1, (args, res.output)
            assert len(_errors(res)) == 1 and f"diam run pid {proc.pid} " in _errors(res)[0], \
                res.output
            assert redis_client.get(claim_key(namespace)) is None  # its claim given back
        res = _cli(s, "drop", namespace, "--yes", "--keep-topics")
        assert res.exit_code == 1 and f"diam run pid {proc.pid} " in res.output, res.output
        assert _keys(redis_client, namespace) == before  # nothing cleared, nothing dropped
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, "".join(lines)
    assert redis_client.exists(runs_key(namespace)) == 0  # left when it closed
    res = _cli(s, "drop", namespace, "--yes", "--keep-topics")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["claimed", "writing"])
def test_a_signal_stops_a_replay_which_releases_its_claim(
        stack, topic, namespace, redis_client, tmp_path, sig, when) -> None:
    """Sent once the claim is set (the base still loading: nothing is written) or once the
    dataflow writes users (it stops at its next batch, short of the range's end)."""
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    n = 60 if when == "claimed" else 400_000
    payloads = list(click_payloads(click_stream(n_users=50, n_events=n, seed=8)))
    for i in range(0, n, 50_000):  # within the producer's queue
        produce(stack.settings.kafka, topic, payloads[i:i + 50_000])
    proc = subprocess.Popen([sys.executable, "-m", "diam", "replay", "--topic", topic,
                             "--checkpoint", str(ckpt), "--namespace", namespace,
                             "--no-progress"],
                            env=run_env(stack, topic), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        pattern = f"diam:{namespace}:u:*"
        while (redis_client.get(claim_key(namespace)) is None if when == "claimed"
               else not any(redis_client.scan_iter(match=pattern))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # before: SIGTERM rc -15 with the claim left; SIGINT 'Aborted!' rc 1 while loading, and
    # SIGABRT (Fatal Python error: PyGILState_Release) in the dataflow
    assert proc.returncode == 0, (out, err)
    assert f"{signal.Signals(sig).name}: stopping at the next batch" in err, err
    if when == "claimed":
        assert "replay stopped by a signal before it cleared or wrote anything" in err, err
        assert _keys(redis_client, namespace) == []
    else:
        assert "replay stopped by a signal before the end of its range" in err, err
        assert f"replayed {n:,} events" not in out, out
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert redis_client.get(claim_key(namespace)) is None


def test_a_stale_claim_is_taken_over_and_drop_refuses_a_live_one(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=5, n_events=60, seed=9)))
    s = _env_settings(stack, topic)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = (f"diam replay pid {gone.pid} on {socket.gethostname()} since "
             "2026-01-01T00:00:00Z (test)")
    redis_client.set(claim_key(namespace), stale)
    res = _cli(s, "replay", "--topic", topic, "--namespace", namespace, "--checkpoint",
               str(ckpt), "--no-progress")
    assert res.exit_code == 0, res.output  # before: refused, naming the dead process
    assert f"claimed by {stale}, which is gone: its claim taken over" in res.output, res.output
    assert redis_client.get(claim_key(namespace)) is None
    held = _keys(redis_client, namespace)
    # a live replay's claim (on another host): drop refuses, naming it; --force drops
    live = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(namespace), live)
    res = _cli(s, "drop", namespace, "--yes", "--keep-topics")
    assert res.exit_code == 1 and live in res.output and "--force" in res.output, res.output
    res = _cli(s, "drop", namespace, "--keep-topics")  # refused before it asks
    assert res.exit_code == 1 and live in res.output, res.output
    assert "delete every key" not in res.output, res.output
    assert _keys(redis_client, namespace) == sorted([*held, claim_key(namespace).encode()])
    # --force answered "no" (or Ctrl-C at the question) changes nothing: the replay's claim
    # stays (before: taken over before the question and released after it, so the namespace
    # was left unclaimed under a live replay)
    from click.testing import CliRunner

    from diam.cli import main
    res = CliRunner().invoke(main, ["drop", namespace, "--keep-topics", "--force"], input="n\n",
                             obj={"settings": s})
    assert res.exit_code == 1 and "delete every key" in res.output, res.output
    assert redis_client.get(claim_key(namespace)) == live.encode()
    assert _keys(redis_client, namespace) == sorted([*held, claim_key(namespace).encode()])
    res = _cli(s, "drop", namespace, "--yes", "--keep-topics", "--force")
    assert res.exit_code == 0, res.output
    assert _keys(redis_client, namespace) == []


def test_each_process_of_a_run_is_a_holder_and_a_killed_one_ages_out(
        namespace, redis_client) -> None:
    """Several processes of one cluster run each hold the namespace (one member each); one that
    closes leaves, one that stops refreshing (killed) ages out after its expiry."""
    from serving_cache.holders import RunAnnouncement, live_runs

    a = RunAnnouncement(redis_client, namespace, ttl_s=1.0, refresh_s=0.2)
    b = RunAnnouncement(redis_client, namespace, ttl_s=1.0, refresh_s=0.2)
    a.start()
    b.start()
    try:
        time.sleep(1.5)  # past one expiry: the refreshes kept both
        assert sorted(live_runs(redis_client, namespace)) == sorted([a.member, b.member])
        b._done.set()  # b stops refreshing without leaving, as a killed process
        time.sleep(1.5)
        assert live_runs(redis_client, namespace) == [a.member]
    finally:
        a.close()
        b.close()
    assert live_runs(redis_client, namespace) == []
    assert redis_client.exists(runs_key(namespace)) == 0
