"""Each loss decreases when its inputs are optimised on a tiny set, and each model's training
loss decreases on a tiny clustered corpus."""

import numpy as np
import pytest
import torch

from online_model import losses
from online_model.corpus import tiny_corpus
from online_model.models import MODELS, ModelConfig, build_model
from online_model.train import Features, make_batch

torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared machine


def _descends(params, fn, steps=60, lr=0.05) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = float(fn().detach())
    for _ in range(steps):
        opt.zero_grad()
        loss = fn()
        loss.backward()
        opt.step()
    return first, float(fn().detach())


def test_each_loss_decreases():
    torch.manual_seed(0)
    b, s, d, k = 8, 16, 6, 4
    user = torch.randn(b, d, requires_grad=True)
    pos = torch.randn(b, d)
    neg = torch.randn(s, d)
    target, neg_ids = torch.arange(b), torch.arange(100, 100 + s)
    for beta in (0.0, 1.0):
        a, z = _descends([user], lambda beta=beta: losses.sampled_softmax(user, pos, neg, target,
                                                                          neg_ids, beta))
        assert z < a
    vecs = torch.randn(b, k, d, requires_grad=True)
    mask = torch.ones(b, k)
    a, z = _descends([vecs], lambda: losses.ortho_loss(vecs + 2.0, mask, 0.3))  # start collinear
    assert z < a
    h1, h2 = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    a, z = _descends([h1, h2], lambda: losses.dis_loss(h1, h2))
    assert z < a
    rp, rn = torch.zeros(b, requires_grad=True), torch.zeros(b, s, requires_grad=True)
    red_p, red_n = torch.rand(b), torch.rand(b, s)
    alpha = torch.full((b,), 0.5)
    a, z = _descends([rp, rn], lambda: losses.utility_ranking_loss(
        torch.sigmoid(rp), torch.sigmoid(rn), red_p, red_n, alpha))
    assert z < a
    zed = torch.randn(b, d, requires_grad=True)
    du = torch.linspace(0, 1, b)
    a, z = _descends([zed], lambda: losses.diversity_contrastive_loss(zed, du))
    assert z < a


def test_utility_alpha_rises_with_d():
    # a novel positive and redundant negatives: more alpha (higher d_u) -> lower loss, so the
    # gradient through alpha pushes d_u up exactly when the next item is novel
    rel_p, rel_n = torch.tensor([0.6]), torch.tensor([[0.7, 0.5]])
    red_p, red_n = torch.tensor([0.0]), torch.tensor([[0.9, 0.9]])
    lo = losses.utility_ranking_loss(rel_p, rel_n, red_p, red_n, torch.tensor([0.05]))
    hi = losses.utility_ranking_loss(rel_p, rel_n, red_p, red_n, torch.tensor([0.45]))
    assert hi < lo


def test_gumbel_temperature_flattens():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    cold = losses.gumbel_interest_weights(logits, mask, torch.tensor([0.1]), noise=False)
    warm = losses.gumbel_interest_weights(logits, mask, torch.tensor([1.0]), noise=False)
    assert cold[0, 2] < 1e-6 and warm[0, 2] < 1e-6  # masked interest gets no weight
    assert warm[0, 1] > cold[0, 1]  # higher temperature (higher d_u) mixes more


@pytest.mark.parametrize("name", [*sorted(MODELS), "diam-plain", "diam-neg-max-no-global",
                                  "diam-global-gumbel", "diam-w-diverse", "comirec-dr-per-position"])
def test_model_loss_decreases(name):
    torch.manual_seed(0)
    c = tiny_corpus(n_users=30, n_items=40, n_categories=4, length=12, seed=0)
    feats = Features(np.full((len(c.items), 4), 0.5, np.float32),
                     np.linspace(0, 1, len(c.items)).astype(np.float32))
    plain = {"global_interest": False, "readout": "gumbel", "neg_max": False}
    variant = {"diam-plain": ("diam", plain),
               "diam-neg-max-no-global": ("diam", {**plain, "neg_max": True}),
               "diam-global-gumbel": ("diam", {"readout": "gumbel"}),
               "diam-w-diverse": ("diam", {"w_diverse": 0.5}),
               "comirec-dr-per-position": ("comirec-dr", {"dr_per_position": True})}
    name, extra = variant.get(name, (name, {}))
    cfg = ModelConfig(model=name, n_items=c.n_items, n_categories=c.n_categories, dim=16,
                      seq_len=10, k_max=4, n_interests=3, n_neg=20, dropout=0.0, **extra)
    model = build_model(cfg, c.item_cat).train()
    model.set_stage("joint", 1.0)
    pos = np.setdiff1d(np.arange(len(c.items)), c.offsets)[:64]  # every event with a history
    batch = make_batch(c, feats, pos, 10)
    neg = torch.arange(1, 21)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss, _ = model.loss(batch, neg)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.loss(batch, neg)[0].detach()) < first
