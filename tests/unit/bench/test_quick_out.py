"""Only a default full run writes the committed result: without ``--out`` a quick run writes
``bench/results/<name>_quick.json`` (``provenance.default_out``), as ``bench/loop.py`` does, and
one sized above the defaults ``<name>_large.json`` (``provenance.sized_out``)."""

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


def test_only_default_sizes_write_the_committed_result() -> None:
    """A sizing option below its default makes a quick run, one above it (none below) a large
    run: neither overwrites the committed ``<name>.json`` that a default full run writes."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    names = {tuple(a): prov.sized_out(ap, ap.parse_args(a), "x", ("events", "rounds")).name
             for a in ([], ["--events", "100"], ["--rounds", "1"], ["--events", "500"],
                       ["--events", "500", "--rounds", "1"])}
    assert names == {(): "x.json", ("--events", "100"): "x.json", ("--rounds", "1"): "x_quick.json",
                     ("--events", "500"): "x_large.json",
                     ("--events", "500", "--rounds", "1"): "x_quick.json"}


def test_sized_scripts_say_where_each_size_writes() -> None:
    """Each script that picks its path by its sizes says the rule in --out's help, through
    ``provenance.sized_out_help`` and with the same options as it passes to ``sized_out``."""
    found = 0
    for script in sorted(BENCH.glob("*.py")):
        text = script.read_text(encoding="utf-8")
        if "sized_out(" not in text or script.stem == "provenance":
            continue
        found += 1
        helped = re.findall(r'sized_out_help\("(\w+)", (\([^)]*\))\)', text)
        used = re.findall(r'sized_out\(ap, args, "(\w+)", (\([^)]*\))\)', text)
        assert helped == used == [(script.stem, used[0][1])], script.name
    assert found >= 6
