"""The dataflow's own Kafka input (``streams.kafka_source``) and ``diam drift watch
--exit-at-end`` end a partition read to its end also where its last offsets hold no record to
deliver, against the real broker: a topic written by a transactional producer ends with a
commit (or abort) marker, and an aborted transaction's records are never delivered.

Both waited for a record at the end offset minus one: a bounded ``diam run`` of such a topic
did not end when its records were read (115 s for 2 partitions), ``diam drift watch
--exit-at-end`` never ended, and the source's stuck-consumer watchdog took the marker for
records it could not read (a warning and a rebuilt consumer every ``stuck_client_s``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
import uuid

from confluent_kafka import Producer

from streams.events import ClickEvent
from streams.kafka_health import BrokerHealth
from streams.kafka_io import watermarks
from streams.kafka_source import _SharedConsumer
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    kill_then_resume,
    produce_aborted,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)

PREFIX = "helper-txend"
LIMIT_S = 60.0  # generous: the old source took 115 s on a 2-partition topic, these end in seconds
ABORTED_TS = 10**7  # after every committed click: learnt, they would change the users' state


def _partition_of(user: str) -> int:
    """Partition 0 or 1 (never 2, left empty): a user's clicks all in one partition."""
    return int(user.removeprefix("user")) % 2


def _write(kafka, topic: str, events: list[ClickEvent], transactional: bool) -> None:  # type: ignore[no-untyped-def]
    """``events`` on partitions 0 and 1 by user; ``transactional``: in one committed
    transaction, then an aborted one of later clicks of partition 1's users at its end (the
    offsets of the committed records are those of a plain write: the markers come after)."""
    conf = kafka.client_config()
    if not transactional:
        p = Producer(conf)
        for ev, (key, value) in zip(events, click_payloads(events), strict=True):
            p.produce(topic, key=key, value=value, partition=_partition_of(ev.user_id))
        assert p.flush(30) == 0
        return
    tx = Producer({**conf, "transactional.id": f"{PREFIX}-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for ev, (key, value) in zip(events, click_payloads(events), strict=True):
        tx.produce(topic, key=key, value=value, partition=_partition_of(ev.user_id))
        tx.poll(0)
    tx.commit_transaction(60)
    aborted = [dataclasses.replace(ev, ts=ev.ts + ABORTED_TS) for ev in events[:400]
               if _partition_of(ev.user_id) == 1]
    produce_aborted(tx, topic, click_payloads(aborted), partition=1)
    marks = watermarks(kafka, topic)
    counts = [sum(_partition_of(ev.user_id) == p for ev in events) for p in (0, 1)]
    assert marks[0][1] == counts[0] + 1  # the commit marker last
    assert marks[1][1] == counts[1] + 1 + len(aborted) + 1  # aborted records, their marker
    assert marks[2] == (0, 0)


def test_a_bounded_run_of_a_transactional_topic_ends_with_the_committed_clicks_learnt(
        stack, new_topic, namespace, redis_client, tmp_path) -> None:
    kafka = stack.settings.kafka
    # enough clicks that a killed run is still going a moment after its first write (as in
    # test_online_flow's kill/resume)
    events = click_stream(n_users=20, n_events=40000, seed=9)
    plain, tx = new_topic(3, PREFIX), new_topic(3, PREFIX)
    _write(kafka, plain, events, transactional=False)
    _write(kafka, tx, events, transactional=True)
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    extra = {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.1", "DIAM_FLOW_BATCH_SIZE": "50"}

    def cmd(topic: str) -> list[str]:
        return [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt),
                "--bounded"]

    ns_plain = f"{namespace}-plain"
    try:
        subprocess.run(cmd(plain) + ["--namespace", ns_plain], env=run_env(stack, plain, extra),
                       check=True, timeout=180, capture_output=True)
        want = redis_state(redis_client, ns_plain)
        assert len(want) == 20
        t0 = time.monotonic()
        # the old source never saw partitions 0 and 1 end: past the limit, TimeoutExpired
        subprocess.run(cmd(tx) + ["--namespace", namespace], env=run_env(stack, tx, extra),
                       check=True, timeout=LIMIT_S, capture_output=True)
        took = time.monotonic() - t0
        # the committed clicks, each once, at the same offsets: the same bytes; an aborted
        # click learnt would have moved partition 1's users
        assert redis_state(redis_client, namespace) == want
        print(f"\nbounded run of the transactional topic: {took:.1f} s")

        partial, got = kill_then_resume(cmd(tx), run_env(stack, tx, extra), redis_client,
                                        namespace, tmp_path, want)
        assert partial != want
        assert got == want, "the resumed run's Redis state differs from the uninterrupted run's"
    finally:
        for pattern in (f"diam:{ns_plain}:*", f"diam:{namespace}-kill*"):
            for k in redis_client.scan_iter(match=pattern):
                redis_client.delete(k)


def test_the_watchdog_takes_an_idle_transactional_topic_for_idle(stack, new_topic, caplog) -> None:
    kafka = stack.settings.kafka
    topic = new_topic(3, PREFIX)
    events = click_stream(n_users=6, n_events=30, seed=3)
    _write(kafka, topic, events, transactional=True)
    conf = kafka.consumer_config()
    conf.update({"group.id": "diam-test-unused", "enable.auto.commit": "false",
                 "enable.partition.eof": "false"})
    shared = _SharedConsumer(conf, topic, 100, BrokerHealth(kafka.bootstrap), stall_s=0.5)
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    try:
        bufs = {p: shared.add(p, 0) for p in got}
        with caplog.at_level(logging.WARNING, logger="streams.kafka_source"):
            deadline = time.monotonic() + 4.0  # several watches of stall_s 0.5
            while time.monotonic() < deadline:
                shared.fill()
                for p, buf in bufs.items():
                    while buf:
                        got[p].append(buf.popleft().offset())
                time.sleep(0.01)
        counts = [sum(_partition_of(ev.user_id) == p for ev in events) for p in (0, 1)]
        assert got == {0: list(range(counts[0])), 1: list(range(counts[1])), 2: []}
        assert shared.rebuilds == 0
        assert not [r for r in caplog.records if "stuck" in r.getMessage()]
    finally:
        shared.close()


def test_drift_watch_exits_at_the_end_of_a_transactional_alerts_topic(stack, new_topic) -> None:
    kafka = stack.settings.kafka
    alerts = new_topic(2, PREFIX)
    n = 12
    tx = Producer({**kafka.client_config(),
                              "transactional.id": f"{PREFIX}-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for i in range(n):
        tx.produce(alerts, key=b"x", value=f'{{"n": {i}}}'.encode(), partition=i % 2)
    tx.commit_transaction(30)
    tx.begin_transaction()
    tx.produce(alerts, key=b"x", value=b'{"n": "aborted"}', partition=1)
    assert tx.flush(30) == 0
    tx.abort_transaction(30)
    env = {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, "DIAM_REDIS_URL": stack.redis_url}
    # the old watch never ended: TimeoutExpired
    res = subprocess.run([sys.executable, "-m", "diam", "drift", "watch", "--topic", alerts,
                          "--from-beginning", "--exit-at-end", "--json"], env=env,
                         timeout=LIMIT_S, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == sorted(f'{{"n": {i}}}' for i in range(n))
