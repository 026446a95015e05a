"""Redis Cluster: a real 3-master cluster from redis-server on loopback (``diam stack up
--redis-cluster``'s launcher, ``diam.stack_cluster``); the dataflow writes
through redis-py's RedisCluster (write-if-newer calls grouped by hash slot) and gives, byte for
byte, the values a single Redis gets from the same topic; the API reads them through the same
client."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis as redis_py

from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client
from streams.config import FlowConfig
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisConfig]:
    """The cluster ``diam stack up --redis-cluster`` starts, from a home of its own."""
    from diam.settings import StackConfig
    from diam.stack_cluster import cluster_down, cluster_up

    cfg = StackConfig(home=str(tmp_path_factory.mktemp("home")), redis_port=_cluster_base())
    try:
        yield RedisConfig(url=cluster_up(cfg, echo=lambda _m: None), cluster=True)
    finally:
        cluster_down(cfg, echo=lambda _m: None)


def _cluster_base() -> int:
    """A port whose next three ports and their bus ports (+10000) are free."""
    import random

    from diam.stack_proc import port_open

    rng = random.Random()
    while True:
        base = rng.randrange(20_000, 50_000)
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


def redis_client_of(cfg: RedisConfig):  # type: ignore[no-untyped-def]
    c = redis_client(cfg)
    assert type(c).__name__ == "RedisCluster"
    return c
