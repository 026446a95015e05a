"""``diam data``'s output directories: one that cannot be made (a path through a file) is one
``Error: cannot write ...`` line, never a traceback; a source that cannot be read is not
worded as a write error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from diam.cli import main


@pytest.fixture
def run(isolated_env):
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


def _raw_100k(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.data").write_text("1\t2\t5\t100\n2\t1\t3\t100\n")
    (raw / "u.item").write_text("1|A (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
                                "2|B (1996)|01-Jan-1996||http://y|" + "|".join(["0"] * 19) + "\n")
    return raw


@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_an_out_under_a_file_is_one_error_line(run, tmp_path, command) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    out = afile / "sub"
    args = (["synth", "--users", "5", "--items", "20"] if command == "synth"
            else ["prepare", str(_raw_100k(tmp_path))])
    r = run("data", *args, "--out", str(out), "--no-progress")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output == f"Error: cannot write {out}: Not a directory\n", r.output
    assert afile.read_text() == "not a directory"


def test_an_unreadable_source_is_not_a_write_error(run, tmp_path, monkeypatch) -> None:
    """Only the output's own paths are worded as "cannot write": an OSError on another
    path (the source) is a bug to show whole."""
    import online_model.movielens

    def unreadable(*a, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "raw" / "u.data"))

    monkeypatch.setattr(online_model.movielens, "read_movielens", unreadable)
    r = run("data", "prepare", str(_raw_100k(tmp_path)), "--out", str(tmp_path / "o"),
            "--no-progress")
    assert isinstance(r.exception, PermissionError) and "cannot write" not in r.output
