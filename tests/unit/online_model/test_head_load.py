"""``DiamHead.from_checkpoint`` reads through the checked reader, as ``BaseView`` does: a
config.json that contradicts the weights is refused, naming the file, instead of being handed to
the compiled head (which would read its weight buffer at the config's offsets)."""

from __future__ import annotations

import numpy as np
import pytest

from online_model.base import BaseView
from online_model.checkpoint_config import CheckpointError
from online_model.infer import DiamHead
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
