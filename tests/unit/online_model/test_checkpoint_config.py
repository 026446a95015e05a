"""config.json against the weights: one checker (``checkpoint_config.check_config``) that every
reader runs (read_checkpoint, so publish; load_checkpoint; BaseView and the compiled head), its
shape table pinned to the torch models it stands for; the loader's path and file errors; and the
checkpoint swap under SIGKILL."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from online_model.base import BaseLoadError, BaseView
from online_model.checkpoint import (
    load_checkpoint,
    read_checkpoint,
    recover_checkpoint_dir,
    write_checkpoint_dir,
)
from online_model.checkpoint_config import (
    KNOWN_MODELS,
    CheckpointError,
    check_config,
    network_shapes,
)
from online_model.testing import edited_checkpoint, tiny_diam_checkpoint

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def diam_ck(tmp_path_factory) -> Path:
    ck, _ = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam")
    return ck


# -- the shape table is the torch models' -----------------------------------------------------
@pytest.mark.parametrize("model", sorted(KNOWN_MODELS))
@pytest.mark.parametrize("flags", [{}, {"global_interest": False, "n_layers": 2},
                                   {"single_diam": True, "dr_per_position": True}])
def test_network_shapes_are_the_torch_state_dict(model, flags):
    import torch

    from online_model.models import ModelConfig, build_model

    cfg = ModelConfig(model=model, n_items=7, n_categories=3, dim=8, k_max=3, n_interests=2,
                      seq_len=10, window=5, light_hidden=6, **flags)
    torch.manual_seed(0)
    sd = build_model(cfg, np.zeros(7, np.int64)).state_dict()
    want = {k: list(v.shape) or [1] for k, v in sd.items()}  # a scalar is written [1]
    assert network_shapes(cfg.to_dict()) == want


def test_the_torch_free_tables_match_the_models():
    from online_model.checkpoint_config import _FLAGS, _INTS
    from online_model.models import MODELS, ModelConfig
    from online_model.models.base import LEGACY

    assert tuple(sorted(MODELS)) == KNOWN_MODELS
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for key, (default, _) in _INTS.items():
        assert default == (None if defaults[key] is dataclasses.MISSING else defaults[key]), key
    assert _FLAGS == {k: LEGACY.get(k, defaults[k]) for k in _FLAGS}


# -- every reader refuses a config.json the weights do not match -------------------------------
BAD = [
    ({"k_max": 8}, "config.json: k_max=8 but extractor.mix in weights.safetensors is [4]"),
    ({"dim": "sixty-four"}, "config.json: dim='sixty-four' is not an integer"),
    ({"dim": 16}, "config.json: dim=16 but online.item_emb"),
    ({"seq_len": 20}, "config.json: seq_len=20 but encoder.pos_fine"),
    ({"window": 2}, "config.json: window=2 but encoder.pos_coarse in weights.safetensors is [2, 8]"),
    ({"window": 3}, "config.json: window=3 does not divide seq_len=10"),
    ({"n_heads": 3}, "config.json: n_heads=3 does not divide dim=8"),
    ({"n_layers": 2}, "config.json: n_layers=2 but weights.safetensors has 1 encoder layer"),
    ({"n_categories": 6}, "config.json: n_categories=6 but extractor.gate.0.weight"),
    ({"n_categories": 2}, "config.json: n_categories=2 but extractor.gate.0.weight"),
    ({"global_interest": False}, "config.json: global_interest=false but weights.safetensors "
                                 "holds global_mlp.0.weight"),
    ({"k_max": True}, "config.json: k_max=True is not an integer"),
    ({"k_max": 0}, "config.json: k_max=0 is below 1"),
    ({"routing_iters": 2.5}, "config.json: routing_iters=2.5 is not an integer"),
    ({"n_items": 39}, "config.json: n_items=39 but item_ids.npy has 40 rows"),
    ({"model": "gpt"}, "config.json: model='gpt' is not one of"),
    ({"model": None}, "config.json: model=None is not one of"),
    ({"light_hidden": 8}, "config.json: light_hidden=8 but light.l1.weight"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_every_reader_refuses_a_config_the_weights_do_not_match(diam_ck, tmp_path, changes,
                                                                message):
    bad = edited_checkpoint(diam_ck, tmp_path / "bad", **changes)
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(bad)
        text = str(info.value)
        assert text.startswith(message) and text.endswith(f"(in {bad})"), text
        assert "\n" not in text
    with pytest.raises(BaseLoadError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        BaseView.from_checkpoint(bad)


def test_an_empty_config_is_refused(diam_ck, tmp_path):
    bad = tmp_path / "bad"
    edited_checkpoint(diam_ck, bad)
    (bad / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="config.json: model=None is not one of"):
        read_checkpoint(bad)


def test_the_stream_s_head_is_built_from_the_checked_fields(diam_ck, tmp_path):
    """A config.json without ``dim`` or ``seq_len``: the head takes the weights' d (it used its
    own default, 64, and read its weight buffer at offsets for d = 64), and the default seq_len
    (50) is refused against the weights' 10 positions instead of being read past their end."""
    base = BaseView.from_checkpoint(edited_checkpoint(diam_ck, tmp_path / "nodim", dim=None))
    assert base.head is not None and base.head.dim == 8 == base.dim
    out = base.head.infer(np.arange(5), np.zeros(4, np.float32))
    assert out.vecs.shape == (4, 8) and np.isfinite(out.vecs).all()
    with pytest.raises(BaseLoadError, match="config.json: seq_len=50 but encoder.pos_fine"):
        BaseView.from_checkpoint(edited_checkpoint(diam_ck, tmp_path / "noseq", seq_len=None))


@pytest.mark.parametrize("model", sorted(KNOWN_MODELS))
def test_the_project_writers_checkpoints_stay_valid(tmp_path, model):
    ck, _ = tiny_diam_checkpoint(tmp_path / model, model=model)
    assert read_checkpoint(ck).config["model"] == model
    load_checkpoint(ck)
    BaseView.from_checkpoint(ck)


def test_encoder_options_bind_only_the_models_with_the_encoder(tmp_path):
    """MIND has no dual-scale encoder: a seq_len that its (unused) default window does not
    divide, or heads that do not divide dim, are a valid MIND checkpoint."""
    from online_model.checkpoint import save_checkpoint
    from online_model.corpus import tiny_corpus
    from online_model.models import ModelConfig, build_model

    c = tiny_corpus(n_users=12, n_items=20, n_categories=3, length=8, seed=0)
    cfg = ModelConfig(model="mind", n_items=c.n_items, n_categories=c.n_categories, dim=8,
                      seq_len=7, n_heads=3, n_interests=2)
    ck = save_checkpoint(tmp_path / "mind", build_model(cfg, c.item_cat), c, seed=0)
    assert load_checkpoint(ck).config["seq_len"] == 7


def test_item_table_checkpoints_stay_valid(tmp_path):
    from snapshotter.testing import write_checkpoint

    read_checkpoint(write_checkpoint(tmp_path / "snap", n_items=30, dim=8))
    # tests/integration/helpers.py: an item table labelled "tiny", no network
    emb = np.eye(6, 4, dtype=np.float32)
    ck = write_checkpoint_dir(tmp_path / "tiny", {"online.item_emb": emb},
                              np.array([f"i{j}" for j in range(6)]),
                              {"model": "tiny", "k_max": 4, "seq_len": 50, "n_categories": 6},
                              item_categories=np.arange(6) % 6)
    assert BaseView.from_checkpoint(ck).anchor_kind == "kmeans"


def test_publish_refuses_a_bad_config_and_keeps_the_active_version(diam_ck, tmp_path):
    from snapshotter import SnapshotConfig, SnapshotError, SnapshotStore, publish

    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "s")))
    first = publish(diam_ck, store)
    active = (tmp_path / "s" / "ACTIVE").read_bytes()
    for i, changes in enumerate([{"k_max": 8}, {"model": "gpt"}, {"dim": "sixty-four"}]):
        bad = edited_checkpoint(diam_ck, tmp_path / f"bad{i}", **changes)
        with pytest.raises(SnapshotError, match="config.json: "):
            publish(bad, store)
        assert (tmp_path / "s" / "ACTIVE").read_bytes() == active
    assert store.active_version() == first.version


# -- load_checkpoint: size mismatches the checker did not see are still one error --------------
def test_load_checkpoint_turns_size_mismatches_into_a_checkpoint_error(diam_ck, tmp_path,
                                                                       monkeypatch):
    import online_model.checkpoint as checkpoint

    bad = edited_checkpoint(diam_ck, tmp_path / "bad", k_max=8)
    monkeypatch.setattr(checkpoint, "check_config",  # where read_checkpoint looks it up
                        lambda d, cfg, *a, **k: check_config(d, {**cfg, "k_max": 4}, *a, **k))
    with pytest.raises(CheckpointError, match=r"^weights.safetensors: shapes differ from "
                                              r"config.json \(size mismatch for extractor.mix"):
        load_checkpoint(bad)


def test_a_missing_split_seed_is_a_checkpoint_error(diam_ck, tmp_path):
    ck = load_checkpoint(edited_checkpoint(diam_ck, tmp_path / "a", seed=None, split_seed=None))
    with pytest.raises(CheckpointError, match=r"^config.json: no split_seed/seed, the held-out"):
        ck.split_seed()
    assert load_checkpoint(edited_checkpoint(diam_ck, tmp_path / "b", split_seed=7)).split_seed() == 7
    ck = load_checkpoint(edited_checkpoint(diam_ck, tmp_path / "c", split_seed="x"))
    with pytest.raises(CheckpointError, match="config.json: split_seed='x' is not an integer"):
        ck.split_seed()


# -- paths and files: the cause, not "missing" --------------------------------------------------
def test_directory_errors_say_which_kind(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name, why in [("nonexistent", "does not exist"), ("loop", "a symlink loop"),
                      ("file", "not a directory"), ("dangling", "which does not exist")]:
        with pytest.raises(CheckpointError, match=why):
            read_checkpoint(tmp_path / name)
        with pytest.raises(BaseLoadError, match=why):
            BaseView.from_checkpoint(tmp_path / name)


def test_weights_that_are_not_a_file_are_named_as_such(diam_ck, tmp_path):
    cases = {"loop": "weights.safetensors: a symlink loop",
             "dangling": "weights.safetensors: a symlink to .*, which does not exist",
             "dir": "weights.safetensors: a directory, not a file"}
    for case, why in cases.items():
        d = edited_checkpoint(diam_ck, tmp_path / case)
        w = d / "weights.safetensors"
        w.unlink()
        if case == "loop":
            w.symlink_to(w)
        elif case == "dangling":
            w.symlink_to(tmp_path / "gone")
        else:
            w.mkdir()
        with pytest.raises(CheckpointError, match=why):
            read_checkpoint(d)
    d = edited_checkpoint(diam_ck, tmp_path / "cats")
    (d / "item_categories.npy").unlink()
    (d / "item_categories.npy").symlink_to(tmp_path / "gone")
    with pytest.raises(CheckpointError, match="item_categories.npy: a symlink to"):
        read_checkpoint(d)


def test_a_broken_npy_is_not_a_valid_npy_and_nothing_advises_unpickling(diam_ck, tmp_path):
    d = edited_checkpoint(diam_ck, tmp_path / "empty")
    (d / "item_ids.npy").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(d)
    assert str(info.value).startswith("item_ids.npy: not a valid .npy file")
    assert "pickle" not in str(info.value)
    d = edited_checkpoint(diam_ck, tmp_path / "truncated")
    (d / "item_ids.npy").write_bytes((d / "item_ids.npy").read_bytes()[:140])
    with pytest.raises(CheckpointError, match="item_ids.npy: not a valid .npy file") as info:
        read_checkpoint(d)
    assert "allow_pickle" not in str(info.value)
    d = edited_checkpoint(diam_ck, tmp_path / "objects")
    np.save(d / "item_ids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="item_ids.npy: holds Python objects .*never "
                                              "unpickles") as info:
        read_checkpoint(d)
    assert "allow_pickle" not in str(info.value)


# -- the swap: a complete checkpoint under the name at every instant, even under SIGKILL --------
_KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    import numpy as np
    import online_model.checkpoint as c

    out, n, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    calls = [0]

    def step(f):
        def g(*a, **k):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return f(*a, **k)
        return g

    c._exchange = step(c._exchange if exchange else (lambda a, b: False))
    c.os.replace, c.shutil.rmtree = step(os.replace), step(shutil.rmtree)
    emb = np.full((3, 2), 2.0, np.float32)
    c.write_checkpoint_dir(out, {"online.item_emb": emb}, np.array(["a", "b", "c"]),
                           {"model": "diam", "generation": "new"})
    print("finished", calls[0])
""")


def _swap_killed_at(tmp_path: Path, n: int, exchange: bool) -> tuple[Path, int, str]:
    out = tmp_path / "ck"
    write_checkpoint_dir(out, {"online.item_emb": np.ones((3, 2), np.float32)},
                         np.array(["a", "b", "c"]), {"model": "diam", "generation": "old"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _KILLER, str(out), str(n), "1" if exchange else "0"],
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    return out, p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_save_killed_at_any_step_leaves_a_complete_checkpoint(tmp_path, exchange):
    n, finished = 1, False
    while not finished:
        run = tmp_path / f"kill{n}"
        out, rc, log = _swap_killed_at(run, n, exchange)
        finished = rc == 0
        assert finished or rc == -signal.SIGKILL, log
        if not exchange:  # the one window of the fallback: recovery closes it
            recover_checkpoint_dir(out)
        gen = read_checkpoint(out).config["generation"]  # complete, old or new
        assert gen == ("new" if finished else gen)
        leftovers = [p.name for p in run.iterdir() if p.name != "ck"]
        assert all(name.startswith(".ck.") for name in leftovers), leftovers
        n += 1
        assert n < 10, log


def test_the_exchange_leaves_no_window(tmp_path):
    """Killed right after the exchange, before the old directory is removed: the name holds
    the new checkpoint, with no recovery step (the old code left no `ck` at its second step)."""
    for n in (1, 2):
        out, rc, log = _swap_killed_at(tmp_path / f"k{n}", n, exchange=True)
        assert rc == -signal.SIGKILL, log
        assert read_checkpoint(out).config["generation"] == ("old" if n == 1 else "new")


def test_recover_puts_the_old_directory_back_only_when_the_name_is_missing(tmp_path):
    out = tmp_path / "ck"
    write_checkpoint_dir(out, {"online.item_emb": np.ones((3, 2), np.float32)},
                         np.array(["a", "b", "c"]), {"model": "diam"})
    assert not recover_checkpoint_dir(out)
    os.replace(out, tmp_path / ".ck.old")
    with pytest.raises(CheckpointError, match=r"does not exist \(a save into it was "
                                              r"interrupted; .ck.old holds"):
        read_checkpoint(out)
    assert recover_checkpoint_dir(out) and read_checkpoint(out).item_ids.tolist() == ["a", "b", "c"]


def test_leftovers_of_killed_saves_older_than_an_hour_are_removed(tmp_path):
    stale, fresh, other = (tmp_path / ".ck.abcd1234", tmp_path / ".ck.efgh5678",
                           tmp_path / ".ck.v2.abcd1234")
    for p in (stale, fresh, other):
        p.mkdir()
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    write_checkpoint_dir(tmp_path / "ck", {"online.item_emb": np.ones((3, 2), np.float32)},
                         np.array(["a", "b", "c"]), {"model": "diam"})
    assert not stale.exists() and fresh.exists() and other.exists()


def test_a_file_or_a_link_under_the_name(tmp_path):
    emb = {"online.item_emb": np.ones((3, 2), np.float32)}
    (tmp_path / "f").write_text("notes")
    with pytest.raises(CheckpointError, match="not a directory; not replaced"):
        write_checkpoint_dir(tmp_path / "f", emb, np.array(["a", "b", "c"]), {"model": "diam"})
    assert (tmp_path / "f").read_text() == "notes"
    target = write_checkpoint_dir(tmp_path / "v1", emb, np.array(["a", "b", "c"]), {"model": "x"})
    (tmp_path / "latest").symlink_to(target)
    write_checkpoint_dir(tmp_path / "latest", emb, np.array(["a", "b", "c"]), {"model": "y"})
    assert not (tmp_path / "latest").is_symlink() and read_checkpoint(target).config["model"] == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "latest", "v1"]
