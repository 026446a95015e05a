"""``diam drift run``'s window and thresholds: the settings' (``DIAM_DRIFT_*``, ``[drift]``),
an option overriding its setting for one run (no services: the dataflow is replaced)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import streams.drift_flow
from diam.cli import main
from streams.config import DriftConfig


@pytest.fixture
def monitor(isolated_env):
    """``monitor(*args) -> (result, cfg)``: ``diam drift run --bounded ARGS``, reading its
    settings from the environment the test set; ``cfg``: the DriftConfig the dataflow got."""
    isolated_env.setattr("streams.kafka_io.broker_answers", lambda *a, **kw: None)
    got: list[DriftConfig] = []
    isolated_env.setattr(streams.drift_flow, "run_drift",
                         lambda kafka, cfg, **kw: got.append(cfg))

    def run(*args: str):
        got.clear()
        res = CliRunner().invoke(main, ["drift", "run", "--bounded", *args], obj={})
        return res, (got[0] if got else None)

    return run


def test_the_environment_sets_every_threshold_the_run_uses(monitor, isolated_env) -> None:
    env = {"WINDOW_MS": "3600000", "LATENESS_MS": "0", "USER_CHANGES": "2", "FLIP_REVERSALS": "3",
           "D_SWING": "0.25", "GUARD_TRIPS": "1", "ROLLBACKS": "7", "FREEZES": "9",
           "K_CHANGES": "11", "PH_DELTA": "0.75", "PH_THRESHOLD": "3", "PH_MIN_WINDOWS": "4",
           "TOP_N": "2"}
    for name, value in env.items():
        isolated_env.setenv(f"DIAM_DRIFT_{name}", value)
    res, cfg = monitor()
    assert res.exit_code == 0, res.output
    want = DriftConfig.model_validate({k.lower(): v for k, v in env.items()})
    assert cfg == want
    assert want.model_dump() != DriftConfig().model_dump()  # every field moved off its default
    assert all(getattr(want, f) != getattr(DriftConfig(), f) for f in DriftConfig.model_fields)
    assert ("window 3600s, lateness 0s; thresholds user_changes 2, flip_reversals 3, "
            "d_swing 0.25, guard_trips 1, rollbacks 7, freezes 9, k_changes 11, ph_delta 0.75, "
            "ph_threshold 3, ph_min_windows 4, top_n 2") in res.stderr


def test_an_option_overrides_its_setting_and_leaves_the_others(monitor, isolated_env) -> None:
    isolated_env.setenv("DIAM_DRIFT_WINDOW_MS", "3600000")
    isolated_env.setenv("DIAM_DRIFT_USER_CHANGES", "2")
    isolated_env.setenv("DIAM_DRIFT_GUARD_TRIPS", "1")
    isolated_env.setenv("DIAM_DRIFT", '{"k_changes": 5}')  # a section's JSON, as documented
    res, cfg = monitor("--window-s", "30", "--guard-trips", "off", "--k-changes", "off",
                       "--rollbacks", "3", "--ph-threshold", "2.5")
    assert res.exit_code == 0, res.output
    assert cfg == DriftConfig(window_ms=30_000, user_changes=2, guard_trips=None, k_changes=None,
                              rollbacks=3, ph_threshold=2.5)


def test_no_settings_and_no_options_give_the_built_in_config(monitor) -> None:
    res, cfg = monitor()
    assert res.exit_code == 0, res.output
    assert cfg == DriftConfig()


@pytest.mark.parametrize(("seconds", "ms"), [("1.001", 1001), ("0.001", 1), ("2.0004", 2000),
                                             ("90", 90_000)])
def test_a_window_in_seconds_is_rounded_to_whole_ms(monitor, seconds, ms) -> None:
    res, cfg = monitor("--window-s", seconds, "--lateness-s", seconds)
    assert res.exit_code == 0, res.output
    assert (cfg.window_ms, cfg.lateness_ms) == (ms, ms)  # int() gave 1000 for 1.001


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "never", "nan"])
@pytest.mark.parametrize("option", ["--guard-trips", "--rollbacks", "--freezes", "--k-changes"])
def test_a_count_that_is_neither_a_count_nor_off_is_a_usage_error(monitor, option, value) -> None:
    res, cfg = monitor(option, value)
    assert res.exit_code == 2 and option in res.output and "'off'" in res.output, res.output
    assert cfg is None and "Traceback" not in res.output


@pytest.mark.parametrize("option", ["--ph-delta", "--ph-threshold"])
def test_a_detector_setting_that_is_not_a_number_is_a_usage_error(monitor, option) -> None:
    res, cfg = monitor(option, "nan")
    assert res.exit_code == 2 and option in res.output and cfg is None
    assert "must be a finite number" in res.output


def test_a_bad_threshold_in_the_environment_is_an_error_naming_it(monitor, isolated_env) -> None:
    isolated_env.setenv("DIAM_DRIFT_GUARD_TRIPS", "0")
    res, cfg = monitor()
    assert res.exit_code == 1 and cfg is None
    assert "drift.guard_trips" in res.output and "DIAM_DRIFT_GUARD_TRIPS" in res.output


def test_every_drift_setting_has_an_option_whose_help_names_the_setting(monitor) -> None:
    res, _ = monitor("--help")
    text = " ".join(res.output.split())
    for field, info in DriftConfig.model_fields.items():
        builtin = "off" if info.default is None else f"{info.default:g}" if isinstance(
            info.default, float) else str(info.default)
        unit = " ms" if field.endswith("_ms") else ""
        said = f"[default: settings drift.{field} ({builtin}{unit}), DIAM_DRIFT_{field.upper()}]"
        assert said in text, field
    assert "[default: settings drift.window_ms (60000 ms), DIAM_DRIFT_WINDOW_MS]" in text
    # no threshold keeps a default of its own that would hide its setting
    assert not re.search(r"--(window-s|user-changes|d-swing)[^[]*\[default: (60|4|0\.4)[;\]]", text)
