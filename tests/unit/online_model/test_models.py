"""Shapes, masks and padding of every model over random sizes; the gate's range; MIND's K'."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.models import MODELS, Batch, ModelConfig, build_model
from online_model.models.extractor import hard_k
from online_model.models.layers import CapsuleRouting, ramp_mask
from online_model.models.mind import mind_k

torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared machine
N_ITEMS, N_CAT = 50, 5


def _model(name: str, dim: int = 16, seq_len: int = 10, k_max: int = 6):
    torch.manual_seed(0)
    cfg = ModelConfig(model=name, n_items=N_ITEMS, n_categories=N_CAT, dim=dim, seq_len=seq_len,
                      k_max=k_max, n_interests=3, window=5, n_neg=16)
    return build_model(cfg, np.arange(N_ITEMS) % N_CAT).eval()


MODELS_BUILT = {name: _model(name) for name in MODELS}


def _batch(b: int, lengths: list[int], seq_len: int = 10, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (b, seq_len), generator=g)
    for i, n in enumerate(lengths):
        seq[i, : seq_len - n] = 0  # right-aligned history of n items
    return Batch(seq, torch.tensor(lengths) + 3, torch.rand(b, 4, generator=g),
                 torch.randint(1, N_ITEMS + 1, (b,), generator=g), torch.rand(b, generator=g))


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), data=st.data())
def test_shapes_and_masks(name, data):
    b = data.draw(st.integers(1, 6))
    lengths = data.draw(st.lists(st.integers(1, 10), min_size=b, max_size=b))
    model = MODELS_BUILT[name]
    with torch.no_grad():
        out = model.interests(_batch(b, lengths))
    k = out.vecs.shape[1]
    assert out.vecs.shape == (b, k, 16) and out.mask.shape == (b, k)
    assert torch.isfinite(out.vecs).all()
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}  # hard mask at inference
    # active interests are a prefix: mask is non-increasing along the interest axis
    assert (out.mask[:, 1:] <= out.mask[:, :-1]).all()
    assert (out.k >= 1).all() and (out.k <= k).all()
    if name == "diam":
        assert out.d_u is not None and ((out.d_u > 0) & (out.d_u < 1)).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_content_is_ignored(name):
    model = copy.deepcopy(MODELS_BUILT[name])
    batch = _batch(3, [4, 7, 10])
    with torch.no_grad():
        a = model.interests(batch)
        # the same history alone: no leakage between users of a batch
        alone = model.interests(Batch(batch.seq[:1], batch.length[:1], batch.signals[:1]))
        model.item_emb.weight[0] = 50 * torch.randn(16)  # garbage in the padding row
        b = model.interests(batch)
    assert torch.allclose(a.vecs[:1], alone.vecs, atol=1e-5)
    assert torch.allclose(a.vecs, b.vecs, atol=1e-4)
    assert torch.equal(a.mask, b.mask)


def test_routing_softmax_over_interests_and_padding_masked():
    torch.manual_seed(0)
    for shared, per_position in ((True, False), (False, False), (False, True)):
        r = CapsuleRouting(8, 4, seq_len=6, iters=3, shared=shared, per_position=per_position)
        x = torch.randn(2, 6, 8)
        mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])
        caps, c = r(x, mask)
        assert torch.allclose(c[mask].sum(-1), torch.ones(int(mask.sum())))  # over interests
        assert (c[~mask] == 0).all()  # pads couple to nothing
        x2 = x.clone()
        x2[0, :2] = 100 * torch.randn(2, 8)  # garbage in the padded slots
        caps2, _ = r(x2, mask)
        assert torch.allclose(caps, caps2, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(p=st.floats(0, 1), k_max=st.integers(1, 16))
def test_gate_in_range(p, k_max):
    k = int(hard_k(torch.tensor([p]), k_max)[0])
    assert 1 <= k <= k_max
    if p < 1:
        assert k == int(np.floor(p * k_max)) + 1
    soft = ramp_mask(torch.tensor([p * k_max + 1]), k_max)[0]
    assert ((soft >= 0) & (soft <= 1)).all() and soft[0] == 1
    assert int((soft >= 1).sum()) == min(k_max, k) or p >= 1


def test_diam_gate_outputs_within_bounds():
    model = MODELS_BUILT["diam"]
    with torch.no_grad():
        out = model.interests(_batch(6, [1, 2, 5, 8, 10, 10], seed=3))
    assert ((out.k >= 1) & (out.k <= 6)).all()
    assert ((out.extra["gate_prob"] >= 0) & (out.extra["gate_prob"] <= 1)).all()


def test_mind_k():
    assert mind_k(torch.tensor([1, 3, 4, 8, 100]), 3).tolist() == [1, 1, 2, 3, 3]
    model = MODELS_BUILT["mind"]
    batch = _batch(2, [2, 10])
    batch.length = torch.tensor([2, 64])
    with torch.no_grad():
        out = model.interests(batch)
    assert out.k.tolist() == [1, 3]


def test_online_export_shapes():
    exp = MODELS_BUILT["diam"].export_online()
    assert exp["online.item_emb"].shape == (N_ITEMS, 16)
    h = exp["online.gate_w1"].shape[0]
    assert exp["online.gate_w1"].shape == (h, 16 + 4) and exp["online.gate_w2"].shape == (1, h)
    assert exp["online.fusion_w"].shape == (4,) and exp["online.fusion_b"].shape == (1,)
    assert set(MODELS_BUILT["mind"].export_online()) == {"online.item_emb"}


def test_online_head_reproduces_torch():
    """The numpy online head gives the same d_u and light-gate K_u as the torch modules."""
    model = copy.deepcopy(MODELS_BUILT["diam"]).train()
    with torch.no_grad():  # give the fusion and its running statistics non-trivial values
        model.fusion.linear.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.3]]))
        model.fusion.linear.bias.fill_(0.2)
        for _ in range(5):
            model.fusion(torch.rand(32, 4))
    model.eval()
    batch = _batch(5, [3, 5, 10, 10, 1])
    exp = model.export_online()
    with torch.no_grad():
        d_torch = model.interests(batch).d_u.numpy()
        g_torch = model.light_gate(batch).numpy()
    sig = batch.signals.numpy().astype(np.float64)
    d_np = 1 / (1 + np.exp(-(sig @ exp["online.fusion_w"] + exp["online.fusion_b"][0])))
    assert np.allclose(d_np, d_torch, atol=1e-5)
    emb = exp["online.item_emb"]
    for i in range(5):
        items = batch.seq[i][batch.seq[i] > 0].numpy() - 1
        x = np.concatenate([emb[items].mean(0), sig[i]])
        h = np.maximum(exp["online.gate_w1"] @ x + exp["online.gate_b1"], 0)
        z = exp["online.gate_w2"] @ h + exp["online.gate_b2"]
        assert np.allclose(1 / (1 + np.exp(-z[0])), g_torch[i], atol=1e-5)


def _global_diam(**extra):
    torch.manual_seed(0)
    cfg = ModelConfig(model="diam", n_items=N_ITEMS, n_categories=N_CAT, dim=16, seq_len=10,
                      k_max=6, window=5, n_neg=16, **extra)
    return build_model(cfg, np.arange(N_ITEMS) % N_CAT)


def test_global_slot_is_always_active_and_single_interest_shaped():
    model = _global_diam().eval()
    batch = _batch(5, [1, 3, 5, 8, 10])
    with torch.no_grad():
        out = model.interests(batch)
        x = model.item_emb(batch.seq)
        mean = (x * batch.mask[..., None]).sum(1) / batch.mask.sum(1, keepdim=True)
        _, h_seq = model.encoder(x, batch.mask)
        want = mean + model.global_mlp(torch.cat([mean, h_seq], -1))
    assert (out.mask[:, 0] == 1).all()  # K_u >= 1: the global slot is never switched off
    torch.testing.assert_close(out.vecs[:, 0], want)
    # the other slots are still the extractor's interests, not copies of the global vector
    assert not torch.allclose(out.vecs[:, 1], out.vecs[:, 0])


@pytest.mark.parametrize("readout", ["gumbel", "argmax"])
@pytest.mark.parametrize("neg_max", [False, True])
def test_global_slot_has_its_own_loss(readout, neg_max):
    """The global slot is trained by a softmax of its own. Without neg_max the readout of the
    diverse slots never selects it; with neg_max the readout is retrieval's (best of every
    slot, global included)."""
    model = _global_diam(readout=readout, neg_max=neg_max).train()
    model.set_stage("joint", 1.0)
    batch = _batch(6, [2, 4, 6, 8, 10, 10])
    loss, logs = model.loss(batch, torch.arange(1, 17))
    assert logs["global"] > 0 and torch.isfinite(loss)
    plain = copy.deepcopy(model)
    plain.cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "global_interest": False})
    _, logs_plain = plain.loss(batch, torch.arange(1, 17))
    assert logs_plain["global"] == 0.0
    m = torch.tensor([[1.0, 1.0, 0.5, 0.0, 0.0, 0.0]])
    want = m.tolist() if neg_max else [[0.0, 1.0, 0.5, 0.0, 0.0, 0.0]]
    assert model.readout_mask(m).tolist() == want
    assert plain.readout_mask(m).tolist() == m.tolist()


@pytest.mark.parametrize("stage", ["warmup", "joint", "finetune"])
def test_diam_training_step_under_cpu_autocast_bf16(stage, monkeypatch):
    """The GPU path's precondition: DIAM's loss runs under autocast (bfloat16 here, on CPU) with
    a finite loss and finite gradients. CUDA autocast refuses F.binary_cross_entropy on
    probabilities (CPU autocast lets it pass), so the test refuses it too: the d_u target must
    go through the logits form."""

    def refused(*args, **kwargs):
        raise RuntimeError("binary_cross_entropy is unsafe to autocast (CUDA refuses it)")

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy", refused)
    model = _model("diam").train()
    model.set_stage(stage, 0.5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = _batch(8, [10, 3, 7, 1, 10, 5, 9, 2])
    neg = torch.randint(1, N_ITEMS + 1, (16,), generator=torch.Generator().manual_seed(1))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, logs = model.loss(batch, neg)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in logs.values())
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diam_d_target_loss_equals_probability_bce():
    """The logits form of the d_u loss is the BCE of p_raw it replaced (fp32)."""
    model = _model("diam").train()
    batch = _batch(8, [10] * 8)
    out = model.interests(batch)
    want = torch.nn.functional.binary_cross_entropy(out.extra["d_raw"], batch.div_target)
    got = torch.nn.functional.binary_cross_entropy_with_logits(out.extra["d_logit"],
                                                               batch.div_target)
    assert torch.allclose(got, want, atol=1e-6)


def test_diam_fixed_k_keeps_the_first_slots_in_training_and_inference():
    """Ablation ``fixed_k``: K_u is that many slots whatever the gate says, in every stage."""
    cfg = ModelConfig(model="diam", n_items=N_ITEMS, n_categories=N_CAT, dim=16, seq_len=10,
                      k_max=6, window=5, n_neg=16, fixed_k=1)
    model = build_model(cfg, np.arange(N_ITEMS) % N_CAT)
    batch = _batch(5, [10, 4, 1, 8, 6])
    for stage in ("warmup", "joint"):
        model.train().set_stage(stage, 0.5)
        assert model.interests(batch).mask.tolist() == [[1.0] + [0.0] * 5] * 5
    model.eval()
    with torch.no_grad():
        assert model.interests(batch).k.tolist() == [1] * 5
    model.train()
    loss, _ = model.loss(batch, torch.arange(1, 17))
    assert torch.isfinite(loss)


def test_single_diam_option_trains_one_vector():
    """Ablation ``single_diam``: one interest from the mean plus DIAM's encoder summary and
    profile, trained with hard negatives; the plain single model is unchanged by the option's
    existence (same parameter names)."""
    cfg = ModelConfig(model="single", n_items=N_ITEMS, n_categories=N_CAT, dim=16, seq_len=10,
                      window=5, n_neg=16, single_diam=True)
    model = build_model(cfg, np.arange(N_ITEMS) % N_CAT).train()
    out = model.interests(_batch(3, [10, 2, 5]))
    assert out.vecs.shape == (3, 1, 16)
    loss, _ = model.loss(_batch(3, [10, 2, 5]), torch.arange(1, 17))
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.encoder.parameters())
    assert set(MODELS_BUILT["single"].state_dict()) == {"item_emb.weight", "mlp.0.weight",
                                                         "mlp.0.bias", "mlp.2.weight",
                                                         "mlp.2.bias"}


@pytest.mark.parametrize("name", ["remi", "adasr"])
def test_remi_and_adaptive_k_train(name):
    """REMI's loss carries its routing penalty; the adaptive-K model's gate gets a gradient
    through the soft mask and gives a hard prefix mask at inference."""
    model = _model(name).train()
    loss, logs = model.loss(_batch(6, [10, 3, 7, 1, 10, 5]), torch.arange(1, 17))
    loss.backward()
    assert torch.isfinite(loss)
    if name == "remi":
        assert "rr" in logs and logs["rr"] >= 0
    else:
        assert any(float(p.grad.abs().sum()) > 0 for p in model.gate.parameters())
        with torch.no_grad():
            out = model.eval().interests(_batch(6, [10, 3, 7, 1, 10, 5]))
        assert out.vecs.shape[1] == 3 and (out.mask[:, 1:] <= out.mask[:, :-1]).all()


@pytest.mark.parametrize("name", ["remi", "adasr"])
def test_new_baselines_round_trip_through_a_checkpoint(tmp_path, name):
    """A checkpoint records ``k_max = n_interests`` for every non-DIAM model: the adaptive-K
    model sizes its heads by n_interests, so it loads back with the same interests."""
    from online_model.checkpoint import load_checkpoint, save_checkpoint
    from online_model.corpus import tiny_corpus

    c = tiny_corpus(n_users=12, n_items=20, n_categories=3, length=8, seed=0)
    torch.manual_seed(0)
    cfg = ModelConfig(model=name, n_items=c.n_items, n_categories=c.n_categories, dim=8,
                      seq_len=10, k_max=4, n_interests=6)
    model = build_model(cfg, c.item_cat).eval()
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck", model, c, seed=0))
    seq = torch.randint(1, 21, (4, 10))
    b = Batch(seq, torch.tensor([10, 10, 10, 10]), torch.rand(4, 4))
    with torch.no_grad():
        a, z = model.interests(b), ck.model.interests(b)
    assert a.vecs.shape[1] == 6 and torch.equal(a.vecs, z.vecs) and torch.equal(a.mask, z.mask)
