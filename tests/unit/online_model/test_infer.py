"""The compiled inference head equals DIAM's torch model in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.infer import DiamHead, HeadLoadError, host_has_fma
from online_model.models import ModelConfig, build_model
from online_model.models.base import Batch

N_ITEMS, N_CAT = 120, 7


def _model(global_interest: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cats = np.arange(N_ITEMS) % N_CAT
    cats[::11] = -1  # some items without a category
    cfg = ModelConfig(model="diam", n_items=N_ITEMS, n_categories=N_CAT, dim=16, k_max=4,
                      seq_len=20, window=5, global_interest=global_interest)
    m = build_model(cfg, cats)
    # move every weight off its initialisation so the comparison exercises all of them
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        m.fusion.linear.weight.copy_(torch.randn(1, 4))
    m.eval()
    tensors = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    tensors.update(m.export_online())
    return m, DiamHead(tensors, cfg.to_dict(), cats)


MODELS = {g: _model(g) for g in (True, False)}


def _torch(m, rows: np.ndarray, signals: np.ndarray):
    seq = np.zeros(m.cfg.seq_len, dtype=np.int64)
    r = rows[-m.cfg.seq_len:]
    seq[len(seq) - len(r):] = r + 1
    b = Batch(torch.as_tensor(seq)[None], torch.tensor([len(r)]), torch.as_tensor(signals)[None])
    with torch.inference_mode():
        out = m.interests(b)
    return out.vecs[0].numpy(), int(out.k[0]), float(out.extra["gate_prob"][0]), float(out.d_u[0])


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=30),
       signals=st.lists(st.floats(0, 1, width=32), min_size=4, max_size=4),
       global_interest=st.booleans())
def test_head_equals_the_torch_model(rows, signals, global_interest) -> None:
    m, head = MODELS[global_interest]
    rows, sig = np.array(rows), np.array(signals, dtype=np.float32)
    vecs, k, p, _ = _torch(m, rows, sig)
    out = head.infer(rows, sig)
    assert np.abs(out.vecs - vecs).max() <= 1e-4
    assert abs(out.gate_prob - p) <= 1e-5
    if abs(p * 4 - round(p * 4)) > 1e-4:  # away from a floor boundary the K_u must agree
        assert out.k == k


def test_d_is_the_exported_fusion() -> None:
    m, head = MODELS[True]
    sig = np.array([0.2, 0.9, 0.1, 0.5], dtype=np.float32)
    w = m.export_online()
    want = 1 / (1 + np.exp(-(float(w["online.fusion_w"] @ sig) + float(w["online.fusion_b"][0]))))
    assert head.infer(np.array([1, 2, 3]), sig).d == pytest.approx(want, abs=1e-6)


def test_same_history_same_bytes() -> None:
    _, head = MODELS[True]
    rows, sig = np.array([5, 9, 9, 17, 3]), np.full(4, 0.3, np.float32)
    a, b = head.infer(rows, sig), head.infer(rows.copy(), sig.copy())
    assert a.vecs.tobytes() == b.vecs.tobytes() and a.k == b.k


def test_refuses_what_it_cannot_do() -> None:
    _, head = MODELS[True]
    with pytest.raises(ValueError, match="at least one known item"):
        head.infer(np.array([], dtype=np.int64), np.zeros(4))
    with pytest.raises(HeadLoadError, match="not a DIAM checkpoint"):
        DiamHead({"item_emb.weight": np.zeros((3, 4))}, {}, np.zeros(2))


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=20))
def test_refresh_global_moves_slot_zero_to_the_windows_global_interest(rows) -> None:
    _, head = MODELS[True]
    rows = np.array(rows, dtype=np.int32)
    out = head.infer(rows, np.full(4, 0.5, np.float32))
    mean = head.item_emb[rows].astype(np.float64).mean(0)
    want = head.global_slot(mean, out.h_seq)
    # the inference's own slot 0 is the same function of the same window
    assert np.abs(out.vecs[0] - want).max() <= 1e-5
    a = np.random.default_rng(0).normal(size=(3, head.dim)).astype(np.float32)
    v = a + 0.1
    a0, v0 = a.copy(), v.copy()
    head.refresh_global(rows[::-1], out.h_seq, a.reshape(-1), v.reshape(-1))  # any order
    assert np.abs(a[0] - want).max() <= 1e-6
    assert np.allclose(v[0] - a[0], v0[0] - a0[0], atol=1e-6)  # the learnt offset rides along
    assert np.array_equal(a[1:], a0[1:]) and np.array_equal(v[1:], v0[1:])


@pytest.mark.skipif(not host_has_fma(), reason="the fused reference is the bits of FMA hosts")
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 11), k=st.integers(1, 13), m=st.integers(1, 20), seed=st.integers(0, 99))
def test_linear_has_the_bits_of_one_term_at_a_time(n, k, m, seed) -> None:
    """``_linear`` takes four rows and four terms per pass; its docstring promises the roundings
    of the plain loop (bias, then one fused multiply-add of x[i, kk]·w[kk, j] for kk
    ascending), so a history's anchors do not depend on the blocking. Shapes cover every
    remainder of the blocks. The reference fuses in float64: the float32 product is exact
    there, and the sum rounds to float32 as the fused operation does (a double rounding can
    only differ on an exact tie of the float64 sum, about one in 2^29)."""
    from online_model.infer import _linear

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k)).astype(np.float32)
    w = rng.normal(size=(k, m)).astype(np.float32)
    b = rng.normal(size=m).astype(np.float32)
    out = np.full((n, m), np.nan, np.float32)
    _linear(x, w, b, out)
    ref = np.empty((n, m), np.float32)
    for i in range(n):
        acc = b.copy()
        for kk in range(k):
            # fma: the product exact, one rounding of the sum
            acc = (acc.astype(np.float64)
                   + np.float64(x[i, kk]) * w[kk].astype(np.float64)).astype(np.float32)
        ref[i] = acc
    assert out.tobytes() == ref.tobytes()
