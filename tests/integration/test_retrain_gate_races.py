"""The retrain -> gate -> publish loop when something else moves the store (real Kafka, real
Redis): one retrain per store at a time; a version made active while a retrain trains is the one
its candidate must beat; a run stopped between its commit and its activation is not recorded as
published and its window is trained again; the active model is read as servers read it (Redis's
announcement), not from the pointer file alone."""

from __future__ import annotations

import os
import threading
import time

import pytest
from click.testing import CliRunner

from tests.integration.test_loop import _decisions, _feed, _loop_settings, loop_data

__all__ = ["loop_data"]  # the module fixture, shared with test_loop


def _env(stack, s) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of a ``diam`` command on the settings ``s`` of a test."""
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap,
            "DIAM_REDIS_URL": stack.redis_url, "DIAM_KAFKA_CLICKS_TOPIC": s.kafka.clicks_topic,
            "DIAM_KAFKA_ITEMS_TOPIC": s.kafka.items_topic,
            "DIAM_KAFKA_MODELS_TOPIC": s.kafka.models_topic,
            "DIAM_SNAPSHOT_DIR": s.snapshot.dir,
            "DIAM_RETRAIN_CANDIDATES_DIR": s.retrain.candidates_dir,
            "DIAM_RETRAIN_EPOCHS": "1",
            "DIAM_ONLINE_DIM": str(s.online.dim)}


def _with(s, **retrain):  # type: ignore[no-untyped-def]
    return s.model_copy(update={"retrain": s.retrain.model_copy(update=retrain)})


def test_a_second_retrain_of_the_store_is_refused_naming_the_first(
        stack, topic, namespace, loop_data, tmp_path, monkeypatch) -> None:
    """While one retrain trains, a second run_once, a service and ``diam retrain --once`` on
    the same store are refused at once, naming the holder; nothing of theirs is trained."""
    import online_model.train
    from diam.cli import main
    from diam.retrain import Retrainer
    from snapshotter.store import RetrainLocked

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    real, entered, release = online_model.train.train, threading.Event(), threading.Event()
    trained = []

    def held_train(*a, **kw):  # type: ignore[no-untyped-def]
        trained.append(1)
        if len(trained) == 1:  # the first retrain waits here, mid-run, until the others tried
            entered.set()
            assert release.wait(120)
        return real(*a, **kw)

    monkeypatch.setattr(online_model.train, "train", held_train)
    out: list = []
    th = threading.Thread(target=lambda: out.append(Retrainer(s, namespace=namespace)
                                                    .run_once()), daemon=True)
    th.start()
    try:
        assert entered.wait(120), "the first retrain never started training"
        with pytest.raises(RetrainLocked) as exc:
            Retrainer(s, namespace=namespace).run_once()
        assert f"another retrain of {tmp_path / 'snaps'} (pid {os.getpid()}, since " in \
            str(exc.value) and "nothing was trained" in str(exc.value)
        with pytest.raises(RetrainLocked):  # a service does not start beside it
            Retrainer(s, namespace=namespace).serve(threading.Event())
        res = CliRunner().invoke(main, ["retrain", "--once", "--namespace", namespace],
                                 env=_env(stack, s))
        assert res.exit_code == 1 and f"Error: another retrain of {tmp_path / 'snaps'}" in \
            res.output and "Traceback" not in res.output, res.output
    finally:
        release.set()
        th.join(120)
    (first,) = out
    assert first.published and trained == [1]
    assert [d["candidate"] for d in _decisions(stack, topic)] == [first.candidate]
    assert [p.name for p in (tmp_path / "candidates").iterdir()] == [first.candidate]
    # released: the next retrain runs
    assert Retrainer(s, namespace=namespace).run_once().candidate != first.candidate


def test_a_version_made_active_while_a_retrain_trains_is_the_one_its_candidate_must_beat(
        stack, topic, namespace, redis_client, loop_data, tmp_path, monkeypatch) -> None:
    """X (untrained) active, G (trained) kept; a retrain B as poor as X starts, gated against
    X; while it trains, an operator rolls back to G. B is compared with G before its switch,
    refused, and G stays live; B's decision names G as the version it was compared with."""
    from diam.cli import main
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path)
    poor = _with(s, warm_start=False, lr=1e-9, epochs=1)
    x = Retrainer(poor, namespace=namespace).run_once()
    g = Retrainer(_with(s, warm_start=False), namespace=namespace).run_once()
    assert x.published and g.published and g.active_before == x.version, (x, g)
    res = CliRunner().invoke(main, ["snapshot", "rollback", x.version, "--namespace",
                                    namespace], env=_env(stack, s))
    assert res.exit_code == 0, res.output

    # B: X's weights moved by a learning rate too small to change its quality, so the gate
    # passes it against X
    b, moved = _retrain_rolled_back(monkeypatch, stack, s, poor, namespace, g.version)
    assert moved and b.warm_start is not None and b.warm_start["from"] == x.version
    assert not b.published and b.version is None, b
    assert b.active_before == g.version, b
    assert b.reason.startswith(f"{g.version} became active while it trained (it was compared "
                               f"with {x.version}); compared with it: recall@20 "), b.reason
    assert "below the active" in b.reason
    first = b.metrics["moved_from"]
    assert first["version"] == x.version  # the first comparison passed: B is X's equal
    assert b.metrics["candidate"]["recall@20"] >= first["active"]["recall@20"] - 0.01
    assert b.metrics["active"]["recall@20"] == pytest.approx(g.metrics["candidate"]["recall@20"])
    store = SnapshotStore(s.snapshot)
    assert store.active_version() == g.version
    assert redis_client.get(model_active_key(namespace)).decode() == g.version
    assert {v.version for v in store.versions()} == {x.version, g.version}
    last = _decisions(stack, topic)[-1]
    assert last["candidate"] == b.candidate and not last["published"]
    assert last["active_before"] == g.version


def test_a_retrain_stopped_between_commit_and_activation_is_not_published_and_its_window_is_trained_again(  # noqa: E501
        stack, topic, namespace, redis_client, loop_data, tmp_path, monkeypatch) -> None:
    """The kill lands inside SnapshotStore.activate (before the pointer moves): the version is
    committed, never active. The restarted service records the decision published false,
    window not done, and resumes after the decision before it, so it retrains those events."""
    from diam.retrain import Decision, Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    class Killed(BaseException):
        pass

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, every_events=1000,
                       every_minutes=600.0, poll_s=0.2)
    first = Retrainer(s, namespace=namespace).run_once()
    assert first.published
    _feed(stack, topic, loop_data)  # 1,600 more clicks
    real = SnapshotStore.activate

    def killed(self, version, verify=True):  # type: ignore[no-untyped-def]
        raise Killed(version)

    loose = s.retrain.gate.model_copy(update={"eps_recall": 1.0, "eps_entropy": 100.0})
    with monkeypatch.context() as m:
        m.setattr(SnapshotStore, "activate", killed)
        with pytest.raises(Killed) as exc:
            Retrainer(_with(s, gate=loose), namespace=namespace).run_once()
    committed = str(exc.value)
    assert SnapshotStore.activate is real
    store = SnapshotStore(s.snapshot)
    assert {v.version for v in store.versions()} == {first.version, committed}
    assert store.active_version() == first.version
    assert redis_client.get(model_active_key(namespace)).decode() == first.version

    runs = []
    svc = Retrainer(s, namespace=namespace)
    stop = threading.Event()

    def run_once() -> Decision:
        runs.append(1)
        stop.set()
        return Decision("stub", False, "stub", None, window={"end": {"0": 3200}})

    svc.run_once = run_once  # type: ignore[method-assign]
    th = threading.Thread(target=svc.serve, args=(stop,), daemon=True)
    th.start()
    deadline = time.monotonic() + 10  # many polls: a window counted as done is not retrained
    while not stop.is_set() and time.monotonic() < deadline and th.is_alive():
        time.sleep(0.1)
    stop.set()
    th.join(60)
    assert not th.is_alive()
    got = _decisions(stack, topic)
    assert [(d["candidate"] == first.candidate, d["published"]) for d in got] == [
        (True, True), (False, False)]
    rebuilt = got[1]
    assert rebuilt["window_done"] is False and rebuilt["version"] is None, rebuilt
    assert f"committed as {committed} but never activated" in rebuilt["reason"]
    assert sum(rebuilt["window"]["end"].values()) == 3200
    assert svc.resume_point()["candidate"] == first.candidate
    assert runs == [1]  # the service trained those events again
    assert store.active_version() == first.version


def test_a_retrain_reads_the_active_model_as_servers_do_and_refuses_to_replace_it_ungated(
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    """ACTIVE deleted while Redis announces X: the retrain warm-starts from X and is gated
    against it (not "from scratch ... no active snapshot"). With no announcement either, or an
    announced version this store does not hold, it refuses before training, saying what to do."""
    from diam.cli import main
    from diam.retrain import CannotRetrain, Retrainer
    from serving_cache.keys import model_active_key

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    x = Retrainer(s, namespace=namespace).run_once()
    assert x.published and x.announced
    (tmp_path / "snaps" / "ACTIVE").unlink()
    loose = s.retrain.gate.model_copy(update={"eps_recall": 1.0, "eps_entropy": 100.0})
    d = Retrainer(_with(s, gate=loose), namespace=namespace).run_once()
    assert d.active_before == x.version and d.warm_start and d.warm_start["from"] == x.version
    assert d.metrics["active"] is not None and d.reason != "no active snapshot", d
    assert d.published, d
    assert redis_client.get(model_active_key(namespace)).decode() == d.version

    (tmp_path / "snaps" / "ACTIVE").unlink()
    redis_client.delete(model_active_key(namespace))
    cands = sorted(p.name for p in (tmp_path / "candidates").iterdir())
    with pytest.raises(CannotRetrain) as exc:
        Retrainer(s, namespace=namespace).run_once()
    assert "yet it holds 2 version(s)" in str(exc.value)
    assert "`diam snapshot rollback VERSION` makes one active" in str(exc.value)
    redis_client.set(model_active_key(namespace), "20990101T000000-deadbeef")
    res = CliRunner().invoke(main, ["retrain", "--once", "--namespace", namespace],
                             env=_env(stack, s))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert (f"Error: not retraining: Redis's diam:{namespace}:model:active names "
            "20990101T000000-deadbeef, which") in res.output, res.output
    assert sorted(p.name for p in (tmp_path / "candidates").iterdir()) == cands  # none trained
    assert len(_decisions(stack, topic)) == 2


def _retrain_rolled_back(monkeypatch, stack, s, poor, namespace, to, *flags):  # type: ignore[no-untyped-def]
    """A warm retrain (learning rate too small to change X's quality, so the gate passes it
    against X) during whose training ``diam snapshot rollback TO [flags]`` runs: returns its
    decision and the rollback's outputs."""
    import online_model.train
    from diam.cli import main
    from diam.retrain import Retrainer

    real = online_model.train.train
    moved: list[str] = []

    def train_then_rollback(*a, **kw):  # type: ignore[no-untyped-def]
        got = real(*a, **kw)
        r = CliRunner().invoke(main, ["snapshot", "rollback", to, *flags, "--namespace",
                                      namespace], env=_env(stack, s))
        moved.append(r.output)
        assert r.exit_code == 0, r.output
        return got

    with monkeypatch.context() as m:
        m.setattr(online_model.train, "train", train_then_rollback)
        b = Retrainer(_with(poor, warm_start=True, warm_lr=1e-6, seed=1),
                      namespace=namespace).run_once()
    return b, moved


def _two_versions(stack, topic, namespace, loop_data, tmp_path):  # type: ignore[no-untyped-def]
    """X (untrained, lr 1e-9) and G (trained) published in that order: G active in both the
    pointer and Redis. Returns the settings, the poor settings, X and G."""
    from diam.retrain import Retrainer

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path)
    poor = _with(s, warm_start=False, lr=1e-9, epochs=1)
    x = Retrainer(poor, namespace=namespace).run_once()
    g = Retrainer(_with(s, warm_start=False), namespace=namespace).run_once()
    assert x.published and g.published and g.active_before == x.version, (x, g)
    return s, poor, x, g


def test_once_gates_against_the_pointer_when_redis_names_another_held_version_as_the_service_does(  # noqa: E501
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    """`snapshot rollback X --no-redis`: the pointer names X, Redis still G. A retrain (--once
    or the service: one rule) re-syncs Redis from the pointer, says so, and warm-starts from
    and is compared with X, the version the pointer names (before: G, Redis's, and X was
    replaced without ever being compared)."""
    from diam.cli import main
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    s, poor, x, g = _two_versions(stack, topic, namespace, loop_data, tmp_path)
    res = CliRunner().invoke(main, ["snapshot", "rollback", x.version, "--no-redis",
                                    "--namespace", namespace], env=_env(stack, s))
    assert res.exit_code == 0, res.output
    store = SnapshotStore(s.snapshot)
    assert store.active_version() == x.version
    assert redis_client.get(model_active_key(namespace)).decode() == g.version
    said: list[str] = []
    loose = s.retrain.gate.model_copy(update={"eps_recall": 1.0, "eps_entropy": 100.0})
    d = Retrainer(_with(poor, warm_start=True, warm_lr=1e-6, seed=2, gate=loose),
                  namespace=namespace, log_line=said.append).run_once()
    assert d.active_before == x.version and d.warm_start["from"] == x.version, d
    assert "moved_from" not in d.metrics
    assert any(f"ACTIVE names {x.version} and Redis's diam:{namespace}:model:active "
               f"{g.version}: the pointer is the truth" in line for line in said), said
    assert d.published and d.announced, d
    assert store.active_version() == d.version
    assert redis_client.get(model_active_key(namespace)).decode() == d.version
    assert [v for _, v in store.activations()][-2:] == [x.version, d.version]


def test_a_rollback_without_redis_while_a_retrain_trains_is_the_one_its_candidate_must_beat(
        stack, topic, namespace, redis_client, loop_data, tmp_path, monkeypatch) -> None:
    """X active in both, G kept; a retrain B as poor as X starts, gated against X; while it
    trains an operator runs `snapshot rollback G --no-redis` (the pointer moves, Redis still
    names X). B's publish must not go through (before: Redis still said X, so B replaced G
    silently): Redis is re-synced to G, B is compared with G and refused; G stays active."""
    from diam.cli import main
    from serving_cache.keys import model_active_key
    from snapshotter.store import SnapshotStore

    s, poor, x, g = _two_versions(stack, topic, namespace, loop_data, tmp_path)
    res = CliRunner().invoke(main, ["snapshot", "rollback", x.version, "--namespace",
                                    namespace], env=_env(stack, s))
    assert res.exit_code == 0, res.output
    b, moved = _retrain_rolled_back(monkeypatch, stack, s, poor, namespace, g.version,
                                    "--no-redis")
    assert moved and b.warm_start is not None and b.warm_start["from"] == x.version
    assert not b.published and b.version is None, b
    assert b.active_before == g.version and b.metrics["moved_from"]["version"] == x.version, b
    assert b.reason.startswith(f"{g.version} became active while it trained"), b.reason
    store = SnapshotStore(s.snapshot)
    assert store.active_version() == g.version
    assert redis_client.get(model_active_key(namespace)).decode() == g.version
    assert {v.version for v in store.versions()} == {x.version, g.version}


def test_an_unusable_snapshot_dir_is_one_error_line_naming_the_setting(
        stack, topic, namespace, loop_data, tmp_path) -> None:
    """A snapshot dir under a file (NotADirectoryError at its mkdir) or that is a file: the
    service and --once both end with one `Error:` line naming snapshot.dir and
    DIAM_SNAPSHOT_DIR, no traceback (before: the service's traceback; --once's "retrain
    failed: NotADirectoryError" without the setting)."""
    from diam.cli import main

    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    (tmp_path / "afile").write_text("x")
    for snap, why in ((tmp_path / "afile" / "snaps", "cannot hold the retrain lock (Not a "
                       "directory"), (tmp_path / "afile", "is not a directory")):
        for once in (["--once"], []):
            env = {**_env(stack, s), "DIAM_SNAPSHOT_DIR": str(snap)}
            res = CliRunner().invoke(main, ["retrain", *once, "--namespace", namespace],
                                     env=env)
            assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (
                once, res.exception, res.output)
            assert f"Error: snapshot directory {snap} {why}" in res.output, res.output
            assert "(settings snapshot.dir, DIAM_SNAPSHOT_DIR)" in res.output, res.output
            assert "Traceback" not in res.output
    assert not (tmp_path / "candidates").exists()


def test_a_refused_retrain_leaves_no_store_at_a_mistyped_path(
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    """Redis names a version, DIAM_SNAPSHOT_DIR is mistyped (a path that does not exist):
    --once and the service refuse, and leave nothing there (before: an empty store holding
    .retrain.lock, after which rollback no longer said the directory does not exist). A
    fresh store that publishes keeps its directory."""
    from diam.cli import main
    from diam.retrain import Retrainer
    from serving_cache.keys import model_active_key

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1, every_events=1, poll_s=0.2)
    redis_client.set(model_active_key(namespace), "20990101T000000-deadbeef")
    typo = tmp_path / "typo" / "snaps"
    env = {**_env(stack, s), "DIAM_SNAPSHOT_DIR": str(typo)}
    res = CliRunner().invoke(main, ["retrain", "--once", "--namespace", namespace], env=env)
    assert res.exit_code == 1 and "Error: not retraining: Redis's" in res.output, res.output
    assert not (tmp_path / "typo").exists()
    res = CliRunner().invoke(main, ["snapshot", "rollback", "--namespace", namespace], env=env)
    assert res.exit_code == 1 and f"snapshot directory {typo} does not exist" in res.output, \
        res.output

    typo_s = s.model_copy(update={"snapshot": s.snapshot.model_copy(update={"dir": str(typo)})})
    stop = threading.Event()
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "not retraining" in line:
            assert typo.is_dir()  # the service holds its lock there while it runs
            stop.set()

    Retrainer(typo_s, namespace=namespace, log_line=say).serve(stop)
    assert any("not retraining: Redis's" in line for line in said), said
    assert not (tmp_path / "typo").exists()

    redis_client.delete(model_active_key(namespace))  # a fresh store: trained from scratch
    d = Retrainer(typo_s, namespace=namespace).run_once()
    assert d.published and (typo / "ACTIVE").read_text().strip() == d.version


def test_the_service_looks_again_at_the_next_poll_after_a_refusal_on_the_time_trigger(
        stack, topic, namespace, redis_client, loop_data, tmp_path) -> None:
    """Only the time trigger applies (fewer new clicks than every_events): a retrain refused
    before training (ACTIVE and Redis's key gone while the store holds a version) is tried
    again at the next poll, as its line says, not every_minutes later (before: 15 s here; the
    first try waits the time trigger, 15 s, in both)."""
    from diam.retrain import Decision, Retrainer
    from serving_cache.keys import model_active_key

    _feed(stack, topic, loop_data)
    s = _loop_settings(stack, topic, tmp_path, epochs=1)
    first = Retrainer(s, namespace=namespace).run_once()
    assert first.published
    _feed(stack, topic, loop_data)
    (tmp_path / "snaps" / "ACTIVE").unlink()
    redis_client.delete(model_active_key(namespace))
    said: list[str] = []
    svc = Retrainer(_with(s, every_events=10**9, every_minutes=0.25, poll_s=0.2),
                    namespace=namespace, log_line=said.append)
    real, calls, stop = svc.run_once, [], threading.Event()

    def run_once() -> Decision:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return real()  # raises CannotRetrain: nothing active, the store holds a version
        stop.set()
        return Decision("stub", False, "stub", None, window={"end": {"0": 3200}})

    svc.run_once = run_once  # type: ignore[method-assign]
    th = threading.Thread(target=svc.serve, args=(stop,), daemon=True)
    th.start()
    th.join(40)
    stop.set()
    th.join(10)
    assert not th.is_alive() and len(calls) == 2, calls
    assert sum("not retraining: " in line and "yet it holds 1 version(s)" in line
               for line in said) == 1, said
    assert calls[1] - calls[0] < 7.5, calls  # a poll (0.2 s), not every_minutes (15 s)
