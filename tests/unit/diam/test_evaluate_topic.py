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
                      end: Bound | None) -> ReplayRange:
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
        if topic not in self.catalogs:
            raise RuntimeError(f"topic {topic!r} does not exist (publish a catalogue with "
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
    (["--since", "5"], ["--since, --until and --items-topic need --topic"]),
    (["--items-topic", "t.items"], ["need --topic"]),
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

    def resolve(kafka, topic, start, end):  # type: ignore[no-untyped-def]
        broker.calls.append((topic, start, end))
        return ReplayRange(topic, {0: 0, 1: 0, 2: 0}, {0: 120, 1: 120, 2: 99})

    def clicks(kafka, rng, flow=None):  # type: ignore[no-untyped-def]
        seen.append(rng)
        return read(kafka, rng, flow)

    monkeypatch.setattr("streams.replay.resolve_range", resolve)
    monkeypatch.setattr("streams.topic_corpus.read_clicks", clicks)
    _metrics(run("evaluate", "--checkpoint", str(trained), "--device", "cpu", "--json"))
    assert seen[0].start == {0: 0, 1: 0} and seen[0].end == {0: 120, 1: 120}
