"""Every ``bench/*.py`` answers ``--help``: a runnable script exits 0 with a description and says
where it writes; a helper module says it is one and exits non-zero."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.benchload import BENCH

HELPERS = {"provenance", "serve_learner"}
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


def _help(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], cwd=BENCH.parent,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - HELPERS))
def test_script_help_describes_it_and_where_it_writes(name: str) -> None:
    r = _help(name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: "), r.stdout
    text = r.stdout.split("\n\n", 1)[1] if "\n\n" in r.stdout else ""
    description = text.split("\n\n", 1)[0].strip()
    assert description and not description.startswith(("options:", "positional arguments:")), \
        r.stdout
    lower = r.stdout.lower()
    assert "bench/results/" in lower or "writes no file" in lower or "stdout" in lower, r.stdout
    if "\n  --out OUT" in r.stdout:
        out_help = r.stdout.split("\n  --out OUT", 1)[1].split("\n  -", 1)[0].split("\n\n")[0]
        assert "default" in out_help, f"{name}: --out's help does not say where it writes"


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_helper_module_says_it_is_one(name: str) -> None:
    r = _help(name)
    assert r.returncode != 0
    assert "helper module" in r.stderr
