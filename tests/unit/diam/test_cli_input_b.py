"""Bad input to the model, evaluation, data, snapshot and inspect commands ends in click's
``Error: ...`` naming the option, never a traceback, and before anything changes; and
``diam evaluate-stream`` prints its text table. Neither Kafka nor Redis is needed: commands
run with ``--no-redis`` or fail on their input before they connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diam.cli import main


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("DIAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DIAM_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args))

    return invoke


def _clean_error(result, *words: str, code: int | None = None) -> str:
    out = result.output
    assert result.exit_code != 0 and (code is None or result.exit_code == code), out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in out and "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


@pytest.fixture
def synth(run, tmp_path) -> Path:
    out = tmp_path / "syn"
    r = run("data", "synth", "--users", "60", "--items", "200", "--categories", "10",
            "--events-per-user", "20", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    return out


# -- evaluate-stream --------------------------------------------------------------------------

def test_evaluate_stream_prints_its_table_with_four_arms(run, synth) -> None:
    r = run("evaluate-stream", "--data", str(synth))
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    for arm in ("popularity", "frozen", "guarded", "unguarded"):
        assert f"\n{arm} " in r.output, r.output
    assert "popularity reference recall@20: " in r.output
    # long column names stay apart
    assert " recall@20_ci " in r.output and " recall@20_diff_to_guarded_ci" in r.output
    assert "Four arms" in run("evaluate-stream", "--help").output


# -- train / evaluate -------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--dim", "0"], "--dim"),
    (["--seq-len", "0"], "--seq-len"), (["--device", "garbage"], "--device"),
])
def test_train_refuses_bad_numbers_and_devices(run, synth, tmp_path, args, option) -> None:
    out = tmp_path / "ck"
    _clean_error(run("train", "--data", str(synth), "--out", str(out), *args), option, code=2)
    assert not out.exists()


def test_evaluate_refuses_a_bad_device(run, tmp_path) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    _clean_error(run("evaluate", "--checkpoint", str(ck), "--device", "garbage"),
                 "--device", "garbage", code=2)


def test_a_checkpoint_records_its_data_absolute_and_an_old_relative_one_is_named(
        run, synth, tmp_path, monkeypatch) -> None:
    ck = tmp_path / "ck"
    monkeypatch.chdir(tmp_path)
    r = run("train", "--data", "syn", "--out", str(ck), "--epochs", "1", "--dim", "8",
            "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    config = json.loads((ck / "config.json").read_text())
    assert config["data"]["path"] == str(synth.resolve())
    monkeypatch.chdir(Path(__file__).parent)
    r = run("evaluate", "--checkpoint", str(ck), "--device", "cpu")
    assert r.exit_code == 0, r.output
    config["data"]["path"] = "syn"  # as checkpoints written before the fix stored it
    (ck / "config.json").write_text(json.dumps(config))
    _clean_error(run("evaluate", "--checkpoint", str(ck), "--device", "cpu"),
                 "recorded data path 'syn' was not found", "--data", code=1)
