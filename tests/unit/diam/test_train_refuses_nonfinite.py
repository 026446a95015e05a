"""``diam train`` refuses a NaN or infinite learning rate before reading anything, and a
training that diverged (a legal but far too large --lr) writes nothing: the checkpoint
already at --out stays as it was, and the command ends in one ``Error:`` line, rc 1 (was: rc 0,
NaN weights over the good checkpoint, found by the next ``diam evaluate`` or snapshot watch)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture
def synth(run, tmp_path) -> Path:
    r = run("data", "synth", "--users", "40", "--items", "100", "--categories", "10",
            "--events-per-user", "10", "--out", str(tmp_path / "syn"), "--no-progress")
    assert r.exit_code == 0, r.output
    return tmp_path / "syn"


def _train(run, data: Path, out: Path, *args: str):
    return run("train", "--data", str(data), "--epochs", "1", "--dim", "8", "--device", "cpu",
               "--batch-size", "16", "--out", str(out), *args)


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
def test_a_non_finite_lr_is_refused_before_training(run, tmp_path, lr):
    r = run("train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "ck"),
            "--lr", lr)
    assert r.exit_code == 2 and "Invalid value for '--lr'" in r.output, r.output
    assert not (tmp_path / "ck").exists()


def test_a_diverged_training_leaves_the_checkpoint_at_out_in_place(run, synth, tmp_path,
                                                                    isolated_env):
    isolated_env.setenv("DIAM_ONLINE_DIM", "8")
    out = tmp_path / "ck"
    r = _train(run, synth, out)
    assert r.exit_code == 0, r.output
    before = _digest(out)
    r = _train(run, synth, out, "--lr", "1e6")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert lines[-1].startswith("Error: the trained weights hold NaN or inf ("), r.output
    assert f"nothing written, {out} left as it was" in lines[-1], r.output
    assert not any(ln.startswith("Error") for ln in lines[:-1]), r.output
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ck")) == []
