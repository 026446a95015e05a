"""A ``diam run`` process of a Bytewax cluster whose other process never comes: it says it waits
(and for which address) and SIGTERM ends it at once, exit 0, nothing read. Bytewax waits for
its peers in native code, where it ran no signal handler: only SIGKILL ended it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from diam.commands.run import parse_summary
from diam.stack_proc import free_port
from streams.runner import PEERS_NOTE_S
from tests.integration.helpers import reading_lines, run_env, write_tiny_checkpoint


def test_sigterm_stops_a_process_waiting_for_its_cluster(stack, topic, namespace, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic)
    me, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "diam", "run", "--tail", "--topic", topic,
                             "--checkpoint", str(ckpt), "--namespace", namespace,
                             "-a", f"{me};{other}", "-i", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: dict[str, list[str]] = {"out": [], "err": []}
    started, waiting = threading.Event(), threading.Event()

    def on_line(name: str, line: str) -> None:
        lines[name].append(line)
        if line.startswith("online dataflow:"):
            started.set()
        if f"waiting for the cluster's other process(es): {other}" in line:
            waiting.set()

    with reading_lines(proc, on_line):
        # start-up imports torch and loads the base: slow on a loaded box, so not timed
        assert started.wait(120), "no start line; stderr:\n" + "".join(lines["err"])
        assert waiting.wait(PEERS_NOTE_S + 10), "no waiting line:\n" + "".join(lines["err"])
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=10)
        took = time.monotonic() - t0
    text, out = "".join(lines["err"]), "".join(lines["out"])
    assert proc.returncode == 0, text
    assert took < 5, took
    assert f"SIGTERM: stopping now, before the cluster's other process(es) {other} answered: " \
           "nothing was read, so nothing is lost" in text, text
    assert out.startswith("online dataflow:"), out
    assert parse_summary(out)["records"] == 0 and out.splitlines()[-1].startswith("stopped:"), out
