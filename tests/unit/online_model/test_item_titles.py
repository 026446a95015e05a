"""Item titles in checkpoints (``item_titles.json``): written from a corpus that has them (a
prepared dataset's items.tsv, the catalogue topic), kept through the retrain service's time
split, read back aligned with ``item_ids.npy``, optional, and refused by name when broken."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from online_model.checkpoint import read_checkpoint, save_checkpoint, write_checkpoint_dir
from online_model.checkpoint_config import ITEM_TITLES, CheckpointError
from online_model.corpus import corpus_from_prepared, tiny_corpus
from online_model.datasets import ItemRows, load_prepared, read_item_titles, write_prepared
from online_model.models import ModelConfig, build_model
from online_model.retrain import time_split

torch.set_num_threads(1)


def _save(out, corpus):
    cfg = ModelConfig(model="mind", n_items=corpus.n_items, n_categories=corpus.n_categories,
                      dim=8, seq_len=10, n_interests=2)
    return save_checkpoint(out, build_model(cfg, corpus.item_cat).eval(), corpus, seed=0)


def test_a_corpus_with_titles_writes_them_aligned_with_the_item_ids(tmp_path) -> None:
    c = tiny_corpus(n_users=12, n_items=6, n_categories=2, length=6, seed=0)
    titles = {"i0": "Zero", "i2": "Two <b>", "i5": "Five"}
    c = corpus_from_prepared(_as_prepared(tmp_path / "ds", c, titles),
                             read_item_titles(tmp_path / "ds"))
    assert c.item_titles == [titles.get(i, "") for i in c.item_ids.tolist()]
    train_c, _ = time_split(c, 0.2)  # the retrain service's training corpus keeps them
    ck = read_checkpoint(_save(tmp_path / "ck", train_c))
    assert ITEM_TITLES in ck.files
    assert dict(zip(ck.item_ids.tolist(), ck.item_titles or [], strict=True)) == {
        i: titles.get(i, "") for i in ck.item_ids.tolist()}


def test_no_titles_no_file_and_the_checkpoint_reads_as_before(tmp_path) -> None:
    c = tiny_corpus(n_users=12, n_items=6, n_categories=2, length=6, seed=0)
    ck = read_checkpoint(_save(tmp_path / "ck", c))
    assert ck.item_titles is None and ITEM_TITLES not in ck.files
    assert not (tmp_path / "ck" / ITEM_TITLES).exists()


def test_the_catalogue_titles_reach_a_topic_corpus() -> None:
    from streams.catalog import Catalog, CatalogItem
    from streams.replay import ReplayRange
    from streams.topic_corpus import TopicClicks, corpus_from_topic

    rng = ReplayRange("t", {0: 0}, {0: 3})
    clicks = TopicClicks("t", rng, users=["a", "b", "a"], items=["10", "7", "3"], ts=[1, 2, 3])
    cat = Catalog(items={"10": CatalogItem("10", ("Drama",), "Ten", 0),
                         "7": CatalogItem("7", ("Comedy",), "", 0)})
    c = corpus_from_topic(clicks, cat)
    assert dict(zip(c.item_ids.tolist(), c.item_titles or [], strict=True)) == {
        "3": "", "7": "", "10": "Ten"}
    assert corpus_from_topic(clicks, Catalog()).item_titles is None  # no catalogue: none


def _ck(tmp_path, **kw):
    emb = np.eye(3, 2, dtype=np.float32)
    return write_checkpoint_dir(tmp_path / "ck", {"online.item_emb": emb},
                                np.array(["a", "b", "c"]), {"model": "diam"}, **kw)


@pytest.mark.parametrize("content, words", [
    ({"a": "A"}, "expected a JSON list of str"),
    (["A", 2, "C"], "expected a JSON list of str"),
    (["A", "B"], "2 titles, item_ids.npy has 3 items"),
])
def test_a_bad_titles_file_is_refused_with_its_name(tmp_path, content, words) -> None:
    d = _ck(tmp_path, item_titles=["A", "B", "C"])
    assert read_checkpoint(d).item_titles == ["A", "B", "C"]
    (d / ITEM_TITLES).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=f"{ITEM_TITLES}: {words}"):
        read_checkpoint(d)
    (d / ITEM_TITLES).write_text("[\"A\", ")
    with pytest.raises(CheckpointError, match=f"{ITEM_TITLES}: not valid JSON"):
        read_checkpoint(d)


def _as_prepared(out, c, titles):
    """``c`` written as a prepared dataset whose items.tsv has ``titles``, read back."""
    rows = ItemRows(ids=c.item_ids.tolist(), titles=[titles.get(i, "") for i in c.item_ids],
                    categories=[[c.category_names[k]] for k in c.item_cat.tolist()])
    user_of = np.repeat(c.users, c.lengths())
    write_prepared(out, name="t", users=user_of, items_of_events=c.item_ids[c.items],
                   ts_ms=c.ts, items=rows, meta={})
    return load_prepared(out)
