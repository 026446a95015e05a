"""A replay of the topic writes the bytes the live run wrote while the base grows with new items.

The number and rows of the base's items enter every user's sampled negatives, so a replay on
the bare snapshot, against a live run whose base took an item first seen in clicks, differed for
users who never clicked that item (a reviewer measured 61.5% identical values). ``diam run`` and
``diam replay`` now start on one grown base (``diam.app``): the catalogue's new items and the
click-first rule's, over what the topics hold at the start.
"""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from diam.app import load_holder
from diam.cli import main
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from serving_cache.base_record import BaseRecord, read_base
from serving_cache.namespaces import drop_namespace
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
from tests.integration.helpers import click_payloads, produce, redis_state

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def grown_sha(base) -> str:  # type: ignore[no-untyped-def]
    """The added ids' hash as the record's rule states it (sha256 of the ids, NUL after each)."""
    import hashlib

    ids = base.item_ids[len(base.item_ids) - int(base.meta["content_items"]):]
    return hashlib.sha256(b"".join(str(x).encode() + b"\0" for x in ids)).hexdigest()[:12]


def _cli(settings, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), obj={"settings": settings})


def test_live_run_and_replay_of_a_topic_with_new_items_write_the_same_bytes(
        stack, topic, new_topic, redis_client, tmp_path) -> None:
    drift, dlq = new_topic(1, "drift"), new_topic(1, "dlq")
    items_topic = f"{topic}.items"
    run_id = topic.split(".")[-1][:8]
    serving, ns_live, ns_replay, ns_late, ns_grown = (
        f"{x}-{run_id}" for x in ("serving", "run", "replay", "late", "grown"))
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    version = publish(write_checkpoint(tmp_path / "ck", n_items=N_ITEMS, dim=16, k_max=4, seed=0),
                      store).version  # the pointer file: no namespace announces another one
    s = stack.settings.model_copy(update={
        "kafka": stack.settings.kafka.model_copy(update={
            "clicks_topic": topic, "items_topic": items_topic, "drift_topic": drift,
            "deadletter_topic": dlq}),
        "redis": stack.settings.redis.model_copy(update={"namespace": serving}),
        "online": OnlineConfig(dim=16, k_max=4), "flow": FLOW, "snapshot": store.cfg})

    # the catalogue: the snapshot's items and one it does not know
    known = [CatalogItem(f"i{i}", (), "", 0) for i in range(N_ITEMS)]
    assert publish_items(s.kafka, items_topic, [*known, CatalogItem("cat-new", (), "new", 0)]).ok
    events = click_stream(n_users=12, n_events=240, seed=7)
    t = events[-1].ts
    # an item in no catalogue, clicked 4 times by 3 users (the reviewer's repro), and one
    # clicked once (the rule needs 2 clicks: it stays unknown)
    extra = [ClickEvent(u, item, t + 1000 * (n + 1)) for n, (u, item) in enumerate(
        [("user1", "cf-x"), ("user3", "cf-x"), ("user3", "cf-x"), ("user7", "cf-x"),
         ("user2", "cf-once"), ("user5", "cat-new")])]
    mixed = events[:80] + extra[:2] + events[80:160] + extra[2:] + events[160:]
    produce(s.kafka, topic, click_payloads(mixed))
    try:
        base = load_holder(s, topic=topic, pinned=True).learner.base
        assert len(base.item_ids) == N_ITEMS + 2 and base.version == version
        assert base.index_of("cf-x") >= 0 and base.index_of("cat-new") >= 0
        assert base.index_of("cf-once") < 0

        res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", ns_live,
                   "--no-recovery")
        assert res.exit_code == 0, res.output
        live = redis_state(redis_client, ns_live)
        assert len(live) == 12

        res = _cli(s, "replay", "--topic", topic, "--namespace", ns_replay, "--no-progress",
                   "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.output.strip().splitlines()[-1])
        assert (report["base"], report["new_items"]) == (version, 2)
        assert redis_state(redis_client, ns_replay) == live  # bit for bit, every user

        body = json.loads(_cli(s, "diff", ns_live, ns_replay, "--json").output)
        assert (body["both"], body["identical"], body["different_bases"]) == (12, 12, 0)
        # both namespaces record the one base they learnt on: the version and its grown table
        record = BaseRecord.of(version, base.item_ids, added=2)
        assert read_base(redis_client, ns_live) == read_base(redis_client, ns_replay) == record
        assert body["base_a"] == body["base_b"] == record.typed() and body["bases_note"] is None

        # a run started after one more catalogue item was published learns on a larger table:
        # its values differ, and diff says why (the labels name one version on both sides)
        assert publish_items(s.kafka, items_topic, [CatalogItem("cat-later", (), "", 0)]).ok
        res = _cli(s, "run", "--bounded", "--topic", topic, "--namespace", ns_late,
                   "--no-recovery")
        assert res.exit_code == 0, res.output
        assert read_base(redis_client, ns_late) == BaseRecord.of(  # new items in id order
            version, [*base.item_ids[:N_ITEMS], "cat-later", "cat-new", "cf-x"], added=3)
        res = _cli(s, "diff", ns_late, ns_replay)
        assert res.exit_code == 0, res.output
        assert "identical values 12" not in res.output
        assert (f"note: the namespaces' bases differ: {ns_late} took 1 more items than "
                f"{ns_replay} on base {version} ({N_ITEMS + 3} vs {N_ITEMS + 2} items; 3 vs 2 "
                "added") in res.stderr
        body = json.loads(_cli(s, "diff", ns_late, ns_replay, "--json").output)
        assert body["different_bases"] == 12 - body["identical"] > 0
        assert (body["base_a"]["items"], body["base_b"]["items"]) == (N_ITEMS + 3, N_ITEMS + 2)

        # a run whose base took an item after its start (a tailing run's reload check; here
        # the holder's first check, before any event) records it: the note names it
        grown = base.with_items(["late-x"], np.full((1, 16), 0.1, dtype=np.float32))
        took = [(OnlineLearner(grown, s.online), version)]
        holder = LearnerHolder(OnlineLearner(base, s.online), version,
                               reload=lambda: took.pop() if took else None, check_every_s=0.0)
        run_online(OnlineJob(kafka=s.kafka, redis=s.redis, flow=FLOW, topic=topic,
                             namespace=ns_grown, bounded=True), holder)
        assert not took and read_base(redis_client, ns_grown) == BaseRecord.of(
            version, grown.item_ids, added=3, grown=1)
        res = _cli(s, "diff", ns_grown, ns_replay)
        assert (f"{ns_grown} took 1 items after its start ({N_ITEMS + 3} items now, "
                f"{N_ITEMS + 2} at its start; {ns_replay}: {N_ITEMS + 2} from its start)"
                ) in res.stderr, res.stderr
        res = _cli(s, "inspect", "namespace", "--namespace", ns_grown)
        assert res.exit_code == 0, res.output
        assert (f"base     {version} with {N_ITEMS + 3} items (3 added to the version's own, "
                f"ids {grown_sha(grown)}; 1 of them after the run's start)") in res.output
    finally:
        for ns in (ns_live, ns_replay, ns_late, ns_grown):
            drop_namespace(redis_client, ns)
        delete_topics(s.kafka, [items_topic, *(f"{t}.replay.{ns_replay}" for t in (drift, dlq))])
