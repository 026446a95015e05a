"""Faults against the real broker and Redis: a tailing ``diam run`` is stopped, killed, or loses
its Redis data mid-stream, and must end with the Redis state of an uninterrupted run, key by key
and byte by byte, and with no repeated side record visible to our consumers.

The shared stack's Redis is never stopped here: faults that take Redis away use a private
``redis-server`` on another port. The full matrix (broker restart, SIGSTOP, CLIENT PAUSE, kill -9
at several moments) is ``bench/faults.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py
from confluent_kafka import KafkaException

from diam.commands.run import parse_summary
from streams.drift import DriftMonitor, parse_drift_record
from streams.kafka_io import consume_all, read_deadletters
from tests.flowkit import DIM, click_stream
from tests.integration.helpers import click_payloads, produce, redis_state, write_tiny_checkpoint

PUSH_MS = 100




class Runner:
    """``diam run`` as a subprocess with this test's topics, checkpoint and Redis."""

    def __init__(self, stack, topic: str, ckpt: Path, redis_url: str, tmp: Path) -> None:
        self.topic, self.tmp = topic, tmp
        self.env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": redis_url,
                    "DIAM_ONLINE_DIM": str(DIM), "DIAM_ONLINE_K_MAX": "4",
                    "DIAM_FLOW_EPOCH_INTERVAL_S": "0.2", "DIAM_FLOW_BATCH_SIZE": "50",
                    "DIAM_FLOW_PUSH_EVERY_MS": str(PUSH_MS),
                    "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift",
                    "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
        self.cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt)]

    def run_bounded(self, ns: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd + ["--namespace", ns, "--bounded", *extra], env=self.env,
                              check=True, timeout=240, capture_output=True, text=True)

    def start(self, ns: str, recovery: Path, log: str) -> subprocess.Popen[str]:
        out = open(self.tmp / log, "w")  # noqa: SIM115 - closed when the process is reaped
        return subprocess.Popen(self.cmd + ["--namespace", ns, "--recovery-dir", str(recovery)],
                                env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text()


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def runner(stack, topic, tmp_path) -> Runner:
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    return Runner(stack, topic, ckpt, stack.redis_url, tmp_path)


@pytest.fixture
def side_namespaces(redis_client, namespace) -> Iterator[None]:
    """Removes the ``<namespace>-*`` namespaces (reference runs) a test made, pass or fail."""
    yield
    for k in redis_client.scan_iter(match=f"diam:{namespace}-*", count=1000):
        redis_client.delete(k)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end is killed (by its pid)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(30)


@pytest.fixture
def private_redis(tmp_path, procs) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A redis-server of this test alone, without persistence: (url, stop, start). ``stop``
    is SHUTDOWN NOSAVE (the data is gone), ``start`` starts it again on the same port. Their
    clients retry a failed command once at once (``fail_fast``): redis-py's default backoff
    spent seconds on a PING before the server listened and after each SHUTDOWN."""
    from diam.stack_proc import free_port
    from serving_cache.reader import fail_fast

    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()

    def start() -> None:
        p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(data)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        c = fail_fast(redis_py.Redis(port=port))
        _wait(lambda: _pings(c), 20, "the private Redis to answer PING")

    def stop() -> None:
        c = fail_fast(redis_py.Redis(port=port))
        try:
            c.shutdown(nosave=True)
        except redis_py.ConnectionError:
            pass
        for p in procs:
            if p.args[0] == exe and p.poll() is None:
                p.wait(20)

    start()
    yield f"redis://127.0.0.1:{port}/0", stop, start


def _pings(c: redis_py.Redis) -> bool:
    try:
        return bool(c.ping())
    except redis_py.ConnectionError:
        return False


def _stop_cleanly(p: subprocess.Popen[str], sig: int) -> int:
    p.send_signal(sig)
    return p.wait(60)


def test_ctrl_c_stops_a_tailing_run_cleanly_and_it_resumes(stack, topic, runner, namespace, redis_client,
                                                           procs, tmp_path, side_namespaces) -> None:
    # (SIGTERM: the Redis data-loss test below stops its run with it, same checks)
    sig = signal.SIGINT
    events = click_stream(n_users=12, n_events=1200, seed=31)
    produce(stack.settings.kafka, topic, click_payloads(events[:600]))
    runner.run_bounded(f"{namespace}-ref-a")
    rec = tmp_path / "recovery"
    p = runner.start(namespace, rec, "run1.log")
    procs.append(p)
    want_a = redis_state(redis_client, f"{namespace}-ref-a")
    _wait(lambda: redis_state(redis_client, namespace) == want_a, 120, "the tailing run to catch up")
    assert _stop_cleanly(p, sig) == 0, runner.log("run1.log")
    out = runner.log("run1.log")
    assert "Traceback" not in out and "panicked" not in out, out
    assert sum(line.startswith("stopped: ") for line in out.splitlines()) == 1, out
    # the rest of the stream, read by a run resumed from the store the stop left
    produce(stack.settings.kafka, topic, click_payloads(events[600:]))
    runner.run_bounded(f"{namespace}-ref")
    want = redis_state(redis_client, f"{namespace}-ref")
    res = runner.run_bounded(namespace, "--recovery-dir", str(rec))
    # it resumed where the stop left it: only the second 600 are read (a run that started over
    # would give the same bytes)
    assert parse_summary(res.stdout)["records"] == 600, res.stdout
    assert redis_state(redis_client, namespace) == want


def test_redis_losing_its_data_mid_stream_loses_no_user(stack, topic, runner, private_redis, procs) -> None:
    url, stop_redis, start_redis = private_redis
    client = redis_py.Redis.from_url(url)
    runner.env["DIAM_REDIS_URL"] = url
    events = click_stream(n_users=30, n_events=1500, seed=32)
    # after the loss only a third of the users click again: the others must be restored by
    # the dataflow itself, not by their next event
    late_users = {f"user{i}" for i in range(0, 30, 3)}
    first = events[:1000]
    rest = [ev for ev in events[1000:] if ev.user_id in late_users]
    assert {ev.user_id for ev in first} > late_users and rest
    produce(stack.settings.kafka, topic, click_payloads(first))
    p = runner.start("live", runner.tmp / "recovery", "live.log")
    procs.append(p)
    _wait(lambda: len(redis_state(client, "live")) == len({ev.user_id for ev in first}), 120,
          "every user's first push")
    before = client.info("server")["run_id"]
    stop_redis()
    start_redis()  # an empty server on the same port: every key is gone
    # a new process without persistence (whatever is there now, the dataflow re-pushed: reading
    # the namespace here would race with it)
    assert client.info("server")["run_id"] != before
    produce(stack.settings.kafka, topic, click_payloads(rest))
    runner.run_bounded("ref")  # the uninterrupted run over the same records
    want = redis_state(client, "ref")
    _wait(lambda: redis_state(client, "live") == want, 120,
          "the live namespace to equal the uninterrupted run")
    assert _stop_cleanly(p, signal.SIGTERM) == 0
    assert redis_state(client, "live") == want
    log = runner.log("live.log")
    assert "re-pushing" in log, log
    assert "Traceback" not in log and "panicked" not in log, log
    assert sum(line.startswith("stopped: ") for line in log.splitlines()) == 1, log
    # the re-push is counted: "N re-pushed after Redis lost data", every user held
    assert parse_summary(log)["lost_repushes"] >= 30, log


def _count(kafka, topic: str) -> int:
    from streams.kafka_io import watermarks

    try:
        return sum(hi - lo for lo, hi in watermarks(kafka, topic, timeout=5).values())
    except (RuntimeError, KafkaException):  # not created yet, or no leader yet
        return 0


def _visible(records) -> tuple[list, list]:
    """What the drift monitor accounts (repeats removed) and its window summaries. Lateness is
    set beyond the stream's span, so the summaries do not depend on how two runs interleaved
    different users' records."""
    import dataclasses

    from streams.drift import DriftConfig, WindowSummary

    mon = DriftMonitor(DriftConfig(lateness_ms=10**12))
    kept = []
    # the reference run wrote into another namespace: the events are the same but for it
    for r in (dataclasses.replace(r, namespace=None) for r in records):
        before = mon.duplicates
        mon.add(r)
        if mon.duplicates == before:
            kept.append(r)
    summaries = [o for o in mon.flush() if isinstance(o, WindowSummary)]
    return sorted(kept, key=lambda r: (r.user_id, r.offset, r.kind)), summaries


def test_kill9_leaves_no_repeated_side_record_visible(stack, topic, runner, namespace, redis_client,
                                                     procs, tmp_path, side_namespaces) -> None:
    events = click_stream(n_users=20, n_events=16000, seed=33)
    bad = [(b"u1", b"\xc1 not an event"), (b"u2", json.dumps({"user_id": "u2", "item_id": 1}).encode())]
    mixed: list[tuple[bytes | None, bytes | None]] = []
    for i, pl in enumerate(click_payloads(events)):
        mixed.append(pl)
        if i % 400 == 0:
            mixed.append(bad[(i // 400) % 2])
    produce(stack.settings.kafka, topic, mixed)
    n_bad = len(mixed) - len(events)
    kafka = stack.settings.kafka
    # reference: an uninterrupted run, its side records to topics of their own
    runner.env["DIAM_KAFKA_DRIFT_TOPIC"] = f"{topic}.drift-ref"
    runner.env["DIAM_KAFKA_DEADLETTER_TOPIC"] = f"{topic}.dlq-ref"
    runner.run_bounded(f"{namespace}-ref")
    want = redis_state(redis_client, f"{namespace}-ref")
    ref_drift = [parse_drift_record(r.value) for r in consume_all(kafka, f"{topic}.drift-ref")]
    assert ref_drift and None not in ref_drift, "the stream must cause drift events"
    runner.env["DIAM_KAFKA_DRIFT_TOPIC"] = f"{topic}.drift"
    runner.env["DIAM_KAFKA_DEADLETTER_TOPIC"] = f"{topic}.dlq"
    rec = tmp_path / "recovery"
    p = subprocess.Popen(runner.cmd + ["--namespace", namespace, "--recovery-dir", str(rec),
                                       "--bounded"], env=runner.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    # killed at its first committed side records: on a loaded box a third of them came too
    # close to the run's end (the run ended first, and nothing was tested)
    _wait(lambda: _count(kafka, f"{topic}.drift") > 0 or p.poll() is not None,
          120, "the run to produce drift events")
    p.send_signal(signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL, "the run ended before the kill: nothing was tested"
    runner.run_bounded(namespace, "--recovery-dir", str(rec))
    assert redis_state(redis_client, namespace) == want
    # what our consumers show: each dead letter once, the drift monitor's view unchanged
    dead = read_deadletters(kafka, f"{topic}.dlq")
    assert len(dead) == n_bad
    assert {(d["partition"], d["offset"]) for d in dead} == {
        (d["partition"], d["offset"]) for d in read_deadletters(kafka, f"{topic}.dlq-ref")}
    raw_drift = [parse_drift_record(r.value) for r in consume_all(kafka, f"{topic}.drift")]
    assert _visible(raw_drift) == _visible(ref_drift)


def test_the_stacks_redis_conf_keeps_the_data_across_a_kill(tmp_path, procs) -> None:
    # the configuration `diam stack up` renders: an append-only file fsynced every second
    from string import Template

    from diam.stack_kafka import resource
    from diam.stack_proc import free_port

    exe = shutil.which("redis-server")
    assert exe is not None
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(Template(resource("redis.conf")).substitute(
        port=port, logfile=tmp_path / "redis.log", dir=tmp_path))
    c = redis_py.Redis(port=port)
    for attempt in range(2):
        p = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        _wait(lambda: _pings(c), 20, "redis-server to answer PING")
        if attempt == 0:
            c.mset({f"diam:t:u:{i}": b"x" * 100 for i in range(500)})
            time.sleep(2.0)  # appendfsync everysec
            p.kill()  # no shutdown, no save: only the append-only file survives
            p.wait(20)
            c.connection_pool.disconnect()
    assert len(list(c.scan_iter(match="diam:t:u:*"))) == 500


def test_redis_refusing_writes_is_waited_out_and_a_user_leaving_the_state_is_written_first(
        private_redis) -> None:
    """The vector sink against a private redis-server turned into a replica of nothing, which
    answers every write with READONLY (what a client sees after a failover): the writer waits
    and retries instead of failing the dataflow, and a batch that deletes a forgotten user's key
    does not return until Redis has deleted it (a delete still queued when the epoch that read
    the tombstone commits would be lost to a crash: nothing reads that tombstone again). An
    evicted user's last push waits the same way (the user is gone from the recovery snapshot,
    so nothing would push them again), and the sink then lets go of their vectors: a key set
    Redis lost is re-pushed without them, so eviction bounds the sink's memory too."""
    import threading

    import numpy as np

    from serving_cache import RedisConfig, UserVectors, user_key
    from serving_cache.codec import decode_user
    from streams.redis_sink import RELEASED, RedisVectorSink

    url, _, _ = private_redis
    client = redis_py.Redis.from_url(url)
    part = RedisVectorSink(RedisConfig(url=url), namespace="ro", max_backoff_s=0.2,
                           check_every_s=0.2).build("redis", 0, 1)
    uv = UserVectors(seq=1, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1)
    part.write_batch([("a", uv), ("b", uv)])
    _wait(lambda: client.exists(user_key("ro", "a"), user_key("ro", "b")) == 2, 20,
          "the first writes")
    client.replicaof("127.0.0.1", "1")  # a master that is not there: READONLY from now on
    with pytest.raises(redis_py.exceptions.ReadOnlyError):
        client.set("probe", b"1")
    forget = threading.Thread(target=part.write_batch, args=([("a", None)],), daemon=True)
    forget.start()
    time.sleep(1.5)
    assert forget.is_alive(), "a delete returned while Redis refused it"
    assert client.exists(user_key("ro", "a")) == 1
    assert part._error is None, part._error  # waited out, not raised in the dataflow
    client.replicaof("NO", "ONE")
    forget.join(20)
    assert not forget.is_alive()
    assert client.exists(user_key("ro", "a")) == 0 and client.exists(user_key("ro", "b")) == 1
    # b is evicted after a last push, while Redis refuses writes again
    client.replicaof("127.0.0.1", "1")
    _wait(lambda: _refuses(client), 20, "READONLY again")
    last = UserVectors(seq=2, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=2)
    evict = threading.Thread(target=part.write_batch, args=([("b", last), ("b", RELEASED)],),
                             daemon=True)
    evict.start()
    time.sleep(1.5)
    assert evict.is_alive(), "an evicted user's last push returned while Redis refused it"
    client.replicaof("NO", "ONE")
    evict.join(20)
    assert not evict.is_alive()
    assert decode_user(client.get(user_key("ro", "b"))).seq == 2
    assert "b" not in part._held and part.written >= 3
    part.write_batch([("c", uv)])
    _wait(lambda: client.exists(user_key("ro", "c")) == 1, 20, "c's write")
    client.flushall()  # the key set is lost: only the users still held come back
    _wait(lambda: client.exists(user_key("ro", "c")) == 1, 20,
          f"c's re-push {part._error!r} {part._held.keys()} {client.keys()}")
    assert client.exists(user_key("ro", "b")) == 0
    part.close()


def _refuses(client) -> bool:  # type: ignore[no-untyped-def]
    try:
        client.set("probe", b"1")
    except redis_py.exceptions.ReadOnlyError:
        return True
    return False


def test_a_second_signal_while_redis_is_down_says_what_the_stop_left_unwritten(
        stack, topic, runner, private_redis, procs) -> None:
    """A stop waiting out a Redis outage says so every few seconds, with the pushes not
    written yet; a second SIGTERM stops the run at once and still prints its summary line and
    how many pushes Redis never got (before, it ended with nothing but "stopping now")."""
    url, _, _ = private_redis
    server = next(p for p in procs if p.poll() is None)  # the private redis-server
    client = redis_py.Redis.from_url(url)
    runner.env.update({"DIAM_REDIS_URL": url, "DIAM_REDIS_SOCKET_TIMEOUT_S": "1"})
    events = click_stream(n_users=20, n_events=3200, seed=33)
    produce(stack.settings.kafka, topic, click_payloads(events[:200]))
    log = runner.tmp / "stop.log"
    with open(log, "w") as out:
        p = subprocess.Popen(runner.cmd + ["--namespace", "live", "--no-recovery"], env=runner.env,
                             stdout=out, stderr=subprocess.STDOUT, text=True)
    procs.append(p)
    try:
        _wait(lambda: len(redis_state(client, "live")) == 20, 120, "every user's first push")
        server.send_signal(signal.SIGSTOP)  # Redis answers nothing: every call times out
        produce(stack.settings.kafka, topic, click_payloads(events[200:]))
        _wait(lambda: "unreachable since" in log.read_text(), 60, "the sink to see the outage")
        p.send_signal(signal.SIGTERM)
        _wait(lambda: "waiting for Redis:" in log.read_text(), 30, "the stop to say it waits")
        assert p.poll() is None, log.read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == -signal.SIGTERM
    finally:
        server.send_signal(signal.SIGCONT)
    text = log.read_text()
    note = re.search(r"waiting for Redis: ([\d,]+) push\(es\) not written yet \(a second "
                     r"Ctrl-C / SIGTERM stops now; then this run has no recovery store", text)
    assert note is not None and int(note.group(1).replace(",", "")) > 0, text
    assert sum(line.startswith("stopped: ") for line in text.splitlines()) == 1, text
    summary = parse_summary(text)
    assert summary["records"] > 200, summary
    gone = re.search(r"stopped at once: ([\d,]+) push\(es\) were not written to Redis; nothing "
                     r"is lost: this run has no recovery store \(--no-recovery\): started again, "
                     r"it re-reads the topic", text)
    assert gone is not None, text
    assert 0 < int(gone.group(1).replace(",", "")) <= summary["pushes"], text
