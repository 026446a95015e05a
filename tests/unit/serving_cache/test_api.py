"""API behaviour that needs no Redis: parameter validation (422 with a message), the OpenAPI
schema, and /health when Redis does not answer (a real client to a port nobody listens on)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    res = publish(
        write_checkpoint(tmp / "ck", n_items=60, dim=8, item_pop=np.arange(60)),
        SnapshotStore(SnapshotConfig(dir=str(tmp / "s"))),
    )
    dead = fail_fast(redis.Redis(host="127.0.0.1", port=_dead_port(), socket_timeout=0.5))
    app = get_app(Recommender(SnapshotIndex.load(res.path), dead, "unit"))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    "url, field",
    [
        ("/users/a:b/recommendations", "user_id"),
        ("/users/a*/recommendations", "user_id"),
        (f"/users/{'x' * 129}/recommendations", "user_id"),
        ("/users/u1/recommendations?n=0", "n"),
        ("/users/u1/recommendations?n=201", "n"),
        ("/users/u1/recommendations?n=ten", "n"),
        ("/users/u1/recommendations?mode=wild", "mode"),
        ("/users/u1/recommendations?mode=manual&delta=0.6", "delta"),
        ("/users/u1/recommendations?mode=context&hour=24", "hour"),
        ("/users/u1/recommendations?mode=context&device=TV!", "device"),
        ("/users/u1/recommendations?mode=context&device=alien", "device"),
        ("/users/u1/recommendations?mode=manual&delta=nan", "delta"),
        ("/users/u1/recommendations?k=5", "k"),
        ("/users/u1/interests?n=3", "n"),
        ("/users/u1/recommendations?" + "&".join(f"seen=i{i}" for i in range(501)), "seen"),
        ("/users/u1/interests?top=0", "top"),
    ],
)
def test_invalid_parameters_get_422_with_a_message(client, url, field):
    r = client.get(url)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][-1] == field and d["msg"] for d in detail), detail


def test_health_is_503_when_redis_does_not_answer(client):
    r = client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "redis": False, "snapshot": r.json()["snapshot"],
                        "pid": os.getpid()}
    assert r.json()["snapshot"] is not None


def test_requests_answer_503_not_500_when_redis_is_down(client):
    r = client.get("/users/u1/recommendations")
    assert r.status_code == 503 and "redis unavailable" in r.json()["detail"]


def test_no_snapshot_means_503():
    dead = fail_fast(redis.Redis(host="127.0.0.1", port=_dead_port(), socket_timeout=0.5))
    with TestClient(get_app(Recommender(None, dead, "unit"))) as c:
        assert c.get("/health").json()["snapshot"] is None
        assert c.get("/users/u1/recommendations").status_code == 503


def test_unknown_query_parameters_are_named_with_what_the_route_takes(client):
    """A typo (k for n, d for delta) is refused, not answered with the defaults."""
    r = client.get("/users/u1/recommendations?k=5&d=2&n=3")
    assert r.status_code == 422, r.text
    got = r.json()["detail"]
    assert [e["loc"] for e in got] == [["query", "d"], ["query", "k"]]
    assert all(e["type"] == "extra_forbidden" for e in got)
    assert "takes delta, device, exclude_seen, hour, mode, n, seen" in got[0]["msg"]
    r = client.get("/users/u1/recommendations?mode=manual&delta=nan")
    assert r.json()["detail"][0]["type"] == "finite_number", r.text


@pytest.mark.parametrize("url, repeated", [
    ("/users/u1/recommendations?n=5&n=7", ["n"]),
    ("/users/u1/recommendations?exclude_seen=0&exclude_seen=1&mode=auto&mode=auto",
     ["exclude_seen", "mode"]),
    ("/users/u1/interests?top=1&top=2", ["top"]),
])
def test_a_parameter_of_one_value_given_twice_is_refused(client, url, repeated):
    """It was answered with the last value, without a word."""
    r = client.get(url)
    assert r.status_code == 422, r.text
    got = r.json()["detail"]
    assert [e["loc"] for e in got] == [["query", name] for name in repeated]
    assert all(e["type"] == "repeated" and "takes one value" in e["msg"] for e in got)


def test_seen_is_given_once_per_value(client):
    # in bounds, so it reaches the dead Redis
    assert client.get("/users/u1/recommendations?seen=a&seen=b&n=2").status_code == 503


def test_openapi_schema_lists_every_route(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/users/{user_id}/recommendations",
        "/users/{user_id}/interests",
        "/health",
        "/metrics",
    }
    rec = schema["paths"]["/users/{user_id}/recommendations"]["get"]
    assert {"200", "422", "503"} <= set(rec["responses"])
    assert {p["name"] for p in rec["parameters"]} == {
        "user_id",
        "n",
        "mode",
        "delta",
        "hour",
        "device",
        "exclude_seen",
        "seen",
    }


def test_metrics_count_requests_by_route_template(client):
    client.get("/users/someone/recommendations?n=0")
    text = client.get("/metrics").text
    assert 'diam_api_requests_total{route="/users/{user_id}/recommendations",status="422"}' in text
    assert "someone" not in text


def test_metrics_label_unmatched_paths_and_time_every_route(client):
    client.get("/nowhere/at/all")
    client.get("/health")
    text = client.get("/metrics").text
    assert 'diam_api_requests_total{route="unmatched",status="404"}' in text
    assert 'diam_api_requests_total{route="/health",status="503"}' in text
    assert 'diam_api_request_seconds_count{route="/health"}' in text
    assert "nowhere" not in text


@pytest.mark.parametrize("url", ["/health", "/metrics", "/openapi.json",
                                 "/users/u1/recommendations", "/users/u1/recommendations?n=0"])
def test_head_answers_as_get_without_a_body(client, url):
    get, head = client.get(url), client.head(url)
    assert head.status_code == get.status_code != 405
    assert head.content == b"" and get.content
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_is_counted_under_the_route_and_stays_out_of_the_schema(client):
    client.head("/health")
    text = client.get("/metrics").text
    assert 'diam_api_requests_total{route="/health",status="503"}' in text
    paths = client.get("/openapi.json").json()["paths"]
    assert all(set(ops) == {"get"} for ops in paths.values())


def test_the_api_and_the_cli_share_one_bound_on_n():
    from serving_cache import api, recommend

    assert api.MAX_N is recommend.MAX_N


def test_the_outage_rule_is_public_for_the_ui():
    import serving_cache.api as api

    assert "redis_outage_errors" in api.__all__
    assert redis.exceptions.ConnectionError in api.redis_outage_errors()
    assert redis.exceptions.TimeoutError in api.redis_outage_errors()
