"""The promotion gate's rule (``snapshotter.gate.decide``): the tolerances decide, and the
paired interval over the held-out users comes with the decision."""

from __future__ import annotations

import numpy as np
import pytest

from snapshotter.gate import GateConfig, decide, paired_interval


def _pair(shift: float, noise: float, n: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    act = rng.random(n) * 0.4
    return act + shift + rng.normal(0.0, noise, n), act


def _means(cand, act, entropy=(1.6, 1.6)):
    return ({"recall@20": float(cand.mean()), "entropy@20": entropy[0]},
            {"recall@20": float(act.mean()), "entropy@20": entropy[1]})


def test_paired_interval_covers_the_mean_difference_and_is_repeatable() -> None:
    cand, act = _pair(-0.02, 0.05)
    lo, hi = paired_interval(cand, act)
    assert lo < float((cand - act).mean()) < hi and hi - lo < 0.05
    assert (lo, hi) == paired_interval(cand, act)
    assert np.isnan(paired_interval(np.zeros(0), np.zeros(0))[0])


def test_a_drop_beyond_the_tolerance_refuses_even_inside_its_interval() -> None:
    """What a few held-out users cannot tell apart from noise still refuses: the interval is
    shown, the tolerance decides."""
    cand, act = _pair(-0.02, 0.15)
    c, a = _means(cand, act)
    assert a["recall@20"] - c["recall@20"] > 0.01
    d = decide(c, a, GateConfig(), eval_users=90, per_user={"recall@20": (cand, act)})
    lo, hi = d.intervals["recall@20"]
    assert not d.publish and lo < 0 < hi
    assert "allowed 0.0100" in d.reason and f"[{lo:+.4f}, {hi:+.4f}]" in d.reason
    plain = decide(c, a, GateConfig(), eval_users=90)
    assert not plain.publish and plain.intervals == {} and "interval" not in plain.reason


def test_a_publish_names_both_intervals() -> None:
    cand, act = _pair(0.0, 0.02)
    ent_c, ent_a = _pair(0.0, 0.05, seed=1)
    c, a = _means(cand, act, entropy=(float(ent_c.mean()), float(ent_a.mean())))
    d = decide(c, a, GateConfig(), eval_users=90,
               per_user={"recall@20": (cand, act), "entropy@20": (ent_c, ent_a)})
    assert d.publish and d.reason.endswith("within tolerance")
    assert d.reason.count("paired 95% interval") == 2 and set(d.intervals) == {
        "recall@20", "entropy@20"}


@pytest.mark.parametrize("users", [0, 19])
def test_too_few_users_or_nan_refuse_whatever_the_interval(users) -> None:
    cand, act = _pair(0.05, 0.01, n=max(users, 1))
    c, a = _means(cand, act)
    assert not decide(c, a, GateConfig(), eval_users=users,
                      per_user={"recall@20": (cand, act)}).publish
    c["recall@20"] = float("nan")
    d = decide(c, a, GateConfig(min_eval_users=1), eval_users=90,
               per_user={"recall@20": (cand, act)})
    assert not d.publish and "not a number" in d.reason


def test_entropy_has_its_own_tolerance() -> None:
    cand, act = _pair(0.0, 0.01)
    ent_c, ent_a = _pair(-0.3, 0.05, seed=1)
    c, a = _means(cand, act, entropy=(float(ent_c.mean()), float(ent_a.mean())))
    d = decide(c, a, GateConfig(), eval_users=90,
               per_user={"recall@20": (cand, act), "entropy@20": (ent_c, ent_a)})
    assert not d.publish and d.reason.startswith("entropy@20")
