"""The /ui JSON routes take parameters as the public routes do: an unknown one, or a value out
of bounds, is a 422 naming it (not ignored, not clamped); the user view takes its id as a query
parameter, so that the valid ids "." and ".." reach it; and a broker that does not answer is
asked again only after a back-off, the outage logged once."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from serving_cache.ui import MAX_ALERTS, UiSources
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui_params")
    return publish(write_checkpoint(tmp / "ck", n_items=30, dim=4, item_pop=np.arange(30)),
                   SnapshotStore(SnapshotConfig(dir=str(tmp / "s")))).path


def _client(path, sources: UiSources) -> TestClient:
    dead = fail_fast(redis.Redis(host="127.0.0.1", port=_dead_port(), socket_timeout=0.5))
    return TestClient(get_app(Recommender(SnapshotIndex.load(path), dead, "unit"), ui=sources))


@pytest.fixture(scope="module")
def client(snapshot):
    with _client(snapshot, UiSources(alerts=lambda n: [])) as c:
        yield c


@pytest.mark.parametrize("url, name", [
    ("/ui/api/users/259?exclude_seen=false&mode=manual", "mode"),
    ("/ui/api/users/259?foo=1", "foo"),
    ("/ui/api/user?id=259&mode=manual", "mode"),
    ("/ui/api/namespace?x=1", "x"),
    ("/ui/api/flow?x=1", "x"),
    ("/ui/api/alerts?n=5&x=1", "x"),
])
def test_an_unknown_parameter_is_a_422_naming_it(client, url, name) -> None:
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert any(d["loc"] == ["query", name] and d["type"] == "extra_forbidden"
               and "this route takes" in d["msg"] for d in r.json()["detail"]), r.text


@pytest.mark.parametrize("n, code", [("0", 422), ("100000", 422), (str(MAX_ALERTS + 1), 422),
                                     ("abc", 422), ("1", 200), (str(MAX_ALERTS), 200)])
def test_alerts_n_is_bounded_not_clamped(client, n, code) -> None:
    assert client.get(f"/ui/api/alerts?n={n}").status_code == code


@pytest.mark.parametrize("uid", [".", "..", "259", "a.b"])
def test_the_query_route_reaches_every_valid_id(client, uid) -> None:
    # Redis is a dead port: an id that reaches the view answers "redis unavailable" (503)
    r = client.get("/ui/api/user", params={"id": uid})
    assert r.status_code == 503 and r.json()["detail"].startswith("redis unavailable"), r.text


@pytest.mark.parametrize("query", ["id=", "id=a%2Fb", "id=a%2Cb", ""])
def test_the_query_route_refuses_an_invalid_or_missing_id(client, query) -> None:
    assert client.get(f"/ui/api/user?{query}").status_code == 422


def test_the_page_asks_by_query_and_skips_a_poll_in_flight(client) -> None:
    html = client.get("/ui").text
    assert '"/ui/api/user?id=" + encodeURIComponent(id)' in html
    assert "/ui/api/users/" not in html
    assert "if (busy) return;" in html and "setInterval(alerts" not in html


def test_a_broker_down_is_asked_again_only_after_a_back_off_logged_once(snapshot, caplog) -> None:
    calls = []

    def alerts(n: int) -> list:
        calls.append(n)
        time.sleep(0.3)  # the broker's timeout
        raise RuntimeError("KafkaError{code=_TRANSPORT}")

    with caplog.at_level(logging.INFO, logger="serving_cache.ui"), \
            _client(snapshot, UiSources(alerts=alerts)) as c:
        first = c.get("/ui/api/alerts?n=15").json()
        t0 = time.monotonic()
        again = [c.get("/ui/api/alerts?n=15").json() for _ in range(5)]
        took = time.monotonic() - t0
    assert calls == [150]  # asked once: the next polls did not wait on the broker again
    assert took < 0.3 * 2, took
    assert first["available"] is False and "_TRANSPORT" in first["error"]
    assert all(a["available"] is False and "next try in" in a["error"] for a in again)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "_TRANSPORT" in warned[0].getMessage()


def test_the_schema_says_seen_is_repeated_and_which_ids_a_path_cannot_carry(client) -> None:
    """``seen=172,56`` is the one id "172,56" (item ids may hold commas): the schema says to
    repeat the parameter; and how "." and ".." are asked in the path."""
    op = client.get("/openapi.json").json()["paths"]["/users/{user_id}/recommendations"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert "seen=A&seen=B" in params["seen"]["description"]
    assert "A comma is part of an id" in params["seen"]["description"]
    assert "%2E%2E" in params["user_id"]["description"]
    assert "/ui/api/user?id=" in params["user_id"]["description"]


@pytest.mark.parametrize("encoded, uid", [("%2E", "."), ("%2E%2E", ".."), ("%2e", ".")])
def test_the_public_routes_reach_dot_ids_percent_encoded(client, encoded, uid) -> None:
    """What README and the schema tell: percent-encoded, "." and ".." reach the public routes
    (a client that sends the path as it is, as httpx and curl do)."""
    for route in ("recommendations", "interests"):
        r = client.get(f"/users/{encoded}/{route}")
        assert r.status_code == 503 and r.json()["detail"].startswith("redis unavailable"), r.text
