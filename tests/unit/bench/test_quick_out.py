"""A quick run never overwrites a committed full result: without ``--out`` it writes
``bench/results/<name>_quick.json`` (``provenance.default_out``), as ``bench/loop.py`` does."""

from __future__ import annotations

import re

from tests.benchload import BENCH, load_bench

prov = load_bench("provenance")


def test_default_out_names_quick_runs_apart() -> None:
    assert prov.default_out("serve") == BENCH / "results" / "serve.json"
    assert prov.default_out("serve", quick=True) == BENCH / "results" / "serve_quick.json"
    assert prov.default_out("serve", quick=True).with_suffix(".md").name == "serve_quick.md"


def test_no_script_with_a_quick_mode_defaults_out_to_its_full_result() -> None:
    for script in sorted(BENCH.glob("*.py")):
        text = script.read_text(encoding="utf-8")
        if '"--quick"' not in text or '"--out"' not in text:
            continue
        fixed = re.search(r'add_argument\("--out"[^)]*default=(?!None)[^,)]*results', text)
        assert fixed is None, f"{script.name}: --out defaults to the full result even with --quick"


def test_a_sizing_option_below_its_default_makes_a_small_run() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    small = [prov.smaller_than_default(ap, ap.parse_args(a), ("events", "rounds"))
             for a in ([], ["--events", "100"], ["--events", "500"], ["--rounds", "1"])]
    assert small == [False, False, False, True]
