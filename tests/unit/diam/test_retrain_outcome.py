"""The line the retrain service says when a retrain ends: a candidate refused before training
has no held-out metrics, and the line prints none (it said "recall@20 None vs active None")."""

from __future__ import annotations

import time

import pytest

from diam.retrain import Decision, Retrainer


@pytest.fixture
def finish(isolated_env, tmp_path):
    """``finish(decision) -> line``: a Retrainer's real end of a retrain (metrics, decision
    record, candidates prune), its models topic replaced by a list."""
    from diam.settings import load_settings

    isolated_env.setenv("DIAM_RETRAIN_CANDIDATES_DIR", str(tmp_path / "cands"))
    said: list[str] = []
    r = Retrainer(load_settings(), log_line=said.append)
    assert r.cfg.candidates_dir == str(tmp_path / "cands")  # its prune touches nothing else
    emitted: list[Decision] = []
    r._emit = emitted.append  # type: ignore[method-assign]

    def run(d: Decision) -> str:
        said.clear()
        r._finish(d, time.monotonic(), {})
        assert emitted[-1] is d and len(said) == 1
        return said[0]

    return run


def test_a_candidate_refused_before_training_prints_no_metrics(finish) -> None:
    line = finish(Decision("c1", False, "only 3 valid clicks in the window", "v0"))
    assert line.startswith("retrain c1: REFUSED (only 3 valid clicks in the window), ")
    assert "None" not in line and "recall@20" not in line


def test_an_evaluated_candidate_prints_both_recalls_or_says_there_is_no_active(finish) -> None:
    both = finish(Decision("c2", False, "recall@20 not better", "v0",
                           metrics={"candidate": {"recall@20": 0.1}, "active": {"recall@20": 0.2}}))
    assert "REFUSED (recall@20 not better); recall@20 0.1 vs active 0.2, " in both
    first = finish(Decision("c3", True, "no active model", None, version="v1", announced=True,
                            metrics={"candidate": {"recall@20": 0.1}, "active": None}))
    assert "PUBLISHED v1 (no active model); recall@20 0.1, no active model, " in first
    assert "None" not in first
