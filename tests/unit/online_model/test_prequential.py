"""Prequential evaluation: result shape, determinism, and that it drives OnlineLearner.apply."""

from __future__ import annotations

import numpy as np
import pytest

from online_model import prequential
from online_model.config import OnlineConfig
from online_model.datasets import ItemRows, load_prepared, write_prepared
from online_model.online import OnlineLearner
from tests.flowkit import prepared_clicks


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
    return prepared_clicks(d, "drifting", users, items, ts, rows)


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


def test_per_user_hits_add_up_to_each_arm_s_recall(drifting):
    """``per_user`` hands back what a paired comparison across runs needs, consistent with the
    arm's own Recall@20; without it the result has no such key."""
    cfg = OnlineConfig(dim=8, k_max=4)
    r = prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5,
                                    arms=("guarded", "frozen"), per_user=True)
    for arm in ("guarded", "frozen"):
        pu = r["per_user"][arm]
        assert len(pu["users"]) == len(pu["hits"]) == len(pu["n"]) \
            == r["details"][arm]["users_evaluated"] > 0
        assert sum(pu["hits"]) / sum(pu["n"]) == pytest.approx(r["arms"][arm]["recall@5"])
    assert "per_user" not in prequential.evaluate_stream(drifting, cfg, warm_frac=0.4, n=5,
                                                          arms=("frozen",))


def test_user_fraction_selects_a_subset(drifting):
    cfg = OnlineConfig(dim=8, k_max=4)
    r = prequential.evaluate_stream(
        drifting, cfg, warm_frac=0.4, n=5, user_fraction=0.5, arms=("frozen",)
    )
    assert 0 < r["protocol"]["stream_events"] < 0.6 * len(drifting.user_ids) + 50
    assert list(r["arms"]) == ["frozen"]


def test_sweep_gives_fronts_whose_zero_shift_is_the_served_list(drifting, tmp_path):
    from online_model.base import BaseView
    from online_model.testing import tiny_diam_checkpoint

    ck, _ = tiny_diam_checkpoint(tmp_path / "diam")
    base = BaseView.from_checkpoint(ck)
    # the drifting stream over the checkpoint's 40 items (ids i0..i39)
    rows = ItemRows([f"i{i}" for i in range(40)], ["t"] * 40, [[f"c{i % 4}"] for i in range(40)])
    write_prepared(tmp_path / "ds", name="drifting-diam", users=np.asarray(drifting.user_ids),
                   items_of_events=np.array([f"i{x}" for x in drifting.item_ids]),
                   ts_ms=np.asarray(drifting.ts_ms), items=rows, meta={"source": "test"})
    ds = load_prepared(tmp_path / "ds")
    cfg = OnlineConfig(dim=base.dim, k_max=4)
    r = prequential.evaluate_stream(ds, cfg, base, warm_frac=0.4, n=5,
                                    arms=("reinfer", "guarded"), sweep=(-1.0, 0.0, 1.0))
    assert set(r["fronts"]) == {"reinfer", "guarded"}
    for arm, front in r["fronts"].items():
        assert [p["delta"] for p in front] == [-1.0, 0.0, 1.0]
        zero = front[1]
        assert zero["recall@5"] == pytest.approx(r["arms"][arm]["recall@5"])
        assert zero["entropy@5"] == pytest.approx(r["arms"][arm]["entropy@5"])
        # d_u = 0 is the least diverse list the aggregator makes
        assert front[0]["entropy@5"] <= zero["entropy@5"] + 1e-9
    m = r["matched"]["reinfer"]
    assert m["entropy@5"] == pytest.approx(r["arms"]["reinfer"]["entropy@5"])
    row = m["arms"]["guarded"]
    assert set(row) >= {"recall@5_at_matched_entropy", "diff_to_reinfer", "diff_ci"}


def test_the_result_records_the_settings_it_ran_with(drifting):
    """A result file says which online settings differ from the defaults (a ``--set`` run is
    told apart from the served one by its JSON, not its file name), none for the defaults."""
    kw = dict(warm_frac=0.4, n=5, arms=("frozen",), merge="score")
    served = prequential.evaluate_stream(drifting, OnlineConfig(), **kw)
    assert served["protocol"]["settings_not_default"] == {}
    varied = prequential.evaluate_stream(drifting, OnlineConfig(reanchor_gap=2, lr=0.1), **kw)
    assert varied["protocol"]["settings_not_default"] == {"reanchor_gap": 2, "lr": 0.1}
    assert varied["protocol"]["reanchor_gap"] == 2
