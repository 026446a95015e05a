"""The continuous loop against the real broker and Redis (issue 16): a corpus read from a topic
range equals the prepared folder's, ``diam train --topic`` trains from it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from online_model.corpus import corpus_from_prepared
from online_model.datasets import load_prepared, read_item_titles, write_prepared
from online_model.synth import SynthParams, write_synth
from streams.catalog import CatalogItem, encode_item, items_of_dataset, publish_items, read_catalog
from streams.events import ClickEvent, encode_event
from streams.kafka_io import watermarks
from streams.producer import produce_dataset, produce_raw
from streams.replay import Bound, resolve_range
from streams.topic_corpus import corpus_from_topic, read_clicks


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synth(SynthParams(users=30, items=80, categories=6, max_interests=4, events_per_user=14, seed=7), out)
    return out


def _assert_same_corpus(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("users", "offsets", "items", "ts", "item_ids", "item_cat"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.category_names == b.category_names


def test_corpus_from_topic_range_equals_prepared_folder(stack, topic, synth_dir, tmp_path) -> None:
    kafka = stack.settings.kafka
    ds = load_prepared(synth_dir)
    items_topic = f"{topic}.items"
    rep = publish_items(kafka, items_topic, items_of_dataset(ds, read_item_titles(synth_dir)))
    assert rep.ok, rep.errors
    half = len(ds.ts_ms) // 2
    assert produce_dataset(ds, kafka, topic, limit=half).ok
    mid = {p: hi for p, (_, hi) in watermarks(kafka, topic).items()}
    rest = [(u.encode(), encode_event(ClickEvent(u, i, int(t)))) for u, i, t in
            zip(ds.user_ids[half:].tolist(), ds.item_ids[half:].tolist(), ds.ts_ms[half:].tolist(),
                strict=True)]
    rest.insert(3, (b"u1", b"\xc1 not an event"))  # left out, as the dataflow dead-letters it
    assert produce_raw(kafka, topic, rest).ok

    catalog = read_catalog(kafka, items_topic)
    assert len(catalog) == len(ds.items.ids) and catalog.rejected == 0
    assert catalog.items[str(ds.items.ids[0])].title == read_item_titles(synth_dir)[str(ds.items.ids[0])]

    # the whole topic = the whole folder
    full = read_clicks(kafka, resolve_range(kafka, topic, None, None))
    assert (full.records, full.rejected, len(full)) == (len(ds.ts_ms) + 1, 1, len(ds.ts_ms))
    _assert_same_corpus(corpus_from_topic(full, catalog), corpus_from_prepared(ds))

    # the range up to the offsets after the first half = a folder of the first half's events
    first = read_clicks(kafka, resolve_range(kafka, topic, None, Bound(offsets=mid)))
    d_half = write_prepared(tmp_path / "half", name="half", users=ds.user_ids[:half],
                            items_of_events=ds.item_ids[:half], ts_ms=ds.ts_ms[:half],
                            items=catalog.item_rows(), meta={"source": "test"})
    got = corpus_from_topic(first, catalog)
    _assert_same_corpus(got, corpus_from_prepared(load_prepared(d_half)))
    assert got.info["topic"] == topic and got.info["end"] == {str(p): o for p, o in mid.items()}


def test_catalog_is_compacted_keeps_newest_and_counts_bad_records(stack, topic) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    kafka = stack.settings.kafka
    items_topic = f"{topic}.items"
    a1 = CatalogItem("a", ("Drama",), "A", 1)
    a2 = CatalogItem("a", ("Comedy", "Drama"), "A, renamed", 1)
    assert publish_items(kafka, items_topic, [a1, CatalogItem("b", (), "", 2), a2]).ok
    assert produce_raw(kafka, items_topic, [(b"b", None), (b"c", b"[1, 2]"),
                                            (b"d", encode_item(a1))]).ok
    cat = read_catalog(kafka, items_topic)
    assert cat.items == {"a": a2}  # b deleted by its tombstone
    assert cat.rejected == 2
    assert sum("payload: expected a map" in r for r in cat.reasons) == 1
    assert sum("differs from item_id" in r for r in cat.reasons) == 1
    res = ConfigResource(ConfigResource.Type.TOPIC, items_topic)
    admin = AdminClient(kafka.client_config())  # kept alive until the future resolves
    conf = admin.describe_configs([res])[res].result(30)
    assert conf["cleanup.policy"].value == "compact"


def test_train_from_topic_cli(stack, topic, synth_dir, tmp_path) -> None:
    from diam.cli import main

    ds = load_prepared(synth_dir)
    items_topic = f"{topic}.items"
    env = {"DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_KAFKA_ITEMS_TOPIC": items_topic}
    runner = CliRunner()
    res = runner.invoke(main, ["produce", "--data", str(synth_dir), "--topic", topic, "--catalog",
                               "--no-progress"], env={**os.environ, **env})
    assert res.exit_code == 0, res.output
    assert f"{len(ds.items.ids):,} catalogue items sent to {items_topic}" in res.output
    out = tmp_path / "ck"
    # without --seq-len the network is trained on the window the stream serves it on
    res = runner.invoke(main, ["train", "--topic", topic, "--until", "0:40,1:40,2:40,3:40",
                               "--out", str(out), "--epochs", "1", "--dim", "8",
                               "--no-progress"],
                        env={**os.environ, **env, "DIAM_ONLINE_INFER_ITEMS": "5"})
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["topic"] == topic and config["seq_len"] == 5
    assert config["data"]["end"] == {"0": 40, "1": 40, "2": 40, "3": 40}
    assert config["n_items"] == len(ds.items.ids)
    res = runner.invoke(main, ["train", "--since", "5"], env={**os.environ, **env})
    assert res.exit_code != 0 and "need --topic" in res.output


# --------------------------------------------------------------------------- retrain + gate


@pytest.fixture(scope="module")
def loop_data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Users who click in clusters of categories, their clicks interleaved in time (every user
    is active on both sides of the held-out cut)."""
    from online_model.corpus import tiny_corpus
    from online_model.datasets import ItemRows

    # one or two categories per user: structure a few epochs learn clearly above chance
    c = tiny_corpus(n_users=80, n_items=150, n_categories=6, length=20, seed=11,
                    n_interests=np.random.default_rng(11).integers(1, 3, size=80))
    ids = c.item_ids.tolist()
    rows = ItemRows(ids, [f"item {i}" for i in ids],
                    [[c.category_names[int(k)]] for k in c.item_cat])
    user_of = np.repeat(c.users, c.lengths())
    return write_prepared(tmp_path_factory.mktemp("data") / "loop", name="loop", users=user_of,
                          items_of_events=c.item_ids[c.items], ts_ms=c.ts + 1_700_000_000_000,
                          items=rows, meta={"source": "tiny_corpus"})


def _loop_settings(stack, topic: str, tmp_path, online_dim: int = 16,  # type: ignore[no-untyped-def]
                   **retrain):
    """The stack's settings on ``topic``; DIAM_ONLINE_DIM is ``online_dim``, the size the
    dataflows serve and the retrain service trains a model from scratch at."""
    s = stack.settings
    r = {"candidates_dir": str(tmp_path / "candidates"), "epochs": 3,
         "holdout_fraction": 0.2, "warm_start": True, **retrain}
    return s.model_copy(update={
        "online": s.online.model_copy(update={"dim": online_dim}),
        "kafka": s.kafka.model_copy(update={"clicks_topic": topic,
                                            "items_topic": f"{topic}.items",
                                            "models_topic": f"{topic}.models"}),
        "snapshot": s.snapshot.model_copy(update={"dir": str(tmp_path / "snaps")}),
        "retrain": s.retrain.model_copy(update={
            **r, "gate": s.retrain.gate.model_copy(update={"min_eval_users": 10})}),
        "data_dir": str(tmp_path / "data"),
    })


def _feed(stack, topic: str, data_dir) -> None:  # type: ignore[no-untyped-def]
    kafka = stack.settings.kafka
    ds = load_prepared(data_dir)
    assert publish_items(kafka, f"{topic}.items",
                         items_of_dataset(ds, read_item_titles(data_dir))).ok
    assert produce_dataset(ds, kafka, topic).ok


def _decisions(stack, topic: str) -> list[dict]:
    """The decisions on ``<topic>.models``; none while the service has not created the topic
    yet (a poll can come before the first decision)."""
    from streams.kafka_io import UnknownTopic, consume_all

    try:
        recs = list(consume_all(stack.settings.kafka, f"{topic}.models"))
    except UnknownTopic:
        return []
    return [json.loads(r.value) for r in recs]


def test_retrain_publishes_first_then_refuses_a_worse_candidate(
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    s1 = _loop_settings(stack, topic, tmp_path)
    first = Retrainer(s1, namespace=namespace).run_once()
    assert first.published and first.reason == "no active snapshot", first
    store = SnapshotStore(s1.snapshot)
    assert store.active_version() == first.version
    assert redis_client.get(model_active_key(namespace)).decode() == first.version
    assert first.metrics["candidate"]["recall@20"] > 0 and first.metrics["eval_users"] >= 10
    # trained from scratch on the window the stream serves the network on
    active_cfg = json.loads((store.path(first.version) / "config.json").read_text())
    assert active_cfg["seq_len"] == s1.online.train_seq_len("diam") == s1.online.infer_items

    # an untrained model (no warm start, a learning rate that moves nothing) must be refused
    s2 = _loop_settings(stack, topic, tmp_path, warm_start=False, lr=1e-9, epochs=1)
    second = Retrainer(s2, namespace=namespace).run_once()
    assert not second.published and second.version is None, second
    assert second.metrics["candidate"]["recall@20"] < second.metrics["active"]["recall@20"] - 0.01
    assert "below the active" in second.reason and "paired 95% interval" in second.reason
    lo, hi = second.metrics["diff_ci"]["recall@20"]  # the interval over the held-out users
    assert lo <= (second.metrics["candidate"]["recall@20"]
                  - second.metrics["active"]["recall@20"]) <= hi
    assert set(second.metrics["diff_ci"]) == {"recall@20", "entropy@20"}
    assert first.metrics["diff_ci"] == {}  # nothing to compare with
    assert store.active_version() == first.version  # never activated
    assert redis_client.get(model_active_key(namespace)).decode() == first.version
    assert [v.version for v in store.versions()] == [first.version]
    kept = tmp_path / "candidates" / second.candidate
    assert (kept / "weights.safetensors").is_file()  # kept for inspection
    # the catalogue it was trained over is recorded: diam evaluate reads the same one again
    assert json.loads((kept / "config.json").read_text())["data"]["items_topic"] == \
        s2.kafka.items_topic
    assert json.loads((kept / "decision.json").read_text())["published"] is False

    got = _decisions(stack, topic)
    assert [d["published"] for d in got] == [True, False]
    assert got[1]["active_before"] == first.version and got[1]["reason"] == second.reason
    assert got[1]["seconds"]["train"] > 0 and got[1]["window"]["topic"] == topic
    assert s1.retrain.gate.eps_recall == 0.01  # the documented default decided

    # a warm start from the active snapshot carries every item row over
    third = Retrainer(s1, namespace=namespace).run_once()
    assert third.warm_start is not None and third.warm_start["from"] == first.version
    # the lineage serving reads to tell an ancestor's vectors from another model's
    assert third.warm_start["lineage"] == [first.version]
    assert third.warm_start["items_new"] == 0 and third.warm_start["fresh_tensors"] == []


def _active_of_d16(stack, topic, namespace, redis_client, tmp_path):  # type: ignore[no-untyped-def]
    """The first retrain under DIAM_ONLINE_DIM=16: trained from scratch at d=16 and published
    (nothing to compare with). Returns its decision."""
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    s = _loop_settings(stack, topic, tmp_path, online_dim=16, epochs=1)
    first = Retrainer(s, namespace=namespace).run_once()
    assert first.published and first.reason == "no active snapshot", first
    store = SnapshotStore(s.snapshot)
    assert json.loads((store.path(first.version) / "config.json").read_text())["dim"] == 16
    assert redis_client.get(model_active_key(namespace)).decode() == first.version
    return first


def _lenient(s):  # type: ignore[no-untyped-def]
    """``s`` with a gate that passes any candidate that evaluates (so the step after it runs)."""
    gate = s.retrain.gate.model_copy(update={"eps_recall": 1.0, "eps_entropy": 100.0})
    return s.model_copy(update={"retrain": s.retrain.model_copy(update={"gate": gate})})


def test_retrain_after_a_size_change_warm_start_refused_before_training_scratch_at_online_dim(
        stack, topic, namespace, redis_client, loop_data, tmp_path, monkeypatch) -> None:
    """A deliberate size change: the active model has d=16, DIAM_ONLINE_DIM is then set to 32.
    A warm start (which keeps the active model's size) is one every dataflow would refuse, known
    before training (diam.app.dim_problem): nothing is trained, the refusal is recorded as others
    are and says how to go on. A retrain from scratch (DIAM_RETRAIN_WARM_START=false) trains at
    DIAM_ONLINE_DIM, the one owner of the size, and its candidate is published."""
    import online_model.train
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    first = _active_of_d16(stack, topic, namespace, redis_client, tmp_path)

    def never(*a, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("a candidate was trained")

    trained = online_model.train.train
    monkeypatch.setattr(online_model.train, "train", never)
    s = _loop_settings(stack, topic, tmp_path, online_dim=32, epochs=1)
    r = Retrainer(s, namespace=namespace)
    d = r.run_once()
    assert not d.published and d.version is None, d
    assert d.reason.startswith("not trained: no dataflow can use it: candidate "), d.reason
    assert "has d=16, DIAM_ONLINE_DIM is 32" in d.reason, d.reason
    assert "at DIAM_ONLINE_DIM from scratch (DIAM_RETRAIN_WARM_START=false)" in d.reason
    assert "train" not in d.seconds and d.window["topic"] == topic
    assert not (tmp_path / "candidates" / d.candidate).exists()
    assert r.metrics.decisions.labels("refused")._value.get() == 1
    store = SnapshotStore(s.snapshot)
    assert [v.version for v in store.versions()] == [first.version]
    assert store.active_version() == first.version
    assert redis_client.get(model_active_key(namespace)).decode() == first.version

    monkeypatch.setattr(online_model.train, "train", trained)
    scratch = _lenient(_loop_settings(stack, topic, tmp_path, online_dim=32, epochs=1,
                                      warm_start=False))
    d2 = Retrainer(scratch, namespace=namespace).run_once()
    assert d2.published and d2.warm_start is None, d2
    assert json.loads((store.path(d2.version) / "config.json").read_text())["dim"] == 32
    assert store.active_version() == d2.version
    assert redis_client.get(model_active_key(namespace)).decode() == d2.version
    got = _decisions(stack, topic)
    assert [(g["published"], g["reason"]) for g in got] == [
        (True, first.reason), (False, d.reason), (True, d2.reason)]


def test_a_retrain_refused_before_training_leaves_its_window_to_train_and_once_exits_1(
        stack, topic, namespace, loop_data, tmp_path, redis_client) -> None:
    """Refused before training because no dataflow could use a model of the size it would
    train at, a retrain trained nothing: its decision says ``window_done: false``, the service
    resumes before it (once the setting is fixed, those events are trained), and ``diam
    retrain --once`` exits 1 with its JSON on stdout. Was: window_done true, rc 0, and a
    restarted service said "last retrain ended at offset sum 1,600" and never trained."""
    from diam.cli import main
    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    first = _active_of_d16(stack, topic, namespace, redis_client, tmp_path)
    s = _loop_settings(stack, topic, tmp_path, online_dim=32, epochs=1)
    r = CliRunner().invoke(main, ["retrain", "--once", "--json", "--namespace", namespace],
                           obj={"settings": s})
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    d = json.loads(r.stdout)
    assert d["reason"].startswith("not trained: no dataflow can use it: "), d
    assert d["window_done"] is False and not d["published"], d
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"Error: retrain {d['candidate']}: not trained: no dataflow can use it"), r.stderr
    assert [g["candidate"] for g in _decisions(stack, topic)] == [first.candidate, d["candidate"]]
    resume = Retrainer(s, namespace=namespace).resume_point()
    assert resume is not None and resume["candidate"] == first.candidate, resume


def test_a_diverged_retrain_saves_no_candidate(stack, topic, namespace, loop_data,
                                              tmp_path) -> None:
    """A training that diverged (a far too large DIAM_RETRAIN_LR) leaves NaN weights: refused
    before the save, no candidate directory a loader would refuse, nothing published."""
    from diam.retrain import Retrainer
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, lr=1e6, warm_start=False)
    d = Retrainer(s, namespace=namespace).run_once()
    assert not d.published and d.version is None, d
    assert d.reason.startswith("not saved: the trained weights hold NaN or inf ("), d.reason
    assert d.reason.endswith(": training diverged (a smaller DIAM_RETRAIN_LR?)"), d.reason
    assert "train" in d.seconds and not d.window_done  # a setting to fix: trained again
    assert not (tmp_path / "candidates" / d.candidate).exists()
    assert SnapshotStore(s.snapshot).versions() == []


def test_a_diverged_retrain_once_exits_1_and_leaves_its_window_to_train(
        stack, topic, namespace, loop_data, tmp_path) -> None:
    """``diam retrain --once`` on a training that diverged exits 1 with one ``Error:`` line
    (the reason and that the window stays), and the restarted service would train the window
    again: nothing resumes after it. Was: exit 0 and ``window_done: true``, so a cron job saw
    success and the service, restarted with a smaller learning rate, never trained those
    events."""
    from diam.cli import main
    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, lr=1e6, warm_start=False)
    r = CliRunner().invoke(main, ["retrain", "--once", "--json", "--namespace", namespace],
                           obj={"settings": s})
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    d = json.loads(r.stdout)
    assert d["window_done"] is False and not d["published"], d
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: retrain {d['candidate']}: not saved: "), last
    assert last.endswith("nothing published, the window stays to be trained"), last
    assert Retrainer(s, namespace=namespace).resume_point() is None


def test_retrain_guard_refuses_a_trained_candidate_of_a_size_no_dataflow_can_use(
        stack, topic, namespace, redis_client, loop_data, tmp_path, monkeypatch) -> None:
    """The check after training stays the guard (diam.app.stream_base on the saved candidate):
    with the check before training out of the way, a warm start from the d=16 active model
    under DIAM_ONLINE_DIM=32 is trained at d=16 and passes the gate (a lenient one), the d=16
    base is refused in the same words, kept with its decision.json, and nothing is published."""
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    first = _active_of_d16(stack, topic, namespace, redis_client, tmp_path)
    monkeypatch.setattr(Retrainer, "_untrainable", lambda self, dim, name: None)
    s = _lenient(_loop_settings(stack, topic, tmp_path, online_dim=32, epochs=1))
    d = Retrainer(s, namespace=namespace).run_once()
    assert not d.published and d.version is None, d
    assert d.warm_start is not None and d.warm_start["from"] == first.version
    assert d.reason.startswith("recall@20 ") and ", but no dataflow can use it: candidate " \
        in d.reason, d.reason
    assert "has d=16, DIAM_ONLINE_DIM is 32" in d.reason
    assert "at DIAM_ONLINE_DIM from scratch (DIAM_RETRAIN_WARM_START=false)" in d.reason
    store = SnapshotStore(s.snapshot)
    assert [v.version for v in store.versions()] == [first.version]
    assert store.active_version() == first.version
    assert redis_client.get(model_active_key(namespace)).decode() == first.version
    kept = tmp_path / "candidates" / d.candidate
    assert json.loads((kept / "decision.json").read_text())["reason"] == d.reason
    assert json.loads((kept / "config.json").read_text())["dim"] == 16
    got = _decisions(stack, topic)
    assert [(g["published"], g["reason"]) for g in got] == [(True, first.reason),
                                                             (False, d.reason)]


def test_killed_retrain_leaves_the_active_snapshot_untouched(
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    first = Retrainer(s, namespace=namespace).run_once()
    assert first.published
    store = SnapshotStore(s.snapshot)
    pointer = (tmp_path / "snaps" / "ACTIVE").read_bytes()

    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
           "DIAM_KAFKA_CLICKS_TOPIC": topic, "DIAM_KAFKA_ITEMS_TOPIC": f"{topic}.items",
           "DIAM_KAFKA_MODELS_TOPIC": f"{topic}.models",
           "DIAM_SNAPSHOT_DIR": str(tmp_path / "snaps"),
           "DIAM_RETRAIN_CANDIDATES_DIR": str(tmp_path / "candidates"),
           "DIAM_RETRAIN_EPOCHS": "400", "DIAM_RETRAIN_HOLDOUT_FRACTION": "0.2",
           "DIAM_ONLINE_DIM": str(s.online.dim)}  # the active model's: trainable
    proc = subprocess.Popen([sys.executable, "-m", "diam", "retrain", "--once", "--namespace",
                             namespace], env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "epoch=1 " in line:  # one epoch done, hundreds to go: mid-training
                break
            assert line or proc.poll() is None, "".join(lines[-20:])
        else:
            raise AssertionError("training never started: " + "".join(lines[-20:]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "snaps" / "ACTIVE").read_bytes() == pointer
    assert redis_client.get(model_active_key(namespace)).decode() == first.version
    store.verify(first.version)
    assert [v.version for v in store.versions()] == [first.version]
    assert [d["published"] for d in _decisions(stack, topic)] == [True]
    assert sorted(p.name for p in (tmp_path / "candidates").iterdir()) == [first.candidate]


def test_a_decision_not_written_to_the_topic_is_written_when_the_service_starts(
        stack, topic, namespace, loop_data, tmp_path, monkeypatch) -> None:
    """A retrain stopped after decision.json but before the topic record (here: its emit
    skipped) would leave the service to train that window again; reconcile writes the
    record, once."""
    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    with monkeypatch.context() as m:
        m.setattr(Retrainer, "_emit", lambda self, d: None)  # stopped before the topic record
        first = Retrainer(s, namespace=namespace).run_once()
    assert first.published and _decisions(stack, topic) == []
    svc = Retrainer(s, namespace=namespace)
    assert svc.reconcile() == [first.candidate]
    got = _decisions(stack, topic)
    assert [d["candidate"] for d in got] == [first.candidate] and got[0]["version"] == first.version
    assert svc.reconcile() == []  # already there: nothing written twice
    assert svc.last_decision()["candidate"] == first.candidate


def test_the_service_resumes_after_a_decision_it_reconciled(
        stack, topic, namespace, loop_data, tmp_path, monkeypatch) -> None:
    """The service reads the models topic once at start and again only after reconcile wrote
    to it: the reconciled decision is the one it resumes after, so that window is not trained
    again."""
    import threading
    import time

    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, every_events=1000, every_minutes=600.0,
                       poll_s=0.2)
    with monkeypatch.context() as m:
        m.setattr(Retrainer, "_emit", lambda self, d: None)  # stopped before the topic record
        first = Retrainer(s, namespace=namespace).run_once()
    reads = []
    real = Retrainer._decisions
    monkeypatch.setattr(Retrainer, "_decisions", lambda self: reads.append(1) or real(self))
    runs = []
    monkeypatch.setattr(Retrainer, "run_once", lambda self: runs.append(1))

    def start_and_stop() -> None:
        stop = threading.Event()
        th = threading.Thread(target=Retrainer(s, namespace=namespace).serve, args=(stop,),
                              daemon=True)
        th.start()
        time.sleep(2.0)  # several polls
        stop.set()
        th.join(60)

    start_and_stop()
    assert [d["candidate"] for d in _decisions(stack, topic)] == [first.candidate]
    assert runs == [] and len(reads) == 2  # before reconcile, and after it wrote
    reads.clear()
    start_and_stop()  # nothing to reconcile now: the topic is read once
    assert runs == [] and len(reads) == 1


def test_a_run_stopped_between_its_publish_and_decision_json_gets_its_decision_rebuilt(
        stack, topic, namespace, loop_data, tmp_path, monkeypatch) -> None:
    """The publish happened (the snapshot's manifest names the candidate), decision.json and
    the topic record did not: reconcile rebuilds the decision (published, that version, the
    window from the candidate's config) and writes it once."""
    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    with monkeypatch.context() as m:  # stopped right after the publish
        m.setattr(Retrainer, "_finish", lambda self, d, t0, phases, cand_dir=None: d)
        first = Retrainer(s, namespace=namespace).run_once()
    cand = tmp_path / "candidates" / first.candidate
    assert first.published and not (cand / "decision.json").exists()
    svc = Retrainer(s, namespace=namespace)
    assert svc.reconcile() == [first.candidate]
    got = _decisions(stack, topic)
    assert len(got) == 1 and got[0]["published"] and got[0]["version"] == first.version
    assert got[0]["window"] == first.window and "rebuilt" in got[0]["reason"]
    assert json.loads((cand / "decision.json").read_text())["version"] == first.version
    assert svc.reconcile() == []


# --------------------------------------------------------------------------- new items


def test_new_catalogue_item_recommendable_through_the_api_and_in_the_stream_base(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    import time

    from fastapi.testclient import TestClient

    from diam.app import load_holder
    from serving_cache.api import get_app
    from serving_cache.codec import UserVectors
    from serving_cache.reader import fail_fast
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from serving_cache.writer import RedisWriter
    from snapshotter import SnapshotConfig, SnapshotStore, publish
    from snapshotter.testing import write_checkpoint
    from streams.catalog import CatalogFollower

    kafka = stack.settings.kafka.model_copy(update={"items_topic": f"{topic}.items"})
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    ck = write_checkpoint(tmp_path / "ck", n_items=120, dim=8, n_categories=5, seed=3)
    res = publish(ck, store, redis_client, namespace)
    assert res.manifest["content_tower"]["source"] == "publish"  # fitted on the categories
    snap = SnapshotIndex.load(res.path, res.version)
    cat = snap.category_names[0]
    vec = snap.tower.embed([[cat]], ["brand new title"])  # what the new item will get
    RedisWriter(redis_client, namespace).write_batch(
        [("u1", UserVectors(seq=1, model=res.version, k=1, d=0.5, dim=8, vecs=vec, ts=1, n=3))])
    rec = Recommender(snap, fail_fast(redis_client), namespace)
    rec.follow_catalog(CatalogFollower(kafka, kafka.items_topic), every_s=0.1)

    s = stack.settings.model_copy(update={
        "kafka": kafka, "snapshot": store.cfg,
        "online": stack.settings.online.model_copy(update={"dim": 8})})
    holder = load_holder(s, namespace=namespace)
    holder._check_every_s = 0.0
    n0 = len(holder.learner.base.item_ids)

    with TestClient(get_app(rec)) as http:
        def items() -> list[str]:
            r = http.get("/users/u1/recommendations?n=200")
            assert r.status_code == 200, r.text
            return [x["item_id"] for x in r.json()["items"]]

        assert "brand-new" not in items()
        t0 = time.monotonic()
        assert publish_items(kafka, kafka.items_topic,
                             [CatalogItem("brand-new", (cat,), "brand new title", 1)]).ok
        while "brand-new" not in items():
            assert time.monotonic() - t0 < 10, "not recommendable within 10 s"
            time.sleep(0.05)
        ready_s = time.monotonic() - t0
        got = http.get("/users/u1/recommendations?n=200").json()
    new = next(x for x in got["items"] if x["item_id"] == "brand-new")
    assert new["category"] == cat and got["snapshot"] == res.version and not got["cold"]
    active = rec.active
    assert active is not None and active.index.ntotal == 121 and active.content_rows.tolist() == [120]
    assert store.active_version() == res.version  # no retrain, no new snapshot
    print(f"new item recommendable {ready_s:.2f} s after it was produced")

    # the running stream's base gets it too, under the same version (nobody re-anchored)
    deadline = time.monotonic() + 10
    while holder.learner.base.index_of("brand-new") < 0:
        assert time.monotonic() < deadline, "the stream's base never got the new item"
        holder.maybe_reload()
        time.sleep(0.05)
    base = holder.learner.base
    assert len(base.item_ids) == n0 + 1 and holder.version == res.version
    np.testing.assert_allclose(base.item_emb[base.index_of("brand-new")], vec[0], rtol=1e-5)
    holder.close()  # its followers (a thread, consumers) end with the test


def test_retrain_service_runs_on_new_events_and_resumes_after_the_last_decision(
        stack, topic, namespace, loop_data, tmp_path) -> None:
    import threading
    import time

    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, every_events=1000, every_minutes=600.0,
                       poll_s=0.2)
    stop = threading.Event()
    th = threading.Thread(target=Retrainer(s, namespace=namespace).serve, args=(stop,),
                          daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 180
        while not _decisions(stack, topic):
            assert time.monotonic() < deadline and th.is_alive(), "no retrain ran"
            time.sleep(0.5)
        time.sleep(1.5)  # several polls without new events: no second retrain
        assert len(_decisions(stack, topic)) == 1
    finally:
        stop.set()
        th.join(60)
    d = _decisions(stack, topic)[0]
    assert d["published"] and sum(d["window"]["end"].values()) == 1600
    last = Retrainer(s, namespace=namespace).last_decision()
    assert last is not None and last["candidate"] == d["candidate"]


def test_cold_lists_follow_live_clicks_and_click_first_items_become_recommendable(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    import time

    from serving_cache.popularity import DecayedCounts
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from snapshotter import SnapshotConfig, SnapshotStore, publish
    from snapshotter.testing import write_checkpoint
    from streams.new_items import ClickTail

    kafka = stack.settings.kafka
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    pop = np.arange(120)[::-1]  # publish-time popularity: i0 first
    ck = write_checkpoint(tmp_path / "ck", n_items=120, dim=8, n_categories=5, seed=4,
                          item_pop=pop)
    res = publish(ck, store, redis_client, namespace)
    rec = Recommender(SnapshotIndex.load(res.path, res.version), redis_client, namespace)
    assert rec.recommend("nobody", n=5).items[0] == "i0"
    rec.follow_clicks(ClickTail(kafka, topic), DecayedCounts(half_life_s=600), every_s=0.05,
                      refresh_s=0.1, new_item_min_clicks=2)
    t0 = time.monotonic()
    while True:  # keep clicking until the cold list follows
        clicks = [(f"u{j}", "i77") for j in range(5)] + [("u9", "from-a-click")] * 2
        assert produce_raw(kafka, topic, [(u.encode(), encode_event(ClickEvent(u, i, 1_700_000_000_000)))
                                          for u, i in clicks]).ok
        time.sleep(0.3)
        cold = rec.recommend("nobody", n=10)
        if cold.items[0] == "i77" and "from-a-click" in cold.items:
            break
        assert time.monotonic() - t0 < 20, f"cold list never followed the clicks: {cold.items}"
    assert cold.cold and cold.scores[0] > 0
    snap = rec.active
    assert snap is not None and snap.index_of("from-a-click") == 120
    assert snap.content_rows.tolist() == [120] and snap.index.ntotal == 121
    # new_item_min_clicks 0 (DIAM_FLOW_CLICK_FIRST_MIN_CLICKS=0) turns the rule off in the API
    # as in the dataflow: the cold list still follows live clicks, no item enters the index
    off = Recommender(SnapshotIndex.load(res.path, res.version), redis_client, namespace)
    off.follow_clicks(ClickTail(kafka, topic), DecayedCounts(half_life_s=600), every_s=0.05,
                      refresh_s=0.1, new_item_min_clicks=0)
    t0 = time.monotonic()
    while True:
        assert produce_raw(kafka, topic, [(b"u1", encode_event(ClickEvent("u1", "i77", 1_700_000_000_000)))]
                           * 5 + [(b"u9", encode_event(ClickEvent("u9", "from-a-click", 1_700_000_000_000)))] * 2).ok
        time.sleep(0.3)
        if off.recommend("nobody", n=10).items[0] == "i77":
            break
        assert time.monotonic() - t0 < 20, "the cold list never followed the clicks"
    off_snap = off.active
    assert off_snap is not None and off_snap.index_of("from-a-click") < 0
    assert off_snap.index.ntotal == 120


def test_click_first_items_enter_the_stream_base_by_the_api_rule_and_survive_restarts(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """An item first seen in clicks enters the running dataflow's base at its second click
    (the rule the API runs, ``ClickFirst``), with the content tower's no-metadata embedding;
    one click is not enough. A restarted dataflow has them at its first reload check, before
    its first event, with the same rows; a restarted API rebuilds them from the topic;
    replayed clicks do not count as live popularity."""
    import time

    from diam.app import load_holder
    from serving_cache.popularity import DecayedCounts
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from snapshotter import SnapshotConfig, SnapshotStore, publish
    from snapshotter.testing import write_checkpoint
    from streams.kafka_io import ensure_topic
    from streams.new_items import ClickTail, load_tower

    kafka = stack.settings.kafka.model_copy(update={"clicks_topic": topic,
                                                    "items_topic": f"{topic}.items"})
    ensure_topic(kafka, kafka.items_topic)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    res = publish(write_checkpoint(tmp_path / "ck", n_items=120, dim=8, n_categories=5, seed=6),
                  store, redis_client, namespace)
    s = stack.settings.model_copy(update={
        "kafka": kafka, "snapshot": store.cfg,
        "online": stack.settings.online.model_copy(update={"dim": 8})})
    clicks = [("u1", "cf-a"), ("u2", "i3"), ("u3", "cf-b"), ("u4", "cf-a"), ("u5", "i3")]
    assert produce_raw(kafka, topic, [(u.encode(), encode_event(ClickEvent(u, i, 1_700_000_000_000)))
                                      for u, i in clicks]).ok
    no_meta = load_tower(res.path).embed([[]], [""])[0]

    def grown_base():  # type: ignore[no-untyped-def]
        holder = load_holder(s, namespace=namespace)  # grown at the start: the history is read
        holder._check_every_s = 0.0
        holder.maybe_reload()  # the first check finds nothing more
        return holder, 120

    holder, n0 = grown_base()
    base = holder.learner.base
    assert base.index_of("cf-b") < 0 and len(base.item_ids) == n0 + 1
    assert holder.version == res.version  # same version: nobody re-anchored
    np.testing.assert_allclose(base.item_emb[base.index_of("cf-a")], no_meta, rtol=1e-5)

    again, _ = grown_base()  # a restarted dataflow: the same rows, the same vectors
    np.testing.assert_array_equal(again.learner.base.item_ids, base.item_ids)
    np.testing.assert_array_equal(again.learner.base.item_emb, base.item_emb)
    holder.close()  # their followers (a thread, consumers) end here
    again.close()

    # an API started after the clicks (a restart) gets the item from the topic's history
    rec = Recommender(SnapshotIndex.load(res.path, res.version), redis_client, namespace)
    counts = DecayedCounts(half_life_s=600)
    stop = __import__("threading").Event()
    rec.follow_clicks(ClickTail(kafka, topic), counts, every_s=0.05, stop=stop)
    deadline = time.monotonic() + 15
    while rec.active is None or rec.active.index_of("cf-a") < 0:
        assert time.monotonic() < deadline, "the restarted API never got the click-first item"
        time.sleep(0.05)
    stop.set()
    snap = rec.active
    assert snap.index_of("cf-b") < 0 and snap.content_rows.tolist() == [120]
    np.testing.assert_allclose(snap.item_vecs[120], no_meta, rtol=1e-5)
    assert len(counts) == 0  # history is not live popularity
