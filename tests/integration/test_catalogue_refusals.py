"""Bad catalogue records never vanish: ``diam run`` (``diam.app.load_holder`` with
``streams.catalog.CatalogDeadLetters``) dead-letters each once, with its reason and source
coordinates, at the start's read and at the follower's polls alike; a reader given no
refusals (``diam serve``'s follower, a replay) logs a warning per record, capped.

The reviewer's four records: key != item_id, ``categories`` a string, garbage bytes, a
title holding a newline; beside them one good item, which is grown."""

from __future__ import annotations

import json
import logging

from click.testing import CliRunner

from diam.app import load_holder
from diam.cli import main
from online_model.config import OnlineConfig
from snapshotter.config import SnapshotConfig
from snapshotter.publish import publish
from snapshotter.store import SnapshotStore
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogDeadLetters, CatalogFollower, CatalogItem, encode_item
from streams.forget_markers import topic_id
from streams.kafka_io import ensure_topic, read_deadletters
from streams.producer import produce_raw
from tests.flowkit import N_ITEMS

GOOD = CatalogItem("cat-good", ("Drama",), "Good", 0)
BAD = [(b"cat-x", encode_item(CatalogItem("cat-y", (), "", 0)), "key: record key"),
       (b"cat-s", json.dumps({"item_id": "cat-s", "categories": "Drama", "title": "",
                              "first_seen": 1}).encode(), "categories: expected a list"),
       (b"cat-g", b"\xc1\xff garbage \x00", "undecodable"),
       (b"cat-n", encode_item(CatalogItem("cat-n", (), "Scream\n  2. x", 1)), "title: contains")]


def _settings(stack, topic: str, tmp_path):  # type: ignore[no-untyped-def]
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    publish(write_checkpoint(tmp_path / "ck", n_items=N_ITEMS, dim=16, k_max=4, seed=0), store)
    kafka = stack.settings.kafka.model_copy(update={
        "clicks_topic": topic, "items_topic": f"{topic}.items",
        "deadletter_topic": f"{topic}.dlq"})
    return stack.settings.model_copy(update={
        "kafka": kafka, "online": OnlineConfig(dim=16, k_max=4), "snapshot": store.cfg,
        "redis": stack.settings.redis.model_copy(update={"namespace": f"corpfix-{topic[-8:]}"})})


def _publish(s) -> list[int]:  # type: ignore[no-untyped-def]
    """The good item and the four bad records; the bad ones' offsets (one partition)."""
    ensure_topic(s.kafka, s.kafka.items_topic, partitions=1, config={"cleanup.policy": "compact"})
    recs = [(GOOD.item_id.encode(), encode_item(GOOD))] + [(k, v) for k, v, _ in BAD]
    assert produce_raw(s.kafka, s.kafka.items_topic, recs).ok
    return [1, 2, 3, 4]


def test_diam_runs_catalogue_refusals_are_dead_lettered_once_each(stack, topic, tmp_path) -> None:
    s = _settings(stack, topic, tmp_path)
    offsets = _publish(s)
    ensure_topic(s.kafka, s.kafka.deadletter_topic, partitions=1)
    refused = CatalogDeadLetters(s.kafka, s.flow.deadletter_max_bytes, namespace="corpfix-ns")
    holder = load_holder(s, topic=topic, catalog_refused=refused)  # follows the active one
    try:
        assert holder.learner.base.index_of(GOOD.item_id) >= 0  # the good item is grown
        assert refused.count == 4  # the start's read (diam.app._catalog_now) told them
        holder.maybe_reload()  # the follower's first poll reads the four again: told once
        assert refused.count == 4
    finally:
        holder.close()
        refused.close()
    got = read_deadletters(s.kafka, s.kafka.deadletter_topic, dedupe=False)
    assert len(got) == 4, got  # one each: not again for the follower's poll
    assert sorted(d["offset"] for d in got) == offsets
    items_id = topic_id(s.kafka, s.kafka.items_topic)
    assert items_id
    for d, (key, value, why) in zip(sorted(got, key=lambda d: d["offset"]), BAD, strict=True):
        assert d["topic"] == s.kafka.items_topic and d["partition"] == 0
        assert d["topic_id"] == items_id  # a re-created items topic's records are not copies
        assert why in str(d["reason"]) and d["namespace"] == "corpfix-ns"
        assert d["key"] == key and d["value"] == value
    r = CliRunner().invoke(main, ["deadletters", "--topic", s.kafka.deadletter_topic,
                                  "--source-topic", s.kafka.items_topic],
                           obj={"settings": s})
    assert r.exit_code == 0 and r.output.count(s.kafka.items_topic) >= 4, r.output


def test_a_follower_given_no_refusals_logs_each_bad_record(stack, topic, tmp_path, caplog) -> None:
    s = _settings(stack, topic, tmp_path)
    _publish(s)
    follower = CatalogFollower(s.kafka, s.kafka.items_topic)  # diam serve's
    try:
        with caplog.at_level(logging.WARNING, logger="streams.catalog"):
            items: list[CatalogItem] = []
            for _ in range(20):
                items += follower.poll(1.0)
                if follower.rejected == 4:
                    break
    finally:
        follower.close()
    assert [it.item_id for it in items] == [GOOD.item_id] and follower.rejected == 4
    said = [r.getMessage() for r in caplog.records if r.name == "streams.catalog"]
    assert len(said) == 4, said
    for line, (_k, _v, why) in zip(said, BAD, strict=True):
        assert s.kafka.items_topic in line and why in line
