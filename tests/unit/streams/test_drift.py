"""The drift monitor's windowing and alert logic on hand-made event lists (no services)."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.drift import Alert, DriftConfig, DriftMonitor, DriftRecord, TopUser, WindowSummary
from streams.drift_testing import T0_MS, null_alert_bound, plant_oscillation, stable_stream

W = 60_000
_OFFSETS = itertools.count()


def kc(user: str, ts: int, a: int, b: int, d: float | None = None, off: int | None = None) -> DriftRecord:
    # each change comes from its own click (a distinct source offset), as in the dataflow: the
    # monitor takes a record with the offset and body of one already seen for a repeat
    detail: dict[str, object] = {"k_from": a, "k_to": b}
    if d is not None:
        detail["d"] = d
    return DriftRecord("k_change", user, ts, next(_OFFSETS) if off is None else off, detail)


def run(events: list[DriftRecord], cfg: DriftConfig | None = None
        ) -> tuple[list[Alert], list[WindowSummary]]:
    m = DriftMonitor(cfg)
    out = [o for e in events for o in m.add(e)] + m.flush()
    return ([o for o in out if isinstance(o, Alert)], [o for o in out if isinstance(o, WindowSummary)])


def test_flip_flop_alert_is_raised_at_the_second_reversal_and_names_the_user():
    evs = [kc("bob", T0_MS + 1000 * i, *((3, 4) if i % 2 == 0 else (4, 3))) for i in range(3)]
    m = DriftMonitor(DriftConfig())
    fired = [(i, a) for i, e in enumerate(evs) for a in m.add(e) if isinstance(a, Alert)]
    # 3→4, 4→3 (reversal 1), 3→4 (reversal 2): the third change raises it, once per window
    assert [(i, a.kind, a.top_users) for i, a in fired] == [
        (2, "k_flip_flop", [TopUser("bob", 2.0, None, (3, 4))])]
    assert fired[0][1].seq == 3 and fired[0][1].window_start_ms == T0_MS


def test_a_single_reversal_is_counted_but_does_not_alert_by_default():
    alerts, [summary] = run([kc("amy", T0_MS, 2, 3), kc("amy", T0_MS + 10, 3, 2)])
    assert alerts == []
    assert (summary.k_changes, summary.users_changed, summary.flip_users) == (2, 1, 1)


def test_changes_that_do_not_undo_each_other_are_not_reversals():
    alerts, [summary] = run([kc("c", T0_MS + i, 2 + i, 3 + i) for i in range(3)])
    assert summary.flip_users == 0 and alerts == []


def test_reversals_do_not_span_windows():
    evs = [kc("dan", T0_MS + W - 2, 3, 4), kc("dan", T0_MS + W - 1, 4, 3),
           kc("dan", T0_MS + W + 1, 3, 4), kc("dan", T0_MS + W + 2, 4, 3)]
    alerts, summaries = run(evs)
    assert alerts == [] and [s.flip_users for s in summaries] == [1, 1]


def test_churn_and_d_swing_alerts():
    evs = [kc("eve", T0_MS + i, 2 + i, 3 + i, d=0.3 + 0.12 * i) for i in range(5)]
    alerts, _ = run(evs)
    by_kind = {a.kind: a for a in alerts}
    assert by_kind["k_churn"].value == 4 and by_kind["k_churn"].top_users == [TopUser("eve", 4.0, None, (5, 6))]
    assert by_kind["d_swing"].top_users[0][0] == "eve"
    assert by_kind["d_swing"].value >= 0.4


def test_window_closes_on_event_time_and_late_events_are_counted_not_used():
    cfg = DriftConfig(lateness_ms=1_000)
    m = DriftMonitor(cfg)
    assert m.add(kc("a", T0_MS + 5, 1, 2)) == []
    assert m.add(kc("b", T0_MS + W + 500, 1, 2)) == []          # within lateness: still open
    out = m.add(kc("c", T0_MS + W + 1_000, 1, 2))                 # watermark reaches the end
    assert [type(o) for o in out] == [WindowSummary] and out[0].k_changes == 1
    # c's own event going back past its window by the lateness: dropped and counted
    assert m.add(kc("c", T0_MS + 10, 2, 1)) == [] and (m.late, m.after_close) == (1, 0)
    # within b's own lateness, b's earlier window still counts it, though not in its global counts
    assert m.add(kc("b", T0_MS + W - 1, 2, 1)) == [] and (m.late, m.after_close) == (1, 1)
    [summary] = [o for o in m.flush() if isinstance(o, WindowSummary)]
    assert (summary.start_ms, summary.k_changes, summary.late) == (T0_MS + W, 2, 1)


def test_a_batch_written_user_by_user_is_counted_and_alerts_by_each_users_event_time():
    # the learner emits a batch user by user: a's events (t = 1000..1100 s) come before b's
    # earlier ones (t = 10..20 s), then c's; each user's own are in order. Every user's windows
    # follow its own event time, so none is late and each one's churn and flip-flop are raised.
    def user(name: str, t0_s: int, ks: list[int]) -> list[DriftRecord]:
        return [kc(name, T0_MS + (t0_s + 2 * i) * 1_000, a, b) for i, (a, b) in
                enumerate(itertools.pairwise(ks))]

    batch = (user("a", 1_000, [2, 3, 4, 5, 6]) + user("b", 10, [3, 4, 3, 4])
             + user("c", 500, [1, 2, 1, 2, 3]))
    m = DriftMonitor()
    out = [o for e in batch for o in m.add(e)] + m.flush()
    alerts = sorted((a.kind, a.top_users[0].user_id, a.window_start_ms) for a in out
                    if isinstance(a, Alert))
    assert m.late == 0 and m.seen == len(batch) == 11
    assert alerts == [("k_churn", "a", T0_MS + 960_000), ("k_churn", "c", T0_MS + 480_000),
                      ("k_flip_flop", "b", T0_MS), ("k_flip_flop", "c", T0_MS + 480_000)]
    # b and c came after their windows' global counts closed: counted per user, said apart
    summaries = [o for o in out if isinstance(o, WindowSummary)]
    assert m.after_close == 7 and sum(s.events for s in summaries) == 4
    # the same records give the same output
    again = DriftMonitor()
    assert [o for e in batch for o in again.add(e)] + again.flush() == out


def test_watermark_waits_for_every_partition():
    m = DriftMonitor(DriftConfig(lateness_ms=0))
    m.add(kc("a", T0_MS + 1, 1, 2), partition=0)
    m.add(kc("b", T0_MS + 2, 1, 2), partition=1)
    # partition 0 races ahead three windows (a backlog read one partition batch at a time)
    assert m.add(kc("a", T0_MS + 3 * W, 2, 3), partition=0) == []
    m.add(kc("b", T0_MS + 30, 2, 1), partition=1)                 # still counted, not late
    out = m.add(kc("b", T0_MS + 3 * W + 1, 1, 2), partition=1)
    assert m.late == 0 and [o.k_changes for o in out] == [3, 0, 0]  # windows 1, 2: quiet


def test_windows_wait_for_a_silent_expected_partition_until_it_is_marked_idle():
    m = DriftMonitor(DriftConfig(lateness_ms=0), partitions=[0, 1])
    m.add(kc("a", T0_MS + 1, 1, 2), partition=0)
    assert m.add(kc("a", T0_MS + 2 * W, 2, 3), partition=0) == [] and m.watermark() is None
    m.mark_idle(1)
    assert [(o.start_ms, o.events) for o in m.advance()] == [(T0_MS, 1), (T0_MS + W, 0)]
    m.add(kc("b", T0_MS + 2 * W + 5, 1, 2), partition=1)   # back: waited for again
    assert m.watermark() == T0_MS + 2 * W


def test_global_counts_alert_at_window_close_with_top_users_by_count_then_id():
    cfg = DriftConfig(guard_trips=3, freezes=None, rollbacks=2, top_n=2)
    evs = [DriftRecord("guard_trip", u, T0_MS + i, i, {}) for i, u in enumerate("zzaab")]
    evs += [DriftRecord("rollback", "r", T0_MS + 9, 9, {}), DriftRecord("freeze", "f", T0_MS + 9, 9, {})]
    alerts, [summary] = run(evs, cfg)
    assert [(a.kind, a.value, a.threshold, a.top_users) for a in alerts] == [
        ("guard_trips", 5.0, 3.0, [TopUser("a", 2.0), TopUser("z", 2.0)])]
    assert (summary.guard_trips, summary.rollbacks, summary.freezes) == (5, 1, 1)


def _windows_of(counts: list[int], rng: np.random.Generator) -> list[DriftRecord]:
    evs = []
    for w, n in enumerate(counts):
        for j in range(n):
            k = int(rng.integers(1, 7))
            evs.append(kc(f"u{j}", T0_MS + w * W + j, k, k + 1))
    return evs


def test_page_hinkley_is_silent_on_a_stable_rate_and_catches_a_tripling():
    rng = np.random.default_rng(3)
    stable = list(rng.poisson(20, size=200))
    alerts, _ = run(_windows_of(stable, rng))
    assert [a for a in alerts if a.kind == "k_change_drift"] == []
    jump = stable[:60] + list(rng.poisson(60, size=10))
    alerts, _ = run(_windows_of(jump, rng))
    drift = [a for a in alerts if a.kind == "k_change_drift"]
    assert drift, "the detector missed a tripling of the K_u change rate"
    assert (drift[0].window_start_ms - T0_MS) // W - 60 <= 3       # within 3 windows of it


def test_quiet_windows_feed_zeros_to_the_detector():
    # one change every 30 windows, then 5 a window for 3 windows: with the empty windows fed as
    # zeros this is a rise (8.6 > 8 in stabilised units); without them it would not be (5.4)
    evs = [kc("q", T0_MS + w * W, 1, 2) for w in range(0, 300, 30)]
    evs += [kc(f"b{j}", T0_MS + w * W + j, 1, 2) for w in (301, 302, 303) for j in range(5)]
    alerts, _ = run(evs)
    assert any(a.kind == "k_change_drift" for a in alerts)


def test_planted_oscillation_named_and_stable_fleet_silent():
    stable = stable_stream(n_users=200, n_windows=30, seed=11)
    planted_users = ["u0007", "u0042", "u0100"]
    start = T0_MS + 12 * W + 7_000
    planted = plant_oscillation(stable, planted_users, start_ms=start)
    alerts, _ = run(planted)
    named = {t.user_id for a in alerts if a.kind == "k_flip_flop" for t in a.top_users}
    assert named == set(planted_users)
    first = next(i for i, e in enumerate(planted) if e.ts_ms >= start and e.user_id in planted_users)
    delay = min(a.seq for a in alerts if a.kind == "k_flip_flop") - (first + 1)
    assert 0 <= delay < 30            # a handful of fleet events interleaved with 3 planted ones
    assert run(stable)[0] == []


def test_false_alarm_rate_of_per_user_alerts_stays_under_the_null_bound():
    # 40 seeded stable fleets = 240,000 user-windows; the expected count of per-user alerts is
    # at most null_alert_bound (P(Poisson(0.05) >= 3) = 2.0e-5 per user-window, 4.8 here).
    counts: Counter[str] = Counter()
    for seed in range(40):
        alerts, _ = run(stable_stream(n_users=200, n_windows=30, seed=1000 + seed))
        counts.update(a.kind for a in alerts)
    bound = null_alert_bound(0.05, 40 * 200 * 30)
    per_user = counts["k_flip_flop"] + counts["k_churn"] + counts["d_swing"]
    assert per_user <= bound, (counts, bound)
    assert counts["k_change_drift"] <= 3, counts  # ARL0 of the detector: thousands of windows


def test_snapshot_mid_stream_resumes_identically():
    evs = plant_oscillation(stable_stream(n_users=50, n_windows=6, seed=5), ["u0001"],
                            start_ms=T0_MS + 2 * W)
    m = DriftMonitor()
    whole = [o for e in evs for o in m.add(e)] + m.flush()
    m = DriftMonitor()
    first = [o for e in evs[:40] for o in m.add(e)]
    m = pickle.loads(pickle.dumps(m))
    rest = [o for e in evs[40:] for o in m.add(e)] + m.flush()
    assert first + rest == whole


kinds = st.sampled_from(["k_change", "guard_trip", "rollback", "freeze", "reanchor"])
event = st.tuples(kinds, st.sampled_from(["a", "b", "c"]), st.integers(0, 5 * W),
                  st.integers(1, 4), st.integers(1, 4))


@settings(max_examples=60, deadline=None)
@given(st.lists(event, max_size=60))
def test_window_counts_match_a_batch_recount(raw):
    # offsets in arrival order, as a user's records reach the monitor in source-offset order
    evs = [DriftRecord(k, u, T0_MS + t, i, {"k_from": a, "k_to": b} if k == "k_change" else {})
           for i, (k, u, t, a, b) in enumerate(sorted(raw, key=lambda r: r[2]))]
    _, summaries = run(evs, DriftConfig(lateness_ms=0))
    for s in summaries:
        inside = [e for e in evs if s.start_ms <= e.ts_ms < s.end_ms]
        assert s.events == len(inside)
        assert s.k_changes == sum(e.kind == "k_change" for e in inside)
        assert s.users == len({e.user_id for e in inside})
        assert s.guard_trips == sum(e.kind == "guard_trip" for e in inside)
    assert sum(s.events for s in summaries) == len(evs)


@settings(max_examples=40, deadline=None)
@given(st.lists(event, min_size=1, max_size=40), st.data())
def test_a_resumed_producers_repeats_are_not_counted_twice(raw, data):
    # a crash and resume re-produces, per user, a suffix of what was already produced: the
    # monitor's windows and alerts are those of the stream without the repeats
    evs = [DriftRecord(k, u, T0_MS + t, i, {"k_from": a, "k_to": b} if k == "k_change" else {})
           for i, (k, u, t, a, b) in enumerate(sorted(raw, key=lambda r: r[2]))]
    cut = data.draw(st.integers(1, len(evs)))
    back = data.draw(st.integers(0, cut))
    with_repeats = evs[:cut] + evs[back:cut] + evs[cut:]
    m = DriftMonitor(DriftConfig(lateness_ms=0))
    got = [o for e in with_repeats for o in m.add(e)] + m.flush()
    assert m.duplicates == cut - back
    ref = DriftMonitor(DriftConfig(lateness_ms=0))
    assert got == [o for e in evs for o in ref.add(e)] + ref.flush()


def test_k_u_alerts_name_each_users_last_k_u_change_and_the_line_shows_it():
    from streams.drift import format_alert

    evs = [kc("bob", T0_MS + i, *((3, 4) if i % 2 == 0 else (4, 3))) for i in range(4)]
    evs += [kc("amy", T0_MS + 10 + i, 5 + i, 6 + i) for i in range(4)]
    evs += [DriftRecord("guard_trip", "bob", T0_MS + 20 + i, next(_OFFSETS), {}) for i in range(2)]
    alerts, _ = run(evs, DriftConfig(k_changes=8, guard_trips=2, top_n=3))
    by_kind = {a.kind: a for a in alerts}

    def pairs(a):
        return {t.user_id: t.k for t in a.top_users}

    assert pairs(by_kind["k_flip_flop"]) == {"bob": (3, 4)}      # raised by bob's third change
    assert [pairs(a) for a in alerts if a.kind == "k_churn"] == [{"bob": (4, 3)}, {"amy": (8, 9)}]
    assert pairs(by_kind["k_change_rate"]) == {"bob": (4, 3), "amy": (8, 9)}  # last of each
    assert pairs(by_kind["guard_trips"]) == {"bob": None}          # not about K_u
    flip = by_kind["k_flip_flop"].to_dict()
    assert flip["top_users"] == [{"user_id": "bob", "value": 2.0, "k_from": 3, "k_to": 4}]
    assert format_alert(flip).endswith("users: bob=2 (K_u 3<->4)")
    rate = format_alert(by_kind["k_change_rate"].to_dict())
    assert rate.endswith("users: amy=4 (K_u 8->9), bob=4 (K_u 4->3)") and "\n" not in rate
    assert format_alert(by_kind["guard_trips"].to_dict()).endswith("users: bob=2")


def test_a_k_u_that_is_not_a_number_leaves_the_pair_out_and_crashes_nothing():
    from streams.drift import format_alert, parse_drift_record

    m = DriftMonitor(DriftConfig(user_changes=1))
    rec = parse_drift_record(b'{"kind": "k_change", "user_id": "u", "ts_ms": 5, "offset": 1,'
                             b' "detail": {"k_from": Infinity, "k_to": 2}}')
    [alert] = [a for a in m.add(rec) if isinstance(a, Alert)]
    assert alert.kind == "k_churn" and alert.top_users == [TopUser("u", 1.0)]
    body = alert.to_dict()
    body["top_users"][0].update(k_from="three", k_to=None)
    assert format_alert(body).endswith("users: u=1")


def test_seq_goes_on_from_the_start_position_and_a_replay_numbers_alike():
    # a monitor that starts where the previous run stopped (the drift topic's records before
    # its first one) numbers on from it; one that reads the same records again repeats them
    evs = plant_oscillation(stable_stream(n_users=50, n_windows=6, seed=5), ["u0001"],
                            start_ms=T0_MS + 1 * W + 1_000)
    evs = plant_oscillation(evs, ["u0002"], start_ms=T0_MS + 4 * W + 1_000)
    half = next(i for i, e in enumerate(evs) if e.ts_ms >= T0_MS + 3 * W)  # a window's start

    def alerts_of(records: list[DriftRecord], start: int) -> list[Alert]:
        m = DriftMonitor(start_position=start)
        return [o for o in [o for e in records for o in m.add(e)] + m.flush()
                if isinstance(o, Alert)]

    first, second = alerts_of(evs[:half], 0), alerts_of(evs[half:], half)
    assert first and second
    assert max(a.seq for a in first) <= half < min(a.seq for a in second)
    whole = alerts_of(evs, 0)
    again = alerts_of(evs, 0)
    assert [a.to_dict() for a in again] == [a.to_dict() for a in whole]
    # a per-user alert's seq is the position of the record that raised it, in either run
    per_user = {(a.kind, a.window_start_ms, a.top_users[0].user_id): a.seq
                for a in whole if a.kind in ("k_flip_flop", "k_churn")}
    split = {(a.kind, a.window_start_ms, a.top_users[0].user_id): a.seq
             for a in first + second if a.kind in ("k_flip_flop", "k_churn")}
    assert split == per_user and per_user


def test_the_same_event_of_runs_into_two_namespaces_is_not_a_repeat():
    """Two runs of one topic into two namespaces write the same drift events but for their
    namespace: a monitor of every namespace accounts both, and still drops a resumed run's
    repeat within one namespace."""
    from streams.drift import DriftMonitor, DriftRecord

    def rec(ns, offset):
        return DriftRecord("k_change", "u1", 1_000 + offset, offset, {"k_from": 2, "k_to": 3}, ns)

    m = DriftMonitor()
    for r in (rec("live", 500), rec("shadow", 20), rec("shadow", 500), rec("live", 500)):
        m.add(r)
    assert (m.seen, m.duplicates) == (3, 1)


def test_one_user_id_in_two_namespaces_is_two_users():
    """Runs into two namespaces (a shadow run of the same clicks) share the drift topic and
    their user ids: a monitor of every namespace counts each namespace's u1 apart (two changes
    each do not make one user's four) and names each with its namespace."""
    from streams.drift import format_alert

    def rec(ns, i, a, b):
        return DriftRecord("k_change", "u1", T0_MS + i, i, {"k_from": a, "k_to": b}, ns)

    evs = [rec(ns, 2 * i + (ns == "shadow"), 2 + i, 3 + i) for i in range(3)
           for ns in ("live", "shadow")]
    alerts, [summary] = run(evs, DriftConfig(user_changes=4, flip_reversals=2, k_changes=6))
    assert [a.kind for a in alerts] == ["k_change_rate"]   # no k_churn: three changes each
    assert (summary.users, summary.users_changed, summary.k_changes) == (2, 2, 6)
    [rate] = alerts
    assert rate.top_users == [TopUser("u1", 3.0, "live", (4, 5)), TopUser("u1", 3.0, "shadow", (4, 5))]
    body = rate.to_dict()
    assert [t["namespace"] for t in body["top_users"]] == ["live", "shadow"]
    assert format_alert(body).endswith("users: u1@live=3 (K_u 4->5), u1@shadow=3 (K_u 4->5)")
    assert "u1=3" in format_alert({**body, "namespace": "live"})  # the alert's own namespace
    # four changes in one namespace are one user's: its churn alert fires
    one = [rec("live", i, 2 + i, 3 + i) for i in range(4)]
    assert [a.kind for a in run(one, DriftConfig(user_changes=4, k_changes=None))[0]] == ["k_churn"]


def test_a_namespace_fed_from_two_topics_keeps_both_topics_events() -> None:
    """One namespace learnt from topic t1, then from t4 (or t1 deleted and re-created): t4's
    offsets start low again and say nothing of t1's. Each topic's events are accounted; a
    resumed run's repeat within one topic is still dropped."""
    def rec(topic, offset, ts):
        return DriftRecord("k_change", "u1", ts, offset, {"k_from": 2, "k_to": 3}, "r5", topic)

    m = DriftMonitor()
    evs = [rec("t1", 500, T0_MS), rec("t1", 900, T0_MS + 1),  # the run on t1
           rec("t4", 20, T0_MS + 2), rec("t4", 400, T0_MS + 3),  # the run on t4: lower offsets
           rec("t4", 400, T0_MS + 3)]  # its repeat (a resumed run)
    for r in evs:
        m.add(r)
    assert (m.seen, m.duplicates) == (4, 1)
    # and a monitor snapshot written before _User kept a topic resumes (no attribute: None,
    # which compares with any topic)
    user = next(iter(m._users.values()))
    del user.__dict__["topic"]
    m2 = pickle.loads(pickle.dumps(m))
    m2.add(rec("t4", 400, T0_MS + 3))
    m2.add(rec("t4", 401, T0_MS + 4))
    assert (m2.seen, m2.duplicates) == (5, 2)


def _no_topic_then_topic(n_users: int = 4, per_user: int = 5):
    """The reviewer's repro: an older producer's records (no topic), then the upgraded
    producer resumed after a crash emits its uncommitted epoch again, saying its topic."""
    old = [DriftRecord("k_change", f"u{u}", T0_MS + 10 * i + u, 100 * u + i,
                       {"k_from": 2 + i, "k_to": 3 + i}, "live")
           for u in range(n_users) for i in range(per_user)]
    return old, [dataclasses.replace(r, topic="t") for r in old]


def test_an_upgraded_producers_repeats_with_a_topic_are_repeats_of_records_without_one():
    """A record without a topic compares with any topic: the 20 repeats are duplicates, not
    accounted twice (5e8f7da took None != "t" for another topic: 0 duplicates)."""
    old, again = _no_topic_then_topic()
    m = DriftMonitor()
    for r in old + again:
        m.add(r)
    assert (m.seen, m.duplicates) == (20, 20)
    m = DriftMonitor()  # and the other way round (an older producer after a newer one)
    for r in again + old:
        m.add(r)
    assert (m.seen, m.duplicates) == (20, 20)


def test_a_rolling_upgrades_records_without_a_topic_are_not_repeats_of_another_topics():
    """The reviewer's repro (10e0bc0): one namespace fed by two click topics, one run still on
    the older release (no topic). Its records' lower offsets say nothing of clicks.web's: all
    three are accounted (10e0bc0 compared them with the user's last topic: 2 duplicates).
    Their own repeats, and an upgraded re-emission with a topic, are still repeats."""
    web = DriftRecord("k_change", "u1", T0_MS, 1000, {"k_from": 2, "k_to": 3}, "live",
                      "clicks.web")
    old = [DriftRecord("k_change", "u1", T0_MS + 1, 12, {"k_from": 2, "k_to": 3}, "live"),
           DriftRecord("freeze", "u1", T0_MS + 2, 13, {}, "live")]
    m = DriftMonitor()
    for r in [web, *old]:
        m.add(r)
    assert (m.seen, m.duplicates) == (3, 0)
    m = pickle.loads(pickle.dumps(m))
    for r in [*old, *(dataclasses.replace(r, topic="clicks.app") for r in old),
              dataclasses.replace(web, topic=None), web]:
        m.add(r)
    assert (m.seen, m.duplicates) == (3, 6)
    m.add(dataclasses.replace(web, offset=999))  # within clicks.web: a lower offset repeats
    m.add(dataclasses.replace(old[0], offset=11, topic="clicks.app"))  # another topic's
    assert (m.seen, m.duplicates) == (4, 7)


def test_readers_drop_a_topic_carrying_repeat_of_a_record_without_one():
    """``unique_drift_bodies`` (streams.tail, inspect --plot) follows the same rule: a body
    without a topic repeats one with any topic, and two topics stay apart."""
    from streams.drift import unique_drift_bodies

    old, again = _no_topic_then_topic()
    bodies = [{**dataclasses.asdict(r)} for r in old + again]
    for b in bodies[:20]:
        del b["topic"]  # as older producers wrote them
    assert unique_drift_bodies(bodies) == bodies[:20]
    assert unique_drift_bodies(bodies[20:] + bodies[:20]) == bodies[20:]
    t4 = [{**b, "topic": "t4"} for b in bodies[20:]]
    assert unique_drift_bodies(bodies[20:] + t4 + bodies[:20]) == bodies[20:] + t4


def test_quiet_windows_close_as_zero_summaries_so_the_gauges_fall_back_to_zero() -> None:
    """A busy window, then quiet ones, then one event: once the watermark passes
    the quiet windows they close as summaries of zero (in order, before the next busy one), so
    the window gauges show 0 instead of the busy window's counts until the next one closes."""
    from streams.drift_flow import DriftMetrics

    m = DriftMonitor(DriftConfig(lateness_ms=0))
    metrics = DriftMetrics()
    outs = [o for i in range(5) for o in m.add(kc(f"b{i}", T0_MS + i, 1, 2))]
    outs += m.add(kc("x", T0_MS + W + 10, 1, 2))  # window 1 opens: window 0 closes
    outs += m.add(kc("y", T0_MS + 3 * W + 10, 1, 2))  # windows 1 (1 event), 2 (none) close
    summaries = [o for o in outs if isinstance(o, WindowSummary)]
    assert [(s.start_ms - T0_MS) // W for s in summaries] == [0, 1, 2]
    outs = m.add(kc("z", T0_MS + 9 * W + 1, 1, 2))  # windows 3..8 close: 3 has y, 4-8 none
    summaries += [o for o in outs if isinstance(o, WindowSummary)]
    for s in summaries:
        metrics.observe(s)
    assert [((s.start_ms - T0_MS) // W, s.k_changes) for s in summaries] == [
        (0, 5), (1, 1), (2, 0), (3, 1), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0)]
    assert metrics.gauges["k_changes"]._value.get() == 0
    assert metrics.gauges["end_seconds"]._value.get() == (T0_MS + 9 * W) / 1000


def test_a_huge_forward_jump_in_event_time_closes_at_most_quiet_cap_windows_and_says_so() -> None:
    """A dataset's 1997 drift events, then one of 2026 (~15 million windows later): the monitor
    neither recurses nor closes every quiet window. It closes the last QUIET_CAP of them,
    and the first of those summaries says how many before it were skipped. Gaps of 5,000 and
    50,000 windows are capped the same way (they used to give 4,998 and 49,998 summaries)."""
    from streams.drift import QUIET_CAP

    t1997, t2026 = 852_076_800_000, 1_796_601_600_000
    for gap_windows in (5_000, 50_000, (t2026 - t1997) // W):
        m = DriftMonitor(DriftConfig(lateness_ms=0))
        outs = m.add(kc("a", t1997, 1, 2)) + m.add(kc("b", t1997 + W, 1, 2))  # window 0 closes
        outs += m.add(DriftRecord("guard_trip", "42", t1997 + W + gap_windows * W, 5_000))
        summaries = [o for o in outs if isinstance(o, WindowSummary)]
        busy, quiet = summaries[:2], summaries[2:]
        assert len(quiet) == QUIET_CAP
        assert [s.k_changes for s in busy] == [1, 1] and busy[1].quiet_skipped == 0
        assert all(s.events == 0 for s in quiet)
        assert quiet[0].quiet_skipped == gap_windows - 1 - QUIET_CAP
        assert sum(s.quiet_skipped for s in quiet[1:]) == 0
        assert [s.start_ms for s in quiet] == list(range(quiet[0].start_ms, quiet[-1].end_ms, W))
        assert quiet[-1].end_ms == t1997 + W + gap_windows * W  # up to the new event's window
        assert [s.events for s in m.flush() if isinstance(s, WindowSummary)] == [1]


def test_a_resumed_monitor_waits_for_the_partitions_the_topic_gained() -> None:
    """A monitor resumed by a run on a topic that gained a partition waited only for the
    snapshot's partitions: the new one's first records, behind the old one's event time,
    were 'after their window closed' and missing from the window's counts."""
    m = DriftMonitor(DriftConfig(), [0])
    m.add(DriftRecord("freeze", "a", T0_MS + 5 * W, 0), 0, 0)
    m = pickle.loads(pickle.dumps(m))
    m.configure(DriftConfig(), [0, 1])
    m.add(DriftRecord("freeze", "b", T0_MS, 0), 1, 0)
    assert m.after_close == 0
    assert [s.freezes for s in m.flush() if isinstance(s, WindowSummary)][0] == 1
