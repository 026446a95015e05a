"""Checkpoint round trip: same outputs after load, the contract's files and online head."""

import json

import numpy as np
import pytest
import torch

from online_model.checkpoint import load_checkpoint, save_checkpoint
from online_model.checkpoint_config import CheckpointError
from online_model.corpus import tiny_corpus
from online_model.models import Batch, ModelConfig, build_model

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["diam", "mind"])
def test_round_trip(tmp_path, name):
    c = tiny_corpus(n_users=12, n_items=20, n_categories=3, length=8, seed=0)
    torch.manual_seed(0)
    cfg = ModelConfig(model=name, n_items=c.n_items, n_categories=c.n_categories, dim=8,
                      seq_len=10, k_max=4, n_interests=2)
    model = build_model(cfg, c.item_cat).eval()
    out = save_checkpoint(tmp_path / "ck", model, c, seed=3, train_metrics={"epochs": 1})
    files = {p.name for p in out.iterdir()}
    assert {"weights.safetensors", "config.json", "item_ids.npy", "item_categories.npy",
            "categories.json"} <= files
    conf = json.loads((out / "config.json").read_text())
    assert conf["model"] == name and conf["n_items"] == 20 and conf["seed"] == 3
    assert conf["data"]["events"] == len(c.items)
    assert np.array_equal(np.load(out / "item_ids.npy", allow_pickle=False), c.item_ids)

    ck = load_checkpoint(out)
    seq = torch.randint(1, 21, (4, 10))
    seq[0, :5] = 0
    b = Batch(seq, torch.tensor([5, 10, 10, 10]), torch.rand(4, 4))
    with torch.no_grad():
        a, z = model.interests(b), ck.model.interests(b)
    assert torch.equal(a.vecs, z.vecs) and torch.equal(a.mask, z.mask)
    assert np.array_equal(ck.online["online.item_emb"], model.item_table().detach().numpy())
    if name == "diam":
        assert {"online.gate_w1", "online.fusion_w"} <= set(ck.online)

    # save again over it (atomic swap), then corrupt the weights: the hash catches it
    save_checkpoint(out, model, c, seed=3)
    raw = bytearray((out / "weights.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (out / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)
