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


def _descend(ck, *lineage: str) -> None:
    """Mark ``ck`` as the retrain service marks a candidate warm-started from snapshots
    (config.json retrain.warm_start, newest first)."""
    path = ck / "config.json"
    cfg = json.loads(path.read_text())
    cfg["retrain"] = {"warm_start": {"from": lineage[0], "lineage": list(lineage)}}
    path.write_text(json.dumps(cfg))


def _snapshot(tmp_path, version: str, ck) -> None:
    """A snapshot ``version`` under DIAM_SNAPSHOT_DIR (the isolated env's) with ``ck``'s
    config.json: all the check reads of an ancestor."""
    d = tmp_path / "snaps" / version
    d.mkdir(parents=True)
    (d / "config.json").write_text((ck / "config.json").read_text())


def test_a_candidate_warm_started_from_a_snapshot_trained_past_the_cut_is_refused(
        run, synth, tmp_path) -> None:
    # was: evaluated without a word; the weights carry what the ancestor learnt after the cut
    leaky, ck = tmp_path / "leaky", tmp_path / "ck"
    _train(run, "--data", str(synth), "--out", str(leaky))
    _train(run, "--data", str(synth), "--leave-newest", "0.5", "--out", str(ck))
    _snapshot(tmp_path, "v-clean", ck)
    _snapshot(tmp_path, "v-leaky", leaky)
    _descend(ck, "v-clean", "v-leaky")
    args = ("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick")
    out = _refused(run(*args))
    ts_max = json.loads((leaky / "config.json").read_text())["data"]["ts_max"]
    assert out.startswith(f"Error: {ck}'s warm-start ancestor, snapshot v-leaky, was trained "
                          "on events from "), out
    assert f"({ts_max}) (" in out and "--allow-leak" in out, out
    r = run(*args, "--allow-leak")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1].startswith(
        f"Warning: {ck}'s warm-start ancestor, snapshot v-leaky, was trained on events"), r.output
    # an ancestor's own lineage is followed too (a candidate of before the lineage was kept)
    _descend(ck, "v-clean")
    _descend(tmp_path / "snaps" / "v-clean", "v-leaky")
    assert "snapshot v-leaky, was trained" in _refused(run(*args))
    # clean ancestors: evaluated without a warning
    _descend(tmp_path / "snaps" / "v-clean", "v-clean2")
    _snapshot(tmp_path, "v-clean2", ck)
    r = run(*args)
    assert r.exit_code == 0 and "Warning" not in r.output, r.output


def test_a_candidate_whose_ancestor_is_gone_is_refused_naming_it(run, synth, tmp_path) -> None:
    # was: evaluated without a word
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--leave-newest", "0.5", "--out", str(ck))
    _snapshot(tmp_path, "v-kept", ck)
    _descend(ck, "v-kept", "v-gone")
    args = ("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick")
    r = run(*args)
    out = _refused(r)
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "ancestor snapshot v-gone (no " in out and "v-kept" not in out, out
    assert "--allow-leak" in out, out
    r = run(*args, "--allow-leak")
    assert r.exit_code == 0, r.output
    last = r.output.splitlines()[-1]
    assert last.startswith("Warning: ") and "v-gone" in last and "(--allow-leak)" in last, \
        r.output


def test_nothing_scored_is_null_with_a_warning(run, synth, tmp_path) -> None:
    # was: recall 0.0 with the interval [0.0, 0.0] and numpy's divide warnings
    import warnings

    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "items.tsv").write_text((synth / "items.tsv").read_text())
    items = [line.split("\t")[0] for line in (synth / "items.tsv").read_text().splitlines()[1:]]
    rows, t = ["user_id\titem_id\tts_ms"], 1_000_000
    for _ in range(2):  # the second pass (after the cut) re-clicks the first's items
        for u in range(1, 31):
            for item in items[u % 7: u % 7 + 2]:
                rows.append(f"u{u}\t{item}\t{t}")
                t += 1000
    (rep / "events.tsv").write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = CliRunner().invoke(main, ["evaluate-stream", "--data", str(rep), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    for arm in ("popularity", "frozen", "guarded"):
        row = res["arms"][arm]
        assert row["recall@20"] is None and row["recall@20_ci"] is None, row
        assert row["ndcg@20"] is None and row["entropy@20"] is None, row
    assert res["arms"]["frozen"]["recall@20_diff_to_guarded_ci"] is None
    assert len(res["warnings"]) == 1 and res["warnings"][0].startswith(
        "no event was scored: each of the 60 events after the cut"), res["warnings"]
    text = run("evaluate-stream", "--data", str(rep))
    assert text.exit_code == 0, text.output
    assert "null" in text.output and text.output.splitlines()[-1].startswith(
        "Warning: no event was scored"), text.output


def test_quick_with_a_user_fraction_is_a_usage_error(run, synth) -> None:
    # was: --user-fraction 0.5 silently replaced by --quick's 0.1
    r = run("evaluate-stream", "--data", str(synth), "--quick", "--user-fraction", "0.5")
    assert r.exit_code == 2 and "--quick is --user-fraction 0.1" in r.output, r.output


def test_an_online_dim_set_to_another_size_is_said(run, synth, tmp_path,
                                                   monkeypatch) -> None:
    # was: DIAM_ONLINE_DIM=16 silently evaluated at the checkpoint's d=8
    ck = tmp_path / "ck"
    _train(run, "--data", str(synth), "--leave-newest", "0.5", "--out", str(ck))
    monkeypatch.setenv("DIAM_ONLINE_DIM", "16")
    r = run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == (
        f"Warning: {ck} has d=8, DIAM_ONLINE_DIM is 16: evaluated at d=8, the checkpoint's "
        "(`diam run` refuses it until DIAM_ONLINE_DIM=8)"), r.output
    monkeypatch.setenv("DIAM_ONLINE_DIM", "8")
    r = run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck), "--quick")
    assert r.exit_code == 0 and "Warning" not in r.output, r.output
