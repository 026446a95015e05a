"""A ``diam serve`` process whose Redis Cluster stops answering between ``serve_cmd``'s own wait
and the making of its client (``diam.server.build_app``: a cluster client asks for the slot
map when made) waits for it, in one line, instead of ending with RedisClusterUnreachableError
(with ``--processes``, one child's end stopped the whole server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

SCRIPT = """
from diam.server import ServeOptions, build_app, serve_logging
from diam.settings import load_settings
serve_logging("warning")
build_app(load_settings(), ServeOptions(namespace="leftovers-b", ui=False, follow_items=False,
                                        live_popularity=False))
print("built", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_serve_process_waits_for_a_cluster_that_does_not_answer(stack) -> None:
    env = {**os.environ, "DIAM_CONFIG": "", "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0", "DIAM_REDIS_CLUSTER": "true"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "does not answer" in line and "waiting for it" in line, line + proc.stderr.read()
        time.sleep(3)
        assert proc.poll() is None, proc.stderr.read()  # still waiting, not ended
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.stderr.read().count("does not answer") == 0  # said once
