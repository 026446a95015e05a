"""Bad input to the model, evaluation, data, snapshot and inspect commands ends in click's
``Error: ...`` naming the option, never a traceback, and before anything changes; and
``diam evaluate-stream`` prints its text table. Neither Kafka nor Redis is needed: commands
run with ``--no-redis`` or fail on their input before they connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diam.cli import main


def _clean_error(result, *words: str, code: int | None = None) -> str:
    out = result.output
    assert result.exit_code != 0 and (code is None or result.exit_code == code), out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in out and "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


# -- evaluate-stream --------------------------------------------------------------------------

def test_evaluate_stream_prints_its_table_with_four_arms(run, synth) -> None:
    r = run("evaluate-stream", "--data", str(synth))
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    for arm in ("popularity", "frozen", "guarded", "unguarded"):
        assert f"\n{arm} " in r.output, r.output
    assert "popularity reference recall@20: " in r.output
    # long column names stay apart
    assert " recall@20_ci " in r.output and " recall@20_diff_to_guarded_ci" in r.output
    assert "prequential" not in r.output  # no progress bar when stderr is not a terminal
    help_text = " ".join(run("evaluate-stream", "--help").output.split())
    assert "Four arms" not in help_text  # it reports six with --checkpoint
    assert "reinfer" in help_text and "nosteps" in help_text and "six arms" in help_text
    assert "--progress / --no-progress" in help_text


def test_evaluate_stream_refuses_a_checkpoint_of_another_vocabulary(run, synth, tmp_path) -> None:
    from snapshotter.testing import write_checkpoint

    ck = write_checkpoint(tmp_path / "ck", n_items=30, dim=4)
    _clean_error(run("evaluate-stream", "--data", str(synth), "--checkpoint", str(ck)),
                 f"{synth}: item vocabulary differs from the checkpoint's (200 items in the "
                 "data, 30 in the checkpoint, 200 of the data's unknown to it)",
                 "`diam evaluate --data`", code=1)


def _fewer_items(src: Path, dst: Path) -> tuple[int, int]:
    """A dataset of every other item of ``src`` plus one item ``zz`` no checkpoint of ``src``
    knows (as `diam data prepare --min-rating 5` keeps a subset of ml-100k's items). Returns
    its (events, events on zz)."""
    dst.mkdir()
    head, *rows = (src / "items.tsv").read_text().splitlines()
    kept = rows[::2]
    (dst / "items.tsv").write_text("\n".join([head, *kept, "zz\tc0\t"]) + "\n")
    ids = {r.split("\t")[0] for r in kept}
    head, *events = (src / "events.tsv").read_text().splitlines()
    out, on_zz = [head], 0
    for n, e in enumerate(events):
        u, i, t = e.split("\t")
        if i in ids:
            out.append(e)
        elif n % 10 == 0:
            out.append(f"{u}\tzz\t{t}")
            on_zz += 1
    (dst / "events.tsv").write_text("\n".join(out) + "\n")
    return len(out) - 1, on_zz


def test_evaluate_data_of_fewer_items_maps_them_into_the_checkpoints(run, synth, tmp_path):
    # was: "Error: r5: item vocabulary differs from the checkpoint's" for a subset of its items
    ck = tmp_path / "ck"
    r = run("train", "--data", str(synth), "--epochs", "1", "--dim", "8", "--out", str(ck))
    assert r.exit_code == 0, r.output
    sub = tmp_path / "sub"
    total, on_zz = _fewer_items(synth, sub)
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ck), "--data", str(sub),
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert (f"{sub}: {on_zz} of {total:,} clicks left out, on items the checkpoint does not "
            "know (it knows 200 items, its items.tsv name 101)") in r.stderr
    res = json.loads(r.stdout)
    assert res["data"] == {"path": str(sub), "unknown_item_clicks": on_zz}
    assert res["n_users"] > 0 and 0.0 <= res["recall@50"] <= 1.0


@pytest.mark.parametrize("args", [["--user-fraction", "0.0001"],
                                  ["--user-fraction", "0.0001", "--json"]])
def test_evaluate_stream_refuses_a_fraction_that_selects_no_user(run, synth, args) -> None:
    out = _clean_error(run("evaluate-stream", "--data", str(synth), *args),
                       "Error: no users selected (", "--user-fraction", code=1)
    assert "recall@20" not in out and "NaN" not in out


def test_evaluate_stream_json_writes_undefined_values_as_null(run, synth, tmp_path,
                                                             monkeypatch) -> None:
    import online_model.prequential as prequential

    real = prequential.evaluate_path

    def with_nan(*a, **kw):
        res = real(*a, **kw)
        res["arms"]["frozen"]["recall@20_diff_to_guarded_ci"] = [float("nan"), float("nan")]
        return res

    monkeypatch.setattr(prequential, "evaluate_path", with_nan)
    out = tmp_path / "r.json"
    r = run("evaluate-stream", "--data", str(synth), "--json", "--out", str(out))
    assert r.exit_code == 0, r.output

    def strict(name):
        raise AssertionError(f"{name} is not JSON")

    for text in (r.output, out.read_text()):
        res = json.loads(text, parse_constant=strict)
        assert res["arms"]["frozen"]["recall@20_diff_to_guarded_ci"] == [None, None]


# -- train / evaluate -------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--dim", "0"], "--dim"),
    (["--seq-len", "0"], "--seq-len"), (["--device", "garbage"], "--device"),
])
def test_train_refuses_bad_numbers_and_devices(run, synth, tmp_path, args, option) -> None:
    out = tmp_path / "ck"
    _clean_error(run("train", "--data", str(synth), "--out", str(out), *args), option, code=2)
    assert not out.exists()


def test_evaluate_refuses_a_bad_device(run, tmp_path) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    _clean_error(run("evaluate", "--checkpoint", str(ck), "--device", "garbage"),
                 "--device", "garbage", code=2)


def test_a_checkpoint_records_its_data_absolute_and_an_old_relative_one_is_named(
        run, synth, tmp_path, monkeypatch) -> None:
    ck = tmp_path / "ck"
    monkeypatch.chdir(tmp_path)
    r = run("train", "--data", "syn", "--out", str(ck), "--epochs", "1", "--dim", "8",
            "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    config = json.loads((ck / "config.json").read_text())
    assert config["data"]["path"] == str(synth.resolve())
    monkeypatch.chdir(Path(__file__).parent)
    r = run("evaluate", "--checkpoint", str(ck), "--device", "cpu")
    assert r.exit_code == 0, r.output
    config["data"]["path"] = "syn"  # as checkpoints written before the fix stored it
    (ck / "config.json").write_text(json.dumps(config))
    _clean_error(run("evaluate", "--checkpoint", str(ck), "--device", "cpu"),
                 "recorded data path 'syn' was not found", "--data", code=1)


# -- snapshot ---------------------------------------------------------------------------------

def _two_versions(run, tmp_path) -> list[str]:
    from snapshotter.testing import write_checkpoint

    versions = []
    for i in (1, 2):
        ck = write_checkpoint(tmp_path / f"c{i}", n_items=30, dim=64, seed=i)  # DIAM_ONLINE_DIM
        r = run("snapshot", "publish", str(ck), "--no-redis")
        assert r.exit_code == 0, r.output
        versions.append(r.output.split("active: ")[1].split()[0])
    return versions


@pytest.mark.parametrize("ns", ["bad ns", ""])
def test_rollback_checks_the_namespace_before_the_pointer_moves(run, tmp_path, ns) -> None:
    from diam.settings import load_settings
    from snapshotter.store import SnapshotStore

    first, second = _two_versions(run, tmp_path)
    # the Redis URL points at a closed port: refused before a connection is tried
    _clean_error(run("snapshot", "rollback", first, "--namespace", ns), "--namespace", code=2)
    assert SnapshotStore(load_settings().snapshot).active_version() == second


@pytest.mark.parametrize("cmd", [["list", "--no-redis"], ["list"], ["watch", "--once", "--no-redis"],
                                 ["publish", "nowhere"]])
def test_snapshot_commands_refuse_an_empty_namespace(run, tmp_path, cmd) -> None:
    if cmd[0] == "publish":
        cmd = ["publish", str(tmp_path)]
    _clean_error(run("snapshot", *cmd, "--namespace", ""), "--namespace", code=2)


def test_watch_refuses_a_trainer_dir_that_does_not_exist(run, tmp_path) -> None:
    _clean_error(run("snapshot", "watch", "--once", "--no-redis", "--trainer-dir",
                     str(tmp_path / "nowhere")), "--trainer-dir", "does not exist", code=2)


def test_watch_waits_for_the_default_trainer_dir(run, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIAM_SNAPSHOT_TRAINER_DIR", str(tmp_path / "later"))
    r = run("snapshot", "watch", "--once", "--no-redis")
    assert r.exit_code == 0, r.output
    assert "does not exist yet" in r.output


# -- diff / inspect output files, data synth --------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["diff", "fixb-a", "fixb-b", "--csv", "/nonexistent/x.csv"], "--csv"),
    (["diff", "fixb-a", "fixb-b", "--plot", "/nonexistent/d.png"], "--plot"),
    (["diff", "fixb-a", "fixb-b", "--top", "-1"], "--top"),
    (["inspect", "namespace", "--plot", "/nonexistent/n.png"], "--plot"),
    (["inspect", "namespace", "--namespace", ""], "--namespace"),
    (["inspect", "user", "u1", "--namespace", ""], "--namespace"),
    (["inspect", "namespace", "--drift-topic", ""], "--drift-topic"),
    (["diff", "fixb-a", "fixb-b", "--plot", "d.txt"], "matplotlib writes"),
    (["inspect", "namespace", "--plot", "n.TXT"], "matplotlib writes"),
])
def test_output_files_and_counts_are_checked_before_redis_is_read(run, args, option) -> None:
    _clean_error(run(*args), option, code=2)


@pytest.mark.parametrize("args, words", [
    (["--categories", "5"], ["--max-interests (8)", "--categories (5)"]),
    (["--categories", "50", "--items", "10", "--max-interests", "2"],
     ["--categories (50)", "--items (10)"]),
])
def test_synth_names_the_options_whose_rule_fails(run, tmp_path, args, words) -> None:
    _clean_error(run("data", "synth", "--out", str(tmp_path / "x"), *args), *words, code=2)
    assert not (tmp_path / "x").exists()


def test_replay_help_names_both_replay_topics() -> None:
    out = CliRunner().invoke(main, ["replay", "--help"]).output
    assert "<deadletter_topic>.replay.<namespace>" in out
    assert "<drift_topic>.replay.<namespace>" in out
    assert "diam deadletters --topic" in out


def test_evaluate_stream_refuses_an_out_file_in_a_missing_directory(run, synth, tmp_path) -> None:
    _clean_error(run("evaluate-stream", "--data", str(synth), "--out",
                     str(tmp_path / "nowhere" / "r.json")), "--out", "does not exist", code=2)
    assert not (tmp_path / "nowhere").exists()


def test_evaluate_stream_names_an_out_file_it_cannot_write(run, synth, tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile" / "r.json", tmp_path / "afile" / "sub" / "r.json"):
        said = _clean_error(run("evaluate-stream", "--data", str(synth), "--json", "--out",
                                str(out)), "--out", "cannot write",
                            f"{tmp_path / 'afile'} is not a directory", code=2)
        assert "does not exist" not in said, said  # it exists: a file, not a directory


def test_train_can_leave_the_newest_events_out(run, synth, tmp_path) -> None:
    """``--leave-newest``: the events a retrain's gate holds out are left out of training by
    the same rule (online_model.retrain.time_split), and the cut is recorded."""
    import json

    import numpy as np

    from online_model.corpus import corpus_from_prepared
    from online_model.datasets import load_prepared
    from online_model.retrain import time_split

    full = corpus_from_prepared(load_prepared(synth))
    kept, cut = time_split(full, 0.25)
    out = tmp_path / "ck"
    r = run("train", "--data", str(synth), "--out", str(out), "--epochs", "1", "--dim", "8",
            "--device", "cpu", "--no-progress", "--leave-newest", "0.25")
    assert r.exit_code == 0, r.output
    assert f"left out the newest {len(full.items) - len(kept.items):,} of {len(full.items):,}" \
        in r.output and np.count_nonzero(full.ts >= cut) == len(full.items) - len(kept.items)
    assert json.loads((out / "config.json").read_text())["left_out_from_ts"] == cut
    for bad in ("0", "1", "1.5"):
        r = run("train", "--data", str(synth), "--out", str(out), "--leave-newest", bad)
        assert r.exit_code == 2 and "--leave-newest" in r.output, r.output


def test_train_refuses_data_and_topic_together(run, synth, tmp_path) -> None:
    out = _clean_error(run("train", "--data", str(synth), "--topic", "fix2.clicks", "--out",
                           str(tmp_path / "ck")), "--data and --topic are mutually exclusive",
                       code=2)
    assert "train on" in out
    assert not (tmp_path / "ck").exists()


def test_retrain_json_without_once_is_a_usage_error(run, monkeypatch) -> None:
    import diam.retrain

    def never(*a, **kw):
        raise AssertionError("the service was started")

    monkeypatch.setattr(diam.retrain, "Retrainer", never)
    _clean_error(run("retrain", "--json"), "--json needs --once", code=2)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_data_prepare_refuses_a_min_rating_that_is_not_finite(run, tmp_path, value) -> None:
    _clean_error(run("data", "prepare", "ml-100k", "--out", str(tmp_path / "o"),
                     "--min-rating", value), "--min-rating", "finite", code=2)
    assert not (tmp_path / "o").exists()


def test_data_prepare_refuses_a_min_rating_that_keeps_nothing(run, tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.data").write_text("1\t2\t5\t100\n2\t1\t3\t100\n")
    (raw / "u.item").write_text("1|A (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
                                "2|B (1996)|01-Jan-1996||http://y|" + "|".join(["0"] * 19) + "\n")
    _clean_error(run("data", "prepare", str(raw), "--out", str(tmp_path / "o"),
                     "--min-rating", "6"), "min_rating filter (>= 6) keeps none", code=1)
    assert not (tmp_path / "o").exists()


def test_retrain_refuses_the_removed_retrain_dim_before_it_starts(run, monkeypatch) -> None:
    """DIAM_RETRAIN_DIM is gone (the retrain service trains from scratch at DIAM_ONLINE_DIM):
    a deployment that still sets it is told so, an ``Error:`` line, before any retrain."""
    import diam.retrain

    def never(*a, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("the retrain service was started")

    monkeypatch.setattr(diam.retrain, "Retrainer", never)
    monkeypatch.setenv("DIAM_RETRAIN_DIM", "32")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "32")  # even equal to it: one owner of the size
    _clean_error(run("retrain", "--once"), "retrain.dim is gone: the model size is online.dim, "
                 "DIAM_ONLINE_DIM (from DIAM_RETRAIN_DIM)")
