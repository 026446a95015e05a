"""Only a default full run writes the committed result: without ``--out`` a quick run writes
``bench/results/<name>_quick.json`` (``provenance.default_out``), as ``bench/loop.py`` does, and
one sized above the defaults ``<name>_large.json`` (``provenance.sized_out``)."""

from __future__ import annotations

import ast
import re

import pytest

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
        helped = [(n, ast.literal_eval(t)) for n, t in
                  re.findall(r'sized_out_help\(\s*"(\w+)", (\([^)]*\))[,)]', text)]
        used = [(n, ast.literal_eval(t)) for n, t in
                re.findall(r'sized_out\(ap, args, "(\w+)", (\([^)]*\))[,)]', text)]
        assert helped == used == [(script.stem, used[0][1])], script.name
    assert found >= 11


def test_an_unset_option_is_at_its_default_and_a_given_one_meets_its_full_size() -> None:
    """An option that defaults to None (the script fills it in, smaller with --quick) is at its
    default when left out and compared with ``full`` when given; one with neither a default
    nor a full size is refused, not compared with None."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)

    def name(*a: str) -> str:
        args = ap.parse_args(a)
        return prov.sized_out(ap, args, "x", ("events",), quick=args.quick,
                              full={"events": 100}).name

    assert [name(), name("--events", "100"), name("--events", "99"), name("--events", "101"),
            name("--quick"), name("--quick", "--events", "101")] == \
        ["x.json", "x.json", "x_quick.json", "x_large.json", "x_quick.json", "x_quick.json"]
    with pytest.raises(ValueError, match="repeats"):
        prov.sized_out(ap, ap.parse_args(["--repeats", "3"]), "x", ("repeats",))


def _where(script: str, argv: list[str]) -> str:
    """Where ``bench/<script>.py argv`` writes: a default path relative to the repository, an
    explicit ``--out`` as given (its parser and its own path rule, without running it)."""
    mod = load_bench(script)
    ap = mod.parser()
    args = ap.parse_args(argv)
    if script == "prequential":
        return f"bench/results/{mod.results_name(ap, args)}"
    path = mod.results_path(ap, args)
    return path.as_posix() if args.out else path.relative_to(BENCH.parent).as_posix()


# every default invocation the lead runs, then each size below, at and above its default
CASES = [
    ("stream", [], "stream.json"),
    ("stream", ["--quick"], "stream_quick.json"),
    ("stream", ["--events", "400000"], "stream.json"),
    ("stream", ["--events", "100000"], "stream_quick.json"),
    ("stream", ["--events", "800000"], "stream_large.json"),
    ("stream", ["--rate", "4000"], "stream_quick.json"),
    ("stream", ["--rate", "8000"], "stream_large.json"),
    ("stream", ["--low-rate", "2000"], "stream_large.json"),
    ("stream", ["--repeats", "3"], "stream_quick.json"),
    ("stream", ["--repeats", "5"], "stream.json"),
    ("stream", ["--fresh-repeats", "5"], "stream.json"),
    ("stream", ["--fresh-repeats", "8"], "stream_large.json"),
    ("stream", ["--replay-copies", "1"], "stream_quick.json"),
    ("stream", ["--replay-copies", "8", "--repeats", "7"], "stream_large.json"),
    ("stream", ["--quick", "--repeats", "9"], "stream_quick.json"),
    ("stream", ["--repeats", "2", "--out", "/tmp/s.json"], "/tmp/s.json"),
    ("serve", [], "serve.json"),
    ("serve", ["--quick"], "serve_quick.json"),
    ("serve", ["--events", "20000"], "serve_quick.json"),
    ("serve", ["--large-items", "2000000"], "serve_large.json"),
    ("serve", ["--large-items", "500000"], "serve_quick.json"),
    ("serve", ["--requests", "3000", "--load-seconds", "30"], "serve.json"),
    ("serve", ["--requests", "5000"], "serve_large.json"),
    ("serve", ["--load-seconds", "10"], "serve_quick.json"),
    ("serve", ["--click-rate", "0"], "serve_quick.json"),
    ("serve", ["--recall-queries", "4000"], "serve_large.json"),
    ("faults", [], "faults.json"),
    ("faults", ["--quick"], "faults_quick.json"),
    ("faults", ["--only", "kill9"], "faults_quick.json"),
    ("faults", ["--rate", "500"], "faults_quick.json"),
    ("faults", ["--rate", "2000"], "faults_large.json"),
    ("faults", ["--workers", "2", "--out", "bench/results/faults_two_workers.json"],
     "faults_two_workers.json"),
    ("faults", ["--base", "diam", "--workers", "2", "--out",
                "bench/results/faults_two_workers_diam.json"], "faults_two_workers_diam.json"),
    ("loop", [], "loop.json"),
    ("loop", ["--quick"], "loop_quick.json"),
    ("loop", ["--events", "5000"], "loop_quick.json"),
    ("loop", ["--rate", "100"], "loop_quick.json"),
    ("loop", ["--rate", "400"], "loop_large.json"),
    ("loop", ["--dim", "64"], "loop_large.json"),
    ("loop", ["--first-epochs", "1"], "loop_quick.json"),
    ("loop", ["--retrain-epochs", "2"], "loop.json"),
    ("loop", ["--retrain-epochs", "1"], "loop_quick.json"),
    ("loop", ["--retrain-epochs", "4"], "loop_large.json"),
    ("loop", ["--max-per-user", "32"], "loop_large.json"),
    ("loop", ["--click-first", "5"], "loop_quick.json"),
    ("prequential", [], "prequential.json"),
    ("prequential", ["--quick"], "prequential_quick.json"),
    ("prequential", ["--epochs", "4"], "prequential.json"),
    ("prequential", ["--epochs", "2"], "prequential_quick.json"),
    ("prequential", ["--epochs", "8"], "prequential_large.json"),
    ("prequential", ["--quick", "--early", "--tag", "x"], "prequential_quick_early_x.json"),
    ("prequential", ["--epochs", "8", "--early"], "prequential_large_early.json"),
    ("prequential", ["--tune", "--tag", "cadence"], "prequential_tune_cadence.json"),
    ("prequential", ["--tune", "--quick"], "prequential_tune.json"),
    ("prequential", ["--tune", "--epochs", "2"], "prequential_tune_quick.json"),
    ("metrics_cost", [], "metrics_cost.json"),
    ("metrics_cost", ["--tiny"], "metrics_cost_tiny.json"),
    ("metrics_cost", ["--repeats", "10", "--out", "bench/results/metrics_cost_10pairs.json"],
     "metrics_cost_10pairs.json"),
    ("metrics_cost", ["--repeats", "3"], "metrics_cost_quick.json"),
    ("metrics_cost", ["--events", "300000"], "metrics_cost.json"),
    ("metrics_cost", ["--events", "1000000"], "metrics_cost_large.json"),
    ("metrics_cost", ["--tiny", "--events", "1000000"], "metrics_cost_tiny.json"),
    ("metrics_cost", ["--tiny", "--events", "60000"], "metrics_cost_quick_tiny.json"),
    ("head_ab", ["--base", "HEAD~1"], "head_ab.json"),
    ("head_ab", ["--base", "HEAD~1", "--histories", "50"], "head_ab_quick.json"),
    ("head_ab", ["--base", "HEAD~1", "--lengths", "5", "--out", "/tmp/h.json"], "/tmp/h.json"),
    ("train_device", [], "train_device.json"),
    ("train_device", ["--device", "auto", "--only", "full,batch,cpu,synth,quarter,infer"],
     "train_device.json"),
    ("train_device", ["--only", "full"], "train_device_quick.json"),
    ("train_device", ["--device", "cpu", "--out", "/tmp/t.json"], "/tmp/t.json"),
    ("retrain_offline", [], "retrain_offline.json"),
    ("retrain_offline", ['{"w": {"epochs": 1, "lr": 0.01}}', "--out", "/tmp/r.json"],
     "/tmp/r.json"),
    ("model_quality", [], "model_quality_valid.json"),
    ("model_quality", ["--final"], "model_quality.json"),
    # the committed table's command (bench/results/model_quality.md)
    ("model_quality", ["--models", "diam", "comirec-sa", "comirec-dr", "mind", "single", "remi",
                       "adasr", "--ablations",
                       "diam, global slot alone at inference (same weights)", "--seeds", "10",
                       "11", "12", "13", "14", "15", "--lr-seeds", "10", "--lr-grid", "0.01",
                       "0.03", "--extend", "1", "--final", "--no-train"], "model_quality.json"),
    ("model_quality", ["--final", "--epochs", "2"], "model_quality_quick.json"),
    ("model_quality", ["--final", "--epochs", "10", "--max-per-user", "64"],
     "model_quality_large.json"),
    ("model_quality", ["--bootstrap", "100"], "model_quality_quick_valid.json"),
    ("model_quality", ["--final", "--models", "single", "--out", "/tmp/m.json"], "/tmp/m.json"),
]


@pytest.mark.parametrize(("script", "argv", "written"), CASES,
                         ids=[f"{s} {' '.join(a)}".strip() for s, a, _ in CASES])
def test_each_script_writes_its_committed_result_only_at_its_default_sizes(
        script: str, argv: list[str], written: str) -> None:
    expected = written if written.startswith("/") else f"bench/results/{written}"
    assert _where(script, argv) == expected


# options that change what is measured (not how much of it): without a named output refused
VARIANT_CASES = [
    ("faults", ["--workers", "2"], "--workers"),
    ("faults", ["--base", "diam", "--workers", "2"], "--workers/--base"),
    ("faults", ["--seed", "3"], "--seed"),
    ("stream", ["--replay-data", "/tmp/elsewhere"], "--replay-data"),
    ("serve", ["--processes", "2"], "--processes"),
    ("loop", ["--cold-retrain"], "--cold-retrain"),
    ("loop", ["--data", "/tmp/elsewhere"], "--data"),
    ("prequential", ["--set", "d_lr=0"], "--set"),
    ("prequential", ["--no-synth"], "--no-synth"),
    ("prequential", ["--checkpoint", "/tmp/ck", "--quick"], "--checkpoint"),
    ("metrics_cost", ["--users", "500"], "--users"),
    ("metrics_cost", ["--tiny", "--scrape-every", "0.5"], "--scrape-every"),
    ("head_ab", ["--base", "HEAD~1", "--checkpoint", "/tmp/ck"], "--checkpoint"),
    ("head_ab", ["--base", "HEAD~1", "--lengths", "5,10"], "--lengths"),
    ("train_device", ["--data", "/tmp/elsewhere"], "--data"),
    ("train_device", ["--device", "cpu", "--only", "cpu"], "--device"),
    ("retrain_offline", ['{"w": {"epochs": 1, "lr": 0.01}}'], "VARIANTS"),
    ("model_quality", ["--final", "--models", "single"], "--models"),
    ("model_quality", ["--final", "--data", "/tmp/r4"], "--data"),
    ("model_quality", ["--seeds", "3"], "--seeds"),
]


@pytest.mark.parametrize(("script", "argv", "named"), VARIANT_CASES,
                         ids=[f"{s} {' '.join(a)}" for s, a, _ in VARIANT_CASES])
def test_a_variant_without_a_named_output_is_refused_before_it_runs(
        script: str, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--workers 2`` (or ``--set``, another base, ...) measures something else than the
    committed ``<name>.json``: before, such a run wrote over it; now argparse refuses it (exit
    2) naming the options and how to name the output."""
    with pytest.raises(SystemExit) as exc:
        _where(script, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{named} change" in err and f"bench/results/{script}.json" in err
    assert ("--tag" if script == "prequential" else "--out") in err.splitlines()[-1]


def test_a_variant_with_its_output_named_and_default_paths_spelled_otherwise_run() -> None:
    assert _where("faults", ["--workers", "2", "--out", "/tmp/f.json"]) == "/tmp/f.json"
    assert _where("prequential", ["--set", "d_lr=0", "--tag", "nolr"]) == \
        "bench/results/prequential_nolr.json"
    assert _where("loop", ["--data", "data/ml-100k"]) == "bench/results/loop.json"
    assert _where("faults", ["--workers", "1", "--seed", "17"]) == "bench/results/faults.json"


def test_runs_that_write_no_file_have_no_path_and_refuse_nothing() -> None:
    """``model_quality.py --quick``/``--train-only`` and ``train_device.py --smoke`` print to
    stdout only: no default path, and a variant among them is not refused."""
    for script, argv in (("model_quality", ["--quick", "--models", "single"]),
                         ("model_quality", ["--train-only", "--seeds", "3"]),
                         ("train_device", ["--smoke", "--device", "cpu"])):
        mod = load_bench(script)
        ap = mod.parser()
        assert mod.results_path(ap, ap.parse_args(argv)) is None, (script, argv)
