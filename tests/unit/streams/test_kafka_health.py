"""Broker outages are logged once when confirmed and once when they end, not per retry."""

from __future__ import annotations

import logging
import time

from streams.kafka_health import BrokerHealth


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streams.kafka_health"]


def test_an_outage_is_logged_once_at_start_and_once_at_end(caplog) -> None:
    caplog.set_level(logging.INFO)
    h = BrokerHealth("b:1", grace_s=0.05)
    for _ in range(200):  # librdkafka's line per refused connection
        h.logger.error("FAIL [rdkafka#consumer-1] Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    time.sleep(0.06)
    for _ in range(50):
        h.logger.error("FAIL [rdkafka#consumer-1] Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    h.up()
    h.up()
    lines = _lines(caplog)
    assert len(lines) == 2 and h.outages == 1
    assert "unreachable" in lines[0] and "Connection refused" in lines[0]
    assert lines[1].startswith("Kafka broker b:1 reachable again after ")


def test_a_blip_shorter_than_the_grace_logs_nothing(caplog) -> None:
    caplog.set_level(logging.INFO)
    h = BrokerHealth("b:2", grace_s=5.0)
    h.logger.error("FAIL Disconnected: connection closed by peer")
    h.up()
    assert _lines(caplog) == [] and h.outages == 0 and h.down_since is None


def test_other_librdkafka_lines_pass_through(caplog) -> None:
    caplog.set_level(logging.INFO)
    h = BrokerHealth("b:3")
    h.logger.warning("CONFWARN [rdkafka#producer-1] something else entirely")
    assert h.down_since is None
    passed = [r for r in caplog.records if "something else" in r.getMessage()]
    assert len(passed) == 1 and passed[0].name.startswith("streams.kafka_health.rdkafka")


def test_one_failure_then_silence_is_still_logged_after_the_grace(caplog) -> None:
    # librdkafka repeats a broker's error only when it changes; the timer confirms the outage
    caplog.set_level(logging.INFO)
    h = BrokerHealth("b:4", grace_s=0.05)
    h.logger.error("FAIL [rdkafka#producer-1] Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    time.sleep(0.3)
    assert h.outages == 1 and "unreachable" in _lines(caplog)[0]
