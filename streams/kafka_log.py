"""librdkafka's own log lines, through Python logging instead of raw ``%3|...|FAIL|`` lines on
stderr.

Every Kafka client of the project gets :func:`client_logger` in its configuration
(:meth:`streams.KafkaConfig.client_config`). A line that only says the broker cannot be reached
right now (librdkafka writes one per connection attempt, ~20 a second per client) goes to the
``streams.rdkafka.unreachable`` logger at DEBUG: a command's clean ``Error: Kafka at ... is not
usable`` says it once. Every other line (a refused login or TLS handshake, a configuration
warning) keeps librdkafka's level on ``streams.rdkafka``, so its errors and warnings still reach
stderr with no logging configured; the same text is repeated at most once a minute.
``diam -v`` prints all of them, connection failures included (:func:`log_clients_verbosely`).

confluent-kafka hands the lines of a client with a logger to its poll queue: they are logged
from ``poll``/``consume``/``flush``, so a client that is never polled (an AdminClient) must be
polled for them when a call fails (``streams.kafka_io``).
"""

from __future__ import annotations

import logging
import re
import time

__all__ = ["CLIENT_LOG", "client_logger", "log_clients_verbosely", "transient"]

CLIENT_LOG = "streams.rdkafka"
"""The logger librdkafka's lines arrive on (DEBUG enables the connection failures too)."""

# librdkafka's lines that only say "the broker cannot be reached right now"
_TRANSIENT = ("Connection refused", "Connect to ", "Disconnected", "brokers are down",
              "Connection reset", "connection reset", "timed out", "Receive failed",
              "Send failed", "Failed to resolve",
              # a fresh transactional producer's first minute on a new broker: it retries
              "Coordinator load in progress")
# ... unless the cause is ours to fix: a refused TLS handshake or login also ends in
# "Disconnected" ("SSL handshake failed: Disconnected: SSL connection closed by peer")
_OURS = ("SSL", "SASL", "uthenticat", "certificate", "handshake")

_REPEAT_S = 60.0
# what varies between repeats of one line: the client's id and the time it took; broker
# addresses and partitions stay, so one broker's failure does not hide another's
_VARYING = re.compile(r"rdkafka#(producer|consumer)-\d+|after \d+ms")


def transient(message: str) -> bool:
    """Whether a librdkafka line only says the broker cannot be reached right now.

    >>> transient("FAIL [rdkafka#producer-1] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: "
    ...           "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)")
    True
    >>> transient("ERROR [rdkafka#consumer-2] [thrd:app]: rdkafka#consumer-2: 1/1 brokers are down")
    True
    >>> transient("GETPID [rdkafka#producer-1] [thrd:main]: Failed to acquire transactional PID "
    ...           "from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying")
    True
    >>> transient("FAIL [rdkafka#producer-1] [thrd:ssl://b:9093/bootstrap]: ssl://b:9093/bootstrap: "
    ...           "SSL handshake failed: Disconnected: SSL connection closed by peer")
    False
    >>> transient("FAIL [rdkafka#producer-1] [thrd:sasl_plaintext://b:9092/bootstrap]: "
    ...           "SASL authentication error: Authentication failed (after 5ms in state AUTH_REQ)")
    False
    >>> transient("CONFWARN [rdkafka#producer-1] [thrd:app]: Configuration property "
    ...           "fetch.min.bytes is a consumer property and will be ignored by this producer instance")
    False
    """
    return any(s in message for s in _TRANSIENT) and not any(s in message for s in _OURS)


class _Sort(logging.Filter):
    """On the ``streams.rdkafka`` logger: connection failures to DEBUG on a child logger,
    repeats of any other line dropped within a minute of the first (a refused TLS handshake is
    logged per retry, ~20 a second)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self.verbose = False  # diam -v: every line, repeats too

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if transient(msg):
            _UNREACHABLE.debug("%s", msg)
            return False
        if self.verbose:
            return True
        key = _VARYING.sub("#", msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < _REPEAT_S:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_LOG = logging.getLogger(CLIENT_LOG)
_SORT = _Sort()
_LOG.addFilter(_SORT)
_UNREACHABLE = logging.getLogger(f"{CLIENT_LOG}.unreachable")


def client_logger() -> logging.Logger:
    """The ``logger`` of every Kafka client's configuration."""
    return _LOG


def log_clients_verbosely() -> None:
    """Print every librdkafka line to stderr, connection failures included (``diam -v``)."""
    if any(getattr(h, "_diam_verbose", False) for h in _LOG.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._diam_verbose = True  # type: ignore[attr-defined]
    _LOG.addHandler(handler)
    _LOG.setLevel(logging.DEBUG)
    _LOG.propagate = False  # printed once, also where a service configured the root logger
    _SORT.verbose = True
