"""Redis Cluster: a real 3-master cluster from redis-server on loopback; the dataflow writes
through redis-py's RedisCluster (write-if-newer calls grouped by hash slot) and gives, byte for
byte, the values a single Redis gets from the same topic; the API reads them through the same
client."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis as redis_py

from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client
from streams.config import FlowConfig
from streams.events import encode_event
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.test_online_flow import _produce

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisConfig]:
    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert exe and cli, "redis-server and redis-cli are needed (apt-get install redis-server)"
    d = tmp_path_factory.mktemp("cluster")
    ports = _cluster_ports(3)
    procs = [subprocess.Popen([exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                               "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly",
                               "no", "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    try:
        for p in ports:
            deadline = time.monotonic() + 20
            while not _pings(p):
                assert time.monotonic() < deadline, f"cluster node {p} did not start"
                time.sleep(0.1)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"],
                                                       capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        yield RedisConfig(url=f"redis://127.0.0.1:{ports[0]}/0", cluster=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    import random

    from diam.stack_proc import port_open

    rng, out = random.Random(), []
    while len(out) < n:
        p = rng.randrange(20_000, 50_000)
        if p not in out and not port_open(p) and not port_open(p + 10_000):
            out.append(p)
    return out


def _pings(port: int) -> bool:
    try:
        return bool(redis_py.Redis(port=port, retry=None).ping())
    except redis_py.ConnectionError:
        return False


def _state(client, ns: str) -> dict[str, bytes]:
    return {k.decode().rsplit(":", 1)[1]: client.get(k) for k in client.scan_iter(match=f"diam:{ns}:u:*")}


def _job(stack, topic: str, ns: str, redis: RedisConfig) -> OnlineJob:
    kafka = stack.settings.kafka.model_copy(update={"drift_topic": f"{topic}.drift",
                                                    "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=redis, flow=FLOW, topic=topic, namespace=ns, bounded=True)


def _holder() -> LearnerHolder:
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)


def test_the_dataflow_on_a_cluster_gives_the_single_redis_values(stack, topic, namespace, redis_client,
                                                                 cluster) -> None:
    events = click_stream(n_users=60, n_events=1500, seed=21)
    _produce(stack.settings.kafka, topic, [(ev.user_id.encode(), encode_event(ev)) for ev in events])
    run_online(_job(stack, topic, namespace, stack.settings.redis), _holder())
    single = _state(redis_client, namespace)
    assert len(single) == 60
    rc = redis_client_of(cluster)
    run_online(_job(stack, topic, namespace, cluster), _holder())
    got = _state(rc, namespace)
    assert got == single
    # the keys really are spread: every master holds some of them
    per_node = [len(list(rc.get_redis_connection(n).scan_iter(match=f"diam:{namespace}:u:*")))
                for n in rc.get_primaries()]
    assert len(per_node) == 3 and min(per_node) > 0, per_node
    # write-if-newer holds across slots: an older seq for every user changes nothing
    stale = [(u, _uv(0)) for u in got]
    assert RedisWriter(rc, namespace, keys_per_call=7).write_batch(stale) == 0
    assert _state(rc, namespace) == single


def _uv(seq: int) -> UserVectors:
    return UserVectors(seq=seq, model="m", k=1, d=0.5, dim=2, vecs=np.full((1, 2), seq, np.float32), ts=seq)


def test_many_keys_of_one_slot_share_a_call_and_write_if_newer_holds(cluster) -> None:
    # 20k users over 16384 slots: thousands of slots hold several keys of one batch, which go
    # to the slot's node in calls of up to keys_per_call keys
    from redis.crc import key_slot

    rc = redis_client_of(cluster)
    users = [f"m{i}" for i in range(20_000)]
    slots = [key_slot(f"diam:many:u:{u}".encode()) for u in users]
    assert len(set(slots)) < len(users) - 3000
    w = RedisWriter(rc, "many", pipeline_batch=5000, keys_per_call=3)
    assert w.write_batch([(u, _uv(5)) for u in users]) == 20_000
    assert w.write_batch([(u, _uv(4 if i % 2 else 6)) for i, u in enumerate(users)]) == 10_000
    got = {k.decode(): rc.get(k) for k in rc.scan_iter(match="diam:many:u:*", count=5000)}
    assert len(got) == 20_000
    from serving_cache import decode_user

    assert all(decode_user(got[f"diam:many:u:{u}"]).seq == (5 if i % 2 else 6) for i, u in enumerate(users))
    for node in rc.get_primaries():  # as after a restart: the nodes forgot the script
        rc.get_redis_connection(node).script_flush()
    assert w.write_batch([(users[0], _uv(9))]) == 1  # a node without the script: reloaded


def test_the_api_reads_through_the_cluster_client(cluster, tmp_path) -> None:
    from tests.integration.test_security import _api_recommends

    _api_recommends(tmp_path, redis_client_of(cluster), "cluster-api")


def redis_client_of(cfg: RedisConfig):  # type: ignore[no-untyped-def]
    c = redis_client(cfg)
    assert type(c).__name__ == "RedisCluster"
    return c
