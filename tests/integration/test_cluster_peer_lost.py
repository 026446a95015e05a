"""A ``diam run`` process of a Bytewax cluster whose peer is killed (``kill -9``) while it runs:
it ends with its summary and one ``Error:`` line (which peer, what was kept, what to do) and
exit code 1, not Bytewax's ``PanicException`` traceback. Restarted together with the same
command (the same ``--recovery-dir``) after the topic grew, the two processes resume from the
store, reading only what came after it, and leave the Redis state of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from diam.commands.run import parse_summary
from diam.stack_proc import free_port
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    produce,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)

N_EVENTS = 6000


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """``cmd`` with its stdout and stderr in ``log``.out and ``log``.err (files, not pipes:
    nothing blocks on output the test reads only at the end)."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")  # noqa: SIM115 (the child's)
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
    finally:
        out.close()
        err.close()


def _settled(redis_client, ns: str, quiet_s: float, timeout_s: float) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """The state of ``ns`` once it holds users and has not changed for ``quiet_s``."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while True:
        now = redis_state(redis_client, ns)
        if now != last:
            last, since = now, time.monotonic()
        elif now and time.monotonic() - since >= quiet_s:
            return now
        assert time.monotonic() < deadline, f"{ns} did not settle"
        time.sleep(0.1)


def test_a_killed_peer_is_one_error_line_and_a_restart_resumes(stack, topic, namespace, redis_client,
                                                               tmp_path) -> None:
    events = click_payloads(click_stream(n_users=40, n_events=N_EVENTS, seed=43))
    half = len(events) // 2
    produce(stack.settings.kafka, topic, events[:half])
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic, {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.2"})
    base = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt)]
    ns2, store = f"{namespace}-cluster", tmp_path / "recovery"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    cmd = base + ["--tail", "--namespace", ns2, "-a", ";".join(addresses),
                  "--recovery-dir", str(store)]
    procs: list[subprocess.Popen[str]] = []
    try:
        # the first half read, and epochs (0.2 s) committed after it: then process 1 is killed
        procs = [_start(cmd + ["-i", str(i)], env, tmp_path / f"first{i}") for i in range(2)]
        _settled(redis_client, ns2, quiet_s=1.5, timeout_s=180)
        assert all(p.poll() is None for p in procs), (tmp_path / "first0.err").read_text()
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(30)
        procs[0].wait(60)  # Bytewax's exchange notices the closed connection at once
        out, err = (tmp_path / "first0.out").read_text(), (tmp_path / "first0.err").read_text()
        assert procs[0].returncode == 1, err
        assert "Traceback" not in err and "PanicException" not in err and "panicked" not in err, err
        errors = [x for x in err.splitlines() if x.startswith("Error:")]
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
        assert f"process 0 of 2 ({addresses[0]}) of the Bytewax cluster lost its peer " \
               f"{addresses[1]}" in errors[0], errors[0]
        assert f"recovery store {store.resolve()} keeps" in errors[0], errors[0]
        assert "restart every process of the cluster with the same command" in errors[0], errors[0]
        assert out.splitlines()[-1].startswith("stopped:"), out

        # the rest arrives while the cluster is down; the uninterrupted run reads all of it
        produce(stack.settings.kafka, topic, events[half:])
        subprocess.run(base + ["--bounded", "--namespace", namespace], env=env, check=True,
                       timeout=300, capture_output=True)
        want = redis_state(redis_client, namespace)
        assert len(want) == 40

        # the same command again, both processes: they resume from the store
        procs = [_start(cmd + ["-i", str(i)], env, tmp_path / f"again{i}") for i in range(2)]
        deadline = time.monotonic() + 180
        while not all((tmp_path / f"again{i}.out").read_text() for i in range(2)):  # started
            assert time.monotonic() < deadline, (tmp_path / "again0.err").read_text()
            assert all(p.poll() is None for p in procs), (tmp_path / "again0.err").read_text()
            time.sleep(0.1)
        while redis_state(redis_client, ns2) != want:
            assert time.monotonic() < deadline, "not the uninterrupted run's state; stderr:\n" + \
                (tmp_path / "again0.err").read_text() + (tmp_path / "again1.err").read_text()
            assert all(p.poll() is None for p in procs), (tmp_path / "again0.err").read_text()
            time.sleep(0.2)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        again = [(tmp_path / f"again{i}.out").read_text() for i in range(2)]
        assert [p.returncode for p in procs] == [0, 0], [
            (tmp_path / f"again{i}.err").read_text() for i in range(2)]
        # resumed, not re-read from the start: the store kept the first half's positions
        counts = [parse_summary(x) for x in again]
        assert sum(c["records"] for c in counts) < N_EVENTS - half // 2, again
        assert sum(c["resumed"] for c in counts) > 0, again
        assert redis_state(redis_client, ns2) == want
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for k in redis_client.scan_iter(match=f"diam:{ns2}:*"):
            redis_client.delete(k)
