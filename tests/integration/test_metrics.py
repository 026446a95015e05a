"""``diam run --metrics-port``: scraped during runs against the real broker and Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diam.commands.run import parse_summary, summary_lines
from streams.kafka_io import consume_all, watermarks
from tests.flowkit import click_stream
from tests.integration.helpers import click_payloads, produce, write_tiny_checkpoint

BAD = [(b"u1", b"\xff\x00garbage"), (b"u2", json.dumps({"user_id": "u2"}).encode()),
       (b"u3", json.dumps({"user_id": "u3", "item_id": "i1", "ts": 5}).encode())]


class _Run:
    """A ``diam run`` subprocess whose metrics endpoint is scraped until it exits."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        self.port: int | None = None
        self.families: set[str] = set()
        self._seen = threading.Event()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def output(self, timeout: float) -> str:
        """Wait for the process to end and return its stdout, with every stderr line in
        ``self.stderr``: stdout is read here alone (``communicate`` would also read stderr and
        take lines from the reader thread), then the reader is joined."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._err_reader.join(timeout)
        return out

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            m = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", line)
            if m:
                self.port = int(m.group(1))
                self._seen.set()

    def scrape(self) -> dict[tuple[str, tuple], float]:
        # start-up imports torch and, on a first run from a checkout, compiles the numba
        # kernels: minutes on a loaded two-core machine, seconds once the cache is written
        if not self._seen.wait(600):
            raise AssertionError("no metrics line; stderr:\n" + "".join(self.stderr)[-3000:])
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read()
        out = {}
        self.families = set()
        for fam in text_string_to_metric_families(text.decode()):
            self.families.add(fam.name)
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def scrape_until_done(self) -> tuple[list[dict], dict, str]:
        """Scrape every 50 ms while the run works; once its summary line is out, one last
        scrape (the endpoint stays up for --metrics-hold)."""
        assert self.proc.stdout is not None
        lines: list[str] = []
        done = threading.Event()

        def read_out() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                lines.append(line)
                if summary_lines(line):
                    done.set()

        threading.Thread(target=read_out, daemon=True).start()
        during = []
        deadline = time.monotonic() + 600
        while not done.is_set() and time.monotonic() < deadline:
            if self.proc.poll() is not None and not done.is_set():
                time.sleep(0.5)
                if not done.is_set():
                    raise AssertionError("diam run failed:\n" + "".join(self.stderr)[-3000:])
            try:
                during.append(self.scrape())
            except OSError:
                pass
            time.sleep(0.05)
        assert done.is_set(), "no summary line; stderr:\n" + "".join(self.stderr)[-3000:]
        final = self.scrape()
        summary = summary_lines("".join(lines))[0]
        return during, final, summary

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the last scrape is done: the metrics hold is not needed
        self.proc.wait(30)


def _summary_counts(line: str) -> dict[str, int]:
    keys = ["records", "valid", "rejected", "users", "in_state", "learn_calls", "pushes", "drift_events",
            "evictions", "restarts"]
    got = parse_summary(line)
    assert set(keys) <= got.keys(), line
    return {k: int(got[k]) for k in keys}


def _by(s: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in s.items() if k[0] == name}


def _one(s: dict, name: str) -> float:
    vals = [v for k, v in s.items() if k[0] == name]
    assert len(vals) == 1, (name, vals)
    return vals[0]


def _env(stack, topic: str) -> dict[str, str]:
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
            "DIAM_REDIS_URL": stack.redis_url, "DIAM_ONLINE_DIM": "16", "DIAM_ONLINE_K_MAX": "4",
            "DIAM_FLOW_EPOCH_INTERVAL_S": "0.1", "DIAM_FLOW_BATCH_SIZE": "50",
            "DIAM_FLOW_PUSH_EVERY_MS": "50",
            "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift",
            "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    write_tiny_checkpoint(path)
    return path


@pytest.mark.timeout(900)
def test_scraped_during_a_run_lag_falls_to_zero_and_counters_equal_the_summary(
        stack, topic, namespace, ckpt) -> None:
    events = click_stream(n_users=40, n_events=8000, seed=5)
    produce(stack.settings.kafka, topic, click_payloads(events) + BAD)
    marks = watermarks(stack.settings.kafka, topic)
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", namespace,
           "--checkpoint", str(ckpt), "--bounded", "--metrics-port", "0", "--metrics-hold", "20"]
    run = _Run(cmd, _env(stack, topic))
    try:
        during, final, summary = run.scrape_until_done()
    finally:
        run.close()
    want = _summary_counts(summary)
    assert want["records"] == len(events) + len(BAD) and want["rejected"] == len(BAD)

    # lag: per partition, high watermark minus position, falling to 0 at the end
    lag = _by(final, "diam_flow_consumer_lag", "partition")
    assert lag == {str(p): 0.0 for p in marks}, lag
    assert _by(final, "diam_flow_high_watermark", "partition") == {
        str(p): float(h) for p, (_, h) in marks.items()}
    assert _by(final, "diam_flow_consumer_position", "partition") == {
        str(p): float(h) for p, (_, h) in marks.items()}
    seen = [sum(_by(s, "diam_flow_consumer_lag", "partition").values()) for s in during]
    assert during, "no scrape answered while the run worked"
    # partitions appear with their whole backlog when built, then drain (50-record batches)
    assert max(seen) > 0 and all(x >= 0 for x in seen), seen
    # counters over the run: they only grow, and end where the summary line ends
    recs = [_one(s, "diam_flow_records_total") for s in during] + [
        _one(final, "diam_flow_records_total")]
    assert recs == sorted(recs)

    assert _one(final, "diam_flow_records_total") == want["records"]
    assert _one(final, "diam_flow_events_valid_total") == want["valid"]
    assert _one(final, "diam_flow_events_rejected_total") == want["rejected"]
    assert _one(final, "diam_flow_users") == want["in_state"] == want["users"]  # none dropped
    assert _one(final, "diam_flow_pushes_total") == want["pushes"]
    assert _one(final, "diam_flow_user_evictions_total") == want["evictions"]
    assert _one(final, "diam_flow_user_restarts_total") == want["restarts"]
    # one call per user and source batch: at least one per user, at most one per record
    assert want["users"] <= _one(final, "diam_flow_learn_calls_total") == want["learn_calls"] \
        <= want["records"]
    # written by other paths than the summary's counters: the sinks and the Redis writer
    dead = _by(final, "diam_flow_dead_letters_total", "reason")
    assert sum(dead.values()) == want["rejected"] and set(dead) <= {"undecodable", "item_id",
                                                                    "ts", "payload"}, dead
    drift = _by(final, "diam_flow_drift_events_total", "kind")
    assert sum(drift.values()) == want["drift_events"]
    records = [json.loads(r.value) for r in consume_all(stack.settings.kafka, f"{topic}.drift")]
    on_topic = Counter(r["kind"] for r in records)
    assert drift == {k: float(n) for k, n in on_topic.items()}
    # each says the clicks topic of its offset, with metrics on too (the metered source's
    # wrapper has no ``topic``: was none on any record, and the monitor mixed two topics)
    assert records and {r.get("topic") for r in records} == {topic}
    assert _one(final, "diam_flow_redis_acked_total") == want["pushes"]
    assert _one(final, "diam_flow_redis_stale_pushes_total") == 0  # a namespace of its own
    assert _one(final, "diam_flow_freshness_seconds_count") == want["pushes"]
    assert _one(final, "diam_flow_redis_write_seconds_count") >= 1
    assert _one(final, "diam_flow_epoch_pause_seconds_count") >= 1  # epochs of 0.1 s
    assert all(dict(k[1]).get("process") == "main" for k in final)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["split", "cluster"])
def test_the_same_names_per_process_in_split_and_cluster_runs(stack, topic, namespace, ckpt,
                                                              mode: str) -> None:
    events = click_stream(n_users=30, n_events=3000, seed=6)
    produce(stack.settings.kafka, topic, click_payloads(events))
    marks = watermarks(stack.settings.kafka, topic)
    base = [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", namespace,
            "--checkpoint", str(ckpt), "--bounded", "--metrics-port", "0", "--metrics-hold", "20"]
    if mode == "split":
        extra = [["--partitions", "0,1"], ["--partitions", "2,3"]]
        labels = ["parts0-1", "parts2-3"]
    else:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        addrs = ";".join(f"127.0.0.1:{p}" for p in ports)
        extra = [["-a", addrs, "-i", "0"], ["-a", addrs, "-i", "1"]]
        labels = ["proc0", "proc1"]
    runs = [_Run(base + e, _env(stack, topic)) for e in extra]
    results: list = [None, None]

    def go(i: int) -> None:
        results[i] = runs[i].scrape_until_done()

    try:
        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(800)
    finally:
        for r in runs:
            r.close()
    assert all(results), [("".join(r.stderr))[-2000:] for r in runs]
    finals = [res[1] for res in results]
    summaries = [_summary_counts(res[2]) for res in results]
    # the same metric families in every process (drift events and dead letters go through one
    # sink partition in a cluster, so only one process may have samples of those two)
    assert runs[0].families == runs[1].families
    for f, label in zip(finals, labels, strict=True):
        assert {dict(k[1])["process"] for k in f} == {label}
    total = sum(_one(f, "diam_flow_records_total") for f in finals)
    assert total == len(events) == sum(s["records"] for s in summaries)
    for f, s in zip(finals, summaries, strict=True):
        assert _one(f, "diam_flow_pushes_total") == s["pushes"] == _one(f, "diam_flow_redis_acked_total")
    # each partition is read by exactly one process, and every one ends at lag 0
    lags = [_by(f, "diam_flow_consumer_lag", "partition") for f in finals]
    assert not set(lags[0]) & set(lags[1])
    assert {**lags[0], **lags[1]} == {str(p): 0.0 for p in marks}


@pytest.mark.timeout(900)
@pytest.mark.partitions(1)
def test_with_eviction_on_the_held_gauge_and_the_drop_counters_follow_the_state(
        stack, topic, namespace, ckpt, tmp_path) -> None:
    """A tailing run with ``evict_idle_s`` 3 s, scraped while it works. Five users click, and
    click again 15 s later on the topic's clock (record timestamps), produced together, so
    still held (a stall of over 3 s between the two waves would drop them first): each starts
    over once. A later record moves the partition's clock past them all, so all five are
    dropped, and the held gauge falls from five to the tick's user (an unknown item). The
    counters and the gauge equal the summary line of the run stopped by SIGTERM."""
    import signal

    from confluent_kafka import Producer

    from streams.events import ClickEvent, encode_event

    kafka = stack.settings.kafka
    users = [f"{namespace[1:7]}-{i}" for i in range(5)]
    items = [f"i{j}" for j in range(8)]  # items the tiny base knows
    t0 = int(time.time() * 1000)

    def produce_at(recs: list[tuple[str, str, int]]) -> None:
        p = Producer(kafka.client_config())
        for user, item, ts in recs:
            p.produce(topic, key=user.encode(), value=encode_event(ClickEvent(user, item, ts)),
                      timestamp=ts)
        assert p.flush(30) == 0

    env = {**_env(stack, topic), "DIAM_FLOW_EVICT_IDLE_S": "3.0"}
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", namespace,
           "--checkpoint", str(ckpt), "--metrics-port", "0", "--metrics-hold", "20",
           "--recovery-dir", str(tmp_path / "recovery")]
    run = _Run(cmd, env)
    result: list = []
    watcher = threading.Thread(target=lambda: result.append(run.scrape_until_done()), daemon=True)
    try:
        run.scrape()  # up: the metrics line is out
        watcher.start()
        produce_at([(u, items[(i + j) % 8], t0 + 10 * j) for i, u in enumerate(users) for j in range(4)]
                   + [(u, items[(i + j) % 8], t0 + 15_000 + 10 * j) for i, u in enumerate(users)
                      for j in range(4)])
        produce_at([("tick", "no-such-item", t0 + 60_000)])
        # the counters are read one after another while the worker counts: wait for a scrape
        # that reads all five drops and the held gauge settled with them
        deadline, dropped, held = time.monotonic() + 120, 0.0, -1.0
        while time.monotonic() < deadline and (dropped < len(users) or held != 1):
            try:
                got = run.scrape()
            except OSError:
                continue
            dropped, held = _one(got, "diam_flow_user_evictions_total"), _one(got, "diam_flow_users")
            time.sleep(0.2)
        assert (dropped, held) == (len(users), 1)
        run.proc.send_signal(signal.SIGTERM)
        watcher.join(120)
    finally:
        run.close()
    assert result, "no summary line; stderr:\n" + "".join(run.stderr)[-3000:]
    during, final, summary = result[0]
    assert summary.startswith("stopped:")  # SIGTERM: a stop by signal, not a bounded end
    # all five held at once before the drops (the watcher's scrapes while the run worked)
    assert max(_one(s, "diam_flow_users") for s in during) >= len(users)
    want = _summary_counts(summary)
    # each user: a state, a start-over, a drop; and the tick's user, held
    assert (want["users"], want["restarts"], want["evictions"], want["in_state"]) == (11, 5, 5, 1), summary
    assert _one(final, "diam_flow_users") == want["in_state"]
    assert _one(final, "diam_flow_user_evictions_total") == want["evictions"]
    assert _one(final, "diam_flow_user_restarts_total") == want["restarts"]
    assert _one(final, "diam_flow_pushes_total") == want["pushes"] == _one(final, "diam_flow_redis_acked_total") > 0
