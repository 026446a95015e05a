"""online_model.retrain: the newest-slice split, its held-out users, the warm start's remap."""

from __future__ import annotations

import numpy as np
import torch

from online_model.corpus import prefix_signals, tiny_corpus
from online_model.models import ModelConfig, build_model
from online_model.retrain import remap_state, slice_eval_set, time_split, unknown_rows


def test_time_split_and_slice_partition_every_event() -> None:
    c = tiny_corpus(n_users=12, n_items=30, length=9, seed=3)
    train_c, cut = time_split(c, 0.25)
    assert (train_c.ts < cut).all() and len(train_c.items) == int((c.ts < cut).sum())
    assert np.array_equal(train_c.item_ids, c.item_ids)  # the item table is kept
    es = slice_eval_set(c, cut, prefix_signals(c))
    for u, pos, truth, hist in zip(es.users, es.cut, es.truth, es.history, strict=True):
        a, b = c.offsets[u], c.offsets[u + 1]
        assert c.ts[pos] >= cut and c.ts[pos - 1] < cut
        assert np.array_equal(np.concatenate([hist, truth]), c.items[a:b])
    # every event after the cut is someone's truth (tiny_corpus users are active throughout)
    assert sum(len(t) for t in es.truth) == int((c.ts >= cut).sum())


def test_remap_carries_item_rows_by_id_and_same_shaped_tensors() -> None:
    torch.manual_seed(0)
    src_cfg = ModelConfig(model="diam", n_items=5, n_categories=3, dim=8)
    src = build_model(src_cfg, np.array([0, 1, 2, 0, 1]))
    src_ids = np.array(["a", "b", "c", "d", "e"])
    tgt_ids = np.array(["e", "x", "a"])  # e and a known, x new
    tgt = build_model(ModelConfig(model="diam", n_items=3, n_categories=3, dim=8),
                      np.array([1, 0, 0]))
    fresh_x = tgt.item_emb.weight[2].detach().clone()
    state, rep = remap_state(src, src_ids, tgt, tgt_ids)
    tgt.load_state_dict(state)  # a full, loadable state dict
    w, ws = tgt.item_emb.weight.detach(), src.item_emb.weight.detach()
    assert torch.equal(w[1], ws[5]) and torch.equal(w[3], ws[1]) and torch.equal(w[2], fresh_x)
    assert rep == {"items_carried": 2, "items_new": 1, "fresh_tensors": []}
    for k, v in src.state_dict().items():
        if k != "item_emb.weight":
            assert torch.equal(tgt.state_dict()[k], v), k
    assert unknown_rows(tiny_corpus(n_items=4, n_users=2, length=3), np.array(["i0", "i2"])).tolist() == [1, 3]


def test_remap_reports_tensors_whose_shape_changed() -> None:
    src = build_model(ModelConfig(model="diam", n_items=4, n_categories=3, dim=8))
    tgt = build_model(ModelConfig(model="diam", n_items=4, n_categories=5, dim=8))
    state, rep = remap_state(src, np.arange(4), tgt, np.arange(4))
    tgt.load_state_dict(state)
    assert rep["fresh_tensors"] and rep["items_carried"] == 4


def test_remap_matches_category_columns_by_name() -> None:
    """A category set that changed at the same size: the category columns of the gate and the
    category-aware tower follow the names; a new category keeps its fresh column; without the
    names the columns are copied by position (the old behaviour)."""
    from online_model.retrain import CATEGORY_INPUTS

    torch.manual_seed(1)
    src = build_model(ModelConfig(model="diam", n_items=4, n_categories=3, dim=8))
    tgt = build_model(ModelConfig(model="diam", n_items=4, n_categories=3, dim=8))
    fresh = {k: tgt.state_dict()[k].clone() for k in CATEGORY_INPUTS}
    state, rep = remap_state(src, np.arange(4), tgt, np.arange(4),
                             ["Action", "Comedy", "Drama"], ["Comedy", "Drama", "Western"])
    tgt.load_state_dict(state)
    for k in CATEGORY_INPUTS:
        w, v = src.state_dict()[k], tgt.state_dict()[k]
        assert torch.equal(v[:, :8], w[:, :8]), k  # the d feature columns
        assert torch.equal(v[:, 8], w[:, 9]) and torch.equal(v[:, 9], w[:, 10]), k  # by name
        assert torch.equal(v[:, 10], fresh[k][:, 10]), k  # Western: new, fresh
    assert rep["fresh_tensors"] == []
    by_position, _ = remap_state(src, np.arange(4), tgt, np.arange(4))
    for k in CATEGORY_INPUTS:
        assert torch.equal(by_position[k], src.state_dict()[k])
