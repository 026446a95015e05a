"""The continuous loop against the real broker and Redis (issue 16): a corpus read from a topic
range equals the prepared folder's, ``diam train --topic`` trains from it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from online_model.corpus import corpus_from_prepared
from online_model.datasets import load_prepared, read_item_titles, write_prepared
from online_model.synth import SynthParams, write_synth
from streams.catalog import CatalogItem, encode_item, items_of_dataset, publish_items, read_catalog
from streams.events import ClickEvent, encode_event
from streams.kafka_io import watermarks
from streams.producer import produce_dataset, produce_raw
from streams.replay import Bound, resolve_range
from streams.topic_corpus import corpus_from_topic, read_clicks


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synth(SynthParams(users=30, items=80, categories=6, max_interests=4, events_per_user=14, seed=7), out)
    return out


def _assert_same_corpus(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("users", "offsets", "items", "ts", "item_ids", "item_cat"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.category_names == b.category_names


def test_corpus_from_topic_range_equals_prepared_folder(stack, topic, synth_dir, tmp_path) -> None:
    kafka = stack.settings.kafka
    ds = load_prepared(synth_dir)
    items_topic = f"{topic}.items"
    rep = publish_items(kafka, items_topic, items_of_dataset(ds, read_item_titles(synth_dir)))
    assert rep.ok, rep.errors
    half = len(ds.ts_ms) // 2
    assert produce_dataset(ds, kafka, topic, limit=half).ok
    mid = {p: hi for p, (_, hi) in watermarks(kafka, topic).items()}
    rest = [(u.encode(), encode_event(ClickEvent(u, i, int(t)))) for u, i, t in
            zip(ds.user_ids[half:].tolist(), ds.item_ids[half:].tolist(), ds.ts_ms[half:].tolist(),
                strict=True)]
    rest.insert(3, (b"u1", b"\xc1 not an event"))  # left out, as the dataflow dead-letters it
    assert produce_raw(kafka, topic, rest).ok

    catalog = read_catalog(kafka, items_topic)
    assert len(catalog) == len(ds.items.ids) and catalog.rejected == 0
    assert catalog.items[str(ds.items.ids[0])].title == read_item_titles(synth_dir)[str(ds.items.ids[0])]

    # the whole topic = the whole folder
    full = read_clicks(kafka, resolve_range(kafka, topic, None, None))
    assert (full.records, full.rejected, len(full)) == (len(ds.ts_ms) + 1, 1, len(ds.ts_ms))
    _assert_same_corpus(corpus_from_topic(full, catalog), corpus_from_prepared(ds))

    # the range up to the offsets after the first half = a folder of the first half's events
    first = read_clicks(kafka, resolve_range(kafka, topic, None, Bound(offsets=mid)))
    d_half = write_prepared(tmp_path / "half", name="half", users=ds.user_ids[:half],
                            items_of_events=ds.item_ids[:half], ts_ms=ds.ts_ms[:half],
                            items=catalog.item_rows(), meta={"source": "test"})
    got = corpus_from_topic(first, catalog)
    _assert_same_corpus(got, corpus_from_prepared(load_prepared(d_half)))
    assert got.info["topic"] == topic and got.info["end"] == {str(p): o for p, o in mid.items()}


def test_catalog_is_compacted_keeps_newest_and_counts_bad_records(stack, topic) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    kafka = stack.settings.kafka
    items_topic = f"{topic}.items"
    a1 = CatalogItem("a", ("Drama",), "A", 1)
    a2 = CatalogItem("a", ("Comedy", "Drama"), "A, renamed", 1)
    assert publish_items(kafka, items_topic, [a1, CatalogItem("b", (), "", 2), a2]).ok
    assert produce_raw(kafka, items_topic, [(b"b", None), (b"c", b"[1, 2]"),
                                            (b"d", encode_item(a1))]).ok
    cat = read_catalog(kafka, items_topic)
    assert cat.items == {"a": a2}  # b deleted by its tombstone
    assert cat.rejected == 2
    assert sum("payload: expected a map" in r for r in cat.reasons) == 1
    assert sum("differs from item_id" in r for r in cat.reasons) == 1
    res = ConfigResource(ConfigResource.Type.TOPIC, items_topic)
    admin = AdminClient(kafka.client_config())  # kept alive until the future resolves
    conf = admin.describe_configs([res])[res].result(30)
    assert conf["cleanup.policy"].value == "compact"


def test_train_from_topic_cli(stack, topic, synth_dir, tmp_path) -> None:
    from diam.cli import main

    ds = load_prepared(synth_dir)
    items_topic = f"{topic}.items"
    env = {"DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_KAFKA_ITEMS_TOPIC": items_topic}
    runner = CliRunner()
    res = runner.invoke(main, ["produce", "--data", str(synth_dir), "--topic", topic, "--catalog",
                               "--no-progress"], env={**os.environ, **env})
    assert res.exit_code == 0, res.output
    assert f"{len(ds.items.ids):,} catalogue items sent to {items_topic}" in res.output
    out = tmp_path / "ck"
    res = runner.invoke(main, ["train", "--topic", topic, "--until", "0:40,1:40,2:40,3:40",
                               "--out", str(out), "--epochs", "1", "--dim", "8",
                               "--no-progress"], env={**os.environ, **env})
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["topic"] == topic
    assert config["data"]["end"] == {"0": 40, "1": 40, "2": 40, "3": 40}
    assert config["n_items"] == len(ds.items.ids)
    res = runner.invoke(main, ["train", "--since", "5"], env={**os.environ, **env})
    assert res.exit_code != 0 and "need --topic" in res.output
