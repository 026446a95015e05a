"""Scale-out on Bytewax's own cluster: two ``diam run`` processes joined with ``-i/-a`` on loopback
give, byte for byte, the Redis state of one process over the same topic."""

from __future__ import annotations

import subprocess
import sys

from diam.stack_proc import free_port
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    produce,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)


def test_two_processes_as_one_bytewax_cluster_give_the_one_processredis_state(stack, topic, namespace,
                                                                         redis_client, tmp_path) -> None:
    events = click_stream(n_users=40, n_events=3000, seed=41)
    produce(stack.settings.kafka, topic, click_payloads(events))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic, {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.2"})
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt), "--bounded"]
    subprocess.run(cmd + ["--namespace", namespace], env=env, check=True, timeout=300, capture_output=True)
    one = redis_state(redis_client, namespace)
    assert len(one) == 40
    ns2 = f"{namespace}-cluster"
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    procs = [subprocess.Popen(cmd + ["--namespace", ns2, "-a", addresses, "-i", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert redis_state(redis_client, ns2) == one
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for k in redis_client.scan_iter(match=f"diam:{ns2}:*"):
            redis_client.delete(k)
