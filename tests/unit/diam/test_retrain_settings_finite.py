"""The retrain service's float settings refuse NaN and inf, the gate's tolerances a negative
value too, naming the variable (was: DIAM_RETRAIN_GATE_EPS_RECALL=nan and _EPS_ENTROPY=nan
turned the promotion gate off: a candidate whose Entropy@20 dropped 0.13, its whole interval
below zero, PUBLISHED "within tolerance"; NaN compares false with every drop)."""

from __future__ import annotations

import pytest

from diam.settings import SettingsInputError, load_settings
from snapshotter.gate import GateConfig, decide

BAD = [("DIAM_RETRAIN_GATE_EPS_RECALL", v) for v in ("nan", "inf", "-0.01")] + \
      [("DIAM_RETRAIN_GATE_EPS_ENTROPY", v) for v in ("nan", "inf", "-1")] + \
      [(f"DIAM_RETRAIN_{k}", v) for k in ("LR", "WARM_LR", "WARM_FAST_LR_SCALE", "EVERY_MINUTES",
                                          "POLL_S") for v in ("nan", "inf")] + \
      [("DIAM_RETRAIN_HOLDOUT_FRACTION", "nan")]


@pytest.mark.parametrize(("var", "value"), BAD)
def test_a_non_finite_or_negative_setting_is_refused_naming_it(isolated_env, var, value) -> None:
    isolated_env.setenv(var, value)
    with pytest.raises(SettingsInputError) as bad:
        load_settings()
    assert f"(from {var})" in str(bad.value), str(bad.value)


def test_zero_tolerance_is_a_gate_that_allows_no_drop(isolated_env) -> None:
    isolated_env.setenv("DIAM_RETRAIN_GATE_EPS_RECALL", "0")
    isolated_env.setenv("DIAM_RETRAIN_GATE_EPS_ENTROPY", "0")
    cfg = load_settings().retrain.gate
    assert (cfg.eps_recall, cfg.eps_entropy) == (0.0, 0.0)
    cand, act = {"recall@20": 0.2, "entropy@20": 1.77}, {"recall@20": 0.2, "entropy@20": 1.90}
    assert not decide(cand, act, cfg, eval_users=100).publish
    assert GateConfig().eps_recall == 0.01  # the defaults load
