"""``diam serve``'s /ui with the broker down (a real Redis, a Kafka address nobody answers):
the alerts panel answers within the broker's answer time (``BROKER_ANSWER_S``), not the topic
reads' 30 s, and the polls after it answer at once (the back-off) instead of each waiting."""

from __future__ import annotations

import socket
import time

from fastapi.testclient import TestClient

from diam.server import ServeOptions, build_app
from streams.kafka_io import BROKER_ANSWER_S


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_alerts_with_the_broker_down_answer_in_the_broker_time_then_at_once(
        stack, namespace, tmp_path) -> None:
    s = stack.settings
    s = s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{_dead_port()}"}),
        "snapshot": s.snapshot.model_copy(update={"dir": str(tmp_path / "snapshots")})})
    app = build_app(s, ServeOptions(namespace=namespace, follow_items=False,
                                    live_popularity=False))
    with TestClient(app) as c:
        t0 = time.monotonic()
        first = c.get("/ui/api/alerts?n=15")
        took_first = time.monotonic() - t0
        t0 = time.monotonic()
        again = [c.get("/ui/api/alerts?n=15") for _ in range(3)]
        took_again = time.monotonic() - t0
    assert first.status_code == 200 and first.json()["available"] is False, first.text
    assert took_first < BROKER_ANSWER_S + 3, took_first
    assert all(r.json()["available"] is False and "next try in" in r.json()["error"]
               for r in again), [r.text for r in again]
    assert took_again < 1.0, took_again
