"""The retrain service through a Redis outage (real Kafka, a redis-server of the test's own,
stopped and started again): a publish that reached disk is a decision, its window is not
trained again, only the announcement is retried until Redis answers; disk and Redis end equal
and the models topic says what happened (published, then announced)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis as redis_py

from tests.integration.test_loop import _decisions, _feed, _loop_settings, loop_data

__all__ = ["loop_data"]  # the module fixture, shared with test_loop


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """(url, stop, start) of a redis-server of this test alone, without persistence."""
    from diam.stack_proc import free_port
    from serving_cache.reader import fail_fast

    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is needed (apt-get install redis-server)"
    port, started = free_port(), []
    # a failed command is retried once at once: redis-py's default backoff spent ~4 s after
    # each SHUTDOWN (the server closing the connection) before the error stop() expects
    c = fail_fast(redis_py.Redis(port=port))

    def up() -> bool:
        try:
            return bool(c.ping())
        except redis_py.ConnectionError:
            return False

    def start() -> None:
        started.append(subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while not up():
            assert time.monotonic() < deadline, "the test's redis-server never answered"
            time.sleep(0.05)

    def stop() -> None:
        try:
            c.shutdown(nosave=True)
        except redis_py.ConnectionError:
            pass
        for p in started:
            p.wait(20)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", stop, start
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(20)


def _settings(stack, topic, tmp_path, url, **retrain):  # type: ignore[no-untyped-def]
    s = _loop_settings(stack, topic, tmp_path, epochs=1, **retrain)
    return s.model_copy(update={"redis": s.redis.model_copy(update={"url": url})})


def _wait(cond, what: str, limit_s: float = 180) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_a_publish_redis_did_not_take_is_done_and_only_its_announcement_is_retried(
        stack, topic, namespace, loop_data, tmp_path, own_redis) -> None:
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    url, stop_redis, start_redis = own_redis
    _feed(stack, topic, loop_data)
    s = _settings(stack, topic, tmp_path, url, every_events=1, every_minutes=600.0, poll_s=0.2)
    store = SnapshotStore(s.snapshot)
    stop_redis()  # down before the first retrain: its publish reaches disk, not Redis
    lines: list[str] = []
    svc = Retrainer(s, namespace=namespace, log_line=lines.append)
    runs, tries = [], []
    real_run, real_sync = svc.run_once, svc.sync_redis
    svc.run_once = lambda: runs.append(1) or real_run()  # type: ignore[method-assign]
    svc.sync_redis = lambda: tries.append(1) or real_sync()  # type: ignore[method-assign]
    stop = threading.Event()
    th = threading.Thread(target=svc.serve, args=(stop,), daemon=True)
    th.start()
    try:
        _wait(lambda: _decisions(stack, topic) or not th.is_alive(), "a decision")
        _wait(lambda: len(tries) >= 5 or not th.is_alive(), "retries of the announcement")
        assert th.is_alive()
        # one retrain, one version: every poll found the window done
        assert len(runs) == 1 and len(store.versions()) == 1
        (d,) = _decisions(stack, topic)
        assert d["published"] and not d["announced"] and d["announced_at"] is None, d
        assert d["version"] == store.active_version()
        assert "not announced in Redis" in d["reason"], d["reason"]
        assert sum("Redis does not name the active snapshot version" in ln for ln in lines) == 1
        assert svc.metrics.unsynced._value.get() == 1

        start_redis()  # empty (no persistence): it names no version
        c = redis_py.Redis.from_url(url)
        _wait(lambda: c.get(model_active_key(namespace)) is not None, "the announcement")
        _wait(lambda: len(_decisions(stack, topic)) == 2, "the decision written again")
    finally:
        stop.set()
        th.join(60)
    assert c.get(model_active_key(namespace)).decode() == d["version"] == store.active_version()
    again = _decisions(stack, topic)[1]
    assert again["announced"] and again["announced_at"]
    assert {k: v for k, v in again.items() if k not in ("announced", "announced_at")} == \
        {k: v for k, v in d.items() if k not in ("announced", "announced_at")}
    assert json.loads((tmp_path / "candidates" / d["candidate"] / "decision.json")
                      .read_text())["announced"] is True
    assert len(runs) == 1 and len(store.versions()) == 1
    assert sum(ln.startswith("Redis answers: ") for ln in lines) == 1
    assert svc.metrics.unsynced._value.get() == 0


def test_a_restarted_service_resyncs_redis_from_the_pointer_before_training(
        stack, topic, namespace, loop_data, tmp_path, own_redis) -> None:
    """The reviewer's split: the pointer names a version Redis never took (a run stopped after
    such a publish), Redis back: the service announces the pointer's version, writes the
    unannounced decision again, announced, and trains nothing for it."""
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    url, stop_redis, start_redis = own_redis
    _feed(stack, topic, loop_data)
    s = _settings(stack, topic, tmp_path, url, every_events=1000, every_minutes=600.0,
                  poll_s=0.2)
    c = redis_py.Redis.from_url(url)
    first = Retrainer(s, namespace=namespace).run_once()
    assert first.published and first.announced
    assert c.get(model_active_key(namespace)).decode() == first.version
    stop_redis()
    # a warm retrain on the same window, Redis down: on disk, not in Redis
    loose = s.retrain.gate.model_copy(update={"eps_recall": 1.0, "eps_entropy": 100.0})
    second = Retrainer(s.model_copy(update={"retrain": s.retrain.model_copy(
        update={"seed": 1, "gate": loose})}), namespace=namespace).run_once()
    assert second.published and not second.announced and second.version != first.version
    store = SnapshotStore(s.snapshot)
    assert store.active_version() == second.version
    start_redis()
    c.set(model_active_key(namespace), first.version)  # what servers still follow
    svc = Retrainer(s, namespace=namespace)
    runs = []
    svc.run_once = lambda: runs.append(1)  # type: ignore[method-assign,assignment,return-value]
    stop = threading.Event()
    th = threading.Thread(target=svc.serve, args=(stop,), daemon=True)
    th.start()
    try:
        _wait(lambda: len(_decisions(stack, topic)) == 3 or not th.is_alive(),
              "the decision written again")
    finally:
        stop.set()
        th.join(60)
    assert c.get(model_active_key(namespace)).decode() == second.version
    got = _decisions(stack, topic)
    assert [(g["candidate"], g["published"], g["announced"]) for g in got] == [
        (first.candidate, True, True), (second.candidate, True, False),
        (second.candidate, True, True)]
    assert runs == []  # the window was done
