"""``diam evaluate`` and ``diam train`` on checkpoints that cannot be used: one ``Error:`` line
naming the file and the key, never a traceback (the audit's repros, on a tiny checkpoint); and
``diam train`` putting back a checkpoint an interrupted save moved aside."""

from __future__ import annotations

import json
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


def _synth(run, out: Path, users: int = 60) -> Path:
    r = run("data", "synth", "--users", str(users), "--items", "200", "--categories", "10",
            "--events-per-user", "20", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def _train(run, data: Path, out: Path, *args: str) -> Path:
    r = run("train", "--data", str(data), "--epochs", "1", "--dim", "8", "--device", "cpu",
            "--out", str(out), *args)
    assert r.exit_code == 0, r.output
    return out


def _refused_after_info(result, *words: str) -> str:
    """Like :func:`_one_error`, after the stderr lines that say what was read."""
    out = result.output
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in out, out
    assert all(not ln.startswith("Error") for ln in lines[:-1]), out
    for w in words:
        assert w in lines[-1], (w, out)
    return lines[-1]


@pytest.mark.parametrize("leave", [[], ["--leave-newest", "0.3"]])
def test_evaluate_refuses_its_dataset_prepared_again_since_training(run, tmp_path, leave):
    # was: the held-out users of the other events' 80/10/10 split, scored as the checkpoint's
    data = _synth(run, tmp_path / "syn")
    ck = _train(run, data, tmp_path / "ck", *leave)
    ok = run("evaluate", "--checkpoint", str(ck), "--device", "cpu", "--json")
    assert ok.exit_code == 0, ok.output
    events = data / "events.tsv"
    lines = events.read_text().splitlines()
    recorded = json.loads((ck / "config.json").read_text())["data"]["events"]
    events.write_text("\n".join(lines[:1] + lines[11:]) + "\n")  # 10 events fewer, the oldest
    for args in ([], ["--data", str(data)]):
        out = _refused_after_info(run("evaluate", "--checkpoint", str(ck), "--device", "cpu", *args),
                         f"Error: {data} no longer holds the events the checkpoint was "
                         f"trained on: {recorded - 10:,} events read, {recorded:,} when it "
                         "was trained (it was prepared again since")
        assert "another path" in out, out
    # the same number of events at other times
    shifted = [lines[0]] + ["\t".join([*ln.split("\t")[:2], str(int(ln.split("\t")[2]) + 1000)])
                            for ln in lines[1:]]
    events.write_text("\n".join(shifted) + "\n")
    _refused_after_info(run("evaluate", "--checkpoint", str(ck), "--device", "cpu"),
               "no longer holds the events the checkpoint was trained on: events from ")
    # a copy under another path is other data: its own split, with the warning that says so
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ck), "--device", "cpu",
                                  "--data", str(copy)])
    assert r.exit_code == 0 and "is not the data the checkpoint was trained on" in r.stderr, \
        r.output


def test_evaluate_takes_other_events_as_other_data_when_the_checkpoint_recorded_no_folder(
        run, tmp_path):
    # was (e15052b): refused as "prepared again since", a checkpoint that names no folder (the
    # benchmarks' first-half networks) evaluated on a whole dataset it was not trained on
    data = _synth(run, tmp_path / "syn")
    ck = _train(run, data, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    del cfg["data"]["path"]
    (ck / "config.json").write_text(json.dumps(cfg))
    same = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ck), "--device", "cpu",
                                     "--data", str(data)])
    assert same.exit_code == 0 and "is not the data" not in same.stderr, same.output
    events = data / "events.tsv"
    lines = events.read_text().splitlines()
    events.write_text("\n".join(lines[:1] + lines[11:]) + "\n")  # 10 events fewer
    other = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ck), "--device", "cpu",
                                      "--data", str(data)])
    assert other.exit_code == 0, other.output
    assert "is not the data the checkpoint was trained on" in other.stderr, other.output


def test_evaluate_json_writes_an_undefined_correlation_as_null(run, tmp_path):
    # was: "spearman_d_entropy": NaN, which is not JSON (1 test user: no rank correlation)
    ck = _train(run, _synth(run, tmp_path / "syn", users=10), tmp_path / "ck")
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ck), "--device", "cpu",
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout, r.stdout
    res = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))
    assert res["n_users"] == 1 and res["spearman_d_entropy"] is None, res
    assert list(res) == sorted(res), list(res)


def test_train_trains_at_the_size_the_stream_serves_unless_dim_says_otherwise(run, tmp_path,
                                                                              isolated_env):
    # was: --dim defaulted to 64 whatever DIAM_ONLINE_DIM said, and diam run refused the model
    data = _synth(run, tmp_path / "d")
    isolated_env.setenv("DIAM_ONLINE_DIM", "16")
    r = run("train", "--data", str(data), "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "a"))
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dim"] == 16
    _train(run, data, tmp_path / "b")  # --dim 8 wins, and says what diam run will do with it
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dim"] == 8
    r = run("train", "--data", str(data), "--epochs", "1", "--dim", "8", "--device", "cpu",
            "--out", str(tmp_path / "b"))
    assert (f"warning: {tmp_path / 'b'} has d=8, DIAM_ONLINE_DIM is 16 (set DIAM_ONLINE_DIM=8"
            in r.output), r.output
    isolated_env.setenv("DIAM_ONLINE_DIM", "2")
    _one_error(run("train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "c")),
               "settings online.dim is 2 (DIAM_ONLINE_DIM), diam train needs >= 4")
    assert not (tmp_path / "c").exists()


def test_train_help_names_the_setting_behind_dim(run):
    r = run("train", "--help")
    assert "[default: settings online.dim (64), DIAM_ONLINE_DIM]" in " ".join(r.output.split())
