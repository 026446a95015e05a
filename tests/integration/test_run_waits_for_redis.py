"""A tailing ``diam run`` started while Redis does not answer (a single server down, or a whole
Redis Cluster none of whose nodes answers) waits for it, said in one line, as ``diam serve``
does and as its dataflow's writes do; it used to exit with one ``Error:`` line at its live-run
announcement (``diam.commands.run.announce_run``). A bounded run still refuses at once
(``streams.preflight.check_redis``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("cluster", ["false", "true"])
def test_a_tailing_run_waits_for_a_redis_that_does_not_answer(stack, cluster: str) -> None:
    env = {**os.environ, "DIAM_CONFIG": "", "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0", "DIAM_REDIS_CLUSTER": cluster}
    proc = subprocess.Popen([sys.executable, "-m", "diam", "run", "--namespace",
                             "leftovers-wait", "--no-recovery"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first thing it says
        assert "does not answer" in line and "waiting for it" in line, line
        time.sleep(3)
        assert proc.poll() is None, proc.stderr.read()  # still waiting, not exited
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rest = proc.stderr.read()
    assert "does not answer" not in rest and "Error:" not in rest, rest  # said once
