"""``DiamHead.from_checkpoint`` reads through the checked reader, as ``BaseView`` does: a
config.json that contradicts the weights is refused, naming the file, instead of being handed to
the compiled head (which would read its weight buffer at the config's offsets). The capsule
layer's routing logits come from the checkpoint (``online.routing_init``) when it has them, so
loading a head needs no torch; older checkpoints draw them with torch, to the same bits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online_model import infer
from online_model.base import BaseLoadError, BaseView
from online_model.checkpoint import load_checkpoint, read_checkpoint, write_checkpoint_dir
from online_model.checkpoint_config import ROUTING_INIT_KEY, CheckpointError
from online_model.infer import DiamHead, HeadLoadError
from online_model.testing import edited_checkpoint, tiny_diam_checkpoint


@pytest.fixture(scope="module")
def diam_ck(tmp_path_factory):
    return tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam")[0]


def test_the_head_is_the_base_view_s(diam_ck):
    head, base = DiamHead.from_checkpoint(diam_ck), BaseView.from_checkpoint(diam_ck)
    assert base.head is not None
    rows, sig = np.arange(7), np.full(4, 0.25, np.float32)
    a, b = head.infer(rows, sig), base.head.infer(rows, sig)
    assert a.k == b.k and np.array_equal(a.vecs, b.vecs) and a.d == b.d


@pytest.mark.parametrize(("changes", "message"), [
    ({"dim": 16}, "config.json: dim=16 but"),
    ({"seq_len": None}, "config.json: seq_len=50 but encoder.pos_fine"),
    ({"k_max": 6}, "config.json: k_max=6 but"),
])
def test_a_config_the_weights_contradict_is_refused(diam_ck, tmp_path, changes, message):
    bad = edited_checkpoint(diam_ck, tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError) as info:
        DiamHead.from_checkpoint(bad)
    assert str(info.value).startswith(message) and str(bad) in str(info.value), info.value


def test_tampered_weights_are_refused(diam_ck, tmp_path):
    bad = edited_checkpoint(diam_ck, tmp_path / "bad")
    raw = bytearray((bad / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (bad / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        DiamHead.from_checkpoint(bad)


def _rewritten(src: Path, dst: Path, **tensors: np.ndarray | None) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` with its weights' ``tensors`` replaced (None
    drops one), through the trainer's writer: the shape of a checkpoint written before the
    routing logits were stored, or of one whose stored logits are damaged."""
    ck = read_checkpoint(src)
    weights = ck.tensors()
    for key, value in tensors.items():
        key = key.replace("__", ".")
        if value is None:
            del weights[key]
        else:
            weights[key] = value
    return write_checkpoint_dir(dst, weights, ck.item_ids, ck.config,
                                item_categories=ck.item_categories,
                                category_names=ck.category_names, item_pop=ck.item_pop)


def _torch_draw(seq_len: int, k: int) -> np.ndarray:
    import torch

    return torch.randn(seq_len, k, generator=torch.Generator().manual_seed(1)).numpy()


_ROUTING = ROUTING_INIT_KEY.replace(".", "__")


def test_new_checkpoints_store_the_logits_torch_draws(diam_ck):
    ck = read_checkpoint(diam_ck)
    stored = ck.tensors([ROUTING_INIT_KEY])[ROUTING_INIT_KEY]
    assert stored.dtype == np.float32 and stored.shape == (10, 4)  # seq_len, k_max
    assert np.array_equal(stored, _torch_draw(10, 4))
    # the torch model loads the checkpoint (the key is part of the online head, not the state
    # dict) and its own buffer is what was stored
    model = load_checkpoint(diam_ck).model
    assert np.array_equal(model.extractor.caps.b_init.numpy(), stored)


def test_stored_and_drawn_logits_give_the_same_bits(diam_ck, tmp_path, monkeypatch):
    old = _rewritten(diam_ck, tmp_path / "old", **{_ROUTING: None})
    assert ROUTING_INIT_KEY not in read_checkpoint(old).shapes
    drawn = DiamHead.from_checkpoint(old)  # torch draws them, as for checkpoints before

    def no_torch(*_, **__):
        raise AssertionError("drew the routing logits with torch although they are stored")

    monkeypatch.setattr(infer, "_draw_routing_init", no_torch)
    stored = DiamHead.from_checkpoint(diam_ck)
    with pytest.raises(AssertionError, match="drew the routing logits"):
        DiamHead.from_checkpoint(old)
    rng = np.random.default_rng(0)
    for n in (1, 3, 7, 10, 25):
        rows = rng.integers(0, 40, n)
        sig = rng.random(4).astype(np.float32)
        a, b = stored.infer(rows, sig), drawn.infer(rows, sig)
        assert np.array_equal(a.vecs, b.vecs) and np.array_equal(a.h_seq, b.h_seq)
        assert (a.k, a.gate_prob, a.d) == (b.k, b.gate_prob, b.d)
    assert np.array_equal(stored._buf, drawn._buf)  # every packed weight, the logits included


@pytest.mark.parametrize(("value", "message"), [
    (_torch_draw(10, 4).astype(np.float64), "is float64 [10, 4], expected float32 [10, 4]"),
    (_torch_draw(10, 4).astype(np.float16), "is float16 [10, 4], expected float32 [10, 4]"),
    (_torch_draw(10, 3), "is float32 [10, 3], expected float32 [10, 4]"),
    (_torch_draw(40, 1).reshape(-1), "is float32 [40], expected float32 [10, 4]"),
    (np.where(np.eye(10, 4) > 0, np.nan, _torch_draw(10, 4)).astype(np.float32),
     "holds NaN or inf"),
    (np.full((10, 4), np.inf, np.float32), "holds NaN or inf"),
])
def test_bad_stored_logits_are_a_load_error(diam_ck, tmp_path, value, message):
    bad = _rewritten(diam_ck, tmp_path / "bad", **{_ROUTING: value})
    with pytest.raises(HeadLoadError, match=re.escape(f"'{ROUTING_INIT_KEY}' {message}")):
        DiamHead.from_checkpoint(bad)
    with pytest.raises(BaseLoadError, match="weights.safetensors: checkpoint tensor"):
        BaseView.from_checkpoint(bad)  # what `diam run` and publish's usable check call


def test_a_snapshot_carries_the_stored_logits(diam_ck, tmp_path):
    from snapshotter import SnapshotConfig, SnapshotStore
    from snapshotter.publish import publish

    res = publish(diam_ck, SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"))))
    assert (res.path / "weights.safetensors").read_bytes() == \
        (diam_ck / "weights.safetensors").read_bytes()
    snap = read_checkpoint(res.path).tensors([ROUTING_INIT_KEY])[ROUTING_INIT_KEY]
    assert np.array_equal(snap, _torch_draw(10, 4))


def test_loading_a_head_does_not_import_torch(diam_ck):
    """A fresh process: torch costs about a second to import, more than the rest of the load."""
    code = ("import sys; from online_model.infer import DiamHead; "
            f"DiamHead.from_checkpoint({str(diam_ck)!r}); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
