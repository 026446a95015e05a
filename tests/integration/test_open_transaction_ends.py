"""A bounded read started while a producer holds a transaction open on its topic ends at the
last stable offset taken at its start (what was committed then), promptly, against the real
broker: ``diam run --bounded`` and ``diam drift watch --exit-at-end``. The open transaction's
records, and every record written to its partitions after it began (committed or not), are
not part of it.

An end taken at the high watermark, past the open transaction, is never reached by a
read_committed consumer while the transaction stays open: the read waits for it to end (both
tests time out when ``streams.kafka_io.watermarks`` asks read_uncommitted). ``watermarks``
asked read_committed already; ``describe_topics``, which says it gives the same offsets, asked
read_uncommitted (an admin client's default) and gave the high watermarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka_io import describe_topics, watermarks
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    produce,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)

PREFIX = "helper-ends"
LIMIT_S = 30.0  # these end in seconds; a read waiting for the transaction runs into the limit


def _open_transaction(kafka, topic: str, payloads: list[tuple[bytes, bytes]],  # type: ignore[no-untyped-def]
                      partitions: list[int]) -> Producer:
    """A transactional producer whose transaction holds ``payloads`` (round robin over
    ``partitions``) on the broker, left open: the caller aborts it."""
    tx = Producer({**kafka.client_config(), "transactional.id": f"{PREFIX}-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for i, (key, value) in enumerate(payloads):
        tx.produce(topic, key=key, value=value, partition=partitions[i % len(partitions)])
    assert tx.flush(30) == 0  # on the broker, uncommitted
    return tx


def _produce_at(kafka, topic: str, payloads: list[tuple[bytes, bytes]],  # type: ignore[no-untyped-def]
                partitions: list[int]) -> None:
    """``payloads`` committed (no transaction), round robin over ``partitions``."""
    p = Producer(kafka.client_config())
    for i, (key, value) in enumerate(payloads):
        p.produce(topic, key=key, value=value, partition=partitions[i % len(partitions)])
    assert p.flush(30) == 0


def _ends_before_the_transaction(kafka, topic: str, held: dict[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Every partition holds records past ``held`` (the high watermarks), and the ends of a
    bounded read (:func:`watermarks`, and :func:`describe_topics` alike) are ``held``."""
    c = Consumer({**kafka.client_config(), "group.id": f"{PREFIX}-unused",
                  "isolation.level": "read_uncommitted"})
    try:
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in held}
    finally:
        c.close()
    assert all(highs[p] > n for p, n in held.items()), (highs, held)
    assert {p: hi for p, (_lo, hi) in watermarks(kafka, topic).items()} == held
    state = describe_topics(kafka, [topic])[topic]
    assert state is not None and {p: hi for p, (_lo, hi) in state.marks.items()} == held


def test_a_bounded_run_ends_at_what_was_committed_when_it_started(
        stack, new_topic, namespace, redis_client, tmp_path) -> None:
    kafka = stack.settings.kafka
    events = click_stream(n_users=10, n_events=400, seed=4)
    first, later = events[:300], events[300:]
    plain, topic = new_topic(2, PREFIX), new_topic(2, PREFIX)
    produce(kafka, plain, click_payloads(first))
    produce(kafka, topic, click_payloads(first))
    held = {p: hi for p, (_lo, hi) in watermarks(kafka, topic).items()}
    tx = _open_transaction(kafka, topic, click_payloads(later[:50]), [0, 1])
    produce(kafka, topic, click_payloads(later[50:]))  # committed, but after the open transaction
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    extra = {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.1"}

    def run(t: str, ns: str) -> None:
        subprocess.run([sys.executable, "-m", "diam", "run", "--topic", t, "--checkpoint",
                        str(ckpt), "--bounded", "--namespace", ns], env=run_env(stack, t, extra),
                       check=True, timeout=LIMIT_S, capture_output=True)

    ns_plain = f"{namespace}-plain"
    try:
        _ends_before_the_transaction(kafka, topic, held)
        run(plain, ns_plain)
        want = redis_state(redis_client, ns_plain)
        assert want
        run(topic, namespace)  # waiting for the transaction: TimeoutExpired
        assert redis_state(redis_client, namespace) == want
    finally:
        tx.abort_transaction(30)
        for k in redis_client.scan_iter(match=f"diam:{ns_plain}:*"):
            redis_client.delete(k)


def test_drift_watch_exits_at_what_was_committed_when_it_started(stack, new_topic) -> None:
    kafka = stack.settings.kafka
    alerts = new_topic(2, PREFIX)
    _produce_at(kafka, alerts, [(b"x", f'{{"n": {i}}}'.encode()) for i in range(8)], [0, 1])
    held = {p: hi for p, (_lo, hi) in watermarks(kafka, alerts).items()}
    tx = _open_transaction(kafka, alerts, [(b"x", b'{"n": "open"}')] * 2, [0, 1])
    _produce_at(kafka, alerts, [(b"x", b'{"n": "after"}')] * 2, [0, 1])
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url}
    try:
        _ends_before_the_transaction(kafka, alerts, held)
        res = subprocess.run([sys.executable, "-m", "diam", "drift", "watch", "--topic", alerts,
                              "--from-beginning", "--exit-at-end", "--json"], env=env,
                             timeout=LIMIT_S, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert sorted(res.stdout.splitlines()) == sorted(f'{{"n": {i}}}' for i in range(8))
    finally:
        tx.abort_transaction(30)
