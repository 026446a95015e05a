"""``diam evaluate`` of a checkpoint trained with ``diam train --topic`` against the real broker:
the recorded range and catalogue topic are read again; after the catalogue grew (new items, new
clicks on them) the recorded range evaluates bit for bit as before, and the whole topic leaves
the clicks on the new items out and says how many; a topic that is not there is one error."""

from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner

from diam.cli import main
from online_model.datasets import load_prepared
from online_model.synth import SynthParams, write_synth
from streams.catalog import CatalogItem, publish_items
from streams.events import ClickEvent, encode_event
from streams.producer import produce_raw


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synth(SynthParams(users=30, items=80, categories=6, max_interests=4,
                            events_per_user=14, seed=7), out)
    return out


def _finite_metrics(res) -> dict:  # type: ignore[no-untyped-def]
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    for k in ("recall@20", "recall@50", "ndcg@50", "hr@20", "coverage@20"):
        assert math.isfinite(got[k]), (k, got)
    return got


def test_evaluate_reads_the_recorded_range_and_counts_clicks_on_new_items(
        stack, topic, synth_dir, tmp_path) -> None:
    items_topic = f"{topic}.items"
    base = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
            "DIAM_REDIS_URL": stack.redis_url}
    base.pop("DIAM_KAFKA_ITEMS_TOPIC", None)
    runner = CliRunner()
    with_items = {**base, "DIAM_KAFKA_ITEMS_TOPIC": items_topic}
    res = runner.invoke(main, ["produce", "--data", str(synth_dir), "--topic", topic,
                               "--catalog", "--no-progress"], env=with_items)
    assert res.exit_code == 0, res.output
    ck = tmp_path / "ck"
    res = runner.invoke(main, ["train", "--topic", topic, "--until", "0:40,1:40,2:40,3:40",
                               "--out", str(ck), "--epochs", "1", "--dim", "8",
                               "--device", "cpu", "--no-progress"], env=with_items)
    assert res.exit_code == 0, res.output
    recorded = json.loads((ck / "config.json").read_text())["data"]
    assert recorded["items_topic"] == items_topic
    n_events = recorded["events"]

    # no DIAM_KAFKA_ITEMS_TOPIC now: the catalogue topic comes from the checkpoint's record
    args = ["evaluate", "--checkpoint", str(ck), "--device", "cpu", "--json"]
    res = runner.invoke(main, args, env=base)
    first = _finite_metrics(res)
    assert first["data"] == {"topic": topic, "start": recorded["start"],
                             "end": recorded["end"], "items_topic": items_topic,
                             "unknown_item_clicks": 0}
    assert f"{topic}: 0 of {n_events:,} clicks left out" in res.stderr

    # the catalogue grows and the new items get clicks, after the recorded range
    kafka = stack.settings.kafka
    new = [CatalogItem(f"new-{j}", ("c0",), f"new {j}", 1) for j in range(3)]
    assert publish_items(kafka, items_topic, new).ok
    ds = load_prepared(synth_dir)
    users = sorted(set(ds.user_ids.tolist()))[:7]
    clicks = [(u, f"new-{j % 3}") for j, u in enumerate(users)]
    later = int(ds.ts_ms.max()) + 86_400_000
    assert produce_raw(kafka, topic, [(u.encode(), encode_event(ClickEvent(u, i, later)))
                                      for u, i in clicks]).ok

    res = runner.invoke(main, args, env=base)
    again = _finite_metrics(res)
    # the grown catalogue is expressed in the checkpoint's vocabulary: the same corpus, the
    # same ranking metrics (ILD sums float32 cosines: equal to rounding)
    assert again.keys() == first.keys()
    for k, v in first.items():
        if isinstance(v, float) and not k.startswith(("recall", "ndcg", "hr", "coverage")):
            assert (math.isnan(v) and math.isnan(again[k])) or math.isclose(
                v, again[k], rel_tol=1e-5, abs_tol=1e-7), (k, v, again[k])
        else:
            assert again[k] == v, (k, v, again[k])

    res = runner.invoke(main, [*args, "--topic", topic, "--items-topic", items_topic], env=base)
    whole = _finite_metrics(res)
    total = len(ds.ts_ms) + len(clicks)
    assert whole["data"]["unknown_item_clicks"] == len(clicks), res.stderr
    counted = [ln for ln in res.stderr.splitlines() if "clicks left out" in ln]
    assert counted == [f"{topic}: {len(clicks)} of {total:,} clicks left out, on items the "
                       f"checkpoint does not know (it knows {len(ds.items.ids)} items, the "
                       f"range and its catalogue name {len(ds.items.ids) + 3})"]

    res = runner.invoke(main, [*args, "--topic", f"{topic}.absent"], env=base)
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert errors == [f"Error: cannot read '{topic}.absent' / 'diam.items' at {stack.bootstrap}: "
                      f"topic '{topic}.absent' does not exist at {stack.bootstrap}"], res.output

    # a training user forgotten since: the recorded range now leaves their clicks out, and the
    # held-out users, drawn over the users, would be others (training users scored as held
    # out): refused, not scored
    first = str(ds.user_ids[int(ds.ts_ms.argmin())])  # the earliest click: in the range
    res = runner.invoke(main, ["forget", first, "--topic", topic], env=base)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, args, env=base)
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "users were forgotten (diam forget) since" in errors[0], res.output


def test_a_leave_newest_checkpoint_is_evaluated_on_its_training_corpus(
        stack, topic, synth_dir, tmp_path) -> None:
    """The recorded range read again is cut where `diam train --leave-newest` cut it (its
    users, its seeded split); --since without --topic reads another range of the recorded
    topic, and says that its split may hold users the checkpoint trained on."""
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_URL": stack.redis_url, "DIAM_KAFKA_ITEMS_TOPIC": f"{topic}.items"}
    runner = CliRunner()
    res = runner.invoke(main, ["produce", "--data", str(synth_dir), "--topic", topic,
                               "--catalog", "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    ck = tmp_path / "ck"
    res = runner.invoke(main, ["train", "--topic", topic, "--leave-newest", "0.2", "--out",
                               str(ck), "--epochs", "1", "--dim", "8", "--device", "cpu",
                               "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    recorded = json.loads((ck / "config.json").read_text())["data"]
    args = ["evaluate", "--checkpoint", str(ck), "--device", "cpu", "--json"]
    res = runner.invoke(main, args, env=env)
    _finite_metrics(res)
    assert f"(event time >= {recorded['holdout_from_ts']}), as training did" in res.stderr
    assert "warning" not in res.stderr, res.stderr

    res = runner.invoke(main, [*args, "--since", "0:2,1:2,2:2,3:2"], env=env)
    _finite_metrics(res)
    assert "may include users the checkpoint trained on" in res.stderr
    assert "the range the checkpoint was trained on" not in res.stderr


def test_the_recorded_range_typed_again_is_the_checkpoints_own_data(
        stack, topic, synth_dir, tmp_path) -> None:
    """``diam evaluate`` prints the recorded range "in the options that read it again": typed
    again (--topic, or --since/--until alone), it is the checkpoint's own data, with its own
    user split and the newest events --leave-newest left out. Was: "is not the data the
    checkpoint was trained on", no cut, another split (20 users instead of 19, some of them
    trained on)."""
    items_topic = f"{topic}.items"
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
           "DIAM_REDIS_URL": stack.redis_url, "DIAM_KAFKA_ITEMS_TOPIC": items_topic}
    runner = CliRunner()
    res = runner.invoke(main, ["produce", "--data", str(synth_dir), "--topic", topic,
                               "--catalog", "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    ck = tmp_path / "ck"
    res = runner.invoke(main, ["train", "--topic", topic, "--leave-newest", "0.3",
                               "--out", str(ck), "--epochs", "1", "--dim", "8",
                               "--device", "cpu", "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    args = ["evaluate", "--checkpoint", str(ck), "--device", "cpu", "--json"]
    res = runner.invoke(main, args, env=env)
    own = _finite_metrics(res)
    said = [ln for ln in res.stderr.splitlines()
            if ln.startswith("the range the checkpoint was trained on: ")]
    assert len(said) == 1 and "left out the newest" in res.stderr, res.stderr
    typed = said[0].split(": ", 1)[1].split()
    since, until = typed[typed.index("--since") + 1], typed[typed.index("--until") + 1]
    swapped = ",".join(reversed(since.split(",")))  # the same pairs in another order
    for again in (typed, ["--since", swapped, "--until", until]):
        res = runner.invoke(main, [*args, *again], env=env)
        got = _finite_metrics(res)
        assert "is not the data the checkpoint was trained on" not in res.stderr, res.stderr
        assert "left out the newest" in res.stderr, res.stderr
        assert got == own, (again, got, own)
