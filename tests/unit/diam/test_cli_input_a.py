"""Option values that would have been read as a default, wrapped around, busy-looped or
ended in a traceback are refused while the options are parsed, naming the option: an empty
topic or namespace, ports outside 0..65535 (1..65535 for the API), non-positive intervals and
thread counts, two base models at once. No service is needed: each invocation fails before it
connects (Redis and Kafka are pointed at closed ports, so a command that got further would
fail differently)."""

from __future__ import annotations

import click
import numpy as np
import pytest

from diam.app import load_holder
from diam.settings import load_settings


@pytest.fixture
def run(offline_cli):
    return offline_cli


def _usage_error(result, *words: str) -> str:
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in out and "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


# -- finding 1: an empty name is never the default ------------------------------------------

@pytest.mark.parametrize("args", [
    ["produce", "--topic", "", "--limit", "1"],
    ["produce", "--items-topic", "", "--catalog"],
    ["run", "--topic", "", "--bounded"],
    ["deadletters", "--topic", ""],
    ["forget", "--topic", "", "u1"],
    ["retrain", "--topic", "", "--once"],
    ["drift", "run", "--topic", ""],
    ["drift", "run", "--alerts-topic", ""],
    ["drift", "watch", "--topic", ""],
])
def test_an_empty_topic_is_refused_not_read_as_the_default(run, args) -> None:
    option = next(a for a in args if a.endswith("topic"))
    _usage_error(run(*args), option, "must not be empty")


def test_a_refused_user_id_to_forget_says_why(run) -> None:
    out = _usage_error(run("forget", "u1", "a b", "x" * 200), "USERS", "nothing was written")
    assert "'a b' (user_id: contains ' '" in out, out
    assert "length 200 outside 1..128" in out, out
    assert "'u1'" not in out, out


@pytest.mark.parametrize("command", [["run", "--bounded"], ["retrain", "--once"], ["serve"]])
def test_an_empty_namespace_is_refused_not_read_as_the_default(run, command) -> None:
    _usage_error(run(*command, "--namespace", ""), "--namespace")


def test_an_empty_host_is_refused(run) -> None:
    _usage_error(run("serve", "--host", ""), "--host", "must not be empty")


def test_the_job_keeps_an_empty_name_it_is_given() -> None:
    # the command refuses it first; the composition never swaps it for the live default
    from diam.app import online_job

    s = load_settings()
    job = online_job(s, topic="t", namespace="n", bounded=True)
    assert (job.topic, job.namespace) == ("t", "n")
    assert online_job(s, namespace="", bounded=True).namespace == ""
    assert online_job(s, bounded=True).namespace == s.redis.namespace


# -- finding 2 and 4: a malformed namespace is refused before anything runs -------------------

@pytest.mark.parametrize("command", [["run", "--bounded"], ["retrain", "--once"]])
def test_a_malformed_namespace_is_a_usage_error_before_any_work(run, tmp_path, command) -> None:
    _usage_error(run(*command, "--namespace", "bad ns"), "--namespace", "'bad ns'")
    # retrain trained and published on disk before the Redis step refused the namespace
    assert not (tmp_path / "snaps").exists()


# -- finding 3: diam serve's numbers ---------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--port", "99999"], "--port"),
    (["--port", "-1"], "--port"),
    (["--port", "0"], "--port"),
    (["--reload-every", "0"], "--reload-every"),
    (["--reload-every", "-1"], "--reload-every"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-2"], "--threads"),
    (["--processes", "0"], "--processes"),
    (["--popularity-half-life", "0"], "--popularity-half-life"),
])
def test_serve_refuses_numbers_out_of_range(run, args, option) -> None:
    _usage_error(run("serve", *args), option, "is not in the range")


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:9108/metrics", "ftp://h/metrics", "http://"])
def test_serve_refuses_a_flow_metrics_value_that_is_not_an_http_url(run, url) -> None:
    _usage_error(run("serve", "--flow-metrics", "http://127.0.0.1:9108/metrics",
                     "--flow-metrics", url), "--flow-metrics", "not an http(s) URL")


# -- finding 4: metrics ports and hold, partitions -------------------------------------------

@pytest.mark.parametrize("command", [["run", "--bounded"], ["drift", "run", "--bounded"],
                                     ["retrain", "--once"]])
@pytest.mark.parametrize("port", ["99999", "-5", "65536"])
def test_a_metrics_port_outside_0_to_65535_is_refused(run, command, port) -> None:
    _usage_error(run(*command, "--metrics-port", port), "--metrics-port", "0<=x<=65535")


@pytest.mark.parametrize("value", ["-3", "nan", "inf", "1e300"])
def test_a_metrics_hold_that_is_not_a_usable_number_is_refused(run, value) -> None:
    # nan and inf slipped through the range and ended, after the run, in a sleep's traceback
    _usage_error(run("run", "--bounded", "--metrics-hold", value), "--metrics-hold")


def test_the_retrain_metrics_port_setting_is_checked(run, monkeypatch) -> None:
    monkeypatch.setenv("DIAM_RETRAIN_METRICS_PORT", "99999")
    with pytest.raises(Exception, match="metrics_port"):
        load_settings()


@pytest.mark.parametrize("text", ["x", "-1", ","])
def test_malformed_partitions_are_refused(run, text) -> None:
    _usage_error(run("run", "--bounded", "--partitions", text), "--partitions")


def test_partitions_the_topic_lacks_are_named_before_the_flow_is_built(monkeypatch) -> None:
    import streams.runner as runner
    from diam.app import online_job

    calls: list[str] = []
    for name in ("check_kafka", "check_redis", "ensure_topic"):
        monkeypatch.setattr(runner, name, lambda *a, _n=name, **k: calls.append(_n))
    monkeypatch.setattr(runner, "partition_ids", lambda cfg, topic: [0, 1, 2, 3])
    monkeypatch.setattr(runner, "build_flow", lambda *a, **k: pytest.fail("flow built"))
    job = online_job(load_settings(), namespace="ns1", bounded=True, partitions=[1, 99])
    with pytest.raises(runner.UnknownPartitions, match=r"has partitions \[0, 1, 2, 3\], not \[99\]"):
        runner.run_online(job, None)  # type: ignore[arg-type]


# -- finding 5: one base model, and an explicit one beats the active snapshot ------------------

@pytest.mark.parametrize("args, first, second", [
    (["run", "--bounded", "--checkpoint", "X", "--base-from-data", "Y"],
     "--checkpoint", "--base-from-data"),
    (["replay", "--namespace", "r1", "--snapshot", "v1", "--base-from-data", "Y"],
     "--snapshot", "--base-from-data"),
    (["replay", "--namespace", "r1", "--snapshot", "v1", "--checkpoint", "X"],
     "--snapshot", "--checkpoint"),
])
def test_two_base_models_are_a_usage_error_naming_both(run, monkeypatch, args, first,
                                                       second) -> None:
    # a usage error needs no service: said before the broker is asked (which, with none
    # listening, took BROKER_ANSWER_S of waiting first)
    import diam.commands.run

    asked: list[object] = []
    monkeypatch.setattr(diam.commands.run, "require_broker", asked.append)
    _usage_error(run(*args), first, second, "not both")
    assert asked == []


def test_an_empty_base_option_is_refused(run) -> None:
    _usage_error(run("run", "--bounded", "--checkpoint", ""), "--checkpoint", "must not be empty")


def test_load_holder_refuses_two_bases(tmp_path) -> None:
    s = load_settings(snapshot={"dir": str(tmp_path / "snaps")})
    with pytest.raises(click.UsageError, match="--checkpoint or --base-from-data, not both"):
        load_holder(s, checkpoint="X", base_from_data="Y")
    with pytest.raises(click.UsageError, match="--snapshot or --checkpoint, not both"):
        load_holder(s, snapshot="v1", checkpoint="X")


def _prepared(path) -> str:
    from online_model.datasets import ItemRows, write_prepared

    rng = np.random.default_rng(0)
    users = [f"u{u}" for u in range(20) for _ in range(10)]
    items = [str(int(rng.integers(0, 30))) for _ in users]
    rows = ItemRows([str(i) for i in range(30)], ["t"] * 30, [[f"g{i // 10}"] for i in range(30)])
    write_prepared(path, name="tiny", users=np.array(users), items_of_events=np.array(items),
                   ts_ms=np.arange(len(users), dtype=np.int64) * 1000, items=rows,
                   meta={"source": "test"})
    return str(path)


def test_an_explicit_base_wins_over_the_active_snapshot(tmp_path) -> None:
    from snapshotter.publish import publish
    from snapshotter.store import SnapshotStore
    from snapshotter.testing import write_checkpoint

    s = load_settings(snapshot={"dir": str(tmp_path / "snaps")}, online={"dim": 8})
    v1 = publish(write_checkpoint(tmp_path / "ck1", n_items=30, dim=8), SnapshotStore(s.snapshot)).version
    assert load_holder(s, hot_reload=False).version == v1
    from_data = load_holder(s, base_from_data=_prepared(tmp_path / "ds"), hot_reload=False)
    assert from_data.version != v1
    ck = write_checkpoint(tmp_path / "ck", n_items=40, dim=8, seed=3)
    assert load_holder(s, checkpoint=str(ck), hot_reload=False).learner.base.item_ids.size == 40
