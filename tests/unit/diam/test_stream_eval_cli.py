"""``diam evaluate-stream`` scores a base trained only on the events before its cut (DESIGN.md
5): a checkpoint whose config.json says it read later events is refused, with both ranges and
the `diam train` that makes a proper one, unless --allow-leak (then the result says so); one
that records no range is evaluated with a warning. A dataset with no events is said to be
one. Neither Kafka nor Redis is needed."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from click.testing import CliRunner

from diam.cli import main


def _train(run, *args: str) -> None:
    r = run("train", "--epochs", "1", "--dim", "8", *args)
    assert r.exit_code == 0, r.output


def _refused(result) -> str:
    out = result.output
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), out
    assert out.startswith("Error: ") and "Traceback" not in out, out
    assert "recall@20" not in out, out
    return " ".join(out.split())


def test_a_checkpoint_trained_on_the_evaluated_period_is_refused(run, synth, tmp_path) -> None:
    # was: the full table, no warning, for a checkpoint trained on every event of the dataset
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--out", str(ck))
    cfg = json.loads((ck / "config.json").read_text())["data"]
    out = _refused(run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck),
                       "--quick"))
    events = cfg["events"]
    # both ranges, in ms as config.json and events.tsv hold them
    assert "trained on events from " in out and f"({cfg['ts_min']}) to " in out, out
    assert f"({cfg['ts_max']}) ({events:,} events)" in out, out
    assert (f"this run evaluates the last {events - events // 2:,} of {synth}'s {events:,} "
            "events (--warm-frac 0.5)") in out, out
    assert "--allow-leak" in out, out
    # the advice works: the `diam train` it names makes a checkpoint that passes
    advice = re.search(r"`(diam train [^`]*)`", out)
    assert advice is not None, out
    words = shlex.split(advice.group(1))
    assert words[:4] == ["diam", "train", "--data", str(synth)] and "--leave-newest" in words
    proper = tmp_path / "proper"
    _train(run, *[str(proper) if w == "DIR" else w for w in words[2:]])
    r = run("evaluate-stream", "--data", str(synth), "--checkpoint", str(proper), "--quick")
    assert r.exit_code == 0 and "Warning" not in r.output, r.output
    assert "\nreinfer " in r.output


def test_allow_leak_evaluates_it_with_a_warning_on_the_result(run, synth, tmp_path) -> None:
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--out", str(ck))
    args = ("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick",
            "--allow-leak")
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "\nguarded " in r.output
    last = r.output.splitlines()[-1]
    assert last.startswith(f"Warning: {ck} was trained on events from ") and \
        "(--allow-leak): it has seen the period it is scored on" in last, r.output
    saved = tmp_path / "r.json"
    r = CliRunner().invoke(main, [*args, "--json", "--out", str(saved)])
    assert r.exit_code == 0, r.output
    for res in (json.loads(r.stdout), json.loads(saved.read_text())):
        assert len(res["warnings"]) == 1 and "(--allow-leak)" in res["warnings"][0]
    assert r.stderr.startswith("Warning: ") and "(--allow-leak)" in r.stderr


def test_a_later_cut_than_the_training_cut_passes_an_earlier_one_does_not(run, synth,
                                                                          tmp_path) -> None:
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--leave-newest", "0.5", "--out", str(ck))
    ok = run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick",
             "--warm-frac", "0.6")
    assert ok.exit_code == 0 and "Warning" not in ok.output, ok.output
    out = _refused(run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck),
                       "--quick", "--warm-frac", "0.4"))
    assert "(--warm-frac 0.4)" in out and "--leave-newest 0.6" in out, out


def test_a_checkpoint_without_a_data_range_is_evaluated_with_a_warning(run, synth,
                                                                       tmp_path) -> None:
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--out", str(ck))
    cfg_path = ck / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["data"]  # as checkpoints written before the data range was recorded
    cfg_path.write_text(json.dumps(cfg))
    r = run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == (
        f"Warning: {ck}: cannot check that it was trained only on events before the cut (its "
        "config.json records neither data.ts_max nor a training cut): if it saw them, its rows "
        "score what it learnt"), r.output


@pytest.mark.parametrize("args", [[], ["--quick"]])
def test_a_dataset_without_events_is_said_to_have_none(run, synth, tmp_path, args) -> None:
    # was: "--user-fraction 1 is too small for this dataset: raise --user-fraction"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "items.tsv").write_text((synth / "items.tsv").read_text())
    (empty / "events.tsv").write_text((synth / "events.tsv").read_text().splitlines()[0] + "\n")
    out = _refused(run("evaluate-stream", "--data", str(empty), *args))
    assert f"Error: {empty}: the dataset has no events, nothing to evaluate" in out, out
    assert "--user-fraction" not in out and "--quick" not in out, out
