"""The drift monitor against the real broker: drift records in, alerts out on ``diam.alerts``.

Planted: three users of a 200-user fleet flip K_u 3→4→3→... every 5 s from minute 12 of a
30-minute stream; the monitor must name all three. Stable: a stream of the same fleet size and
duration (same null model, another seed) must raise nothing.

False-alarm bound tested: under the null model (K_u changes Poisson at 0.02 per user-minute, a
random step up or down; the learner's hysteresis allows at most one change per 30 of a user's
events) a per-user alert needs three changes of one user within one window, so the expected
number of false per-user alerts on these 6,000 user-windows is at most
``null_alert_bound(0.02, 6000)`` = 0.008; the Page-Hinkley detector (delta 0.5, threshold 8 on the
stabilised count) false-alarmed 2 times in 15,000 simulated windows, i.e. < 0.4 % over 30. At
0.05 per user-minute the bound is 0.12, and a seed that draws one of those 1-in-600 users does
raise ``k_churn`` (seed 12 does): the unit tests check the observed rate against the bound over
240,000 seeded user-windows at that rate.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from diam.cli import main
from streams.drift import DriftConfig, DriftRecord, drift_position
from streams.drift_flow import DriftMetrics, run_drift
from streams.drift_testing import T0_MS, null_alert_bound, plant_oscillation, stable_stream
from streams.kafka_io import consume_all
from tests.integration.helpers import produce

PLANTED = ["u0007", "u0042", "u0100"]
RATE = 0.02
START_MS = T0_MS + 12 * 60_000 + 7_000


def _records(events: list[DriftRecord]) -> list[tuple[bytes, bytes]]:
    return [(e.user_id.encode(), json.dumps({"kind": e.kind, "user_id": e.user_id, "ts_ms": e.ts_ms,
                                             "offset": e.offset, "detail": e.detail}).encode())
            for e in events]


def _monitor(kafka, events: list[DriftRecord], drift_topic: str, alerts_topic: str) -> list[dict]:
    produce(kafka, drift_topic, _records(events))
    metrics = DriftMetrics()
    run_drift(kafka, DriftConfig(), topic=drift_topic, alerts_topic=alerts_topic, bounded=True,
              metrics=metrics)
    n_changes = sum(e.kind == "k_change" for e in events)
    r = metrics.registry
    assert r.get_sample_value("diam_drift_events_total", {"kind": "k_change"}) == n_changes
    assert r.get_sample_value("diam_drift_late_total") == 0  # 4 partitions read batch-wise
    return [json.loads(r.value) for r in consume_all(kafka, alerts_topic)]


def test_planted_oscillation_is_named_and_a_stable_stream_of_the_same_length_is_silent(
        stack, new_topic) -> None:
    kafka = stack.settings.kafka
    planted = plant_oscillation(stable_stream(n_users=200, n_windows=30, rate=RATE, seed=11),
                                PLANTED, start_ms=START_MS)
    stable = stable_stream(n_users=200, n_windows=30, rate=RATE, seed=12)
    assert abs(len(stable) - len(planted)) <= 0.15 * len(planted)
    assert null_alert_bound(RATE, 200 * 30) < 0.008

    alerts = _monitor(kafka, planted, new_topic(4, "drift"), alerts_topic := new_topic(1, "alerts"))
    flips = [a for a in alerts if a["kind"] == "k_flip_flop"]
    assert {t["user_id"] for a in flips for t in a["top_users"]} == set(PLANTED)
    # the planted users also change K_u 8 times in a minute (k_churn); nobody else is named
    assert {a["kind"] for a in alerts} <= {"k_flip_flop", "k_churn", "k_change_drift"}
    assert {t["user_id"] for a in alerts if a["kind"] == "k_churn" for t in a["top_users"]} <= set(PLANTED)
    # Detection delay in events: position (event-time order of the whole drift stream) of the
    # record that raised the first alert, minus that of the first planted record.
    first = next(e.offset for e in planted if e.user_id in PLANTED and e.ts_ms >= START_MS)
    delay = min(a["detail"]["offset"] for a in flips) - first
    per_user = {t["user_id"]: sum(1 for e in planted if e.user_id == t["user_id"]
                                  and START_MS <= e.ts_ms and e.offset <= a["detail"]["offset"])
                for a in flips for t in a["top_users"]}
    print(f"\ndetection delay: {delay} events of the drift stream after the oscillation began; "
          f"planted changes per user until its alert: {per_user}")
    assert 0 < delay < 20 and set(per_user.values()) == {3}

    res = CliRunner().invoke(main, ["drift", "watch", "--topic", alerts_topic, "--from-beginning",
                                    "--exit-at-end"], obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    assert all(u in res.output for u in PLANTED) and "k_flip_flop" in res.output
    # each planted user went back and forth between K_u 3 and 4: the line says between which
    flip_lines = [ln for ln in res.output.splitlines() if "k_flip_flop" in ln]
    assert len(flip_lines) == len(flips)
    assert all(ln.endswith("=2 (K_u 3<->4)") for ln in flip_lines), flip_lines
    print(res.output)

    # a monitor of another namespace writes to the same alerts topic: --namespace leaves it out
    other = {"kind": "d_swing", "window": {"start_ms": START_MS, "end_ms": START_MS + 60_000},
             "value": 0.5, "threshold": 0.4, "top_users": [], "seq": 1, "ts_ms": START_MS,
             "detail": {}, "source": "x.drift", "namespace": "shadow"}
    produce(kafka, alerts_topic, [(b"d_swing", json.dumps(other).encode())])

    def watch(*extra: str) -> list[str]:
        r = CliRunner().invoke(main, ["drift", "watch", "--topic", alerts_topic,
                                      "--from-beginning", "--exit-at-end", *extra],
                               obj={"settings": stack.settings})
        assert r.exit_code == 0, r.output
        return r.output.splitlines()

    every = watch()
    assert len(every) == len(alerts) + 1 and every[-1].endswith("namespace shadow")
    assert watch("--namespace", "shadow") == every  # the monitor above watched every namespace
    assert watch("--namespace", "main") == every[:-1]

    assert _monitor(kafka, stable, new_topic(4, "drift"), new_topic(1, "alerts")) == []


def test_a_resumed_producers_repeats_are_counted_once_by_the_monitor_and_the_readers(
        stack, new_topic) -> None:
    from streams.tail import drift_bodies, user_drift_events

    kafka = stack.settings.kafka
    events = stable_stream(n_users=40, n_windows=4, rate=0.3, seed=5)
    # what a dataflow killed with -9 and resumed leaves: its last uncommitted epoch again
    repeats = events[-len(events) // 3:]
    assert len(repeats) >= 10
    drift_topic = new_topic(4, "drift")
    produce(kafka, drift_topic, _records(events) + _records(repeats))
    metrics = DriftMetrics()
    run_drift(kafka, DriftConfig(), topic=drift_topic, alerts_topic=new_topic(1, "alerts"),
              bounded=True, metrics=metrics)
    r = metrics.registry
    for kind in {e.kind for e in events}:
        want = sum(e.kind == kind for e in events)
        assert r.get_sample_value("diam_drift_events_total", {"kind": kind}) == want, kind
    assert r.get_sample_value("diam_drift_duplicates_total") == len(repeats)
    assert r.get_sample_value("diam_drift_late_total") == 0

    res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning", "--topic",
                                    drift_topic, "--alerts-topic", new_topic(1, "alerts")],
                             obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[-1] == (
        f"drift monitor done: {len(events) + len(repeats)} records read (0 not drift events, "
        f"0 of other namespaces, {len(repeats)} duplicates, 0 dropped as late, 0 after their "
        f"window closed: in their users' windows, not in the window totals), 0 alerts raised")

    bodies = drift_bodies(kafka, 10_000, drift_topic).events
    assert len(bodies) == len(events)
    assert sorted((b["user_id"], b["offset"]) for b in bodies) == sorted(
        (e.user_id, e.offset) for e in events)
    user = repeats[-1].user_id
    mine = [e.offset for e in events if e.user_id == user]
    assert [b["offset"] for b in user_drift_events(kafka, user, 1000, drift_topic)] == mine


def test_alert_seq_goes_on_from_where_the_topic_was_read_and_a_replay_writes_the_same_bytes(
        stack, new_topic) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    kafka = stack.settings.kafka
    w = 60_000
    events = plant_oscillation(stable_stream(n_users=50, n_windows=6, seed=5), ["u0001"],
                               start_ms=T0_MS + w + 1_000)
    events = plant_oscillation(events, ["u0002"], start_ms=T0_MS + 4 * w + 1_000)
    half = next(i for i, e in enumerate(events) if e.ts_ms >= T0_MS + 3 * w)  # a window's start
    drift_topic = new_topic(1, "drift")  # one partition: one read order, so replays match

    def monitor() -> list[bytes]:
        alerts_topic = new_topic(1, "alerts")
        run_drift(kafka, DriftConfig(), topic=drift_topic, alerts_topic=alerts_topic,
                  bounded=True)
        return [r.value for r in consume_all(kafka, alerts_topic)]

    produce(kafka, drift_topic, _records(events[:half]))
    first = [json.loads(v) for v in monitor()]
    produce(kafka, drift_topic, _records(events[half:]))
    # retention drops what the first run read: the next run starts at offset `half`, as a
    # --from-end run started where the first one stopped would
    admin = AdminClient(kafka.client_config())
    admin.delete_records([TopicPartition(drift_topic, 0, half)])[
        TopicPartition(drift_topic, 0, half)].result(30)
    second = monitor()
    flips = {a["top_users"][0]["user_id"] for a in first if a["kind"] == "k_flip_flop"}
    assert flips == {"u0001"}
    later = [json.loads(v) for v in second]
    assert {a["top_users"][0]["user_id"] for a in later if a["kind"] == "k_flip_flop"} == {"u0002"}
    assert max(a["seq"] for a in first) < drift_position(0, half) <= min(a["seq"] for a in later)
    assert monitor() == second  # the same records read again: the same alerts, byte for byte


def test_sigterm_stops_a_tailing_monitor_cleanly_with_its_alerts_delivered(
        stack, new_topic) -> None:
    """A tailing monitor under systemd or Kubernetes is stopped by SIGTERM: it ends its input
    at the next batch, closes its open windows, delivers their alerts and prints its closing
    line (exit 0), as diam run does, instead of dying with alerts still in the producer."""
    import os
    import signal
    import subprocess
    import sys
    import time

    kafka = stack.settings.kafka
    drift_topic, alerts_topic = new_topic(2, "drift"), new_topic(1, "alerts")
    planted = plant_oscillation(stable_stream(n_users=50, n_windows=6, rate=RATE, seed=3),
                                PLANTED[:1], start_ms=T0_MS + 60_000)
    produce(kafka, drift_topic, _records(planted))
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diam", "drift", "run", "--topic", drift_topic, "--alerts-topic",
         alerts_topic, "--from-beginning", "--tail", "--idle-close-s", "3600", "--summaries"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the planted user's flip-flop is a per-user alert: raised while the run tails
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(consume_all(kafka, alerts_topic)):
            time.sleep(0.5)
        assert list(consume_all(kafka, alerts_topic)), "the monitor raised nothing while tailing"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping at the next batch" in err
    assert err.splitlines()[-1].startswith("drift monitor stopped: ")
    alerts = [json.loads(r.value) for r in consume_all(kafka, alerts_topic)]
    printed = [ln for ln in out.splitlines() if ln.startswith("ALERT ")]
    # every alert printed is in the topic, and the window still open at the stop (the one of
    # the last event: no later event closed it, nor idleness) was closed and summarised
    assert len(alerts) == len(printed) and {a["source"] for a in alerts} == {drift_topic}
    windows = [json.loads(ln.split(" ", 1)[1]) for ln in out.splitlines()
               if ln.startswith("window ")]
    assert max(w["end_ms"] for w in windows) > max(e.ts_ms for e in planted)


def test_a_monitor_restarted_on_its_recovery_dir_accounts_what_was_written_while_it_was_down(
        stack, new_topic, tmp_path) -> None:
    """The monitor stops; drift events keep coming; it starts again (docker-compose's restart:
    --from-end, the default) on its --recovery-dir: it reads exactly the records written while
    it was down, and its per-user alerts are those of one run over everything, same seq."""
    kafka = stack.settings.kafka
    drift_topic = new_topic(1, "drift")  # one partition: one interleaving, comparable seq
    events = plant_oscillation(stable_stream(n_users=50, n_windows=6, rate=RATE, seed=3),
                               PLANTED[:2], start_ms=T0_MS + 60_000)
    cut = next(i for i, e in enumerate(events) if e.user_id in PLANTED and e.ts_ms > T0_MS + 62_000)
    rec = tmp_path / "drift-rec"

    def run(*extra: str) -> tuple[str, list[dict]]:
        alerts_topic = new_topic(1, "alerts")
        res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--topic", drift_topic,
                                        "--alerts-topic", alerts_topic, *extra],
                                 obj={"settings": stack.settings})
        assert res.exit_code == 0, res.output
        return res.stderr, [json.loads(r.value) for r in consume_all(kafka, alerts_topic)]

    produce(kafka, drift_topic, _records(events[:cut]))
    err1, first = run("--from-beginning", "--recovery-dir", str(rec))
    assert f"drift monitor done: {cut} records read" in err1
    produce(kafka, drift_topic, _records(events[cut:]))  # written while it was down
    err2, second = run("--recovery-dir", str(rec))  # --from-end: resumes, skips nothing
    assert f"drift monitor done: {len(events) - cut} records read" in err2, err2
    _, whole = run("--from-beginning")

    def per_user(alerts: list[dict]) -> list[tuple]:
        return sorted((a["kind"], a["window"]["start_ms"], a["top_users"][0]["user_id"], a["seq"])
                      for a in alerts if a["kind"] in ("k_flip_flop", "k_churn", "d_swing"))

    assert per_user(second) and per_user(first + second) == per_user(whole)
    assert min(a["seq"] for a in second) >= drift_position(0, cut)  # on from the first run
    # the store is this topic's and window length's: another --window-s is refused, saying why
    res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--topic", drift_topic,
                                    "--window-s", "30", "--recovery-dir", str(rec)],
                             obj={"settings": stack.settings})
    assert res.exit_code == 2 and "window_ms 60000" in res.output, res.output


def test_a_run_refused_for_a_misspelt_topic_does_not_claim_its_recovery_dir(
        stack, new_topic, tmp_path) -> None:
    """The reviewer's repro: ``--bounded --topic <misspelt> --recovery-dir drec`` is refused
    (the topic does not exist) and leaves no claim on drec; the next run, of the real topic,
    uses drec (a711970 had written drift-monitor.json naming the misspelt topic first and
    refused every later run)."""
    from streams.drift_flow import STORE_OWNER

    kafka = stack.settings.kafka
    drift_topic = new_topic(1, "drift")
    events = stable_stream(n_users=200, n_windows=3, rate=RATE, seed=4)
    produce(kafka, drift_topic, _records(events))
    rec = tmp_path / "drec"
    alerts_topic = new_topic(1, "alerts")

    def run(topic: str):
        return CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning",
                                         "--topic", topic, "--alerts-topic", alerts_topic,
                                         "--recovery-dir", str(rec)],
                                  obj={"settings": stack.settings})

    misspelt = f"{drift_topic}.drfit"  # never created: a bounded run does not create it
    res = run(misspelt)
    assert res.exit_code == 2 and "nothing to read" in res.output, res.output
    assert not (rec / STORE_OWNER).exists()
    res = run(drift_topic)
    assert res.exit_code == 0, res.output
    assert f"drift monitor done: {len(events)} records read" in res.stderr, res.stderr
    assert json.loads((rec / STORE_OWNER).read_text())["topic"] == drift_topic


def test_a_jump_of_years_in_event_time_neither_crashes_the_monitor_nor_its_restart(
        stack, new_topic, tmp_path) -> None:
    """The reviewer's repro: ml-100k's 1997 drift events, then one of 2026 (~15 million
    one-minute windows later), on a --recovery-dir, run twice: each run ends cleanly (it used
    to die of a RecursionError in the monitor step, on every restart), the quiet windows are
    capped at QUIET_CAP and the skip is said on stderr."""
    from streams.drift import QUIET_CAP

    drift_topic = new_topic(1, "driftfix_drift")
    t1997 = 852_076_800_000
    old = [DriftRecord("k_change", f"u{i}", t1997 + i * 20_000, i, {"k_from": 2, "k_to": 3})
           for i in range(10)]
    jump = DriftRecord("guard_trip", "42", 1_796_601_600_000, 5_000)
    produce(stack.settings.kafka, drift_topic, _records([*old, jump]))
    rec, alerts_topic = tmp_path / "rec-jump", new_topic(1, "driftfix_alerts")
    runs = []
    for _ in range(2):
        res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning",
                                        "--topic", drift_topic, "--alerts-topic", alerts_topic,
                                        "--lateness-s", "0", "--summaries",
                                        "--recovery-dir", str(rec)],
                                 obj={"settings": stack.settings})
        assert res.exit_code == 0, res.output
        runs.append(res)
    first = runs[0]
    assert "windows without drift events before 2026-12-06T07:20:00Z skipped" in first.stderr, first.stderr
    assert f"the last {QUIET_CAP} closed as zeros" in first.stderr
    assert len([ln for ln in first.stdout.splitlines() if ln.startswith("window ")]) <= QUIET_CAP + 5
    assert "drift monitor done: 0 records read" in runs[1].stderr  # resumed after them


def test_a_drift_record_with_an_infinite_time_or_offset_is_counted_not_fatal(
        stack, new_topic) -> None:
    """The reviewer's repro: ts_ms Infinity (and 1e400, an offset of -Infinity, a year past
    9999) used to kill the monitor (int(inf) in parse_drift_record); each is now one of the
    "not drift events", and the good record beside them is accounted."""
    drift_topic = new_topic(1, "driftfix_drift")
    good = b'{"kind":"freeze","user_id":"u1","ts_ms":1700000000000,"offset":1}'
    bad = [b'{"kind":"freeze","user_id":"u9","ts_ms":Infinity,"offset":1}',
           b'{"kind":"freeze","user_id":"u9","ts_ms":1e400,"offset":1}',
           b'{"kind":"freeze","user_id":"u9","ts_ms":5,"offset":-Infinity}',
           b'{"kind":"freeze","user_id":"u9","ts_ms":1e300,"offset":1}']
    produce(stack.settings.kafka, drift_topic, [(b"u", v) for v in [*bad, good]])
    res = CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning",
                                    "--topic", drift_topic,
                                    "--alerts-topic", new_topic(1, "driftfix_alerts")],
                             obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    assert "drift monitor done: 5 records read (4 not drift events" in res.stderr, res.stderr


def test_a_store_of_a_drift_topic_deleted_and_re_created_since_is_refused_saying_so(
        stack, new_topic, tmp_path) -> None:
    """The reviewer's repro: a monitor reads a drift topic into its --recovery-dir, the topic
    is deleted and re-created under the same name (diam drop, then a new replay) and filled
    again: the resumed monitor read 0 of the new records ("0 records read ... 0 alerts"). Its
    store records Kafka's topic id now, and the run is refused with one Error: line saying
    what to do; an emptied store reads the new topic from its start."""
    import shutil
    import time

    from confluent_kafka import KafkaException

    from streams.drift_flow import STORE_OWNER
    from streams.forget_markers import topic_id
    from streams.kafka_io import delete_topics
    from tests.integration.conftest import create_topic

    kafka = stack.settings.kafka
    drift_topic = new_topic(1, "driftfix_drift")
    alerts_topic = new_topic(1, "driftfix_alerts")
    events = stable_stream(n_users=50, n_windows=3, rate=RATE, seed=7)
    produce(kafka, drift_topic, _records(events))
    rec = tmp_path / "rec-r1"

    def run():
        return CliRunner().invoke(main, ["drift", "run", "--bounded", "--from-beginning",
                                         "--topic", drift_topic, "--alerts-topic", alerts_topic,
                                         "--recovery-dir", str(rec)],
                                  obj={"settings": stack.settings})

    res = run()
    assert res.exit_code == 0, res.output
    old_id = topic_id(kafka, drift_topic)
    assert json.loads((rec / STORE_OWNER).read_text())["topic_id"] == old_id
    delete_topics(kafka, [drift_topic])
    deadline = time.monotonic() + 60
    while True:  # the name may stay taken a moment after the deletion
        try:
            create_topic(stack, drift_topic, 1)
            break
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    produce(kafka, drift_topic, _records(events))
    res = run()
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "deleted and re-created" in errors[0], res.output
    assert f"with id {old_id}" in errors[0] and "--recovery-dir" in errors[0]
    shutil.rmtree(rec)
    res = run()
    assert res.exit_code == 0, res.output
    assert f"drift monitor done: {len(events)} records read" in res.stderr, res.stderr


def test_watch_shows_malformed_alert_records_as_not_alerts_and_goes_on(stack, new_topic) -> None:
    """The reviewer's repro: {"kind":"x","value":"abc"} (and a start_ms of 1e300, of
    Infinity, a string) killed diam drift watch with a traceback in format_alert; each is now
    an "(not an alert)" line, and the good alert after them is shown."""
    alerts_topic = new_topic(1, "driftfix_alerts")
    good = {"kind": "k_churn", "window": {"start_ms": 0, "end_ms": 60000}, "value": 4.0,
            "threshold": 4.0, "top_users": [{"user_id": "u7", "value": 4.0}]}
    bad = [b'{"kind":"x","value":"abc"}',
           b'{"kind":"x","window":{"start_ms":1e300,"end_ms":1e300}}',
           b'{"kind":"x","window":{"start_ms":Infinity}}',
           b'{"kind":"x","window":{"start_ms":"soon"}}',
           b'{"kind":"x","top_users":[{"user_id":"u","value":"abc"}]}']
    produce(stack.settings.kafka, alerts_topic,
            [(b"x", v) for v in bad] + [(b"k_churn", json.dumps(good).encode())])
    res = CliRunner().invoke(main, ["drift", "watch", "--topic", alerts_topic,
                                    "--from-beginning", "--exit-at-end"],
                             obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 6 and all(ln.startswith("(not an alert) ") for ln in lines[:5]), lines
    assert lines[5] == ("1970-01-01T00:00:00Z +60s  k_churn  value 4 (threshold 4)  "
                        "users: u7=4")


def test_a_recovery_dir_whose_saved_monitor_is_corrupt_is_one_error_line(
        stack, new_topic, tmp_path) -> None:
    """A corrupt monitor snapshot (ser_change X'80049500') made the resumed run print a Rust
    panic and a Python traceback ending in _pickle.UnpicklingError (exit 1)."""
    import sqlite3

    kafka = stack.settings.kafka
    drift_topic, alerts_topic = new_topic(1, "drift"), new_topic(1, "alerts")
    produce(kafka, drift_topic, _records(stable_stream(n_users=40, n_windows=2, seed=2)))
    rec = tmp_path / "drift-rec"
    args = ["drift", "run", "--bounded", "--topic", drift_topic, "--alerts-topic",
            alerts_topic, "--recovery-dir", str(rec)]
    res = CliRunner().invoke(main, [*args, "--from-beginning"], obj={"settings": stack.settings})
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(rec / "part-0.sqlite3")
    assert con.execute("UPDATE snaps SET ser_change = X'80049500' WHERE step_id = "
                       "'diam-drift.monitor'").rowcount >= 1
    con.commit()
    con.close()
    res = CliRunner().invoke(main, args, obj={"settings": stack.settings})
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert str(rec) in line and "cannot be read (UnpicklingError" in line, line
    assert "Traceback" not in res.output and "panicked" not in res.output
