"""FAISS index build: exact for small catalogues, IVF+SQ8 trained on real vectors, tested
against exact search."""

from __future__ import annotations

import faiss
import numpy as np

from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.index import build_index, exact_topk, recall_at
from snapshotter.testing import clustered_vectors, write_checkpoint


def test_small_catalogue_is_exact():
    x, _ = clustered_vectors(300, 8, seed=0)
    index, info = build_index(x, SnapshotConfig())
    assert info["kind"] == "flat" and isinstance(index, faiss.IndexFlatIP)
    q = x[:5]
    _, got = index.search(q, 10)
    assert (got == exact_topk(x, q, 10)).all()


def test_large_catalogue_gets_ivf_sq8_tuned_to_the_target_recall():
    x, _ = clustered_vectors(6000, 16, n_clusters=40, seed=1)
    cfg = SnapshotConfig(exact_max_items=1000, target_recall=0.95)
    index, info = build_index(x, cfg)
    assert info["kind"] == "ivf_sq8" and info["factory"].endswith(",SQ8")
    assert info["nlist"] == min(256, 6000 // 39) and info["recall_at_50"] >= 0.95
    assert faiss.extract_index_ivf(index).nprobe == info["nprobe"]
    # Held-out interest-like queries (not the tuning sample): approximate against exact.
    rng = np.random.default_rng(7)
    q = (x[rng.choice(6000, 64)] + 0.05 * rng.standard_normal((64, 16))).astype(np.float32)
    _, approx = index.search(q, 50)
    assert recall_at(approx, exact_topk(x, q, 50)) >= 0.9


def test_index_settings_round_trip_through_the_snapshot(tmp_path):
    x, _ = clustered_vectors(5000, 16, n_clusters=30, seed=2)
    store = SnapshotStore(
        SnapshotConfig(dir=str(tmp_path / "s"), exact_max_items=1000, ivf_nprobe=16)
    )
    res = publish(write_checkpoint(tmp_path / "ck", item_emb=x), store)
    assert res.manifest["index"]["nprobe"] == 16
    snap = SnapshotIndex.load(res.path)
    assert snap.kind == "ivf_sq8" and snap.nprobe == 16 and snap.version == res.version
    assert faiss.extract_index_ivf(snap.index).nprobe == 16
    assert snap.n_items == 5000 and snap.dim == 16
