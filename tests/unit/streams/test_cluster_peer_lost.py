"""Which of ``cluster_main``'s errors are a lost peer (``streams.runner._peer_lost``), and the
line that says so (the real cluster: tests/integration/test_cluster_peer_lost.py)."""

from __future__ import annotations

from pathlib import Path

from streams.runner import ClusterPeerLost, OnlineJob, _peer_lost


class PanicException(BaseException):
    """Named as ``pyo3_runtime.PanicException``, which cannot be imported."""


def test_only_bytewax_exchange_panics_are_a_lost_peer() -> None:
    assert _peer_lost(PanicException("Send thread panic: Any { .. }"))
    assert _peer_lost(PanicException("Recv thread panic: Any { .. }"))
    assert _peer_lost(PanicException("timely communication error: reading data: Connection reset"))
    assert not _peer_lost(RuntimeError("Send thread panic: Any { .. }"))
    assert not _peer_lost(PanicException("called `Option::unwrap()` on a `None` value"))


def test_the_line_names_the_peers_the_store_and_what_to_do(tmp_path: Path) -> None:
    job = OnlineJob(None, None, None, "t", "ns", process_id=1,  # type: ignore[arg-type]
                    addresses=["a:1", "b:1", "c:1"], recovery_dir=tmp_path)
    exc = ClusterPeerLost(job, recovery=True)
    line = str(exc)
    assert exc.peers == ["a:1", "c:1"] and "\n" not in line
    assert line.startswith("process 1 of 3 (b:1) of the Bytewax cluster lost one of its peers "
                           "a:1, c:1"), line
    assert f"The recovery store {tmp_path.resolve()} keeps" in line, line
    assert "restart every process of the cluster with the same command" in line, line
    bare = str(ClusterPeerLost(OnlineJob(None, None, None, "t", "ns",  # type: ignore[arg-type]
                                         process_id=0, addresses=["a:1", "b:1"]), recovery=False))
    assert "lost its peer b:1" in bare and "re-read the topic from its start" in bare, bare
