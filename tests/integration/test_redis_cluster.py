"""Redis Cluster: a real 3-master cluster from redis-server on loopback (``diam stack up
--redis-cluster``'s launcher, ``diam.stack_cluster``); the dataflow writes
through redis-py's RedisCluster (write-if-newer calls grouped by hash slot) and gives, byte for
byte, the values a single Redis gets from the same topic; the API reads them through the same
client. End to end, as an operator runs them: ``diam snapshot``'s publish, ``diam run`` and
``diam serve --processes 2`` pointed at the cluster by ``DIAM_REDIS_URL`` and
``DIAM_REDIS_CLUSTER=true`` alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import redis as redis_py

from diam.settings import StackConfig
from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client
from streams.config import FlowConfig
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.helpers import (
    child_pids,
    click_payloads,
    http_get,
    produce,
    redis_state,
    serving,
    write_tiny_checkpoint,
)

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory) -> Iterator[tuple[StackConfig, RedisConfig]]:
    """The cluster ``diam stack up --redis-cluster`` starts, from a home of its own: that
    home's stack settings and the clients' settings for the cluster."""
    from diam.stack_cluster import cluster_down, cluster_up
    from diam.stack_kafka import StackError

    for attempt in range(3):
        cfg = StackConfig(home=str(tmp_path_factory.mktemp("home")), redis_port=_cluster_base())
        try:
            url = cluster_up(cfg, echo=lambda _m: None)
            break
        except StackError:  # a port taken between the check and the bind: another base
            cluster_down(cfg, echo=lambda _m: None)
            if attempt == 2:
                raise
    try:
        yield cfg, RedisConfig(url=url, cluster=True)
    finally:
        cluster_down(cfg, echo=lambda _m: None)


@pytest.fixture(scope="module")
def cluster(cluster_stack) -> RedisConfig:  # type: ignore[no-untyped-def]
    return cluster_stack[1]


def _cluster_base() -> int:
    """A port whose next three ports and their bus ports (+10000) are free, all below Linux's
    ephemeral range (32768 up), where a client's outgoing connection took a bus port once
    between this check and the node's bind."""
    import random

    from diam.stack_proc import port_open

    rng = random.Random()
    while True:
        base = rng.randrange(10_000, 22_000)
        if not any(port_open(p) or port_open(p + 10_000) for p in range(base + 1, base + 4)):
            return base


def _pings(port: int) -> bool:
    try:
        return bool(redis_py.Redis(port=port, retry=None).ping())
    except redis_py.ConnectionError:
        return False



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
    produce(stack.settings.kafka, topic, click_payloads(events))
    run_online(_job(stack, topic, namespace, stack.settings.redis), _holder())
    single = redis_state(redis_client, namespace)
    assert len(single) == 60
    rc = redis_client_of(cluster)
    run_online(_job(stack, topic, namespace, cluster), _holder())
    got = redis_state(rc, namespace)
    assert got == single
    # the keys really are spread: every master holds some of them
    per_node = [len(list(rc.get_redis_connection(n).scan_iter(match=f"diam:{namespace}:u:*")))
                for n in rc.get_primaries()]
    assert len(per_node) == 3 and min(per_node) > 0, per_node
    # write-if-newer holds across slots: an older seq for every user changes nothing
    stale = [(u, _uv(0)) for u in got]
    assert RedisWriter(rc, namespace, keys_per_call=7).write_batch(stale) == 0
    assert redis_state(rc, namespace) == single


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


def test_diam_run_and_diam_serve_on_the_cluster_from_their_settings(stack, topic, cluster,
                                                                   tmp_path) -> None:
    from diam.stack_proc import free_port
    from snapshotter import SnapshotConfig, SnapshotStore, publish
    from tests.flowkit import DIM

    ns = "e2e"
    rc = redis_client_of(cluster)
    events = click_stream(n_users=30, n_events=900, seed=8)
    produce(stack.settings.kafka, topic, click_payloads(events))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    version = publish(ckpt, store, rc, ns).version
    env = {**os.environ, "DIAM_CONFIG": "",
           "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": cluster.url,
           "DIAM_REDIS_CLUSTER": "true", "DIAM_REDIS_NAMESPACE": ns,
           "DIAM_SNAPSHOT_DIR": str(store.root), "DIAM_ONLINE_DIM": str(DIM),
           "DIAM_ONLINE_K_MAX": "4", "DIAM_FLOW_EPOCH_INTERVAL_S": "0.2",
           "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift",
           "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
    # the learner's base is the active snapshot the publish announced on the cluster
    run = subprocess.run([sys.executable, "-m", "diam", "run", "--topic", topic, "--bounded"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    users = {e.user_id for e in events}
    got = redis_state(rc, ns)
    assert set(got) == users
    per_node = [len(list(rc.get_redis_connection(n).scan_iter(match=f"diam:{ns}:u:*")))
                for n in rc.get_primaries()]
    assert len(per_node) == 3 and min(per_node) > 0, per_node

    port = free_port()
    with serving(env, port, "--processes", "2", "--no-ui") as server:
        children = child_pids(server.pid)
        pids = set()
        for user in sorted(users):
            status, body = http_get(port, f"/users/{user}/recommendations?n=5")
            assert status == 200 and not body["cold"] and len(body["items"]) == 5, body
            status, health = http_get(port, "/health")
            assert status == 200 and health["snapshot"] == version, health
            pids.add(health["pid"])
        assert pids <= children and len(children) == 2
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        assert server.returncode == 0, out


def test_diff_inspect_and_the_ui_namespace_panel_read_namespaces_spread_over_the_nodes(
        cluster) -> None:
    # the users' keys lie in many hash slots, on every node: one MGET over them is refused
    # ("all keys must map to the same key slot"); `diam diff` is the check after a fault
    from serving_cache.ui import namespace_view

    rc = redis_client_of(cluster)
    users = [f"s{i}" for i in range(300)]
    assert RedisWriter(rc, "cl-a").write_batch([(u, _uv(5)) for u in users]) == 300
    assert RedisWriter(rc, "cl-b").write_batch(
        [(u, _uv(6 if i % 3 == 0 else 5)) for i, u in enumerate(users[:250])]) == 250
    env = {**os.environ, "DIAM_CONFIG": "", "DIAM_REDIS_URL": cluster.url,
           "DIAM_REDIS_CLUSTER": "true"}

    def diam(*args: str) -> dict:  # type: ignore[type-arg]
        run = subprocess.run([sys.executable, "-m", "diam", *args, "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        return json.loads(run.stdout)

    diff = diam("diff", "cl-a", "cl-b")
    assert (diff["users_a"], diff["users_b"], diff["both"], diff["only_a"], diff["only_b"],
            diff["identical"], diff["undecodable"]) == (300, 250, 250, 50, 0, 166, 0), diff
    summary = diam("inspect", "namespace", "--namespace", "cl-b")
    assert (summary["users"], summary["undecodable"], summary["k_hist"]) == (250, 0, {"1": 250})
    view = namespace_view(rc, "cl-a")  # GET /ui/api/namespace's answer
    assert (view["users"], view["k_hist"]) == (300, {"1": 300})


def test_stack_up_accepts_clients_set_for_the_cluster_at_any_node(cluster_stack) -> None:
    from diam.commands.stack import settings_note
    from diam.settings import load_settings
    from diam.stack_cluster import cluster_ports, cluster_running

    cfg, rc = cluster_stack
    assert cluster_running(cfg)
    single = f"redis://127.0.0.1:{cfg.redis_port}/0"
    bootstrap = "127.0.0.1:9192"

    def note(url: str, on_cluster: bool, cluster_up: bool = True) -> str | None:
        s = load_settings(stack=cfg, kafka={"bootstrap": bootstrap},
                          redis={"url": url, "cluster": on_cluster})
        return settings_note(s, bootstrap, single, cluster_up)

    for port in cluster_ports(cfg):
        assert note(f"redis://127.0.0.1:{port}/0", True) is None
    assert note(rc.url, True, cluster_up=False) is not None  # no cluster up: the single Redis
    assert note(single, False) is None  # the single Redis, as before
    told = note(single, True)  # a cluster client at the single Redis
    assert told is not None and f"DIAM_REDIS_URL={rc.url} DIAM_REDIS_CLUSTER=true" in told
    told = note(rc.url, False)  # a single-node client at a cluster node
    assert told is not None and f"DIAM_REDIS_URL={single}" in told


def redis_client_of(cfg: RedisConfig):  # type: ignore[no-untyped-def]
    c = redis_client(cfg)
    assert type(c).__name__ == "RedisCluster"
    return c


def test_a_cluster_node_without_diam_redis_cluster_is_one_error_line(stack, topic, cluster,
                                                                      tmp_path) -> None:
    """``DIAM_REDIS_URL`` at a node of the cluster, ``DIAM_REDIS_CLUSTER`` not set: refused at
    the start in one line saying to set it, not a MOVED traceback from the first key of
    another node's slots."""
    from tests.flowkit import DIM

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=5, n_events=50, seed=9)))
    env = {**os.environ, "DIAM_CONFIG": "", "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_URL": cluster.url, "DIAM_REDIS_CLUSTER": "false",
           "DIAM_ONLINE_DIM": str(DIM), "DIAM_ONLINE_K_MAX": "4",
           "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift", "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
    run = subprocess.run([sys.executable, "-m", "diam", "run", "--topic", topic, "--bounded",
                          "--checkpoint", str(ckpt), "--namespace", "not-cluster"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "MovedError" not in run.stderr, run.stderr
    errors = [x for x in run.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "node of a Redis Cluster" in errors[0], run.stderr
    assert "DIAM_REDIS_CLUSTER=true" in errors[0], errors
    assert "online dataflow:" not in run.stdout, run.stdout  # refused before it started
