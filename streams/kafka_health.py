"""Broker outages as an operator wants to read them: one line when an outage is confirmed, one
when it ends with its duration, instead of librdkafka's line per refused connection.

Used by the dataflow's Kafka clients (``streams.kafka_source``, ``streams.kafka_sink``): each
passes :meth:`BrokerHealth.client_config` to librdkafka, which routes its log lines and errors
here.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from confluent_kafka import KafkaError

from streams.config import ClientConfig

__all__ = ["BrokerHealth"]

log = logging.getLogger(__name__)

# librdkafka's log lines that only say "the broker cannot be reached right now"; it writes one
# per connection attempt (~25 a second with a few clients), so they are folded into the outage
# lines of BrokerHealth.
_UNREACHABLE = ("Connection refused", "Connect to ", "Disconnected", "brokers are down",
                "Connection reset", "connection reset", "timed out", "Receive failed",
                "Send failed", "Failed to resolve")


_HEALTH_IDS = itertools.count()


class BrokerHealth:
    """One process's view of whether the broker at ``bootstrap`` answers.

    An outage is logged once when it starts and once when it ends, with its duration, instead
    of librdkafka's line per refused connection (an operator saw ~440 of those in 18 s and no
    line saying the broker was back). A failure that clears within ``grace_s`` (3 s: a
    connection closed and reopened; a broker in controlled shutdown drops its connections
    and still answers metadata for ~2 s before it goes) is not an outage and logs nothing.
    librdkafka says when a connection fails, never when one works again, so the end is seen
    by the dataflow: a delivered record, or a metadata answer to the source's probe. A run
    builds one and hands it to its source and sinks (``streams.runner``), so their clients
    share it; librdkafka's other log lines pass through to the ``streams.kafka_health.rdkafka``
    logger.
    """

    def __init__(self, bootstrap: str, grace_s: float = 3.0) -> None:
        self.bootstrap, self.grace_s = bootstrap, grace_s
        self.outages = 0
        self._since: float | None = None  # first failure not followed by a success
        self._logged = False
        self._why = ""
        self._lock = threading.Lock()
        self.logger = logging.getLogger(f"{__name__}.rdkafka.{next(_HEALTH_IDS)}")
        self.logger.propagate = False
        self.logger.addHandler(_PassThrough(self))

    @property
    def down_since(self) -> float | None:
        return self._since

    def down(self, why: str) -> None:
        """A connection attempt failed (called per librdkafka failure line or error)."""
        with self._lock:
            first = self._since is None
            if first:
                self._since, self._why = time.monotonic(), why.strip()[:200]
        if first:
            # librdkafka may not log again while the outage lasts (it repeats a broker's error
            # only when it changes), and the dataflow's thread may sit in a flush: a timer
            # confirms the outage after the grace period
            t = threading.Timer(self.grace_s + 0.05, self.check)
            t.daemon = True
            t.start()
        self.check()

    def check(self) -> None:
        """Log the outage once it has lasted ``grace_s``."""
        with self._lock:
            since = self._since
            if since is None or self._logged or time.monotonic() - since < self.grace_s:
                return
            self._logged = True
            self.outages += 1
        log.warning("Kafka broker %s unreachable for %.1f s (%s); the dataflow stalls and "
                    "retries (nothing is dropped)", self.bootstrap, time.monotonic() - since,
                    self._why)

    def up(self) -> None:
        with self._lock:
            since, logged = self._since, self._logged
            self._since, self._logged = None, False
        if since is not None and logged:
            log.warning("Kafka broker %s reachable again after %.1f s of outage",
                        self.bootstrap, time.monotonic() - since)

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's ``error_cb``."""
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE, KafkaError._TIMED_OUT):
            self.down(err.str())
        else:
            log.error("Kafka client error: %s", err.str())

    def client_config(self, conf: ClientConfig) -> dict[str, object]:
        """``conf`` with this tracker as the client's logger and error callback."""
        return {**conf, "logger": self.logger, "error_cb": self.on_error}


class _PassThrough(logging.Handler):
    def __init__(self, health: BrokerHealth) -> None:
        super().__init__()
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if any(s in msg for s in _UNREACHABLE):
            self.health.down(msg)
        else:
            logging.getLogger(f"{__name__}.rdkafka").handle(record)
