"""The drift monitor dataflow under Bytewax's TestingSource (no services)."""

from __future__ import annotations

import json

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.drift import DriftConfig, WindowSummary
from streams.drift_flow import DriftMetrics, build_drift_flow
from streams.drift_testing import T0_MS, plant_oscillation, stable_stream
from streams.kafka_io import RawRecord


def records(evs, partitions: int = 2) -> list[RawRecord]:
    out = []
    for e in evs:
        body = {"kind": e.kind, "user_id": e.user_id, "ts_ms": e.ts_ms, "offset": e.offset,
                "detail": e.detail}
        p = int(e.user_id[1:]) % partitions
        out.append(RawRecord("diam.drift", p, e.offset, e.user_id.encode(),
                             json.dumps(body).encode(), e.ts_ms))
    return out


def test_flow_sends_alerts_as_json_and_exports_metrics():
    evs = plant_oscillation(stable_stream(n_users=40, n_windows=4, seed=2), ["u0003"],
                            start_ms=T0_MS + 60_000)
    raw = records(evs) + [RawRecord("diam.drift", 0, 999, None, b"not json", T0_MS)]
    sink_items: list = []
    metrics = DriftMetrics()
    seen: list = []
    flow = build_drift_flow(TestingSource(raw), TestingSink(sink_items), DriftConfig(),
                            metrics=metrics, on_output=seen.append)
    run_main(flow)
    alerts = [json.loads(k.value) for k in sink_items]
    flip = [a for a in alerts if a["kind"] == "k_flip_flop"]
    assert [t["user_id"] for a in flip for t in a["top_users"]] == ["u0003"]
    assert set(flip[0]) == {"kind", "window", "value", "threshold", "top_users", "seq", "ts_ms",
                            "detail"}
    assert sink_items[0].key == alerts[0]["kind"].encode()
    r = metrics.registry
    assert r.get_sample_value("diam_drift_unparsed_total") == 1
    assert r.get_sample_value("diam_drift_alerts_total", {"kind": "k_flip_flop"}) == 1
    n_changes = sum(e.kind == "k_change" for e in evs)
    assert r.get_sample_value("diam_drift_events_total", {"kind": "k_change"}) == n_changes
    assert r.get_sample_value("diam_drift_window_end_seconds") == (T0_MS + 4 * 60_000) / 1000
    assert sum(isinstance(o, WindowSummary) for o in seen) == 4  # one summary per window


def test_a_namespaced_monitor_reads_its_runs_events_and_its_alerts_say_where_from():
    """Runs into two namespaces share the drift topic: the monitor of one sees its own runs'
    events (and unmarked ones, written before events named their namespace) and its alerts
    carry the drift topic they count in (source, the base of seq) and the namespace."""
    evs = plant_oscillation(stable_stream(n_users=40, n_windows=4, seed=2), ["u0003"],
                            start_ms=T0_MS + 60_000)
    mine = records(evs)
    other = plant_oscillation(stable_stream(n_users=40, n_windows=4, seed=2), ["u0007"],
                              start_ms=T0_MS + 60_000)
    theirs = [r._replace(value=json.dumps({**json.loads(r.value), "namespace": "b"}).encode())
              for r in records(other)]
    ours = [r._replace(value=json.dumps({**json.loads(r.value), "namespace": "a"}).encode())
            for r in mine]
    for name, raw in (("marked", ours), ("unmarked", mine)):
        sink_items: list = []
        metrics = DriftMetrics()
        run_main(build_drift_flow(TestingSource(sorted(raw + theirs, key=lambda r: r.ts_ms)),
                                  TestingSink(sink_items), DriftConfig(), metrics=metrics,
                                  source_topic="diam.drift", namespace="a"))
        alerts = [json.loads(k.value) for k in sink_items]
        flip = [t["user_id"] for a in alerts if a["kind"] == "k_flip_flop" for t in a["top_users"]]
        assert flip == ["u0003"], name  # u0007 flips in namespace b only
        assert {(a["source"], a["namespace"]) for a in alerts} == {("diam.drift", "a")}
        assert metrics.totals()["other"] == len(theirs), name


def test_learner_drift_events_as_the_online_flow_writes_them_are_understood():
    from online_model.online import DriftEvent
    from streams.drift import DriftMonitor, parse_drift_record
    from streams.online import drift_record

    evs = [DriftEvent("k_change", "u1", T0_MS + i, 10 + i, {"k_from": a, "k_to": b})
           for i, (a, b) in enumerate([(2, 3), (3, 2), (2, 3)])]
    evs.append(DriftEvent("guard_trip", "u1", T0_MS + 5, 20, {"guard": "step_cap", "interest": 0}))
    m = DriftMonitor()
    out = [o for e in evs for o in m.add(parse_drift_record(drift_record(e).value))] + m.flush()
    assert [o.kind for o in out if not isinstance(o, WindowSummary)] == ["k_flip_flop"]
    [summary] = [o for o in out if isinstance(o, WindowSummary)]
    assert (summary.k_changes, summary.flip_users, summary.guard_trips) == (3, 1, 1)


def test_a_resumed_producers_repeats_are_counted_once_and_exported():
    # a dataflow killed and resumed produces its last epoch's drift events again: the same
    # records after the originals, in their partition
    evs = stable_stream(n_users=300, n_windows=3, seed=5)
    raw = records(evs)
    repeats = [r for r in raw if r.partition == 0][-25:]
    assert len(repeats) == 25
    metrics = DriftMetrics()
    run_main(build_drift_flow(TestingSource(raw + repeats), TestingSink([]), DriftConfig(),
                              metrics=metrics))
    r = metrics.registry
    assert r.get_sample_value("diam_drift_duplicates_total") == 25
    assert r.get_sample_value("diam_drift_late_total") == 0
    for kind in ("k_change", "guard_trip"):
        want = sum(e.kind == kind for e in evs)
        assert (r.get_sample_value("diam_drift_events_total", {"kind": kind}) or 0) == want


def test_an_upgraded_producer_resumed_after_a_crash_repeats_are_counted_once():
    """The reviewer's repro through the dataflow: 20 records of an older producer (no topic),
    then the upgraded producer, resumed after a crash, emits that epoch again saying its
    topic: 40 read, 20 duplicates (5e8f7da: 0 duplicates, everything accounted twice)."""
    evs = stable_stream(n_users=300, n_windows=3, seed=5)[:20]
    assert len(evs) == 20
    old = records(evs, partitions=1)
    again = [r._replace(value=json.dumps({**json.loads(r.value), "topic": "diam.clicks"})
                        .encode()) for r in old]
    metrics = DriftMetrics()
    run_main(build_drift_flow(TestingSource(old + again), TestingSink([]), DriftConfig(),
                              metrics=metrics))
    assert metrics.summary_line().startswith(
        "drift monitor done: 40 records read (0 not drift events, 0 of other namespaces, "
        "20 duplicates"), metrics.summary_line()


def test_late_records_are_counted_per_batch_and_the_summary_line_adds_everything_up():
    # u0: all in partition 0; the last record belongs to a window the watermark has closed.
    # It comes after the last window closed, so no window summary would ever report it.
    def body(ts_ms: int, offset: int) -> bytes:
        return json.dumps({"kind": "k_change", "user_id": "u0", "ts_ms": ts_ms, "offset": offset,
                           "detail": {"k_from": 2, "k_to": 3}}).encode()

    raw = [RawRecord("diam.drift", 0, i, b"u0", body(ts, i), ts)
           for i, ts in enumerate([T0_MS + 1_000, T0_MS + 2 * 60_000 + 10_000])]
    raw += [RawRecord("diam.drift", 0, 1, b"u0", body(T0_MS + 2 * 60_000 + 10_000, 1), T0_MS),
            RawRecord("diam.drift", 0, 2, b"u0", body(T0_MS + 2_000, 2), T0_MS),
            RawRecord("diam.drift", 0, 3, None, b"not json", T0_MS)]
    # a run into another namespace: skipped by a monitor of namespace "a", and counted
    other = {**json.loads(body(T0_MS + 3_000, 4)), "namespace": "b"}
    raw.append(RawRecord("diam.drift", 0, 4, b"u0", json.dumps(other).encode(), T0_MS))
    metrics = DriftMetrics()
    run_main(build_drift_flow(TestingSource(raw), TestingSink([]), DriftConfig(), metrics=metrics,
                              namespace="a"))
    assert metrics.registry.get_sample_value("diam_drift_late_total") == 1
    assert metrics.totals() == {"read": 6, "unparsed": 1, "other": 1, "duplicates": 1, "late": 1,
                                "after_close": 0, "alerts": 0}
    assert metrics.summary_line() == ("drift monitor done: 6 records read (1 not drift events, "
                                      "1 of other namespaces, 1 duplicates, 1 dropped as late, "
                                      "0 after their window closed: in their users' windows, not "
                                      "in the window totals), 0 alerts raised")


def test_records_behind_the_watermark_are_exported_and_in_the_summary_line():
    # a backlog written user by user: u1's events come after u0's, earlier in event time. u0
    # has moved the partition's watermark past the first window: u1's event counts for u1 but
    # not in that window's totals, and neither the summaries nor "late" would say so
    def body(user: str, ts_ms: int, offset: int) -> bytes:
        return json.dumps({"kind": "k_change", "user_id": user, "ts_ms": ts_ms, "offset": offset,
                           "detail": {"k_from": 2, "k_to": 3}}).encode()

    stamps = [("u0", T0_MS + 1_000), ("u0", T0_MS + 2 * 60_000 + 10_000), ("u1", T0_MS + 2_000)]
    raw = [RawRecord("diam.drift", 0, i, user.encode(), body(user, ts, i), ts)
           for i, (user, ts) in enumerate(stamps)]
    metrics = DriftMetrics()
    run_main(build_drift_flow(TestingSource(raw), TestingSink([]), DriftConfig(), metrics=metrics))
    assert metrics.registry.get_sample_value("diam_drift_after_close_total") == 1
    assert metrics.registry.get_sample_value("diam_drift_late_total") == 0
    assert metrics.totals()["after_close"] == 1
    assert "0 dropped as late, 1 after their window closed: in their users' windows, not in " \
        "the window totals), 0 alerts raised" in metrics.summary_line()


def test_alert_records_number_by_their_records_place_in_the_topic_and_carry_k_u():
    evs = plant_oscillation(stable_stream(n_users=40, n_windows=4, seed=2), ["u0003"],
                            start_ms=T0_MS + 60_000)

    def alerts(shift: int) -> list[dict]:
        out: list = []
        recs = [r._replace(offset=r.offset + shift) for r in records(evs)]
        run_main(build_drift_flow(TestingSource(recs), TestingSink(out), DriftConfig(),
                                  partitions=[0, 1]))
        return [json.loads(k.value) for k in out]

    # seq: offset x 1024 + partition + 1, so 500 records later in each is 500 x 1024 later
    base, later = alerts(0), alerts(500)
    assert base and [a["seq"] for a in later] == [a["seq"] + 500 * 1024 for a in base]
    assert [{**a, "seq": 0} for a in later] == [{**a, "seq": 0} for a in base]
    [flip] = [a for a in base if a["kind"] == "k_flip_flop"]
    assert flip["top_users"] == [{"user_id": "u0003", "value": 2.0, "k_from": 3, "k_to": 4}]
    raised_by = next(r for r in records(evs) if r.partition == 1 and json.loads(r.value)[
        "user_id"] == "u0003" and json.loads(r.value)["ts_ms"] == flip["ts_ms"])
    assert flip["seq"] == raised_by.offset * 1024 + 1 + 1


def test_seq_neither_collides_nor_changes_when_the_drift_topic_gains_partitions() -> None:
    """A monitor built on a one-partition topic that then gained a second numbered a record at
    offset 1 of partition 0 and one at offset 0 of partition 1 alike (offset x 1 + partition
    + 1 = 2): two distinct alerts per (source, seq, kind), the second dropped by a consumer;
    and a fresh run counting two partitions renumbered every alert."""
    def body(user: str, ts: int, off: int) -> bytes:
        return json.dumps({"kind": "freeze", "user_id": user, "ts_ms": ts, "offset": off}
                          ).encode()

    raw = [RawRecord("diam.drift", 0, 0, b"a", body("a", T0_MS, 0), T0_MS),
           RawRecord("diam.drift", 0, 1, b"a", body("a", T0_MS + 1, 1), T0_MS),
           RawRecord("diam.drift", 1, 0, b"b", body("b", T0_MS + 2, 0), T0_MS)]
    cfg = DriftConfig(freezes=1)

    def seqs(partitions: list[int], recs: list[RawRecord]) -> list[int]:
        out: list = []
        run_main(build_drift_flow(TestingSource(recs), TestingSink(out), cfg,
                                  partitions=partitions))
        return [json.loads(k.value)["seq"] for k in out]

    # one window's alert per record: each closes its window with its own records in it
    one_each = [[r] for r in raw]
    numbered = [seqs([0], recs) for recs in one_each]
    assert len({s for n in numbered for s in n}) == 3, numbered  # no two records alike
    assert numbered == [seqs([0, 1], recs) for recs in one_each]  # nor renumbered
    assert numbered == [[1], [1025], [2]]


def test_check_partitions_refuses_a_topic_whose_records_would_have_no_seq() -> None:
    from streams.drift_flow import DriftTopicUnusable, check_partitions

    check_partitions("t", list(range(1024)))
    with pytest.raises(DriftTopicUnusable, match="1025 partitions"):
        check_partitions("t", list(range(1025)))


def test_per_user_alerts_keep_their_seq_when_the_partitions_are_read_in_another_order() -> None:
    """A monitor resumed after a kill -9 re-reads its last epoch with the partitions
    interleaved otherwise: its per-user alerts must come back with the same seq (it counted
    its records in reading order, so the same alert got another seq: 5389 then 5562)."""
    evs = plant_oscillation(stable_stream(n_users=40, n_windows=4, seed=2), ["u0003", "u0010"],
                            start_ms=T0_MS + 60_000)
    recs = records(evs)
    by_part = [[r for r in recs if r.partition == p] for p in (0, 1)]
    # one partition's records read first, then the other's: far from the offset order
    other_order = by_part[1] + by_part[0]

    def per_user(rs: list[RawRecord]) -> dict[tuple, int]:
        out: list = []
        run_main(build_drift_flow(TestingSource(rs), TestingSink(out), DriftConfig(),
                                  partitions=[0, 1]))
        alerts = [json.loads(k.value) for k in out]
        return {(a["kind"], a["window"]["start_ms"], a["top_users"][0]["user_id"]): a["seq"]
                for a in alerts if a["kind"] in ("k_flip_flop", "k_churn", "d_swing")}

    first = per_user(recs)
    assert len(first) >= 2
    assert per_user(other_order) == first


def _write_a_position(store) -> None:
    """What a monitor run leaves in its recovery store after an epoch: its input's position
    and the monitor's state (a real Bytewax run over one record)."""
    from datetime import timedelta

    from streams.runner import prepare_recovery

    body = json.dumps({"kind": "freeze", "user_id": "u", "ts_ms": 5, "offset": 1}).encode()
    run_main(build_drift_flow(TestingSource([RawRecord("diam.drift", 0, 1, b"u", body, 5)]),
                              TestingSink([]), DriftConfig()),
             epoch_interval=timedelta(seconds=0), recovery_config=prepare_recovery(store))


def test_a_recovery_store_is_claimed_for_one_topic_namespace_and_window(tmp_path) -> None:
    from streams.drift_flow import STORE_OWNER, StoreMismatch, check_store
    from streams.runner import prepare_recovery

    store = tmp_path / "rec"
    assert check_store(store, "diam.drift", None, DriftConfig()) is False  # claimed, nothing yet
    prepare_recovery(store)  # Bytewax's files, no position yet
    assert check_store(store, "diam.drift", None, DriftConfig()) is False
    _write_a_position(store)
    assert check_store(store, "diam.drift", None, DriftConfig()) is True  # resumes
    for topic, ns, cfg, said in (("other.drift", None, DriftConfig(), "topic 'diam.drift'"),
                                 ("diam.drift", "shadow", DriftConfig(), "namespace None"),
                                 ("diam.drift", None, DriftConfig(window_ms=30_000),
                                  "window_ms 60000")):
        with pytest.raises(StoreMismatch, match=said):
            check_store(store, topic, ns, cfg)
    (store / STORE_OWNER).unlink()  # a store with data and no owner file: a diam run's
    with pytest.raises(StoreMismatch, match="is a diam run's .*not a drift monitor store"):
        check_store(store, "diam.drift", None, DriftConfig())


def test_a_diam_run_store_is_refused_before_bytewax_wrote_into_it(tmp_path) -> None:
    """The rule of whose a store is (``streams.runner.store_owner``), one for both dataflows:
    a ``diam run``'s record alone (written at its checks, before Bytewax's files) makes it a
    run's store, which the monitor must not claim."""
    from streams.drift_flow import STORE_OWNER, StoreMismatch, check_store
    from streams.runner import STORE_RECORD

    store = tmp_path / "rec"
    store.mkdir()
    (store / STORE_RECORD).write_text('{"topic": "t", "partitions": 4, "reads": null}')
    with pytest.raises(StoreMismatch, match=f"it holds {STORE_RECORD} and no {STORE_OWNER}"):
        check_store(store, "diam.drift", None, DriftConfig())
    assert not (store / STORE_OWNER).exists()


def test_a_store_claimed_by_a_run_that_never_wrote_a_position_is_claimed_again(tmp_path) -> None:
    """The reviewer's repro: a first run refused (``--topic diam.drfit`` does not exist) left
    drift-monitor.json naming it and an empty part file (a711970 claimed the store before the
    topic was checked). Such a store holds nothing: the next run claims it for its own topic
    (a711970 refused it: "the drift monitor's of topic 'diam.drfit'")."""
    from streams.drift_flow import STORE_OWNER, check_store
    from streams.runner import prepare_recovery

    store = tmp_path / "drec"
    prepare_recovery(store)
    (store / STORE_OWNER).write_text(json.dumps(
        {"namespace": None, "topic": "diam.drfit", "window_ms": 60_000}) + "\n")
    assert check_store(store, "diam.drift", None, DriftConfig()) is False
    assert json.loads((store / STORE_OWNER).read_text())["topic"] == "diam.drift"
    assert check_store(store, "diam.drift", None, DriftConfig(window_ms=30_000)) is False
    assert json.loads((store / STORE_OWNER).read_text())["window_ms"] == 30_000
    assert [p.name for p in store.iterdir() if p.name.startswith(f".{STORE_OWNER}")] == []


def test_one_namespace_learnt_from_two_topics_loses_no_drift_event_as_a_repeat() -> None:
    """The reviewer's repro without services: two click streams of the same users (seeds 3 and
    4) read from topics t1 and t4 into one namespace. t4's offsets start at 0 again; every
    drift record says its topic, and the monitor accounts all of them (none a 'duplicate')."""
    from datetime import timedelta

    from bytewax.testing import TestingSink, TestingSource

    from streams.config import FlowConfig
    from streams.drift import DriftMonitor, parse_drift_record
    from streams.online import FlowSinks, LearnerHolder, build_flow
    from tests.flowkit import as_records, click_stream, tiny_learner

    records = []
    for topic, seed in (("t1", 3), ("t4", 4)):
        learner = tiny_learner()
        drift: list = []
        flow = build_flow(TestingSource(as_records(click_stream(n_users=6, n_events=400, seed=seed)),
                                        batch_size=7),
                          FlowSinks(TestingSink([]), TestingSink([]), TestingSink(drift)),
                          FlowConfig(push_every_events=3), LearnerHolder(learner, learner.base.version),
                          namespace="r5", topic=topic)
        run_main(flow, epoch_interval=timedelta(seconds=0.05))
        records += [parse_drift_record(out.value) for _, out in drift]
    assert {r.topic for r in records} == {"t1", "t4"} and {r.namespace for r in records} == {"r5"}
    m = DriftMonitor()
    for r in records:
        m.add(r)
    assert len(records) > 20 and (m.seen, m.duplicates) == (len(records), 0)


def test_a_resumed_monitor_detects_with_the_new_runs_page_hinkley_settings() -> None:
    """The reviewer's repro: 15 quiet windows of one K_u change each under the defaults, the
    monitor snapshotted; resumed with --ph-threshold 1000, 50 changes in the next window raise
    no k_change_drift (the old detector's threshold of 8 raised one while the start line and
    the alert said 1000). The detector's state is carried: the same rise resumed with the
    default settings still alerts."""
    import pickle

    from streams.drift import DriftMonitor, DriftRecord
    from streams.drift_flow import _MonitorLogic

    def change(i: int, ts: int) -> tuple[int, int, DriftRecord]:
        return 0, i, DriftRecord("k_change", f"u{i}", ts, i, {"k_from": 1, "k_to": 2})

    first = DriftMonitor(DriftConfig(lateness_ms=0), [0])
    for w in range(15):
        part, off, rec = change(w, T0_MS + w * 60_000)
        first.add(rec, part, off)
    stored = pickle.dumps(first)
    rise = [change(100 + j, T0_MS + 15 * 60_000 + j) for j in range(50)]
    rise.append(change(999, T0_MS + 16 * 60_000 + 1))  # closes the window of the rise

    def drift_alerts(cfg: DriftConfig) -> list[object]:
        logic = _MonitorLogic(cfg, pickle.loads(stored), 10.0, [0])
        out, _ = logic.on_batch(rise)
        assert logic.monitor._ph.threshold == cfg.ph_threshold
        return [o for o in out if getattr(o, "kind", None) == "k_change_drift"]

    assert drift_alerts(DriftConfig(lateness_ms=0)), "the rise is a drift under the defaults"
    assert drift_alerts(DriftConfig(lateness_ms=0, ph_threshold=1000.0)) == []


def test_a_d_u_outside_its_range_is_no_drift_event_and_alerts_are_strict_json() -> None:
    """``"detail": {"d": 1e308, "d_from": -1e308}`` (finite, absurd) made a d_swing of
    value inf, written ``"value": Infinity`` (not JSON) to the alerts topic."""
    def body(off: int, detail: dict) -> bytes:
        return json.dumps({"kind": "k_change", "user_id": "u1", "ts_ms": T0_MS + off,
                           "offset": off, "detail": {"k_from": 2, "k_to": 3, **detail}}).encode()

    raw = [RawRecord("diam.drift", 0, 0, b"u1", body(0, {"d": 0.2}), T0_MS),
           RawRecord("diam.drift", 0, 1, b"u1", body(1, {"d": 1e308, "d_from": -1e308}), T0_MS),
           RawRecord("diam.drift", 0, 2, b"u1", body(2, {"d": 0.9}), T0_MS)]
    out: list = []
    metrics = DriftMetrics()
    run_main(build_drift_flow(TestingSource(raw), TestingSink(out), DriftConfig(d_swing=0.5),
                              metrics=metrics))

    def strict(text: str) -> object:
        raise ValueError(f"not JSON: {text}")

    alerts = [json.loads(k.value, parse_constant=strict) for k in out]
    assert metrics.totals()["unparsed"] == 1
    assert [(a["kind"], a["value"]) for a in alerts] == [("d_swing", 0.7)]


def test_a_store_whose_saved_monitor_cannot_be_read_is_refused_saying_what_to_do(
        tmp_path) -> None:
    """A corrupt monitor snapshot (ser_change X'80049500') made a resumed run print a Rust
    panic and Python's UnpicklingError after its start line; check_store took the store."""
    import sqlite3
    from datetime import timedelta

    from streams.drift_flow import StoreMismatch, check_store
    from streams.runner import prepare_recovery

    store, cfg = tmp_path / "rec", DriftConfig()
    assert check_store(store, "diam.drift", None, cfg) is False  # claimed
    raw = records(stable_stream(n_users=40, n_windows=2, seed=2))
    assert raw
    run_main(build_drift_flow(TestingSource(raw), TestingSink([]), cfg),
             epoch_interval=timedelta(seconds=1), recovery_config=prepare_recovery(store))
    assert check_store(store, "diam.drift", None, cfg) is True  # a readable monitor: resumed
    con = sqlite3.connect(store / "part-0.sqlite3")
    n = con.execute("UPDATE snaps SET ser_change = X'80049500' WHERE step_id = "
                    "'diam-drift.monitor'").rowcount
    con.commit()
    con.close()
    assert n >= 1
    with pytest.raises(StoreMismatch) as err:
        check_store(store, "diam.drift", None, cfg)
    msg = str(err.value)
    assert str(store) in msg and "cannot be read (UnpicklingError" in msg
    assert "give this monitor another (or an emptied) --recovery-dir" in msg and "\n" not in msg
