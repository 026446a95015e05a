"""A user's state holds rows of the base's item table; every rebuild of a version's table puts
the new items at the rows the run gave them (``streams.growth_log``).

The live run appends new items in the order its reload checks find them; a restart on the same
recovery store and a rollback to a version served before rebuilt the table with the new items
known then in id order (or catalogue first), so a restored user's rows past the published table
named other items: wrong seen items, wrong anchors. Real Kafka and Redis throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from click.testing import CliRunner

from serving_cache import decode_user, user_key
from serving_cache.base_record import read_added, read_base
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogItem, ensure_catalog_topic, publish_items
from streams.events import ClickEvent
from streams.growth_log import GROWTH_LOG
from streams.kafka_io import delete_topics, ensure_topic
from tests.integration.helpers import click_payloads, produce

T0 = 1_700_000_000_000
N = 60  # the published table's items


def _seen_ids(client, ns: str, user: str) -> list[str] | None:  # type: ignore[no-untyped-def]
    """The user's seen items as ids, through the namespace's base record and added ids."""
    raw = client.get(user_key(ns, user))
    record = read_base(client, ns)
    if raw is None or record is None:
        return None
    added = read_added(client, ns, record) or ()
    return [f"i{r}" if r < N else added[r - N] for r in decode_user(raw).seen.tolist()
            if r < N + len(added)]


def _wait_seen(client, ns: str, user: str, item: str, proc, timeout: float = 60.0
               ) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the dataflow exited with {proc.returncode}"
        got = _seen_ids(client, ns, user)
        if got is not None and item in got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{user} never saw {item} (seen {_seen_ids(client, ns, user)})")


def test_a_run_killed_after_taking_new_items_resumes_with_them_at_the_same_rows(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    kafka = stack.settings.kafka
    items_topic, drift = f"{topic}.items", f"{topic}.drift"
    ensure_topic(kafka, drift, partitions=1)
    ensure_catalog_topic(kafka, items_topic, partitions=1)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    publish(write_checkpoint(tmp_path / "ck", n_items=N, dim=16, seed=3), store, redis_client,
            ns=namespace)
    rec = tmp_path / "recovery"
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_SNAPSHOT_DIR": str(tmp_path / "snaps"), "DIAM_ONLINE_DIM": "16",
           "DIAM_FLOW_RELOAD_CHECK_S": "0.1", "DIAM_FLOW_PUSH_EVERY_MS": "50",
           "DIAM_FLOW_EPOCH_INTERVAL_S": "0.2", "DIAM_STACK_HOME": str(tmp_path / "home"),
           "DIAM_KAFKA_ITEMS_TOPIC": items_topic, "DIAM_KAFKA_DRIFT_TOPIC": drift,
           "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", namespace,
           "--tail", "--recovery-dir", str(rec)]
    clicked = {"u-c": ["i1", "new-c"], "u-b": ["new-b"], "u-a": ["new-a"]}
    ts = iter(range(T0, T0 + 10**6, 1000))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        produce(kafka, topic, click_payloads([ClickEvent("u-c", "i1", next(ts))]))
        _wait_seen(redis_client, namespace, "u-c", "i1", proc, timeout=120)
        # the catalogue's new items arrive in another order than their ids', each taken (a
        # user's click on it is a seen row) before the next is published
        for user, item in (("u-c", "new-c"), ("u-b", "new-b"), ("u-a", "new-a")):
            assert publish_items(kafka, items_topic, [CatalogItem(item, (), item, 0)]).ok
            deadline = time.monotonic() + 60
            while True:  # a click the run met before its reload check took the item is cold
                produce(kafka, topic, click_payloads([ClickEvent(user, item, next(ts))]))
                try:
                    _wait_seen(redis_client, namespace, user, item, proc, timeout=1.0)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, f"the run never took {item}"
        assert read_added(redis_client, namespace, read_base(redis_client, namespace)) == (
            "new-c", "new-b", "new-a")
        time.sleep(2.0)  # epochs of 0.2 s: the recovery store's snapshot holds those rows
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert (rec / GROWTH_LOG.format(process=0)).is_file()
    # one more item before the restart, first in id order
    assert publish_items(kafka, items_topic, [CatalogItem("new-0", (), "new-0", 0)]).ok
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        produce(kafka, topic, click_payloads([ClickEvent(u, "i7", next(ts)) for u in clicked]))
        for user, items in clicked.items():
            seen = _wait_seen(redis_client, namespace, user, "i7", proc, timeout=120)
            assert set(seen) == {*items, "i7"}, (user, seen)
        assert read_added(redis_client, namespace, read_base(redis_client, namespace)) == (
            "new-c", "new-b", "new-a", "new-0")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    delete_topics(kafka, [items_topic])


def test_a_rollback_rebuilds_the_version_s_table_with_its_new_items_at_their_rows(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    from diam.app import load_holder
    from diam.cli import main

    kafka = stack.settings.kafka.model_copy(update={"clicks_topic": topic,
                                                    "items_topic": f"{topic}.items"})
    ensure_catalog_topic(kafka, kafka.items_topic, partitions=1)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=N, dim=16, seed=1), store,
                 redis_client, ns=namespace).version
    s = stack.settings.model_copy(update={
        "kafka": kafka, "snapshot": store.cfg,
        "redis": stack.settings.redis.model_copy(update={"namespace": namespace}),
        "online": stack.settings.online.model_copy(update={"dim": 16})})
    # known at the start, published out of id order; one more while the run goes on
    assert publish_items(kafka, kafka.items_topic, [CatalogItem("z-new", (), "z", 0),
                                                    CatalogItem("a-new", (), "a", 0)]).ok
    holder = load_holder(s, namespace=namespace)
    try:
        holder._check_every_s = 0.0

        def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline, what
                holder.maybe_reload()
                time.sleep(0.05)

        assert list(holder.learner.base.item_ids[N:]) == ["a-new", "z-new"]
        assert publish_items(kafka, kafka.items_topic, [CatalogItem("m-new", (), "m", 0)]).ok
        until(lambda: holder.learner.base.index_of("m-new") >= 0, "m-new never taken")
        table = list(holder.learner.base.item_ids)
        emb = holder.learner.base.item_emb.copy()
        state = holder.learner.new_state("u")
        for n, item in enumerate(["i2", "a-new", "m-new"]):
            holder.learner.apply(state, item, T0 + n, n)
        assert state.version == v1

        v2 = publish(write_checkpoint(tmp_path / "ck2", n_items=N, dim=16, seed=2), store,
                     redis_client, ns=namespace).version
        until(lambda: holder.version == v2, "v2 never loaded")
        res = CliRunner().invoke(main, ["snapshot", "rollback", v1, "--namespace", namespace],
                                 obj={"settings": s})
        assert res.exit_code == 0, res.output
        until(lambda: holder.version == v1, "the rollback never loaded")
        base = holder.learner.base
        assert list(base.item_ids[:len(table)]) == table
        holder.learner.apply(state, "i9", T0 + 10, 10)  # u is still recorded under v1
        assert {str(base.item_ids[r]) for r in state.recent.tolist()} == {
            "i2", "a-new", "m-new", "i9"}
        np.testing.assert_array_equal(base.item_emb[:len(table)], emb)
    finally:
        holder.close()
        delete_topics(kafka, [kafka.items_topic])
