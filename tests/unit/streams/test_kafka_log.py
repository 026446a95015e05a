"""librdkafka's log lines go through Python logging: a refused connection at DEBUG, anything
else at its own level, once a minute per text."""

from __future__ import annotations

import logging
import uuid

from streams.config import KafkaConfig
from streams.kafka_log import CLIENT_LOG, client_logger


def test_every_client_config_carries_the_logger() -> None:
    cfg = KafkaConfig(bootstrap="b:1", security_protocol="SSL", extra={"linger.ms": "5"})
    assert isinstance(client_logger(), logging.Logger) and client_logger().name == CLIENT_LOG
    assert cfg.client_config()["logger"] is client_logger()
    assert cfg.consumer_config()["logger"] is client_logger()
    assert cfg.client_config()["bootstrap.servers"] == "b:1"


def test_a_refused_connection_is_debug_and_other_errors_keep_their_level(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex
    log = client_logger()  # confluent-kafka calls it as log(level, "%s [%s] %s", fac, name, buf)
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
            f"b:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused {tag}")
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
            f"SSL handshake failed: Disconnected: SSL connection closed by peer {tag}")
    seen = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if tag in r.getMessage()]
    assert seen[0][:2] == (f"{CLIENT_LOG}.unreachable", logging.DEBUG)
    assert seen[1][:2] == (CLIENT_LOG, logging.ERROR) and "SSL handshake failed" in seen[1][2]
    assert len(seen) == 2


def test_an_error_repeated_per_retry_is_logged_once(caplog) -> None:
    caplog.set_level(logging.INFO)
    tag = uuid.uuid4().hex
    for client in range(1, 4):
        for after in range(20):  # differ only in numbers: client ids, "after Nms"
            client_logger().error("FAIL [rdkafka#producer-%d] SASL authentication error %s "
                                  "(after %dms in state AUTH_REQ)", client, tag, after)
    assert len([r for r in caplog.records if tag in r.getMessage()]) == 1
    # another broker's failure is another line: not hidden behind the first one's
    for broker in ("b1:9093", "b2:9093", "b1:9093"):
        client_logger().error("FAIL [rdkafka#producer-1] [thrd:sasl_ssl://%s/bootstrap]: "
                              "SASL authentication error %s", broker, tag)
    assert sum("b2:9093" in r.getMessage() for r in caplog.records) == 1
    assert sum("b1:9093" in r.getMessage() for r in caplog.records) == 1


def test_nothing_configured_an_error_still_reaches_stderr_and_a_refusal_does_not(capsys) -> None:
    # no handler anywhere: logging's last resort prints WARNING and above
    root, tag = logging.getLogger(), uuid.uuid4().hex
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        client_logger().error("FAIL [rdkafka#producer-1] Connect to ipv4#127.0.0.1:1 failed: "
                              "Connection refused %s", tag)
        client_logger().error("FAIL [rdkafka#producer-1] SASL authentication error %s", tag)
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "SASL authentication error" in err and "Connection refused" not in err
