"""``diam evaluate`` on a checkpoint trained from a clicks topic (``diam train --topic``): it reads
the range the checkpoint recorded again, or the one ``--topic/--since/--until`` name, expresses
the clicks in the checkpoint's item vocabulary (a grown catalogue changes nothing; clicks on
items it does not know are left out and counted on stderr), and refuses what it cannot use in
one ``Error:`` line. The broker's three reads (range, clicks, catalogue) are faked here; the
real broker runs the same path in tests/integration/test_evaluate_topic.py."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from diam.cli import main
from online_model.corpus import tiny_corpus
from streams.catalog import Catalog, CatalogItem
from streams.kafka_io import UnknownTopic
from streams.replay import Bound, ReplayRange
from streams.topic_corpus import TopicClicks

T0 = 1_700_000_000_000


class FakeBroker:
    """Topics of clicks ``(user, item, ts)`` and catalogues ``{item: category}``, read through
    ``resolve_range``/``read_clicks``/``read_catalog``; ``calls`` records the ranges asked."""

    def __init__(self) -> None:
        self.clicks: dict[str, list[tuple[str, str, int]]] = {}
        self.catalogs: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, Bound | None, Bound | None]] = []

    def resolve_range(self, kafka: Any, topic: str, start: Bound | None,
                      end: Bound | None, options: tuple[str, str] = ("--from", "--to"),
                      ) -> ReplayRange:
        self.calls.append((topic, start, end))
        if topic not in self.clicks:
            raise RuntimeError(f"topic {topic!r} does not exist at {kafka.bootstrap}")
        n = len(self.clicks[topic])
        lo = start.offsets if start is not None and start.offsets else {0: 0, 1: 0}
        hi = end.offsets if end is not None and end.offsets else {0: n // 2, 1: n - n // 2}
        return ReplayRange(topic, dict(lo), dict(hi))

    def read_clicks(self, kafka: Any, rng: ReplayRange, flow: Any = None) -> TopicClicks:
        out = TopicClicks(rng.topic, rng)
        for u, i, t in self.clicks[rng.topic]:
            out.users.append(u)
            out.items.append(i)
            out.ts.append(t)
        out.records = len(out.ts)
        return out

    def read_catalog(self, kafka: Any, topic: str) -> Catalog:
        if topic not in self.catalogs:  # as streams.catalog.read_catalog says it
            raise UnknownTopic(f"topic {topic!r} does not exist (publish a catalogue with "
                               "`diam produce --catalog`)")
        return Catalog({i: CatalogItem(i, (c,), f"title {i}", 1)
                        for i, c in self.catalogs[topic].items()})


@pytest.fixture
def broker(isolated_env) -> FakeBroker:
    b = FakeBroker()
    isolated_env.setattr("streams.replay.resolve_range", b.resolve_range)
    isolated_env.setattr("streams.topic_corpus.read_clicks", b.read_clicks)
    isolated_env.setattr("streams.catalog.read_catalog", b.read_catalog)
    c = tiny_corpus(n_users=30, n_items=40, n_categories=4, length=8, seed=2)
    user_of = np.repeat(c.users, c.lengths())
    b.clicks["t"] = [(str(u), str(c.item_ids[i]), int(ts) + T0)
                     for u, i, ts in zip(user_of, c.items, c.ts, strict=True)]
    b.catalogs["t.items"] = {str(i): c.category_names[k] for i, k in zip(c.item_ids, c.item_cat,
                                                                          strict=True)}
    return b


@pytest.fixture
def run(broker):
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


@pytest.fixture
def trained(run, broker, tmp_path):
    out = tmp_path / "ck"
    r = run("train", "--topic", "t", "--items-topic", "t.items", "--out", str(out),
            "--epochs", "1", "--dim", "8", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    broker.calls.clear()
    return out


def _metrics(r) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for k in ("recall@20", "ndcg@50", "hr@20", "coverage@20"):
        assert math.isfinite(res[k]), (k, res)
    return res


def _same_metrics(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal but for ``data``; ILD sums float32 cosines, whose rounding may follow the memory
    layout: equal to 1e-5."""
    assert a.keys() == b.keys()
    for k, v in b.items():
        if k == "data":
            continue
        if k.startswith("ild") or (isinstance(v, float) and math.isnan(v)):
            assert (math.isnan(v) and math.isnan(a[k])) or math.isclose(
                v, a[k], rel_tol=1e-5, abs_tol=1e-7), (k, v, a[k])
        else:
            assert a[k] == v, (k, v, a[k])


def _one_error(r, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in errors[0], (w, r.output)
    return errors[0]


def test_the_recorded_range_is_read_again_and_a_grown_catalogue_changes_nothing(
        run, broker, trained) -> None:
    data = json.loads((trained / "config.json").read_text())["data"]
    assert (data["topic"], data["items_topic"]) == ("t", "t.items")
    before = _metrics(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json"))
    (topic, start, end), = broker.calls
    assert topic == "t" and start == Bound(offsets={0: 0, 1: 0})
    assert end == Bound(offsets={int(p): o for p, o in data["end"].items()})

    # new items sort among the old ones: the topic's item table is in another order now
    broker.catalogs["t.items"].update({"i15a": "c1", "a-new": "c0", "zz": "c2"})
    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json")
    after = _metrics(r)
    _same_metrics(after, before)
    assert after["data"]["unknown_item_clicks"] == 0 and after["data"]["topic"] == "t"
    assert "--topic t --since 0:0,1:0 --until" in r.stderr and "--items-topic t.items" in r.stderr
    assert "t: 0 of 240 clicks left out, on items the checkpoint does not know" in r.stderr
    assert "catalogue name 43)" in r.stderr


def test_another_range_leaves_out_clicks_on_items_the_checkpoint_does_not_know(
        run, broker, trained) -> None:
    broker.catalogs["t.items"].update({"new1": "c0", "new2": "c3"})
    later = [(f"u{u:04d}", f"new{1 + u % 2}", T0 + 10**7 + u) for u in range(0, 30, 3)]
    broker.clicks["t2"] = broker.clicks["t"] + later
    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--topic", "t2",
            "--items-topic", "t.items", "--until", "0:125,1:125", "--json")
    res = _metrics(r)
    assert broker.calls == [("t2", None, Bound(offsets={0: 125, 1: 125}))]
    assert res["data"]["unknown_item_clicks"] == 10 and res["data"]["topic"] == "t2"
    lines = [ln for ln in r.stderr.splitlines() if "clicks left out" in ln]
    assert lines == ["t2: 10 of 250 clicks left out, on items the checkpoint does not know (it "
                     "knows 40 items, the range and its catalogue name 42)"]
    text = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--topic", "t2",
               "--items-topic", "t.items")
    assert text.exit_code == 0 and "recall@20" in text.stdout and "K_u histogram" in text.stdout


def test_a_range_of_another_catalogue_is_refused(run, broker, trained) -> None:
    broker.clicks["other"] = [(f"u{u}", f"m{u % 7}", T0 + u) for u in range(60)]
    broker.catalogs["other.items"] = {f"m{j}": "x" for j in range(7)}
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--topic",
                   "other", "--items-topic", "other.items"),
               "other: none of its 60 clicks is on an item the checkpoint knows",
               "trained on another catalogue")


def test_an_unreadable_topic_is_one_error_line(run, broker, trained) -> None:
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--topic",
                   "gone"), "cannot read 'gone'", "topic 'gone' does not exist")
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--topic",
                   "t", "--items-topic", "no.items"), "publish a catalogue")


@pytest.mark.parametrize("args, words", [
    (["--data", "somewhere", "--topic", "t"], ["--data and --topic are mutually exclusive"]),
    (["--data", "somewhere", "--since", "5"], ["read a clicks topic: not with --data"]),
    (["--topic", ""], ["--topic"]),
])
def test_usage_errors(run, broker, trained, args, words) -> None:
    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", *args)
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert broker.calls == []


@pytest.mark.parametrize("data, words", [
    ({"topic": "t", "start": {"0": 0}, "end": "40"}, ["data.end='40' is not partition offsets"]),
    ({"topic": "t", "start": {"0": -1}, "end": {"0": 3}}, ["data.start={'0': -1}"]),
    ({"topic": "t", "start": {"0": 0}, "end": {"1": 3}}, ["name other partitions"]),
    ({"topic": 7, "start": {"0": 0}, "end": {"0": 3}}, ["data.topic=7 is not a topic name"]),
])
def test_a_broken_recorded_range_is_named(run, broker, trained, tmp_path, data, words) -> None:
    from online_model.testing import edited_checkpoint

    bad = edited_checkpoint(trained, tmp_path / "bad", data=data)
    _one_error(run("evaluate", "--checkpoint", str(bad), "--device", "cpu"),
               "config.json", *words)
    assert broker.calls == []


def test_a_recorded_partition_list_reads_only_those_partitions(
        run, broker, trained, tmp_path, monkeypatch) -> None:
    """A partition added since training holds none of the checkpoint's events: not read."""
    seen: list[ReplayRange] = []
    read = broker.read_clicks

    def resolve(kafka, topic, start, end, options=None):  # type: ignore[no-untyped-def]
        broker.calls.append((topic, start, end))
        return ReplayRange(topic, {0: 0, 1: 0, 2: 0}, {0: 120, 1: 120, 2: 99})

    def clicks(kafka, rng, flow=None):  # type: ignore[no-untyped-def]
        seen.append(rng)
        return read(kafka, rng, flow)

    monkeypatch.setattr("streams.replay.resolve_range", resolve)
    monkeypatch.setattr("streams.topic_corpus.read_clicks", clicks)
    _metrics(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json"))
    assert seen[0].start == {0: 0, 1: 0} and seen[0].end == {0: 120, 1: 120}


def _split_of_evaluated(monkeypatch) -> list[Any]:  # type: ignore[no-untyped-def]
    """The (corpus, held-out user names) of each ``make_eval_set`` call ``diam evaluate`` makes."""
    import online_model.evaluate as ev

    seen: list[Any] = []
    make = ev.make_eval_set

    def spy(corpus, users, signals):  # type: ignore[no-untyped-def]
        seen.append((corpus, corpus.users[users].tolist()))
        return make(corpus, users, signals)

    monkeypatch.setattr(ev, "make_eval_set", spy)
    return seen


def test_leave_newest_is_applied_again_the_test_users_are_the_training_split(
        run, broker, tmp_path, monkeypatch) -> None:
    """Users whose every click is in the held-out newest slice were not in training's corpus:
    read again, the recorded range is cut where training cut it, so the split is training's."""
    import online_model.train as tr
    from online_model.evaluate import split_users

    late = T0 + 10**9
    broker.clicks["t"] += [(f"z{u:03d}", f"i{j}", late + 7 * u + j)
                           for u in range(8) for j in range(3)]
    trained_on: list[Any] = []
    train = tr.train

    def spy(corpus, *args, **kwargs):  # type: ignore[no-untyped-def]
        trained_on.append(corpus)
        return train(corpus, *args, **kwargs)

    monkeypatch.setattr(tr, "train", spy)
    out = tmp_path / "held"
    r = run("train", "--topic", "t", "--items-topic", "t.items", "--out", str(out), "--epochs",
            "1", "--dim", "8", "--device", "cpu", "--no-progress", "--leave-newest", "0.2",
            "--seed", "3")
    assert r.exit_code == 0, r.output
    (corpus,) = trained_on
    cut = json.loads((out / "config.json").read_text())["data"]["holdout_from_ts"]
    assert corpus.n_users == 30 and not any(u.startswith("z") for u in corpus.users)
    want = corpus.users[split_users(corpus.users, 3)["test"]].tolist()

    seen = _split_of_evaluated(monkeypatch)
    r = run("evaluate", "--checkpoint", str(out), "--device", "cpu", "--json")
    res = _metrics(r)
    (got_corpus, got_users), = seen
    assert got_users == want and got_corpus.users.tolist() == corpus.users.tolist()
    assert int(got_corpus.ts.max()) < cut and len(got_corpus.items) == len(corpus.items)
    assert res["n_users"] == len(want)
    assert "as training did: 30 users" in r.stderr and "warning" not in r.stderr
    # the whole topic's split (38 users) is another one: what the recorded range used to give
    full = np.array(sorted({u for u, _, _ in broker.clicks["t"]}))
    assert full[split_users(full, 3)["test"]].tolist() != want

    # another range of the same topic: its own split, said on stderr
    seen.clear()
    r = run("evaluate", "--checkpoint", str(out), "--device", "cpu", "--topic", "t",
            "--items-topic", "t.items", "--json")
    _metrics(r)
    assert seen[0][0].n_users == 38
    assert ("warning: t (--since oldest --until end) is not the data the checkpoint was "
            "trained on: the held-out users are this range's own 80/10/10 split under the "
            "checkpoint's seed (3) and may include users the checkpoint trained on") in r.stderr


def test_since_without_topic_reads_the_recorded_topic(run, broker, trained) -> None:
    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--since", "0:5,1:5",
            "--json")
    _metrics(r)
    assert broker.calls == [("t", Bound(offsets={0: 5, 1: 5}), None)]
    assert "may include users the checkpoint trained on" in r.stderr
    assert "catalogue t.items" in r.stderr  # the recorded catalogue topic


def test_since_without_topic_on_a_dataset_checkpoint_is_a_usage_error(
        run, broker, trained, tmp_path) -> None:
    from online_model.testing import edited_checkpoint

    ds = edited_checkpoint(trained, tmp_path / "ds", data={"name": "somewhere"})
    for args in (["--since", "5"], ["--items-topic", "t.items"]):
        r = run("evaluate", "--checkpoint", str(ds), "--device", "cpu", *args)
        assert r.exit_code == 2, r.output
        assert "need --topic: the checkpoint records no clicks topic" in r.output
    assert broker.calls == []


def test_a_recorded_range_that_reads_other_records_is_refused(run, broker, trained) -> None:
    broker.clicks["t"].append(("u0001", "i3", T0 + 5))
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu"),
               "no longer holds the events the checkpoint was trained on",
               "241 records read, 240 when it was trained")


def test_a_clamped_recorded_range_is_refused(run, broker, trained, monkeypatch) -> None:
    def resolve(kafka, topic, start, end, options=None):  # type: ignore[no-untyped-def]
        return ReplayRange(topic, {0: 0, 1: 0}, {0: 100, 1: 120},
                           ("partition 0: --until offset 120 is outside what it holds [0, 100); "
                            "100 used",))

    monkeypatch.setattr("streams.replay.resolve_range", resolve)
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu"),
               "t no longer holds the events the checkpoint was trained on",
               "--until offset 120 is outside")


def test_clamped_offsets_are_worded_with_the_commands_options(monkeypatch) -> None:
    from streams.config import KafkaConfig
    from streams.replay import resolve_range

    monkeypatch.setattr("streams.replay.watermarks", lambda kafka, topic: {0: (10, 50)})
    rng = resolve_range(KafkaConfig(), "t", Bound(offset=0), Bound(offset=90),
                        options=("--since", "--until"))
    assert rng.clamped == ("partition 0: --since offset 0 is outside what it holds [10, 50); "
                           "10 used", "partition 0: --until offset 90 is outside what it holds "
                           "[10, 50); 50 used")
    assert "--from offset 0" in resolve_range(KafkaConfig(), "t", Bound(offset=0), None).clamped[0]


def test_a_time_bounded_range_with_too_few_users_says_what_the_bounds_read(
        run, broker, trained) -> None:
    from streams.replay import TIME_BOUNDS_HINT

    broker.clicks["few"] = [(f"u{u}", f"i{u}", T0 + u) for u in range(6)]
    line = _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu",
                          "--topic", "few", "--items-topic", "t.items", "--since",
                          "2023-11-14T00:00:00Z"), "only 6 users; need at least 10")
    assert TIME_BOUNDS_HINT in line
    line = _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu",
                          "--topic", "few", "--items-topic", "t.items", "--since", "0"),
                      "only 6 users")
    assert TIME_BOUNDS_HINT not in line


def test_text_output_counts_the_users_and_says_why_spearman_is_nan(run, trained) -> None:
    from diam.commands.model import _why_nan

    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu")
    assert r.exit_code == 0, r.output
    users = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] == ["users"]]
    assert users == [["users", "3", "(test", "users", "of", "30)"]]
    nan = float("nan")
    assert "too few users: 1" in _why_nan("spearman_d_entropy",
                                          {"spearman_d_entropy": nan, "n_users": 1})
    assert "same for all 3 users" in _why_nan("spearman_d_entropy",
                                              {"spearman_d_entropy": nan, "n_users": 3})
    assert _why_nan("spearman_d_entropy", {"spearman_d_entropy": 0.5, "n_users": 3}) == ""


def test_a_checkpoint_trained_without_a_catalogue_is_evaluated_on_its_own_categories(
        run, broker, trained) -> None:
    # the retrain service trains without a catalogue when there is none, and records none;
    # the settings' catalogue topic (diam.items) does not exist here either
    cfg = trained / "config.json"
    config = json.loads(cfg.read_text())
    del config["data"]["items_topic"]
    cfg.write_text(json.dumps(config))
    want = _metrics(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json",
                        "--items-topic", "t.items"))
    r = run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json")
    assert "no catalogue topic 'diam.items', and the checkpoint recorded none" in r.stderr
    _same_metrics(want, _metrics(r))
    # one it recorded must be there: a missing one is an error, as before
    config["data"]["items_topic"] = "gone.items"
    cfg.write_text(json.dumps(config))
    _one_error(run("evaluate", "--checkpoint", str(trained), "--device", "cpu"),
               "publish a catalogue")


def test_a_checkpoint_without_category_names_scores_as_with_them(
        run, broker, trained, tmp_path) -> None:
    """categories.json is optional in a checkpoint: without it the clicks' categories are the
    item table's indices (``Checkpoint.category_table``), and every metric is the same."""
    import shutil

    with_names = _metrics(run("evaluate", "--checkpoint", str(trained), "--device", "cpu",
                              "--json"))
    bare = tmp_path / "bare"
    shutil.copytree(trained, bare)
    (bare / "categories.json").unlink()
    got = _metrics(run("evaluate", "--checkpoint", str(bare), "--device", "cpu", "--json"))
    assert got.pop("checkpoint") == str(bare)
    with_names.pop("checkpoint")
    _same_metrics(got, with_names)
