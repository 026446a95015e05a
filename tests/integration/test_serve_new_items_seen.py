"""``exclude_seen`` leaves out the new items a user clicked, not only the snapshot's own.

The stream pushes a user's last seen items as rows of its base's table; rows beyond the
published table (catalogue items, items first seen in clicks, items a tailing run took after
its start) are numbered in the order the dataflow met them, which need not be the API's. The
recommender kept only the published rows, so the fresh items a growing-catalogue feed promotes
came back to the very users who had clicked them (a reviewer: 144 such answers, 0 for old
items). The sink now lists the added ids (``diam:{ns}:added``) with the base record and the
recommender maps those rows through it to ids, then to its own rows.

Real Kafka and Redis: ``diam run`` on a catalogue item and a click-first item known at the
start, a run whose base takes an item while it runs (a tailing run's reload), and the API
whose index took the new items in another order than the dataflow.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from diam.app import load_holder
from diam.cli import main
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from serving_cache.api import get_app
from serving_cache.base_record import AddedIds, BaseRecord, read_added, read_base, write_base
from serving_cache.codec import decode_user
from serving_cache.keys import added_key, base_key, user_key
from serving_cache.namespaces import drop_namespace
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogItem, publish_items
from streams.config import FlowConfig
from streams.events import ClickEvent
from streams.kafka_io import delete_topics
from streams.online import LearnerHolder
from streams.runner import OnlineJob, run_online
from tests.flowkit import N_ITEMS, click_stream
from tests.integration.helpers import click_payloads, produce

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _ids(http, user: str, exclude: bool) -> list[str]:  # type: ignore[no-untyped-def]
    r = http.get(f"/users/{user}/recommendations?n=200&exclude_seen={str(exclude).lower()}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["cold"] and not body["stale"], body
    return [it["item_id"] for it in body["items"]]


@pytest.mark.partitions(1)  # one order of events: the reload comes before user5's late click
def test_clicked_new_items_are_left_out_whatever_row_the_api_gave_them(
        stack, topic, new_topic, redis_client, tmp_path) -> None:
    drift, dlq = new_topic(1, "drift"), new_topic(1, "dlq")
    items_topic = f"{topic}.items"
    run_id = topic.split(".")[-1][:8]
    ns, ns_grown = f"fixer6-seen-{run_id}", f"fixer6-grown-{run_id}"
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=N_ITEMS, dim=16, k_max=4, seed=0),
                      store).version
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={
            "clicks_topic": topic, "items_topic": items_topic, "drift_topic": drift,
            "deadletter_topic": dlq}),
        "redis": stack.settings.redis.model_copy(update={"namespace": ns}),
        "online": OnlineConfig(dim=16, k_max=4), "flow": FLOW.model_copy(update={"batch_size": 8}),
        "snapshot": store.cfg})
    known = [CatalogItem(f"i{i}", (), "", 0) for i in range(N_ITEMS)]
    assert publish_items(s.kafka, items_topic, [*known, CatalogItem("cat-new", (), "new", 0)]).ok
    events = click_stream(n_users=12, n_events=240, seed=7)
    t = events[-1].ts
    extra = [ClickEvent(u, item, t + 1000 * (n + 1)) for n, (u, item) in enumerate(
        [("user1", "cat-new"), ("user3", "cf-x"), ("user3", "cf-x"), ("user7", "cf-x")])]
    late = [ClickEvent("user5", "late-x", t + 100_000)]  # once: no click-first item
    produce(s.kafka, topic, click_payloads(events[:120] + extra + events[120:] + late))
    try:
        base = load_holder(s, topic=topic, pinned=True).learner.base
        assert list(base.item_ids[N_ITEMS:]) == ["cat-new", "cf-x"]  # the dataflow's rows
        res = CliRunner().invoke(main, ["run", "--bounded", "--topic", topic, "--namespace", ns,
                                        "--no-recovery"], obj={"settings": s})
        assert res.exit_code == 0, res.output
        assert read_added(redis_client, ns, read_base(redis_client, ns)) == ("cat-new", "cf-x")

        # a run whose base takes an item while it runs (the reload check of a tailing run),
        # once the sink has recorded the start's base: the list grows by that id
        grown = base.with_items(["late-x"], np.full((1, 16), 0.1, dtype=np.float32))
        calls, recorded = [0], []

        def reload():  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] != 10:
                return None
            deadline = time.monotonic() + 20
            while not redis_client.exists(base_key(ns_grown)) and time.monotonic() < deadline:
                time.sleep(0.05)
            recorded.append(read_base(redis_client, ns_grown))
            return OnlineLearner(grown, s.online), version

        holder = LearnerHolder(OnlineLearner(base, s.online), version, reload=reload,
                               check_every_s=0.0)
        run_online(OnlineJob(kafka=s.kafka, redis=s.redis, flow=s.flow, topic=topic,
                             namespace=ns_grown, bounded=True), holder)
        assert calls[0] > 10 and recorded == [BaseRecord.of(version, base.item_ids, added=2)]
        record = read_base(redis_client, ns_grown)
        assert record == BaseRecord.of(version, grown.item_ids, added=3, grown=1)
        assert read_added(redis_client, ns_grown, record) == ("cat-new", "cf-x", "late-x")

        # the API took the new items in another order than the dataflow: rows 60.. differ
        snap = SnapshotIndex.load(store.path(version)).with_items(
            [CatalogItem(x, (), "", 0) for x in ("late-x", "cf-x", "cat-new")])
        assert [snap.index_of(x) for x in ("late-x", "cf-x", "cat-new")] == [60, 61, 62]
        for name, clicked in ((ns, {"user1": "cat-new", "user3": "cf-x", "user7": "cf-x"}),
                              (ns_grown, {"user1": "cat-new", "user5": "late-x"})):
            with TestClient(get_app(Recommender(snap, redis_client, name))) as http:
                for user, item in clicked.items():
                    uv = decode_user(redis_client.get(user_key(name, user)))
                    saw = {str(grown.item_ids[r]) for r in uv.seen.tolist() if r >= N_ITEMS}
                    assert item in saw  # a row beyond the published table
                    everything = _ids(http, user, exclude=False)
                    kept = _ids(http, user, exclude=True)
                    assert item in everything
                    assert item not in kept, (name, user)
                    # no other new item left out in its stead
                    assert saw.isdisjoint(kept)
                    assert {"late-x", "cf-x", "cat-new"} - saw <= set(kept), (name, user)

        # a namespace without the list (a release before it) leaves out the published rows
        # only, as before; so does a list another run left in another order
        rec = Recommender(snap, redis_client, ns)
        redis_client.delete(added_key(ns))
        assert "cat-new" in rec.recommend("user1", n=200).items
        redis_client.rpush(added_key(ns), "cf-x", "cat-new")
        assert AddedIds(redis_client, ns).of(version, N_ITEMS) is None
        assert "cat-new" in rec.recommend("user1", n=200).items
    finally:
        for name in (ns, ns_grown):
            drop_namespace(redis_client, name)
        delete_topics(s.kafka, [items_topic])


def test_the_list_grows_by_what_the_table_grew_by_and_starts_over_otherwise(
        redis_client, namespace) -> None:
    """``write_base`` appends the ids the table grew by (the writer's previous record as it
    left the list), and writes the list whole for a new version, another table, or a list that
    another writer changed; a reader takes the list only when it hashes to the record's."""
    pub = [f"i{i}" for i in range(5)]
    a = BaseRecord.of("v1", [*pub, "x", "y"], added=2)
    write_base(redis_client, namespace, a)
    b = BaseRecord.of("v1", [*pub, "x", "y", "z"], added=3, grown=1)
    redis_client.lset(added_key(namespace), 0, "tampered")  # same length: only z is sent
    write_base(redis_client, namespace, b, listed=a)
    assert redis_client.lrange(added_key(namespace), 0, -1) == [b"tampered", b"y", b"z"]
    assert read_added(redis_client, namespace, b) is None  # not b's ids: not used
    assert AddedIds(redis_client, namespace).of("v1", 5) is None
    redis_client.rpush(added_key(namespace), "w")  # another length: written whole
    write_base(redis_client, namespace, b, listed=a)
    assert read_added(redis_client, namespace, b) == ("x", "y", "z")
    ids = AddedIds(redis_client, namespace)
    assert ids.of("v1", 5) == ("x", "y", "z")
    assert ids.of("v2", 5) is None and ids.of("v1", 4) is None  # another version, table
    c = BaseRecord.of("v1", [*pub, "y", "x", "z", "q"], added=4)  # not a continuation
    write_base(redis_client, namespace, c, listed=b)
    assert ids.of("v1", 5) == ("y", "x", "z", "q")
    d = BaseRecord.of("v2", pub, added=0)  # a version with nothing added: no list
    write_base(redis_client, namespace, d, listed=c)
    assert not redis_client.exists(added_key(namespace)) and ids.of("v2", 5) == ()
    with pytest.raises(ValueError, match="a record read back cannot be written"):
        write_base(redis_client, namespace, BaseRecord("v1", 6, 1, c.added_sha))
