"""The composition module and the command line's assembly: the job and the learner holder
built from settings, and commands that never import the CLI that registers them."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import diam.commands
from diam.app import NoBaseModel, load_holder, online_job
from diam.settings import load_settings
from online_model.online import OnlineLearner


def _areas() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(diam.commands.__path__)]


def test_command_modules_import_without_the_cli() -> None:
    code = ("import importlib, sys\n"
            f"for name in {_areas()!r}:\n"
            "    importlib.import_module('diam.commands.' + name)\n"
            "assert 'diam.cli' not in sys.modules, 'a command module imports diam.cli'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_command_module_is_registered() -> None:
    from diam.cli import main

    for name in _areas():
        for cmd in importlib.import_module(f"diam.commands.{name}").COMMANDS:
            assert main.commands[cmd.name] is cmd, f"diam.commands.{name} is not registered"


def test_a_tailing_run_gets_a_recovery_store_of_its_own(tmp_path) -> None:
    s = load_settings(stack={"home": str(tmp_path)})
    job = online_job(s, namespace="ns1", partitions=[2, 0])
    assert job.recovery_dir == tmp_path / "recovery" / "ns1--diam.clicks--p0-2"
    assert (job.topic, job.namespace, job.flow) == ("diam.clicks", "ns1", s.flow)
    assert online_job(s, bounded=True).recovery_dir is None
    assert online_job(s, no_recovery=True).recovery_dir is None
    assert online_job(s, addresses=["h:1", "h:2"]).recovery_dir is None


def test_the_holder_builds_its_learner_with_the_factory_given(tmp_path) -> None:
    from snapshotter.testing import write_checkpoint

    class Quiet(OnlineLearner):
        pass

    s = load_settings(snapshot={"dir": str(tmp_path / "snaps")}, online={"dim": 8})
    ck = write_checkpoint(tmp_path / "ck", n_items=30, dim=8)
    holder = load_holder(s, checkpoint=str(ck), learner=Quiet)
    assert type(holder.learner) is Quiet and holder.version == holder.learner.base.version
    with pytest.raises(NoBaseModel, match="no base model"):
        load_holder(s)


def test_the_sink_and_consumer_settings_reach_the_job_s_source_and_sinks(monkeypatch) -> None:
    from streams.online import FlowStats
    from streams.runner import job_io

    monkeypatch.setenv("DIAM_FLOW_SINK_QUEUE_BATCHES", "4")
    monkeypatch.setenv("DIAM_FLOW_REDIS_BACKOFF_MAX_S", "2.5")
    monkeypatch.setenv("DIAM_KAFKA_FETCH_WAIT_MAX_MS", "7")
    s = load_settings(kafka={"fetch_min_bytes": 1000, "extra": {"fetch.min.bytes": "1"}})
    source, sinks = job_io(online_job(s, bounded=True), stats=FlowStats())
    assert (sinks.vectors.max_queued, sinks.vectors.max_backoff_s) == (4, 2.5)
    conf = source.cfg.consumer_config()
    assert conf["fetch.wait.max.ms"] == 7
    assert conf["fetch.min.bytes"] == "1"  # KafkaConfig.extra still wins


def test_stream_base_problem_names_which_refusal_and_keeps_its_words(tmp_path) -> None:
    """The one mapping of stream_base's two refusals (the retrain decision and publish/rollback
    word them each for their user): a base that does not load, one of another size, and None
    for one every dataflow can use (or any size under allow_dim_change)."""
    from diam.app import BaseProblem, stream_base_problem
    from snapshotter.testing import write_checkpoint

    cfg = load_settings(online={"dim": 4}).online
    ck4 = write_checkpoint(tmp_path / "d4", n_items=30, dim=4)
    ck8 = write_checkpoint(tmp_path / "d8", n_items=30, dim=8)
    assert stream_base_problem(ck4, cfg, "checkpoint a") is None
    assert stream_base_problem(ck8, cfg, "checkpoint b", allow_dim_change=True) is None
    assert stream_base_problem(ck8, cfg, "checkpoint b") == BaseProblem(
        "dim", "checkpoint b has d=8, DIAM_ONLINE_DIM is 4 (set DIAM_ONLINE_DIM=8 or publish "
        "a d=4 model)")
    empty = tmp_path / "empty"
    empty.mkdir()
    problem = stream_base_problem(empty, cfg, "checkpoint c", allow_dim_change=True)
    assert problem is not None and problem.kind == "load"
    assert "missing" in problem.message and str(empty) in problem.message, problem


def test_stream_base_is_the_one_check_of_a_base(tmp_path, monkeypatch) -> None:
    """The load and the embedding size, one owner: diam run --checkpoint, a snapshot at start
    and at reload, and diam snapshot publish/rollback all go through diam.app.stream_base."""
    from click.testing import CliRunner

    import diam.app
    from diam.app import stream_base
    from diam.cli import main
    from online_model.base import BaseLoadError
    from snapshotter.store import SnapshotError
    from snapshotter.testing import write_checkpoint

    cfg = load_settings(online={"dim": 4}).online
    ck8 = write_checkpoint(tmp_path / "d8", n_items=30, dim=8)
    with pytest.raises(SnapshotError, match=r"checkpoint x has d=8, DIAM_ONLINE_DIM is 4 \("
                       r"set DIAM_ONLINE_DIM=8 or publish a d=4 model\)"):
        stream_base(ck8, cfg, "checkpoint x")
    assert stream_base(ck8, cfg, "checkpoint x", allow_dim_change=True).dim == 8
    assert stream_base(ck8, cfg, "x", version="v1", allow_dim_change=True).version == "v1"
    with pytest.raises(BaseLoadError, match="missing"):
        stream_base(tmp_path, cfg, "checkpoint x")

    seen: list[str] = []
    real = diam.app.stream_base
    monkeypatch.setattr(diam.app, "stream_base",
                        lambda path, cfg, what, **kw: seen.append(what) or real(path, cfg, what,
                                                                                **kw))
    s = load_settings(snapshot={"dir": str(tmp_path / "snaps")}, online={"dim": 8})
    load_holder(s, checkpoint=str(ck8))
    assert seen == [f"checkpoint {ck8}"]
    monkeypatch.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("DIAM_CONFIG", "")
    monkeypatch.setenv("DIAM_ONLINE_DIM", "8")
    r = CliRunner().invoke(main, ["snapshot", "publish", str(ck8), "--no-redis"])
    assert r.exit_code == 0 and seen[1:] == [f"checkpoint {ck8}"], r.output
    version = r.output.split("active: ")[1].split()[0]
    r = CliRunner().invoke(main, ["snapshot", "rollback", version, "--no-redis"])
    assert r.exit_code == 0 and seen[2:] == [f"snapshot {version}"], r.output
