"""New items in serving (issue 16): content embeddings added to the FAISS index without a
rebuild, exact and IVF; the base the stream uses gets the same rows under the same version."""

from __future__ import annotations

import numpy as np
import pytest

from online_model.base import toy_base
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from streams.catalog import CatalogItem


@pytest.mark.parametrize("n_items,exact_max", [(150, 20_000), (3000, 100)])
def test_with_items_adds_rows_without_rebuild(tmp_path, n_items: int, exact_max: int) -> None:
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s"), exact_max_items=exact_max))
    res = publish(write_checkpoint(tmp_path / "ck", n_items=n_items, dim=8, seed=2), store)
    snap = SnapshotIndex.load(res.path, res.version)
    assert snap.kind == ("flat" if exact_max > n_items else "ivf_sq8") and snap.tower is not None
    cat = snap.category_names[1]
    items = [CatalogItem("new-a", (cat,), "a", 0), CatalogItem("new-a", (cat,), "a", 0),
             CatalogItem(str(snap.item_ids[0]), (), "", 0)]  # a duplicate, a known item
    out = snap.with_items(items)
    assert out is not snap and snap.index.ntotal == n_items  # the served copy is untouched
    assert out.index.ntotal == n_items + 1 and out.content_rows.tolist() == [n_items]
    assert out.index_of("new-a") == n_items and out.category_name(n_items) == cat
    vec = out.item_vecs[n_items]
    np.testing.assert_allclose(vec, snap.tower.embed([[cat]], ["a"])[0], rtol=1e-6)
    # the new row is found by the index under its own id (IVF: add_with_ids)
    _, found = out.search((vec / np.linalg.norm(vec) * 100)[None, :], min(n_items, 400))
    assert n_items in found[0].tolist()
    assert out.with_items(items) is out  # nothing new the second time


def test_base_with_items_keeps_rows_and_version() -> None:
    base = toy_base(n_items=10, dim=4, version="v1")
    emb = np.arange(8, dtype=np.float32).reshape(2, 4)
    b2 = base.with_items(["x", "y"], emb, np.array([1, -1]))
    assert b2.version == "v1" and b2.index_of("x") == 10 and b2.index_of("y") == 11
    assert np.array_equal(b2.item_emb[:10], base.item_emb) and np.array_equal(b2.item_emb[10:], emb)
    assert b2.category_of(10) == 1 and b2.category_of(11) == -1
    assert b2.fingerprint != base.fingerprint and b2.meta["content_items"] == 2
    assert base.with_items(["i0"], emb[:1]) is base
