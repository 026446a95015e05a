"""``diam replay`` and the names of its namespace, against the real broker and Redis: a namespace
with dots replays (Bytewax refuses a dot in a flow id, ``streams.replay.replay_flow_id``); a
namespace whose replay topics Kafka would refuse beside another namespace's (``a.b`` and
``a_b``: names that differ only by '.' and '_') is refused in one ``Error:`` line naming the
other namespace, before anything is written; a second SIGINT gives back the replay's claim and
says the namespace holds a part of the range."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from serving_cache.keys import claim_key
from tests.flowkit import click_stream
from tests.integration.conftest import create_topic
from tests.integration.helpers import (
    click_payloads,
    produce,
    reading_lines,
    run_env,
    write_tiny_checkpoint,
)
from tests.integration.test_clicks_input_refusals import _errors
from tests.integration.test_namespace_holders import _env_settings, _keys
from tests.integration.test_topic_typos import _cli, _exists


def _clean(redis_client, *namespaces: str) -> None:  # type: ignore[no-untyped-def]
    """Delete the keys of namespaces the ``namespace`` fixture does not know (its name + a
    suffix)."""
    for ns in namespaces:
        keys = _keys(redis_client, ns)
        if keys:
            redis_client.delete(*keys)


def test_a_replay_into_a_namespace_with_dots_runs(stack, topic, namespace, redis_client,
                                                  tmp_path) -> None:
    """Before: 'ValueError: flow ID can't contain a period' after the start line, its topics
    and diam:<ns>:partitions left."""
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=5, n_events=60, seed=21)))
    s = _env_settings(stack, topic)
    ns = f"{namespace}.a.b"
    try:
        res = _cli(s, "replay", "--no-progress", "--topic", topic, "--checkpoint", str(ckpt),
                   "--namespace", ns)
        assert res.exit_code == 0, (res.output, res.exception)
        assert f"replayed 60 events of {topic}" in res.output, res.output
        assert any(redis_client.scan_iter(match=f"diam:{ns}:u:*"))
        assert redis_client.get(claim_key(ns)) is None
        assert _exists(s, f"{topic}.drift.replay.{ns}")
    finally:
        _clean(redis_client, ns)


def test_a_namespace_whose_topics_collide_with_another_namespaces_is_refused(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """``<ns>.b``'s replay topics exist; a replay into ``<ns>_b`` is refused naming ``<ns>.b``
    and ``diam drop``, with no key (claim, partition record) or topic written. Before: 'Kafka
    at ... is not usable (... collides with existing topic ...); is the stack up?' after the
    claim and diam:<ns>_b:partitions were written, the partition record left behind."""
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=5, n_events=40, seed=22)))
    s = _env_settings(stack, topic)
    dotted, other = f"{namespace}.b", f"{namespace}_b"
    for side in ("dlq", "drift"):  # as a replay into <ns>.b leaves them
        create_topic(stack, f"{topic}.{side}.replay.{dotted}", 1)
    try:
        res = _cli(s, "replay", "--no-progress", "--topic", topic, "--checkpoint", str(ckpt),
                   "--namespace", other)
        assert res.exit_code == 1, res.output
        errors = _errors(res)
        assert len(errors) == 1, res.output
        assert "collides with the existing topic" in errors[0], res.output
        assert f"namespace {dotted!r}" in errors[0] and f"`diam drop {dotted}`" in errors[0]
        assert "is the stack up" not in res.output and "Traceback" not in res.output
        assert _keys(redis_client, other) == []
        assert not _exists(s, f"{topic}.dlq.replay.{other}")
        assert not _exists(s, f"{topic}.drift.replay.{other}")
    finally:
        _clean(redis_client, dotted, other)


def test_a_second_sigint_releases_the_claim_and_says_the_namespace_holds_a_part(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    """SIGINT once the replay writes users, SIGINT again once it said it stops at the next
    batch: the process stops at once (killed by SIGINT), its claim given back and the partial
    namespace said. Before: the claim stayed (only `diam drop --force` cleared it from another
    host) and nothing was said of the data. A second signal that lands after the replay
    finished tests nothing: tried again in a fresh namespace, at most three times."""
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    n = 400_000
    payloads = list(click_payloads(click_stream(n_users=50, n_events=n, seed=23)))
    for i in range(0, n, 50_000):  # within the producer's queue
        produce(stack.settings.kafka, topic, payloads[i:i + 50_000])
    for attempt in range(3):
        ns = f"{namespace}-int{attempt}"
        try:
            proc = subprocess.Popen([sys.executable, "-m", "diam", "replay", "--topic", topic,
                                     "--checkpoint", str(ckpt), "--namespace", ns,
                                     "--no-progress"],
                                    env=run_env(stack, topic), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            lines: list[str] = []
            first = threading.Event()

            def on_line(_name: str, line: str, first: threading.Event = first,
                        lines: list[str] = lines) -> None:
                lines.append(line)
                if "SIGINT: stopping at the next batch" in line:
                    first.set()

            with reading_lines(proc, on_line):
                deadline = time.monotonic() + 120
                while not any(redis_client.scan_iter(match=f"diam:{ns}:u:*")):
                    assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
                    time.sleep(0.002)
                proc.send_signal(signal.SIGINT)
                assert first.wait(60), "".join(lines)
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
            err = "".join(lines)
            if proc.returncode == 0:  # it had finished its last batch: too late
                continue
            assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
            assert "SIGINT again: stopping now" in err, err
            assert (f"replay stopped by a signal before the end of its range: namespace {ns!r} "
                    "holds a part of it; replay it again with --clear") in err, err
            assert redis_client.get(claim_key(ns)) is None, err
            return
        finally:
            _clean(redis_client, ns)
    raise AssertionError("the second SIGINT came after the replay ended (3 tries)")
