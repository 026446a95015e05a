"""The retrain service's ``last`` series describe the last decision only: a retrain refused
before training or evaluation leaves no phase or metric series of an earlier retrain behind,
read as its own (was: ``diam_retrain_last_metric`` and ``_last_seconds{phase="train"}`` kept the
previous retrain's values)."""

from __future__ import annotations

from diam.retrain import Decision, _Metrics


def _series(m: _Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for fam in m.registry.collect() for s in fam.samples if s.name == name}


def test_a_decision_without_evaluation_leaves_no_earlier_metric() -> None:
    m = _Metrics()
    m.record(Decision("a", False, "gate refused", None,
                      metrics={"candidate": {"recall@20": 0.2, "entropy@20": 2.0},
                               "active": {"recall@20": 0.25, "entropy@20": 2.1}},
                      seconds={"read": 1.0, "train": 5.0, "eval": 2.0, "total": 8.0}))
    assert len(_series(m, "diam_retrain_last_metric")) == 4
    m.record(Decision("b", False, "only 9 valid clicks in the window", None,
                      seconds={"total": 0.5}))
    assert _series(m, "diam_retrain_last_metric") == {}
    assert _series(m, "diam_retrain_last_seconds") == {(("phase", "total"),): 0.5}
    assert _series(m, "diam_retrain_decisions_total") == {(("outcome", "refused"),): 2.0}
