"""``diam train`` refuses what would fail only after loading or training, before either: an
--out that cannot be written, a --seq-len the network refuses (DIAM's must be a multiple of its
window), and a --leave-newest that leaves no user (was: "Error: need at least one array to
concatenate"; the --seq-len one after loading the data, the --out one after training)."""

from __future__ import annotations

from pathlib import Path


def _usage_error(result, option: str, *words: str) -> None:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Invalid value for {option}: " in result.output, result.output
    for w in words:
        assert w in result.output, (w, result.output)


def test_an_out_that_cannot_be_written_is_refused_before_the_data_is_read(run, tmp_path):
    missing = tmp_path / "nodata"  # read first, it would say "does not exist" instead
    (tmp_path / "afile").write_text("notes")
    _usage_error(run("train", "--data", str(missing), "--out",
                     str(tmp_path / "afile" / "x" / "ck")),
                 "--out", f"{tmp_path / 'afile'} is not a directory")
    _usage_error(run("train", "--data", str(missing), "--out", "/proc/ck"), "--out",
                 "/proc/ck cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing left behind


def test_a_seq_len_diam_refuses_is_refused_before_the_data_is_read(run, tmp_path):
    _usage_error(run("train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "ck"),
                     "--seq-len", "7"),
                 "--seq-len", "seq_len 7 must be a multiple of window 5")
    assert not (tmp_path / "ck").exists()


def test_a_leave_newest_that_leaves_no_user_is_a_usage_error(run, tmp_path, isolated_env):
    isolated_env.setenv("DIAM_ONLINE_DIM", "8")
    r = run("data", "synth", "--users", "20", "--items", "60", "--categories", "10",
            "--events-per-user", "8", "--out", str(tmp_path / "syn"), "--no-progress")
    assert r.exit_code == 0, r.output
    _usage_error(run("train", "--data", str(tmp_path / "syn"), "--epochs", "1",
                     "--out", str(tmp_path / "ck"), "--leave-newest", "0.999"),
                 "--leave-newest", "0.999 leaves no user to train on (0 of ")
    assert not Path(tmp_path / "ck").exists()
