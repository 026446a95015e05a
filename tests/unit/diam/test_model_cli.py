"""``diam evaluate`` and ``diam train`` on checkpoints that cannot be used: one ``Error:`` line
naming the file and the key, never a traceback (the audit's repros, on a tiny checkpoint); and
``diam train`` putting back a checkpoint an interrupted save moved aside."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diam.cli import main
from online_model.testing import edited_checkpoint, tiny_diam_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    ck, _ = tiny_diam_checkpoint(tmp_path_factory.mktemp("ck") / "diam")
    return ck


@pytest.fixture
def run(isolated_env):
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


def _one_error(result, *words: str) -> str:
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    for w in words:
        assert w in out, (w, out)
    return out


CASES = {
    "cfg_kmax8": ({"k_max": 8}, ["config.json: k_max=8 but extractor.mix"]),
    "cfg_noseed": ({"seed": None, "split_seed": None},
                   ["config.json: no split_seed/seed, the held-out users cannot be rebuilt"]),
    "cfg_wrongtype": ({"dim": "sixty-four"}, ["config.json: dim='sixty-four' is not an integer"]),
    "cfg_badmodel": ({"model": "gpt"}, ["config.json: model='gpt'"]),
    "cfg_layers": ({"n_layers": 2}, ["config.json: n_layers=2"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_refuses_a_bad_config_in_one_line(run, good, tmp_path, case):
    changes, words = CASES[case]
    bad = edited_checkpoint(good, tmp_path / case, **changes)
    _one_error(run("evaluate", "--checkpoint", str(bad), "--device", "cpu",
                   "--data", str(tmp_path / "nodata")), *words, str(bad))


def test_evaluate_names_what_is_wrong_with_the_paths(run, good, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    _one_error(run("evaluate", "--checkpoint", str(tmp_path / "loop"), "--device", "cpu"),
               "symlink loop")
    _one_error(run("evaluate", "--checkpoint", str(tmp_path / "absent"), "--device", "cpu"),
               "does not exist")
    bad = edited_checkpoint(good, tmp_path / "w")
    (bad / "weights.safetensors").unlink()
    (bad / "weights.safetensors").symlink_to(bad / "weights.safetensors")
    _one_error(run("evaluate", "--checkpoint", str(bad), "--device", "cpu"),
               "weights.safetensors: a symlink loop")
    bad = edited_checkpoint(good, tmp_path / "npy")
    (bad / "item_ids.npy").write_bytes(b"")
    out = _one_error(run("evaluate", "--checkpoint", str(bad), "--device", "cpu"),
                     "item_ids.npy: not a valid .npy file")
    assert "pickle" not in out


def test_train_restores_a_checkpoint_an_interrupted_save_moved_aside(run, good, tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(good, tmp_path / ".ck.old")  # killed between the two renames
    result = run("train", "--out", str(out), "--data", str(tmp_path / "nodata"),
                 "--device", "cpu")
    assert result.exit_code == 1  # no dataset: training itself does not start
    assert "restored the previous checkpoint" in result.output
    assert (out / "weights.safetensors").is_file() and not os.path.lexists(tmp_path / ".ck.old")


def test_train_refuses_an_out_that_is_a_file_before_training(run, tmp_path):
    (tmp_path / "f").write_text("notes")
    result = run("train", "--out", str(tmp_path / "f"), "--data", str(tmp_path / "nodata"),
                 "--device", "cpu")
    assert result.exit_code == 2 and "is a file" in result.output, result.output
    assert (tmp_path / "f").read_text() == "notes"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = run("train", "--out", str(tmp_path / "dangling"), "--data", str(tmp_path / "x"),
                 "--device", "cpu")
    assert result.exit_code == 2 and "is not a directory" in result.output, result.output


def test_one_peak_learning_rate_for_diam_train_the_retrain_service_and_train() -> None:
    """TrainConfig.lr owns the default; diam train reads it (its option defaults to None) and
    the retrain service's setting restates it where torch is not imported."""
    from diam.retrain import RetrainConfig
    from online_model.train import TrainConfig

    assert RetrainConfig().lr == RetrainConfig().warm_lr == TrainConfig().lr == 1e-2
    lr = next(p for p in main.commands["train"].params if p.name == "lr")
    assert lr.default is None and "TrainConfig.lr" in (lr.help or "")


@pytest.mark.parametrize("files", [[], ["items.tsv"]])
def test_train_on_an_empty_or_unfinished_dataset_folder_says_how_to_make_one(run, tmp_path,
                                                                             files):
    # was: "Error: emptyd/events.tsv: missing", while a missing folder got the hint
    d = tmp_path / "emptyd"
    d.mkdir()
    for f in files:
        (d / f).write_text("item_id\tcategories\ttitle\n")
    _one_error(run("train", "--data", str(d), "--epochs", "1", "--dim", "8",
                   "--out", str(tmp_path / "ck")),
               f"{d / 'events.tsv'}: missing", "run `diam data prepare` or `diam data synth`")
    assert not (tmp_path / "ck").exists()
