"""A clicks topic whose partition count changes under per-user state is refused, loudly.

Clicks are keyed by user, and a user's state orders its clicks by offset (a click at or below
the last offset applied is a duplicate). Offsets compare only within one partition, and raising
a topic's partition count moves some users' new clicks to a new partition whose offsets start
at 0: they were dropped as duplicates, and the run's summary said "nothing was doubled". Now
the recovery store records the count its state was built from, a run of a topic that has
another count is refused before its start line, and a tailing run whose topic grows stops
cleanly with one error. A store written for another topic or other partitions, and a cluster
process whose own address is taken, are refused in one line before the start line too
(they were a Bytewax panic or traceback after it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from confluent_kafka.admin import AdminClient, NewPartitions

from diam.commands.run import summary_lines
from diam.stack_proc import free_port
from serving_cache.keys import partitions_key
from streams.kafka_io import delete_topics, ensure_topic
from streams.runner import STORE_RECORD
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    produce,
    reading_lines,
    run_env,
    write_tiny_checkpoint,
)
from tests.integration.test_run_refusals import START, _refused_without_start
from tests.integration.test_topic_typos import _cli, _settings


def _raise_partitions(kafka, topic: str, count: int) -> None:  # type: ignore[no-untyped-def]
    admin = AdminClient(kafka.client_config())
    admin.create_partitions([NewPartitions(topic, count)])[topic].result(30)


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output and "panicked" not in output, output


def test_a_store_built_from_fewer_partitions_is_refused_before_the_start_line(
        stack, new_topic, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    clicks = click_stream(6, 60, seed=3)
    produce(s.kafka, topic, click_payloads(clicks[:30]))
    store = tmp_path / "recovery"
    args = ("run", "--bounded", "--topic", topic, "--namespace", namespace, "--recovery-dir",
            str(store))
    first = _cli(s, *args)
    assert first.exit_code == 0 and START in first.output, first.output
    assert (store / STORE_RECORD).exists()

    _raise_partitions(s.kafka, topic, 4)
    produce(s.kafka, topic, click_payloads(clicks[30:]))
    res = _cli(s, *args)
    _refused_without_start(res, 1, f"topic {topic!r} has 4 partitions", "was built from 2",
                           str(store.resolve()), "fresh namespace", "new topic")
    _no_traceback(res.output)
    # a subset of the old partitions is refused too: their users' clicks moved as well
    res = _cli(s, *args, "--partitions", "0,1")
    _refused_without_start(res, 1, "has 4 partitions", "was built from 2")


def test_a_run_without_a_store_into_a_namespace_built_from_fewer_partitions_is_refused(
        stack, new_topic, namespace, tmp_path, redis_client) -> None:
    # no recovery store to tell: the namespace records the count its values were learnt from
    s = _settings(stack, tmp_path)
    topic = new_topic(2)
    clicks = click_stream(6, 60, seed=4)
    produce(s.kafka, topic, click_payloads(clicks[:30]))
    args = ("run", "--topic", topic, "--namespace", namespace)
    first = _cli(s, *args, "--bounded")
    assert first.exit_code == 0 and START in first.output, first.output
    assert redis_client.hgetall(partitions_key(namespace)) == {topic.encode(): b"2"}

    _raise_partitions(s.kafka, topic, 4)
    produce(s.kafka, topic, click_payloads(clicks[30:]))
    for more in (("--bounded",), ("--bounded", "--partitions", "0,1"), ("--tail", "--no-recovery")):
        res = _cli(s, *args, *more)
        _refused_without_start(res, 1, f"topic {topic!r} has 4 partitions", "was built from 2",
                               f"namespace {namespace!r}", "fresh namespace", "new topic")
        _no_traceback(res.output)
        assert len([ln for ln in res.output.splitlines() if ln.startswith("Error")]) == 1
    assert redis_client.hgetall(partitions_key(namespace)) == {topic.encode(): b"2"}  # kept

    # a namespace of its own takes the topic as it is now, and records it
    fresh = f"{namespace}-fresh"
    try:
        res = _cli(s, "run", "--topic", topic, "--namespace", fresh, "--bounded")
        assert res.exit_code == 0 and START in res.output, res.output
        assert redis_client.hgetall(partitions_key(fresh)) == {topic.encode(): b"4"}
    finally:
        redis_client.delete(*redis_client.keys(f"diam:{fresh}:*"))
    # a namespace written before the record was kept (no record of the topic) is taken
    redis_client.delete(partitions_key(namespace))
    res = _cli(s, *args, "--bounded")
    assert res.exit_code == 0 and START in res.output, res.output
    assert redis_client.hgetall(partitions_key(namespace)) == {topic.encode(): b"4"}
    # another program's key under the name: one line, before the start line
    redis_client.set(partitions_key(namespace), b"not a hash")
    res = _cli(s, *args, "--bounded")
    _refused_without_start(res, 1, partitions_key(namespace), "another namespace")
    _no_traceback(res.output)


def test_a_store_of_another_topic_or_other_partitions_is_refused_in_one_line(
        stack, new_topic, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    topic, other = new_topic(2), new_topic(2)
    for t in (topic, other):
        produce(s.kafka, t, click_payloads(click_stream(4, 20, seed=1)))
    store, subset = tmp_path / "recovery", tmp_path / "subset"
    base = ("run", "--bounded", "--namespace", namespace)
    assert _cli(s, *base, "--topic", topic, "--recovery-dir", str(store)).exit_code == 0
    assert _cli(s, *base, "--topic", topic, "--recovery-dir", str(subset),
                "--partitions", "0,1").exit_code == 0

    res = _cli(s, *base, "--topic", other, "--recovery-dir", str(store))
    _refused_without_start(res, 1, f"topic {topic!r}, not {other!r}", str(store.resolve()))
    _no_traceback(res.output)
    res = _cli(s, *base, "--topic", topic, "--recovery-dir", str(subset), "--partitions", "1")
    _refused_without_start(res, 1, "partitions [0, 1]", "this run reads [1]", "--partitions")
    _no_traceback(res.output)
    # a store written before the record was kept: its Bytewax state keys tell the topic
    (store / STORE_RECORD).unlink()
    res = _cli(s, *base, "--topic", other, "--recovery-dir", str(store))
    _refused_without_start(res, 1, "another topic", f"not of {other!r}")
    _no_traceback(res.output)
    (subset / STORE_RECORD).unlink()
    res = _cli(s, *base, "--topic", topic, "--recovery-dir", str(subset), "--partitions", "1")
    _refused_without_start(res, 1, "partitions [0, 1]", "this run reads [1]")
    # the store's own run goes on (the checks above can pass)
    res = _cli(s, *base, "--topic", topic, "--recovery-dir", str(store))
    assert res.exit_code == 0 and START in res.output, res.output


def test_a_cluster_process_whose_address_is_taken_is_refused_before_the_start_line(
        stack, topic, namespace, tmp_path) -> None:
    s = _settings(stack, tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    me = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        res = _cli(s, "run", "--tail", "--topic", topic, "--namespace", namespace,
                   "--no-recovery", "-a", f"{me};127.0.0.1:{free_port()}", "-i", "0")
    finally:
        taken.close()
    _refused_without_start(res, 1, me, "in use by another program", "--addresses")
    _no_traceback(res.output)
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error")]) == 1


def test_a_tailing_run_stops_with_an_error_when_its_topic_grows(stack, new_topic, namespace,
                                                                tmp_path) -> None:
    topic = new_topic(2)
    s = stack.settings
    produce(s.kafka, topic, click_payloads(click_stream(4, 20, seed=2)))
    ckpt, store = tmp_path / "ckpt", tmp_path / "recovery"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic)
    cmd = [sys.executable, "-m", "diam", "run", "--tail", "--topic", topic, "--checkpoint",
           str(ckpt), "--namespace", namespace, "--recovery-dir", str(store)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def on_line(_name: str, line: str) -> None:
        lines.append(line)
        if line.startswith(START):
            started.set()

    with reading_lines(proc, on_line):
        assert started.wait(120), "no start line:\n" + "".join(lines)
        _raise_partitions(s.kafka, topic, 4)
        proc.wait(timeout=60)  # the old code tailed on, reading neither new partition
    text = "".join(lines)
    assert proc.returncode == 1, text
    _no_traceback(text)
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) == 1, text
    # what the run did is said as on any stop, before why it stopped
    summary = summary_lines(text)
    assert len(summary) == 1 and summary[0].startswith("stopped: "), text
    assert f"topic {topic!r} has 4 partitions" in errors[0] and "built from 2" in errors[0], text
    assert "read none of the new partitions" in errors[0], text
    # the stop kept the store's positions: a restart is refused at start, not after reading
    ensure_topic(s.kafka, topic)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and START not in res.stdout, res.stdout + res.stderr
    assert "has 4 partitions" in res.stderr and "built from 2" in res.stderr, res.stderr
    delete_topics(s.kafka, [f"{topic}.drift", f"{topic}.dlq"])
