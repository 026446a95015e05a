"""A process of a Bytewax cluster that waits for the others (``streams.runner._run_cluster``):
it says so after ``PEERS_NOTE_S``, a stop ends the wait at once (Bytewax's ``cluster_main``
blocks in native code there, where no signal handler runs), and once joined it waits for the
dataflow and raises what the dataflow raised. ``cluster_main`` is replaced by fakes."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import streams.runner as runner
from streams.runner import ClusterNotJoined, OnlineJob, waiting_for


def _job(process_id: int = 0) -> OnlineJob:
    return OnlineJob(None, None, None, "t", "ns", process_id=process_id,  # type: ignore[arg-type]
                     addresses=["h:1", "h:2", "h:3"], stop=threading.Event())


def test_a_stop_while_waiting_ends_the_run_at_once(monkeypatch, caplog) -> None:
    never = threading.Event()
    monkeypatch.setattr(runner, "cluster_main", lambda *a, **kw: never.wait())
    monkeypatch.setattr(runner, "PEERS_NOTE_S", 0.05)
    job = _job(process_id=1)
    assert job.stop is not None
    threading.Timer(0.5, job.stop.set).start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, "streams.runner"), pytest.raises(ClusterNotJoined) as err:
        runner._run_cluster(job, None, None, None)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 3
    assert err.value.waiting_for == ["h:1", "h:3"]
    # this test's logger only: a Kafka client left by an earlier test may log beside it
    notes = [r.getMessage() for r in caplog.records if r.name == "streams.runner"]
    assert len(notes) == 1 and "waiting for the cluster's other process(es): h:1, h:3" in notes[0]
    assert "process 1 of 3 (h:2)" in notes[0]


def test_a_stop_before_the_wait_starts_nothing(monkeypatch) -> None:
    monkeypatch.setattr(runner, "cluster_main", lambda *a, **kw: pytest.fail("started"))
    job = _job()
    assert job.stop is not None
    job.stop.set()
    with pytest.raises(ClusterNotJoined):
        runner._run_cluster(job, None, None, None)  # type: ignore[arg-type]


def test_once_joined_a_stop_is_left_to_the_dataflow_and_its_error_comes_back(monkeypatch) -> None:
    job = _job()
    assert job.stop is not None

    def dataflow(*a, **kw) -> None:
        job.joined.set()  # as the first worker's list_parts does
        job.stop.set()  # type: ignore[union-attr]
        time.sleep(0.3)  # the dataflow's input ends at its next batch
        raise RuntimeError("worker error")

    monkeypatch.setattr(runner, "cluster_main", dataflow)
    with pytest.raises(RuntimeError, match="worker error"):
        runner._run_cluster(job, None, None, None)  # type: ignore[arg-type]
    assert waiting_for(job) == []


def test_the_source_says_when_the_workers_start() -> None:
    class Inner:
        def list_parts(self) -> list[str]:
            return ["0-t"]

    joined = threading.Event()
    src = runner._Joining(Inner(), joined)  # type: ignore[arg-type]
    assert not joined.is_set()
    assert src.list_parts() == ["0-t"] and joined.is_set()


def _stopping_notes(caplog) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage() for r in caplog.records if "has stopped reading" in r.getMessage()]


def test_a_stopped_process_says_it_waits_for_the_others_to_stop_too(monkeypatch, caplog) -> None:
    """Joined, stopped, its input ended: Bytewax's cluster ends only with all its processes,
    so a process whose others go on would wait in silence (35 s in the review); it names them."""
    job = _job(process_id=1)
    assert job.stop is not None
    others_stop = threading.Event()

    class Inner:
        def list_parts(self) -> list[str]:
            return ["0-t"]

        def build_part(self, step_id, for_part, resume_state):  # type: ignore[no-untyped-def]
            class Part:
                def next_batch(self) -> list[int]:
                    if job.stop.is_set():  # type: ignore[union-attr]
                        raise StopIteration
                    return [1]
            return Part()

    source = runner._Joining(Inner(), job.joined)  # type: ignore[arg-type]

    def dataflow(*a, **kw) -> None:
        part = source.build_part("in", source.list_parts()[0], None)
        job.stop.set()  # type: ignore[union-attr]
        with pytest.raises(StopIteration):
            part.next_batch()
        others_stop.wait(5)  # the other processes still read

    monkeypatch.setattr(runner, "cluster_main", dataflow)
    monkeypatch.setattr(runner, "PEERS_NOTE_S", 0.2)
    threading.Timer(1.0, others_stop.set).start()
    with caplog.at_level(logging.INFO, "streams.runner"):
        runner._run_cluster(job, None, None, None, source)  # type: ignore[arg-type]
    notes = _stopping_notes(caplog)
    assert len(notes) == 1, notes
    assert "process 1 of 3 (h:2) has stopped reading" in notes[0]
    assert "other process(es) to stop too: h:1, h:3" in notes[0]
    assert "a second signal stops this one at once" in notes[0]
    assert "re-read the topic from its start" in notes[0]


def test_nothing_is_said_while_the_input_has_not_ended_or_the_run_ends_soon(monkeypatch,
                                                                            caplog) -> None:
    job = _job()
    assert job.stop is not None

    class Inner:
        def list_parts(self) -> list[str]:
            return ["0-t"]

        def build_part(self, step_id, for_part, resume_state):  # type: ignore[no-untyped-def]
            return object()

    source = runner._Joining(Inner(), job.joined)  # type: ignore[arg-type]

    def dataflow(*a, **kw) -> None:
        source.build_part("in", source.list_parts()[0], None)  # never ends: a long last batch
        job.stop.set()  # type: ignore[union-attr]
        time.sleep(0.6)

    monkeypatch.setattr(runner, "cluster_main", dataflow)
    monkeypatch.setattr(runner, "PEERS_NOTE_S", 0.1)
    with caplog.at_level(logging.INFO, "streams.runner"):
        runner._run_cluster(job, None, None, None, source)  # type: ignore[arg-type]
    assert _stopping_notes(caplog) == []

    def quick(*a, **kw) -> None:  # every process stopped at once: the run ends within the wait
        job.joined.set()
        job.stop.set()  # type: ignore[union-attr]
        time.sleep(0.3)

    job.joined.clear()
    job.stop.clear()
    monkeypatch.setattr(runner, "cluster_main", quick)
    monkeypatch.setattr(runner, "PEERS_NOTE_S", 1.0)
    with caplog.at_level(logging.INFO, "streams.runner"):
        runner._run_cluster(job, None, None, None)  # type: ignore[arg-type]
    assert _stopping_notes(caplog) == []
