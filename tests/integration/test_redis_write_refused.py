"""A Redis error that the sink does not wait out (a key of another type, a permission taken from
the run's ACL user while it runs) stops ``diam run`` with its ``stopped:`` summary and one
``Error:`` line naming the error and the key or command, exit 1, instead of Bytewax's traceback
and a Rust panic (a tailing run aborted, SIGABRT); started again once the cause is fixed, the
run resumes from its recovery store and leaves the Redis state of an uninterrupted run. At the
start, an ACL user built from what ``streams.preflight`` says a dataflow needs can run it, and
one without a command the dataflow calls is refused in one ``Error:`` line naming it.

The ACL users are created on the shared stack's Redis under names of this module's own, and
deleted after each test."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from diam.commands.run import parse_summary
from streams.preflight import REDIS_COMMANDS
from tests.flowkit import click_stream
from tests.integration.helpers import (
    click_payloads,
    produce,
    redis_state,
    run_env,
    write_tiny_checkpoint,
)


@pytest.fixture
def acl_user(redis_client) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """An ACL user's name and password on the stack's Redis (no rules yet), deleted after."""
    name, password = f"diam-sinkerr-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(name, enabled=True, passwords=[f"+{password}"])
    yield name, password
    redis_client.acl_deluser(name)


def _as_user(stack, user: tuple[str, str]) -> str:  # type: ignore[no-untyped-def]
    """The stack's Redis URL with ``user``'s login."""
    scheme, rest = stack.redis_url.split("://", 1)
    return f"{scheme}://{user[0]}:{user[1]}@{rest}"


def _one_error(out: str, err: str, rc: int) -> str:
    """The run's one ``Error:`` line, after its summary: no traceback, no panic, exit 1."""
    assert rc == 1, (rc, out, err)
    assert "Traceback" not in err and "panicked" not in err and "PanicException" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert out.splitlines()[-1].startswith("stopped:"), out
    return errors[0]


def test_a_key_of_another_type_stops_a_bounded_run_in_one_line_and_it_resumes(
        stack, topic, namespace, redis_client, tmp_path) -> None:
    events = click_payloads(click_stream(n_users=20, n_events=1200, seed=5))
    produce(stack.settings.kafka, topic, events)
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic, {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.2"})
    base = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt),
            "--bounded"]
    subprocess.run(base + ["--namespace", namespace], env=env, check=True, timeout=300,
                   capture_output=True)
    want = redis_state(redis_client, namespace)
    assert len(want) == 20

    ns2, store = f"{namespace}-wt", tmp_path / "store"
    bad = f"diam:{ns2}:u:user0"
    redis_client.rpush(bad, "x")
    cmd = base + ["--namespace", ns2, "--recovery-dir", str(store)]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        line = _one_error(run.stdout, run.stderr, run.returncode)
        assert "WRONGTYPE" in line and f"{bad} holds a list, not a string" in line, line
        assert f"recovery store {store.resolve()} keeps" in line, line

        redis_client.delete(bad)  # the cause fixed: the same command resumes
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert parse_summary(again.stdout)["resumed"] > 0, again.stdout
        assert redis_state(redis_client, ns2) == want
    finally:
        for k in redis_client.scan_iter(match=f"diam:{ns2}:*"):
            redis_client.delete(k)


def test_the_wrong_type_probe_names_the_keys_in_one_round_trip(stack, namespace) -> None:
    """After a WRONGTYPE (which names no key) the sink asks the type of each key the failed
    write touches, its first thousand users' and the namespace's records, in one pipeline:
    the first three of another type named, in that order, in one round trip (the probe sent
    one TYPE per key, a round trip each: 1001 here)."""
    import redis

    from serving_cache import redis_client as make_client
    from serving_cache.keys import base_key, partitions_key, user_key
    from serving_cache.writer import RedisWriter
    from streams.redis_sink import _Partition

    client = make_client(stack.settings.redis)
    sends: list[int] = []

    class Counting(client.connection_pool.connection_class):  # type: ignore[name-defined,misc]
        def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            sends.append(1)  # one per round trip: a command, or a pipeline's commands at once
            super().send_packed_command(command, check_health)

    client.connection_pool.connection_class = Counting
    part = _Partition(RedisWriter(client, namespace), max_backoff_s=0.2, check_every_s=3600.0)
    try:
        client.rpush(user_key(namespace, "u5"), "x")
        client.hset(user_key(namespace, "u700"), "f", "x")
        client.rpush(user_key(namespace, "u1100"), "x")  # past the first thousand: not asked
        client.set(base_key(namespace), "x")
        client.set(partitions_key(namespace), "x")  # the fourth: not named
        items = [(f"u{i}", None) for i in range(1200)]
        sends.clear()
        found = part._wrong_type(redis.ResponseError("WRONGTYPE Operation against a key holding "
                                                     "the wrong kind of value"), items)  # type: ignore[arg-type]
        assert len(sends) == 1
        assert found == [f"{user_key(namespace, 'u5')} holds a list, not a string",
                         f"{user_key(namespace, 'u700')} holds a hash, not a string",
                         f"{base_key(namespace)} holds a string, not a hash"]
        assert part._wrong_type(redis.ResponseError("ERR other"), items) == []  # type: ignore[arg-type]
    finally:
        part.close()
        client.close()


def test_a_permission_taken_from_a_tailing_run_stops_it_in_one_line(
        stack, topic, namespace, redis_client, acl_user, tmp_path) -> None:
    events = click_payloads(click_stream(n_users=20, n_events=1200, seed=6))
    produce(stack.settings.kafka, topic, events[:600])
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    redis_client.acl_setuser(acl_user[0], enabled=True, keys=["diam:*"], commands=["+@all"])
    env = run_env(stack, topic, {"DIAM_FLOW_EPOCH_INTERVAL_S": "0.2",
                                 "DIAM_REDIS_URL": _as_user(stack, acl_user)})
    cmd = [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(ckpt),
           "--tail", "--namespace", namespace, "--recovery-dir", str(tmp_path / "store")]
    out, err = open(tmp_path / "run.out", "w"), open(tmp_path / "run.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
    out.close()
    err.close()
    try:
        deadline = time.monotonic() + 180
        while len(redis_state(redis_client, namespace)) < 20:
            assert proc.poll() is None, (tmp_path / "run.err").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.err").read_text()
            time.sleep(0.2)
        redis_client.acl_setuser(acl_user[0], enabled=True, commands=["-evalsha", "-eval"])
        produce(stack.settings.kafka, topic, events[600:])
        proc.wait(120)
        line = _one_error((tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text(),
                          proc.returncode)
        assert "NoPermissionError" in line and "evalsha" in line.lower(), line
        assert "EVALSHA" in line and "DIAM_REDIS_USERNAME" in line, line  # what the user needs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _bounded(stack, topic: str, ns: str, user: tuple[str, str], ckpt: Path  # type: ignore[no-untyped-def]
             ) -> subprocess.CompletedProcess[str]:
    env = run_env(stack, topic, {"DIAM_REDIS_URL": _as_user(stack, user)})
    return subprocess.run([sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint",
                           str(ckpt), "--bounded", "--namespace", ns], env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_listed_permissions_run_the_dataflow_and_one_missing_is_one_error_line(
        stack, topic, namespace, redis_client, acl_user, tmp_path) -> None:
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=8, n_events=200, seed=7)))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    listed = [f"+{c.lower()}" for c in REDIS_COMMANDS]
    redis_client.acl_setuser(acl_user[0], enabled=True, keys=["diam:*"], commands=listed)
    run = _bounded(stack, topic, namespace, acl_user, ckpt)
    assert run.returncode == 0, run.stderr
    assert len(redis_state(redis_client, namespace)) == 8

    for taken in ("EVAL", "HSETNX"):  # the markers' EVAL; a command only a script calls
        redis_client.acl_setuser(acl_user[0], reset=True, enabled=True,
                                 passwords=[f"+{acl_user[1]}"], keys=["diam:*"],
                                 commands=[c for c in listed if c != f"+{taken.lower()}"])
        run = _bounded(stack, topic, f"{namespace}-x", acl_user, ckpt)
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        errors = [x for x in run.stderr.splitlines() if x.startswith("Error:")]
        assert len(errors) == 1, run.stderr
        assert f"may not run {taken}" in errors[0] and "DIAM_REDIS_USERNAME" in errors[0], errors
        assert "online dataflow:" not in run.stdout, run.stdout  # refused before it started


def test_a_replay_by_a_user_without_a_permission_it_needs_is_one_error_line(
        stack, topic, namespace, redis_client, acl_user, tmp_path) -> None:
    # was: the start check's ServiceConfigError as a traceback (diam run says it in one line)
    produce(stack.settings.kafka, topic, click_payloads(click_stream(n_users=8, n_events=200, seed=7)))
    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    listed = [f"+{c.lower()}" for c in REDIS_COMMANDS if c != "EVALSHA"]
    redis_client.acl_setuser(acl_user[0], enabled=True, keys=["diam:*"], commands=listed)
    env = run_env(stack, topic, {"DIAM_REDIS_URL": _as_user(stack, acl_user)})
    cmd = [sys.executable, "-m", "diam", "replay", "--topic", topic, "--checkpoint", str(ckpt),
           "--namespace", namespace]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "panicked" not in run.stderr, run.stderr
    errors = [x for x in run.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "may not run EVALSHA" in errors[0], run.stderr
    assert not list(redis_client.scan_iter(match=f"diam:{namespace}:u:*"))  # nothing written
