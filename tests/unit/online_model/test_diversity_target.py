"""d_u's online step aims at the scale of its prior: the percentile, among the training
examples, of the category diversity the user's last clicks realised.

The trainer records that scale (``online.div_quantiles``), the checkpoint validates it, the base
reads it and the kernel's target (``kernels.diversity_target``) is the training target's formula
(``metrics.realised_entropy``, then ``train.quantile_target``'s mid-rank) on the last clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model import kernels as K
from online_model.base import BaseLoadError, BaseView, toy_base
from online_model.checkpoint import write_checkpoint_dir
from online_model.config import OnlineConfig
from online_model.corpus import DIV_MIN_ITEMS, DIV_WINDOW, diversity_quantiles, tiny_corpus
from online_model.metrics import realised_entropy
from online_model.models import ModelConfig
from online_model.online import OnlineLearner
from online_model.train import Features, TrainConfig, quantile_target, train

torch.set_num_threads(1)


@settings(max_examples=200, deadline=None)
@given(
    clicks=st.lists(st.integers(0, 29), min_size=0, max_size=70),
    table=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30),
)
def test_target_is_the_training_formula_on_the_last_clicks(clicks, table):
    n_cat, cap = 6, 50
    item_cats = (np.arange(30) % (n_cat + 1) - 1).astype(np.int32)  # some unknown (-1)
    ring = np.zeros(cap, np.int32)
    for i, x in enumerate(clicks):  # the kernel's ring: position i % cap
        ring[i % cap] = x
    n, pos = min(len(clicks), cap), len(clicks) % cap
    q = np.sort(np.asarray(table))
    got = K.diversity_target(ring, n, pos, item_cats, n_cat, q)
    last = np.asarray(clicks[-DIV_WINDOW:], dtype=np.int64)
    if len(last) < DIV_MIN_ITEMS:
        assert got == -1.0
        return
    r = realised_entropy(item_cats[last], n_cat)
    # quantile_target's mid-rank of r among the table's points
    want = quantile_target(np.concatenate([q, [r]]), np.arange(len(q)))[-1]
    assert got == pytest.approx(float(want), abs=1e-6)


def test_the_step_follows_what_the_clicks_show():
    """On the identity scale, a user who keeps to one category gets a falling d_u and one who
    spreads over every category a rising one, from the same prior."""
    base = toy_base(n_items=60, dim=8, n_categories=4, k_max=4)
    learner = OnlineLearner(base, OnlineConfig(dim=8, k_max=4, d_max_offset=4.0))

    def final_d(items):
        s = learner.new_state("u")
        for off, i in enumerate(items):
            learner.apply(s, f"i{i}", 1_700_000_000_000 + 60_000 * off, off)
        return s.d

    narrow = final_d([0, 4, 8, 12, 16] * 8)  # category 0 only
    broad = final_d(list(range(40)))  # categories 0..3 in turn
    assert narrow < 0.5 < broad


def _checkpoint(d, table):
    t = {"online.item_emb": np.eye(3, 2, dtype=np.float32),
         "online.div_quantiles": np.asarray(table, dtype=np.float32)}
    write_checkpoint_dir(d, t, np.array(["a", "b", "c"]), {"model": "diam"},
                         item_categories=np.array([0, 1, 0]))


def test_the_base_reads_the_scale_and_refuses_a_broken_one(tmp_path):
    _checkpoint(tmp_path / "ok", [0.0, 0.2, 0.9])
    assert BaseView.from_checkpoint(tmp_path / "ok").div_quantiles.tolist() == pytest.approx(
        [0.0, 0.2, 0.9])
    for name, bad in {"down": [0.5, 0.2, 0.9], "nan": [0.0, np.nan, 1.0], "big": [0, 2.0]}.items():
        _checkpoint(tmp_path / name, bad)
        with pytest.raises(BaseLoadError, match="online.div_quantiles must be"):
            BaseView.from_checkpoint(tmp_path / name)
    # a base without one reads the normalised entropy itself
    assert toy_base().div_quantiles.tolist() == pytest.approx(np.linspace(0, 1, 101).tolist())


def test_training_records_the_scale_of_its_examples(tmp_path):
    from online_model.checkpoint import save_checkpoint

    c = tiny_corpus(n_users=12, n_items=40, n_categories=4, length=8, seed=0)
    feats = Features.of(c)
    mcfg = ModelConfig(model="diam", n_items=c.n_items, n_categories=c.n_categories, dim=8,
                       seq_len=10, window=5, k_max=4)
    res = train(c, mcfg, TrainConfig(epochs=1, batch_size=16, eval_every=0, seed=0), feats=feats,
                progress=False)
    base = BaseView.from_checkpoint(save_checkpoint(tmp_path / "ck", res.model, c, seed=0))
    want = diversity_quantiles(feats.div_target[np.concatenate(
        [np.arange(c.offsets[u] + 1, c.offsets[u + 1]) for u in res.split["train"]])])
    assert np.array_equal(base.div_quantiles, want.astype(np.float64))
    assert not np.array_equal(want, diversity_quantiles(np.empty(0)))
