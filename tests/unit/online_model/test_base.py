"""BaseView from a checkpoint directory (with and without the gate/fusion head) and from events."""

from __future__ import annotations

import numpy as np
import pytest

from online_model.base import BaseLoadError, BaseView
from online_model.checkpoint import write_checkpoint_dir
from online_model.datasets import ItemRows
from tests.flowkit import prepared_clicks


def _checkpoint(d, head: bool):
    n, dim, h = 5, 4, 3
    rng = np.random.default_rng(0)
    t = {
        "online.item_emb": rng.standard_normal((n, dim)).astype(np.float32),
        "encoder.weight": np.zeros((2, 2), dtype=np.float32),
    }  # torch keys are skipped
    if head:
        t |= {
            "online.gate_w1": rng.standard_normal((h, dim + 4)).astype(np.float32),
            "online.gate_b1": np.zeros(h, np.float32),
            "online.gate_w2": rng.standard_normal((1, h)).astype(np.float32),
            "online.gate_b2": np.zeros(1, np.float32),
            "online.fusion_w": np.array([1, -1, 2, 0], np.float32),
            "online.fusion_b": np.array([0.5], np.float32),
        }
    write_checkpoint_dir(d, t, np.array(["a", "b", "c", "d", "e"]), {"model": "diam", "k_max": 3},
                         item_categories=np.array([0, 1, 0, 1, 2]), category_names=["x", "y", "z"])
    return t


def test_from_checkpoint_with_head(tmp_path):
    t = _checkpoint(tmp_path, head=True)
    b = BaseView.from_checkpoint(tmp_path)
    assert b.dim == 4 and b.k_max == 3 and b.has_gate and b.has_fusion
    assert b.index_of("c") == 2 and b.index_of("zz") == -1 and b.category_of(4) == 2
    assert np.array_equal(b.item_emb, t["online.item_emb"])
    assert b.version.startswith("diam-") and b.version == BaseView.from_checkpoint(tmp_path).version
    sig = np.array([0.2, 0.4, 0.6, 0.8], np.float32)
    assert b.d_prior(sig) == pytest.approx(1 / (1 + np.exp(-(0.2 - 0.4 + 1.2 + 0.5))))
    assert 1 <= b.propose_k(b.item_emb[:2].mean(axis=0), sig) <= 3


def test_from_checkpoint_without_head_and_snapshot_version(tmp_path):
    _checkpoint(tmp_path, head=False)
    (tmp_path / "manifest.json").write_text("{}")
    b = BaseView.from_checkpoint(tmp_path)
    assert not b.has_gate and b.d_prior(np.zeros(4)) == 0.5 and b.version == tmp_path.name


def test_from_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(BaseLoadError, match="weights.safetensors: missing"):
        BaseView.from_checkpoint(tmp_path)
    _checkpoint(tmp_path, head=False)
    np.save(tmp_path / "item_ids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BaseLoadError, match="item_ids.npy"):
        BaseView.from_checkpoint(tmp_path)


def test_from_events_is_deterministic_and_groups_co_clicked_items(tmp_path):
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(40):  # two communities of items: 0-9 and 10-19
        group = u % 2
        for j in range(12):
            users.append(f"u{u}")
            items.append(str(10 * group + int(rng.integers(0, 10))))
            ts.append(1000 * (12 * u + j))
    rows = ItemRows([str(i) for i in range(21)], ["t"] * 21, [["g0"]] * 10 + [["g1"]] * 11)
    ds = prepared_clicks(tmp_path, "t", users, items, ts, rows)
    a = BaseView.from_events(ds, dim=4)
    b = BaseView.from_events(ds, dim=4)
    assert a.item_emb.tobytes() == b.item_emb.tobytes() and a.version == b.version
    assert a.item_norms[a.index_of("20")] == 0  # never clicked: cold
    e = a.item_emb / np.maximum(np.linalg.norm(a.item_emb, axis=1, keepdims=True), 1e-9)
    within = (e[:10] @ e[:10].T).mean()
    across = (e[:10] @ e[10:20].T).mean()
    assert within > across + 0.3


def test_with_items_extends_the_diam_head_the_learner_reads(tmp_path) -> None:
    """Rows appended by ``with_items`` (new items' content embeddings) are read by the compiled
    global-slot refresh exactly as rows of a head built with the longer table: same vectors,
    all finite (it once read past the old table's end and wrote NaN into users' vectors)."""
    import json

    from safetensors.numpy import load_file

    from online_model.config import OnlineConfig
    from online_model.infer import DiamHead
    from online_model.online import OnlineLearner
    from online_model.testing import tiny_diam_checkpoint

    ck, _ = tiny_diam_checkpoint(tmp_path / "diam")
    base = BaseView.from_checkpoint(ck, version="v1")
    rng = np.random.default_rng(3)
    new_ids = [f"new{j}" for j in range(6)]
    emb = (0.5 * rng.standard_normal((6, base.dim))).astype(np.float32)
    grown = base.with_items(new_ids, emb, np.array([0, 1, -1, 2, 3, 0]))
    tensors = load_file(str(ck / "weights.safetensors"))
    pad = tensors["item_emb.weight"]
    tensors["item_emb.weight"] = np.concatenate([pad, emb.astype(pad.dtype)])
    cfg = json.loads((ck / "config.json").read_text())
    head = DiamHead(tensors, cfg, np.asarray(grown.head.item_cat))
    oracle = BaseView(grown.item_ids, grown.item_emb, grown.item_categories, grown.category_names,
                      k_max=grown.k_max, version=grown.version, gate=grown.gate,
                      fusion=grown.fusion, meta=grown.meta, head=head)
    ocfg = OnlineConfig(dim=base.dim, k_max=4)
    ids = [str(i) for i in base.item_ids[:10]] + new_ids
    out = []
    for b in (grown, oracle):
        learner = OnlineLearner(b, ocfg)
        st = learner.new_state("u1")
        for j in range(60):
            learner.apply(st, ids[(7 * j) % len(ids)], 1_700_000_000_000 + 1000 * j, j)
        out.append(np.asarray(st.vectors()))
    assert np.isfinite(out[0]).all()
    np.testing.assert_array_equal(out[0], out[1])
