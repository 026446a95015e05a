"""``bench/provenance.py``: the record every headline benchmark writes into its JSON says which
commit ran, which measured files were uncommitted, and how to run it again."""

from __future__ import annotations

import shlex
import subprocess

from tests.benchload import BENCH, load_bench

prov = load_bench("provenance")


def test_names_the_commit_and_only_measured_uncommitted_paths() -> None:
    rec = prov.provenance([str(BENCH / "stream.py"), "--quick"])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=prov.ROOT,
                          capture_output=True, text=True).stdout.strip()
    assert rec["commit"] == head
    for line in rec["dirty_paths"]:  # porcelain lines: "XY path"
        assert line[3:].split("/")[0] in prov.MEASURED, line
    assert rec["machine"]["cpus"] >= 1 and rec["machine"]["python"].count(".") == 2


def test_command_runs_the_script_again_with_the_settings_it_depends_on(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "64")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    words = shlex.split(prov.provenance([str(BENCH / "faults.py"), "--only", "a b"])["command"])
    assert words[-4:] == ["python", "bench/faults.py", "--only", "a b"]
    assert "OPENBLAS_NUM_THREADS=1" in words and "DIAM_ONLINE_DIM=64" in words
    assert not any(w.startswith("UNRELATED") for w in words)
