"""Prequential evaluation: result shape, determinism, and that it drives OnlineLearner.apply."""

from __future__ import annotations

import numpy as np
import pytest

from online_model import prequential
from online_model.config import OnlineConfig
from online_model.datasets import ItemRows, load_prepared, write_prepared
from online_model.online import OnlineLearner


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """30 users on 4 item communities: each likes one, then moves to another mid-stream."""
    d = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(30):
        first, second = u % 4, (u + 1) % 4
        for j in range(40):
            group = first if j < 20 else second
            users.append(f"u{u}")
            items.append(str(10 * group + int(rng.integers(0, 10))))
            ts.append(1_000_000 * j + 1000 * u)  # users interleaved in time
    rows = ItemRows([str(i) for i in range(40)], ["t"] * 40, [[f"g{i // 10}"] for i in range(40)])
    write_prepared(
        d,
        name="drifting",
        users=np.array(users),
        items_of_events=np.array(items),
        ts_ms=np.array(ts),
        items=rows,
        meta={"source": "test"},
    )
    return load_prepared(d)


def test_shape_and_determinism(drifting, monkeypatch):
    calls = []
    real = OnlineLearner.apply

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(OnlineLearner, "apply", spy)
    cfg = OnlineConfig(dim=8, k_max=4)
    r = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, merge="score")
    assert calls  # the very update the dataflow calls
    # no DIAM head on this PPMI base: the network's arms do not apply
    assert set(r["arms"]) == {"popularity", "frozen", "guarded", "unguarded"}
    for name, arm in r["arms"].items():
        want = {"recall@5", "recall@5_ci", "ndcg@5", "entropy@5", "k_changes_per_1k", "mean_drift"}
        if name != "guarded":
            want.add("recall@5_diff_to_guarded_ci")
        assert set(arm) == want
        assert 0 <= arm["ndcg@5"] <= arm["recall@5"] <= 1
        lo, hi = arm["recall@5_ci"]
        assert lo <= arm["recall@5"] <= hi
    assert r["arms"]["frozen"]["mean_drift"] == 0 and r["arms"]["frozen"]["k_changes_per_1k"] == 0
    # online learning follows the users to their new community; a frozen snapshot cannot
    assert r["arms"]["guarded"]["recall@5"] > r["arms"]["frozen"]["recall@5"]
    again = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, merge="score")
    assert again["arms"] == r["arms"]


def test_serving_path_and_user_groups(drifting):
    """The default list is the serving function's; tune and report users are disjoint."""
    cfg = OnlineConfig(dim=8, k_max=4)
    r = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, arms=("guarded",))
    assert "serve_list" in r["aggregation"]
    tune = {u for u in drifting.user_ids.tolist() if prequential.user_group(u) == "tune"}
    assert 0 < len(tune) < 30
    a = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, users="tune",
                                    arms=("frozen",), merge="score")
    b = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, users="report",
                                    arms=("frozen",), merge="score")
    assert a["details"]["frozen"]["users_evaluated"] + b["details"]["frozen"]["users_evaluated"] \
        <= 30
    assert a["protocol"]["stream_events"] + b["protocol"]["stream_events"] \
        == prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5, arms=("frozen",),
                                       merge="score")["protocol"]["stream_events"]


def test_user_fraction_selects_a_subset(drifting):
    cfg = OnlineConfig(dim=8, k_max=4)
    r = prequential.evaluate_stream(
        drifting, cfg, warm_frac=0.4, n=5, user_fraction=0.5, arms=("frozen",)
    )
    assert 0 < r["protocol"]["stream_events"] < 0.6 * len(drifting.user_ids) + 50
    assert list(r["arms"]) == ["frozen"]
