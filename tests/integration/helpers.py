"""Helpers shared by the integration tests: producing records, reading a namespace's user
values back, a tiny checkpoint for ``diam run`` and the environment of a run over it, the
offline learner over a topic, reading a child's output lines on threads, a kill -9 and resume
of a run, and ``diam serve`` as a process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from streams.config import KafkaConfig
from streams.events import ClickEvent, decode_event, encode_event
from streams.kafka_io import consume_all
from tests.flowkit import DIM, N_ITEMS, expected_states, tiny_base


def produce(kafka: KafkaConfig, topic: str, payloads: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Produce ``(key, value)`` records to ``topic`` and wait until every one is delivered."""
    p = Producer({**kafka.client_config(), "linger.ms": 5})
    errors: list[str] = []
    for key, value in payloads:
        p.produce(topic, key=key, value=value,
                  on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    assert p.flush(30) == 0, "records left undelivered"
    assert not errors, errors


def click_payloads(events: Iterable[ClickEvent]) -> list[tuple[bytes, bytes]]:
    """Click events as ``(key, value)`` records keyed by user, as producers write them."""
    return [(ev.user_id.encode(), encode_event(ev)) for ev in events]


def expected_from_topic(kafka: KafkaConfig, topic: str, learner) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Offline learner over the records as the broker stored them (real offsets)."""
    per_part: dict[int, list] = {}
    for rec in consume_all(kafka, topic):
        per_part.setdefault(rec.partition, []).append(rec)
    events, offsets = [], []
    for recs in per_part.values():
        for rec in sorted(recs, key=lambda r: r.offset):
            ev = decode_event(rec.value)
            if isinstance(ev, ClickEvent):
                events.append(ev)
                offsets.append(rec.offset)
    return expected_states(events, learner, offsets)


def redis_state(client, ns: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Every user value of namespace ``ns``: user id -> the stored bytes."""
    return {key.decode().rsplit(":", 1)[1]: client.get(key)
            for key in client.scan_iter(match=f"diam:{ns}:u:*", count=1000)}


def write_tiny_checkpoint(path: Path) -> None:
    """The tiny base of ``tests.flowkit`` as a checkpoint directory for ``--checkpoint``."""
    from online_model.checkpoint import write_checkpoint_dir

    base = tiny_base()
    write_checkpoint_dir(path, {"online.item_emb": base.item_emb}, base.item_ids,
                         {"model": "tiny", "k_max": 4, "seq_len": 50, "n_categories": 6},
                         item_categories=np.arange(N_ITEMS, dtype=np.int32) % 6,
                         category_names=[f"c{i}" for i in range(6)])


def run_env(stack, topic: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of a ``diam run`` child over ``topic`` on the shared ``stack`` with the
    tiny checkpoint (its dimension, K_max 4), its drift and dead-letter topics named after
    ``topic``; ``extra`` adds (or overrides) variables."""
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url,
            "DIAM_ONLINE_DIM": str(DIM), "DIAM_ONLINE_K_MAX": "4",
            "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift", "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq",
            **(extra or {})}


@contextmanager
def reading_lines(proc: subprocess.Popen[str], on_line: Callable[[str, str], None]) -> Iterator[None]:
    """Hand each line of ``proc``'s stdout and stderr, as it comes, to ``on_line(name, line)``
    (``name`` is ``"out"`` or ``"err"``) from two reader threads; on leaving, kill ``proc`` if it
    still runs and join the readers."""
    def read(name: str, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            on_line(name, line)

    readers = [threading.Thread(target=read, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for r in readers:
            r.join(5)


def kill_then_resume(cmd: list[str], env: dict[str, str], redis_client, namespace: str,
                     tmp_path: Path, want: dict[str, bytes]) -> tuple[dict, dict]:
    """Run ``cmd`` with a recovery store, SIGKILL it once it has written something, then
    resume it from the store; returns the Redis state at the kill and after the resume. On a
    loaded machine the kill can land after the run finished; then it is retried (a fresh
    namespace ``<namespace>-kill<n>`` and store), at most five times (three were all too late
    once, in a 13-minute ``make test`` on a slow spell); five late kills fail the test."""
    for attempt in range(5):
        ns2 = f"{namespace}-kill{attempt}"
        rec = tmp_path / f"recovery{attempt}"
        proc = subprocess.Popen(cmd + ["--namespace", ns2, "--recovery-dir", str(rec)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(redis_client.scan_iter(match=f"diam:{ns2}:u:*")):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # at once: a fast run can finish within 50 ms more
        proc.wait(30)
        partial = redis_state(redis_client, ns2)
        if partial != want:
            break
    else:  # a resume over a finished store would test nothing
        raise AssertionError("the kill came too late to interrupt anything (5 tries)")
    subprocess.run(cmd + ["--namespace", ns2, "--recovery-dir", str(rec)], env=env, check=True,
                   timeout=300, capture_output=True)
    return partial, redis_state(redis_client, ns2)




def http_get(port: int, path: str) -> tuple[int, dict]:
    """One request on a new connection (with ``diam serve --processes``, the kernel hands each
    connection to one process): status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def child_pids(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux)."""
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@contextmanager
def serving(env: dict[str, str], port: int, *args: str, timeout_s: float = 120.0
            ) -> Iterator[subprocess.Popen[str]]:
    """``diam serve --port PORT ARGS`` with ``env``, yielded once ``/health`` answers 200;
    killed with its children (by pid) if the test leaves it running."""
    p = subprocess.Popen([sys.executable, "-m", "diam", "serve", "--port", str(port), *args],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert p.poll() is None, p.communicate()[0]
            try:
                if http_get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"diam serve {args} did not become healthy"
            time.sleep(0.2)
        yield p
    finally:
        if p.poll() is None:
            for child in child_pids(p.pid):
                os.kill(child, signal.SIGKILL)
            p.kill()
            p.communicate()


def produce_aborted(tx: Producer, topic: str, payloads: Iterable[tuple[bytes, bytes]],
                    partition: int) -> None:
    """Write ``payloads`` to ``partition`` of ``topic`` in a transaction of the transactional
    producer ``tx`` that is then aborted: the records reach the broker (an abort drops what it
    has not sent) and are never delivered to a read_committed consumer, and the abort's marker
    takes the offset after them."""
    tx.begin_transaction()
    for key, value in payloads:
        tx.produce(topic, key=key, value=value, partition=partition)
    assert tx.flush(30) == 0  # on the broker: an abort drops what it has not sent
    tx.abort_transaction(30)
