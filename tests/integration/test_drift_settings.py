"""``diam drift run`` against the real broker: the thresholds set in the environment
(``DIAM_DRIFT_*``) are the ones its alerts use, and an option overrides its setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from streams.drift import DriftRecord
from streams.drift_testing import T0_MS
from streams.kafka_io import consume_all
from tests.integration.helpers import produce

# One user changes K_u three times (2->3->4->5: no reversal), one per minute; another trips a
# guard three times, one per minute. No one-minute window holds two of anything, so the
# built-in thresholds (60 s, k_churn at 4 changes, guard_trips at 100) raise nothing; an hour
# window with k_churn at 2 and guard_trips at 1 raises both.
EVENTS = [DriftRecord("k_change", "driftcfg-u1", T0_MS + m * 60_000 + 10_000, 2 * m,
                      {"k_from": 2 + m, "k_to": 3 + m, "d": 0.5}) for m in range(3)] + [
          DriftRecord("guard_trip", "driftcfg-u2", T0_MS + m * 60_000 + 20_000, 2 * m + 1,
                      {"guard": "step_cap"}) for m in range(3)]
EVENTS.sort(key=lambda e: e.ts_ms)

THRESHOLDS = {"DIAM_DRIFT_WINDOW_MS": "3600000", "DIAM_DRIFT_USER_CHANGES": "2",
              "DIAM_DRIFT_GUARD_TRIPS": "1"}


def _monitor(stack, drift_topic: str, alerts_topic: str, env: dict[str, str],
             *options: str) -> tuple[list[dict], str]:
    """A bounded ``python -m diam drift run`` over the whole topic: the alerts it wrote to
    ``alerts_topic`` and its stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIAM_DRIFT")}
    proc = subprocess.run(
        [sys.executable, "-m", "diam", "drift", "run", "--topic", drift_topic, "--alerts-topic",
         alerts_topic, "--from-beginning", "--bounded", *options],
        env={**base, "DIAM_CONFIG": "", "DIAM_KAFKA_BOOTSTRAP": stack.bootstrap, **env},
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(r.value) for r in consume_all(stack.settings.kafka, alerts_topic)], \
        proc.stderr


def test_thresholds_set_in_the_environment_change_the_alerts(stack, new_topic) -> None:
    drift_topic = new_topic(1, "driftcfg.drift")
    produce(stack.settings.kafka, drift_topic,
            [(e.user_id.encode(), json.dumps({"kind": e.kind, "user_id": e.user_id,
                                              "ts_ms": e.ts_ms, "offset": e.offset,
                                              "detail": e.detail}).encode()) for e in EVENTS])

    built_in, err = _monitor(stack, drift_topic, new_topic(1, "driftcfg.alerts"), {})
    assert built_in == [], built_in
    assert "window 60s, lateness 5s; thresholds user_changes 4," in err

    alerts, err = _monitor(stack, drift_topic, new_topic(1, "driftcfg.alerts"), THRESHOLDS)
    assert "window 3600s, lateness 5s; thresholds user_changes 2," in err and "guard_trips 1," in err
    by_kind = {a["kind"]: a for a in alerts}
    assert sorted(by_kind) == ["guard_trips", "k_churn"], alerts
    assert (by_kind["guard_trips"]["value"], by_kind["guard_trips"]["threshold"]) == (3, 1)
    assert by_kind["k_churn"]["threshold"] == 2
    assert [t["user_id"] for t in by_kind["k_churn"]["top_users"]] == ["driftcfg-u1"]
    assert {a["window"]["end_ms"] - a["window"]["start_ms"] for a in alerts} == {3_600_000}

    # an option wins over its setting; the other settings stand
    alerts, err = _monitor(stack, drift_topic, new_topic(1, "driftcfg.alerts"), THRESHOLDS,
                           "--guard-trips", "off")
    assert [a["kind"] for a in alerts] == ["k_churn"], alerts
    assert "guard_trips off," in err
