"""The rules of ``serving_cache.holders`` against the real Redis: one owner of a stale claim's
takeover (``claim_holder``, ``release_claim``, ``take_claim``) for ``diam run``, ``diam replay``
and ``diam drop``."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from serving_cache.keys import claim_key


@pytest.fixture
def holders_ns(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace of this helper's prefix; its keys are deleted after the test."""
    ns = f"holders_{uuid.uuid4().hex[:12]}"
    yield ns
    keys = list(redis_client.scan_iter(match=f"diam:{ns}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def holders_user(redis_client) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """An ACL user's name and password on the stack's Redis (no rules yet), deleted after."""
    name, password = f"holders-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(name, enabled=True, passwords=[f"+{password}"])
    yield name, password
    redis_client.acl_deluser(name)


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_claim_holder_takes_over_a_stale_claim_only(redis_client, holders_ns) -> None:
    from serving_cache.holders import claim_holder, release_claim

    ns = holders_ns
    assert claim_holder(redis_client, ns) == (None, None)
    live = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(ns), live)
    assert claim_holder(redis_client, ns) == (live, None)  # another host's: never stale here
    assert redis_client.get(claim_key(ns)) == live.encode()
    stale = (f"diam replay pid {_gone_pid()} on {socket.gethostname()} since "
             "2026-01-01T00:00:00Z (test)")
    redis_client.set(claim_key(ns), stale)
    assert claim_holder(redis_client, ns) == (None, stale)
    assert redis_client.get(claim_key(ns)) is None
    # a claim taken by another holder since it was read is not deleted
    redis_client.set(claim_key(ns), live)
    assert release_claim(redis_client, ns, stale) is False
    assert redis_client.get(claim_key(ns)) == live.encode()
    assert release_claim(redis_client, ns, live) is True
    assert redis_client.get(claim_key(ns)) is None


def test_take_claim_takes_a_free_or_stale_claim_and_stops_at_a_live_one(
        redis_client, holders_ns) -> None:
    """``take_claim``: the one claim loop of ``diam replay`` and ``diam drop``."""
    from serving_cache.holders import take_claim

    ns, ours = holders_ns, "diam drop pid 2 on here since 2026-01-01T00:00:00Z (ours)"
    assert take_claim(redis_client, ns, ours) == (True, None, [])
    assert redis_client.get(claim_key(ns)) == ours.encode()
    stale = (f"diam replay pid {_gone_pid()} on {socket.gethostname()} since "
             "2026-01-01T00:00:00Z (test)")
    redis_client.set(claim_key(ns), stale)
    assert take_claim(redis_client, ns, ours) == (True, None, [stale])
    assert redis_client.get(claim_key(ns)) == ours.encode()
    live = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(ns), live)
    assert take_claim(redis_client, ns, ours) == (False, live, [])
    assert redis_client.get(claim_key(ns)) == live.encode()


def test_one_owner_of_the_claim_script() -> None:
    """The commands use the holders' rule, with no Lua script of their own."""
    import inspect

    from diam.commands import replay, run

    for module in (run, replay):
        assert "redis.call(" not in inspect.getsource(module), module.__name__


def _checks_counted(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Each call of ``streams.preflight.check_redis`` (by whichever module), recorded, the real
    check still made."""
    import streams.preflight
    import streams.runner

    real, calls = streams.preflight.check_redis, []

    def counted(cfg, wait=True, namespace=None):  # type: ignore[no-untyped-def]
        calls.append(str(namespace))
        return real(cfg, wait=wait, namespace=namespace)

    monkeypatch.setattr(streams.preflight, "check_redis", counted)
    monkeypatch.setattr(streams.runner, "check_redis", counted)
    return calls


def test_diam_run_checks_redis_once(stack, topic, holders_ns, tmp_path, monkeypatch) -> None:
    """diam run asks Redis's login, ACL and cluster checks before it announces itself, and its
    runner does not ask them again (before: twice per start)."""
    from tests.flowkit import click_stream
    from tests.integration.helpers import click_payloads, produce, write_tiny_checkpoint
    from tests.integration.test_namespace_holders import _env_settings
    from tests.integration.test_topic_typos import _cli

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=3, n_events=20, seed=3)))
    calls = _checks_counted(monkeypatch)
    res = _cli(_env_settings(stack, topic), "run", "--bounded", "--topic", topic,
               "--checkpoint", str(ckpt), "--namespace", holders_ns)
    assert res.exit_code == 0, res.output
    assert calls == [holders_ns], calls


def test_a_job_not_checked_by_its_caller_is_checked_by_the_runner(stack, topic) -> None:
    """The runner keeps the check for its other callers: an unreachable Redis refuses a
    bounded job there, unless the caller says it checked Redis itself."""
    import socket as so

    from diam.app import online_job
    from streams.preflight import ServiceConfigError
    from streams.runner import _check_services, prepare_online

    with so.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    redis = stack.settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})
    s = stack.settings.model_copy(update={"redis": redis})
    job = online_job(s, topic=topic, namespace="holders_unchecked", bounded=True)
    with pytest.raises(ServiceConfigError, match="is not reachable"):
        prepare_online(job)
    job.redis_checked = True
    assert _check_services(job) == 4  # the topic's partitions: Redis not asked


def test_a_replay_checks_redis_before_its_claim_and_once(
        stack, topic, holders_ns, redis_client, holders_user, tmp_path, monkeypatch) -> None:
    """An ACL user that may not run a command the replay needs (ZREMRANGEBYSCORE: the runs'
    lookup after the claim) is told which, with no claim set (before: the claim set, then
    'not usable' from the lookup); a permitted replay asks the check once (before: twice)."""
    from streams.preflight import REDIS_COMMANDS
    from tests.flowkit import click_stream
    from tests.integration.helpers import click_payloads, produce, write_tiny_checkpoint
    from tests.integration.test_namespace_holders import _env_settings
    from tests.integration.test_redis_write_refused import _as_user
    from tests.integration.test_topic_typos import _cli

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=3, n_events=20, seed=4)))
    s = _env_settings(stack, topic)
    as_user = s.model_copy(update={"redis": s.redis.model_copy(
        update={"url": _as_user(stack, holders_user)})})
    listed = [f"+{c.lower()}" for c in REDIS_COMMANDS if c != "ZREMRANGEBYSCORE"]
    redis_client.acl_setuser(holders_user[0], enabled=True, keys=["diam:*"], commands=listed)
    args = ("replay", "--no-progress", "--topic", topic, "--namespace", holders_ns,
            "--checkpoint", str(ckpt))
    res = _cli(as_user, *args)
    assert res.exit_code == 1, res.output
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "may not run ZREMRANGEBYSCORE" in errors[0], res.output
    assert redis_client.get(claim_key(holders_ns)) is None
    calls = _checks_counted(monkeypatch)
    res = _cli(s, *args)
    assert res.exit_code == 0, res.output
    assert calls == [holders_ns], calls


def test_a_drop_holds_the_namespace_while_it_asks_and_deletes(
        stack, topic, holders_ns, redis_client, tmp_path) -> None:
    """diam drop claims the namespace before it looks for runs and asks: a replay or a run
    starting meanwhile is refused, naming the drop (before: the drop held nothing, and one
    started between its check and its delete lost its keys under it)."""
    import subprocess
    import sys
    import time

    import click

    from diam.commands.run import refuse_replay_held
    from tests.integration.helpers import run_env, write_tiny_checkpoint
    from tests.integration.test_namespace_holders import _env_settings
    from tests.integration.test_topic_typos import _cli

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    s = _env_settings(stack, topic)
    redis_client.set(f"diam:{holders_ns}:u:1", b"x")
    drop = subprocess.Popen([sys.executable, "-m", "diam", "drop", holders_ns, "--keep-topics"],
                            env=run_env(stack, topic), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (held := redis_client.get(claim_key(holders_ns))) is None:
            assert drop.poll() is None and time.monotonic() < deadline, drop.communicate()
            time.sleep(0.02)
        assert held.decode().startswith(f"diam drop pid {drop.pid} "), held
        res = _cli(s, "replay", "--no-progress", "--topic", topic, "--namespace", holders_ns,
                   "--checkpoint", str(ckpt))
        assert res.exit_code == 1 and f"held by diam drop pid {drop.pid} " in res.output, \
            res.output
        with pytest.raises(click.ClickException, match=f"held by diam drop pid {drop.pid} "):
            refuse_replay_held(s, holders_ns)
        out, err = drop.communicate("y\n", timeout=60)
    finally:
        if drop.poll() is None:
            drop.kill()
    assert drop.returncode == 0, (out, err)
    assert f"dropped 1 keys of namespace {holders_ns!r}" in out, out
    assert list(redis_client.scan_iter(match=f"diam:{holders_ns}:*")) == []  # its claim too


def test_inspect_namespace_shows_who_holds_it(stack, holders_ns, redis_client) -> None:
    """diam inspect namespace names the claim's holder and the live runs, text and --json
    (before: neither)."""
    import json

    from serving_cache.holders import RunAnnouncement
    from tests.integration.test_topic_typos import _cli

    ns = holders_ns
    res = _cli(stack.settings, "inspect", "namespace", "--namespace", ns)
    assert res.exit_code == 0 and "held by  nobody" in res.output, res.output
    claim = "diam replay pid 1 on elsewhere since 2026-01-01T00:00:00Z (test)"
    redis_client.set(claim_key(ns), claim)
    run = RunAnnouncement(redis_client, ns)
    run.start()
    try:
        res = _cli(stack.settings, "inspect", "namespace", "--namespace", ns)
        assert res.exit_code == 0, res.output
        assert f"held by  {claim} ({claim_key(ns)})" in res.output, res.output
        assert f"held by  {run.member} (diam:{ns}:runs)" in res.output, res.output
        res = _cli(stack.settings, "inspect", "namespace", "--namespace", ns, "--json")
        assert res.exit_code == 0, res.output
        body = json.loads(res.output)
        assert (body["claim"], body["claim_stale"], body["runs"]) == (claim, False, [run.member])
    finally:
        run.close()
    stale = (f"diam replay pid {_gone_pid()} on {socket.gethostname()} since "
             "2026-01-01T00:00:00Z (test)")
    redis_client.set(claim_key(ns), stale)
    res = _cli(stack.settings, "inspect", "namespace", "--namespace", ns)
    assert f"{stale} ({claim_key(ns)}; its process is gone" in res.output, res.output
    assert redis_client.get(claim_key(ns)) == stale.encode()  # read only: nothing deleted


def test_a_run_leaves_its_namespace_when_its_dataflow_ends(
        stack, topic, holders_ns, redis_client, tmp_path) -> None:
    """A run held after its dataflow by --metrics-hold writes nothing: its announcement is gone
    while it holds its metrics (before: announced until the command exited)."""
    import subprocess
    import sys
    import threading

    from serving_cache.keys import runs_key
    from tests.flowkit import click_stream
    from tests.integration.helpers import (
        click_payloads,
        produce,
        reading_lines,
        run_env,
        write_tiny_checkpoint,
    )

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=3, n_events=20, seed=5)))
    proc = subprocess.Popen([sys.executable, "-m", "diam", "run", "--bounded", "--topic", topic,
                             "--checkpoint", str(ckpt), "--namespace", holders_ns,
                             "--metrics-port", "0", "--metrics-hold", "60"],
                            env=run_env(stack, topic), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started, done = threading.Event(), threading.Event()

    def on_line(_name: str, line: str) -> None:
        lines.append(line)
        if line.startswith("online dataflow:"):
            started.set()
        if line.startswith("done:"):
            done.set()

    with reading_lines(proc, on_line):
        assert done.wait(120), "".join(lines)
        assert started.is_set()
        assert proc.poll() is None, "".join(lines)  # holding its metrics
        assert redis_client.zrange(runs_key(holders_ns), 0, -1) == [], "".join(lines)
    assert redis_client.exists(runs_key(holders_ns)) == 0


def test_a_replay_clear_keeps_its_claim_throughout(
        stack, topic, holders_ns, redis_client, tmp_path) -> None:
    """diam replay --clear deletes the namespace's keys but its own claim: the namespace is
    never unclaimed while it clears (before: the claim went with the keys and was set again
    after them, a run or replay starting in between saw no claim)."""
    import subprocess
    import sys
    import threading

    from tests.flowkit import click_stream
    from tests.integration.helpers import (
        click_payloads,
        produce,
        reading_lines,
        run_env,
        write_tiny_checkpoint,
    )

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt)
    produce(stack.settings.kafka, topic,
            click_payloads(click_stream(n_users=3, n_events=20, seed=6)))
    n = 150_000  # a drop of some length: its batches take a while
    pipe = redis_client.pipeline(transaction=False)
    for i in range(0, n, 5000):
        pipe.mset({f"diam:{holders_ns}:x:{j}": b"x" for j in range(i, i + 5000)})
    pipe.execute()
    proc = subprocess.Popen([sys.executable, "-m", "diam", "replay", "--no-progress", "--clear",
                             "--topic", topic, "--checkpoint", str(ckpt), "--namespace",
                             holders_ns], env=run_env(stack, topic), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    cleared = threading.Event()

    def on_line(_name: str, line: str) -> None:
        lines.append(line)
        if line.startswith("cleared "):
            cleared.set()

    with reading_lines(proc, on_line):
        while redis_client.get(claim_key(holders_ns)) is None:
            assert proc.poll() is None, "".join(lines)
        polls = 0
        while not cleared.is_set():
            polls += 1
            held = redis_client.get(claim_key(holders_ns))
            assert held is not None or cleared.is_set(), (polls, "".join(lines))
            assert proc.poll() is None or cleared.wait(5), "".join(lines)
        proc.wait(120)
    assert proc.returncode == 0, "".join(lines)
    assert f"cleared {n:,} keys of namespace {holders_ns!r}\n" in lines, "".join(lines)
    assert redis_client.get(claim_key(holders_ns)) is None
