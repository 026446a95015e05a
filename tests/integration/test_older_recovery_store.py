"""Recovery stores that ``diam run`` must read right, or refuse, without their own record.

A store an earlier release wrote has Bytewax's state but no ``diam-store.json``: its record is
inferred from the partitions it holds positions of (Bytewax keeps one for every partition a run
listed, read from or not: checked here), so a topic whose partition count grew since is refused
as with a record (the first upgraded run stamped the count of now, and the growth was never
detected again), while a store of a ``--partitions`` run or of a topic with empty partitions is
taken. A drift monitor's store (``diam drift run --recovery-dir``) is not a diam run store: it is
refused before the start line, and nothing is written into it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner
from confluent_kafka import Producer

from diam.cli import main
from streams.drift_flow import STORE_OWNER
from streams.runner import STORE_RECORD, _store_partitions
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce
from tests.integration.test_repartitioned_topic import _no_traceback, _raise_partitions
from tests.integration.test_run_refusals import START, _refused_without_start
from tests.integration.test_topic_typos import _cli, _settings


def _as_an_earlier_release_left_it(store: Path) -> None:
    (store / STORE_RECORD).unlink()


def _record(store: Path) -> dict:
    return dict(json.loads((store / STORE_RECORD).read_text()))


def test_an_older_store_of_a_topic_that_grew_since_is_refused(stack, new_topic, namespace,
                                                               tmp_path, redis_client) -> None:
    # the reviewer's repro: the upgraded run stamped 4 into the record and went on (exit 0)
    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    clicks = click_stream(8, 80, seed=5)
    produce(s.kafka, topic, click_payloads(clicks[:40]))
    store = tmp_path / "rG"
    args = ("run", "--bounded", "--topic", topic, "--recovery-dir", str(store))
    first = _cli(s, *args, "--namespace", namespace)
    assert first.exit_code == 0 and START in first.output, first.output
    _as_an_earlier_release_left_it(store)
    assert _store_partitions(store, "diam-online.clicks") == {f"0-{topic}", f"1-{topic}"}

    _raise_partitions(s.kafka, topic, 4)
    produce(s.kafka, topic, click_payloads(clicks[40:]))
    # into a namespace of its own too: the store alone says what its state was built from
    other = f"{namespace}-b"
    try:
        for ns in (other, namespace):
            res = _cli(s, *args, "--namespace", ns)
            _refused_without_start(res, 1, f"topic {topic!r} has 4 partitions",
                                   "was built from 2", str(store.resolve()),
                                   "partitions [0, 1] only", "--partitions 0,1",
                                   "fresh recovery store")
            _no_traceback(res.output)
            assert len([ln for ln in res.output.splitlines() if ln.startswith("Error")]) == 1
            assert not (store / STORE_RECORD).exists()  # nothing stamped over what it was
    finally:
        if keys := list(redis_client.scan_iter(match=f"diam:{other}:*")):
            redis_client.delete(*keys)


def test_older_stores_of_empty_partitions_or_of_partitions_subsets_are_taken(
        stack, new_topic, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    topic = new_topic(4)
    p = Producer(s.kafka.client_config())
    for i, (key, value) in enumerate(click_payloads(click_stream(6, 40, seed=6))):
        p.produce(topic, key=key, value=value, partition=i % 2)  # partitions 2 and 3 stay empty
    assert p.flush(30) == 0
    base = ("run", "--bounded", "--topic", topic, "--namespace", namespace)
    whole, low, odd = tmp_path / "whole", tmp_path / "low", tmp_path / "odd"
    for store, more in ((whole, ()), (low, ("--partitions", "0,1")), (odd, ("--partitions", "1,3"))):
        res = _cli(s, *base, "--recovery-dir", str(store), *more)
        assert res.exit_code == 0 and START in res.output, res.output
        _as_an_earlier_release_left_it(store)
    # Bytewax keeps a position for a partition its run listed and never read a record from
    assert _store_partitions(whole, "diam-online.clicks") == {f"{i}-{topic}" for i in range(4)}
    assert _store_partitions(odd, "diam-online.clicks") == {f"1-{topic}", f"3-{topic}"}

    for store, more, record in ((whole, (), {"partitions": 4, "reads": None}),
                                (low, ("--partitions", "0,1"), {"partitions": 4, "reads": [0, 1]}),
                                (odd, ("--partitions", "1,3"), {"partitions": 4, "reads": [1, 3]})):
        res = _cli(s, *base, "--recovery-dir", str(store), *more)
        assert res.exit_code == 0 and START in res.output, (store, res.output)
        assert _record(store) == {"topic": topic, **record}

    # a subset's older store read as the whole topic: refused as with a record
    _as_an_earlier_release_left_it(odd)
    res = _cli(s, *base, "--recovery-dir", str(odd))
    _refused_without_start(res, 1, "partitions [1, 3] only", "this run reads all", "--partitions")
    _no_traceback(res.output)


def test_a_drift_monitors_store_is_refused_and_left_as_it_was(stack, new_topic, namespace,
                                                              tmp_path) -> None:
    s = _settings(stack, tmp_path)
    topic, drift_topic, alerts = new_topic(2), new_topic(1, "drift"), new_topic(1, "alerts")
    produce(s.kafka, topic, click_payloads(click_stream(4, 20, seed=7)))
    store = tmp_path / "drift-rec"

    def drift() -> str:
        res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning", "--topic",
                                        drift_topic, "--alerts-topic", alerts, "--recovery-dir",
                                        str(store)], obj={"settings": s})
        assert res.exit_code == 0, res.output
        return res.output

    def contents() -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(store.iterdir()) if f.is_file()}

    drift()
    assert (store / STORE_OWNER).exists()
    before = contents()
    for more in (("--bounded",), ("--tail",)):
        res = _cli(s, "run", *more, "--topic", topic, "--namespace", namespace,
                   "--recovery-dir", str(store))
        _refused_without_start(res, 1, str(store.resolve()), "drift monitor's",
                               "not a diam run store", "--recovery-dir")
        _no_traceback(res.output)
        assert len([ln for ln in res.output.splitlines() if ln.startswith("Error")]) == 1
    assert contents() == before  # no record, no lock, no online state written into it
    drift()  # the monitor resumes from its own store as before
