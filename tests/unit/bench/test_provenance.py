"""``bench/provenance.py``: the record every headline benchmark writes into its JSON says which
commit ran, which measured files were uncommitted, and how to run it again."""

from __future__ import annotations

import shlex
import subprocess

from tests.benchload import BENCH, load_bench

prov = load_bench("provenance")


def _git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                   check=True, capture_output=True)


def test_lists_only_uncommitted_measured_code(tmp_path) -> None:
    for f in ("streams/a.py", "bench/b.py", "bench/results/x.json", "docs/y.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "c")
    clean = prov.provenance(["bench/b.py"], root=tmp_path)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert clean["commit"] == head and clean["dirty_paths"] == []
    for f in ("streams/a.py", "bench/b.py", "bench/results/x.json", "docs/y.md"):
        (tmp_path / f).write_text("2\n")
    (tmp_path / "streams" / "new.py").write_text("")
    dirty = prov.provenance(["bench/b.py"], root=tmp_path)["dirty_paths"]
    # a run of several benchmarks rewrites bench/results as it goes: not the measured code
    assert sorted(dirty) == [" M bench/b.py", " M streams/a.py", "?? streams/new.py"]


def test_says_when_git_cannot_tell(tmp_path) -> None:
    rec = prov.provenance(["bench/b.py"], root=tmp_path)  # not a repository
    assert rec["commit"].startswith("git failed: ") and rec["dirty_paths"] == rec["commit"]


def test_command_runs_the_script_again_with_the_settings_it_depends_on(monkeypatch,
                                                                        tmp_path) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "64")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    monkeypatch.setenv("DIAM_CONFIG", "")
    rec = prov.provenance([str(BENCH / "faults.py"), "--only", "a b"])
    words = shlex.split(rec["command"])
    assert words[-4:] == ["python", "bench/faults.py", "--only", "a b"]
    assert "OPENBLAS_NUM_THREADS=1" in words and "DIAM_ONLINE_DIM=64" in words
    assert not any(w.startswith("UNRELATED") for w in words)
    assert rec["settings_file"] is None and rec["machine"]["cpus"] >= 1
    (tmp_path / "some.toml").write_text("[online]\n")
    monkeypatch.setenv("DIAM_CONFIG", str(tmp_path / "some.toml"))
    got = prov.provenance([str(BENCH / "faults.py")])["settings_file"]
    assert got["path"] == str(tmp_path / "some.toml") and len(got["sha256"]) == 16
