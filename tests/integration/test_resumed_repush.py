"""A restarted ``diam run`` pushes every user it resumed from its recovery store again (a
crash may have lost a write still queued); Redis keeps those re-pushes out as not newer
after a clean stop. They are counted apart (``resumed_repushes``: the summary line and
``diam_flow_redis_resumed_repushes_total``), not as stale pushes: every deploy used to add
the users held to ``diam_flow_redis_stale_pushes_total`` and print a note that the namespace
might hold another run's state. A run that really writes behind Redis's values still counts
stale pushes and is warned."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from diam.commands.run import parse_summary
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce, write_tiny_checkpoint
from tests.integration.test_metrics import _env, _one, _Run

N_USERS = 4


def _scrape_until(run: _Run, name: str, ok, timeout_s: float = 120.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, "diam run ended:\n" + "".join(run.stderr)[-3000:]
        last = run.scrape()
        vals = [v for k, v in last.items() if k[0] == name]
        if vals and ok(vals[0], last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{name} never got there: {sorted((k[0], v) for k, v in last.items() if k[0].startswith('diam_flow_redis') or k[0] == 'diam_flow_pushes_total')}")


def _stop(run: _Run) -> tuple[dict[str, float], str]:
    run.proc.send_signal(signal.SIGTERM)
    out = run.output(timeout=120)
    assert run.proc.returncode == 0, out + "".join(run.stderr)
    return parse_summary(out), "".join(run.stderr)


@pytest.mark.timeout(900)
@pytest.mark.partitions(2)
def test_a_resumed_users_re_push_is_not_counted_as_a_stale_push(stack, topic, namespace,
                                                                 tmp_path: Path) -> None:
    events = click_stream(n_users=N_USERS, n_events=40, seed=8)
    produce(stack.settings.kafka, topic, click_payloads(events))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = _env(stack, topic)
    args = [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", namespace,
            "--checkpoint", str(ckpt), "--metrics-port", "0"]
    tail = [*args, "--tail", "--recovery-dir", str(tmp_path / "recovery")]

    first = _Run(tail, env)
    try:
        # every record read and every push acknowledged, twice in a row a second apart
        def settled(acked: float, s: dict) -> bool:
            return (_one(s, "diam_flow_records_total") == len(events)
                    and acked == _one(s, "diam_flow_pushes_total") > 0)
        _scrape_until(first, "diam_flow_redis_acked_total", settled)
        time.sleep(1.0)
        _scrape_until(first, "diam_flow_redis_acked_total", settled)
        got, _ = _stop(first)
    finally:
        first.close()
    assert (got["users"], got["stale_pushes"], got["resumed_repushes"]) == (N_USERS, 0, 0), got

    # a restart with no new input: each resumed user's re-push is already in Redis
    again = _Run(tail, env)
    try:
        final = _scrape_until(again, "diam_flow_redis_resumed_repushes_total",
                              lambda v, _: v == N_USERS)
        assert _one(final, "diam_flow_redis_stale_pushes_total") == 0
        time.sleep(1.0)  # the write's observation follows its counts: give it time to land
        final = again.scrape()
        # nothing was written: no value acknowledged, no freshness sample of an old event time
        assert _one(final, "diam_flow_redis_acked_total") == 0, final
        assert _one(final, "diam_flow_freshness_seconds_count") == 0, final
        got, err = _stop(again)
    finally:
        again.close()
    assert got["records"] == 0 and got["resumed"] == N_USERS, got
    assert (got["pushes"], got["stale_pushes"], got["resumed_repushes"]) == (N_USERS, 0, N_USERS)
    # no note that the namespace may hold another run's state: nothing here says so
    assert "another run's state" not in err and "already in Redis" not in err, err

    # a run that re-reads the topic into the namespace without the store writes behind
    # Redis's values: those are stale pushes, and it is warned
    bounded = _Run([*args, "--bounded", "--no-recovery"], env)
    try:
        out = bounded.output(timeout=300)
    finally:
        bounded.close()
    got, err = parse_summary(out), "".join(bounded.stderr)
    assert got["resumed_repushes"] == 0 and got["stale_pushes"] == got["pushes"] > 0, got
    assert "warning:" in err and "another run's state" in err, err
