"""The /ui user view's parameters take the public routes' bounds: ``n`` as
``/users/{id}/recommendations``, ``top`` as ``/users/{id}/interests``; outside them a 422, as
there (Redis is a port nobody listens on: a parameter in bounds reaches it and answers 503).
Every /ui/api route that reads Redis answers that outage as the public routes do."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.reader import fail_fast
from serving_cache.recommend import MAX_N, MAX_TOP, Recommender
from serving_cache.retrieval import SnapshotIndex
from serving_cache.ui import UiSources
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    res = publish(write_checkpoint(tmp / "ck", n_items=60, dim=8, item_pop=np.arange(60)),
                  SnapshotStore(SnapshotConfig(dir=str(tmp / "s"))))
    dead = fail_fast(redis.Redis(host="127.0.0.1", port=_dead_port(), socket_timeout=0.5))
    app = get_app(Recommender(SnapshotIndex.load(res.path), dead, "unit"), ui=UiSources())
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("query, field", [
    ("top=-1", "top"), ("top=0", "top"), (f"top={MAX_TOP + 1}", "top"), ("top=100000000", "top"),
    ("n=-5", "n"), ("n=0", "n"), (f"n={MAX_N + 1}", "n"), ("n=ten", "n"),
])
def test_out_of_bounds_parameters_get_422(client, query, field) -> None:
    r = client.get(f"/ui/api/users/u1?{query}")
    assert r.status_code == 422, r.text
    assert any(d["loc"][-1] == field and d["msg"] for d in r.json()["detail"])


@pytest.mark.parametrize("top, code", [(0, 422), (1, 503), (MAX_TOP, 503), (MAX_TOP + 1, 422)])
def test_top_has_the_public_interests_routes_bound(client, top, code) -> None:
    assert client.get(f"/users/u1/interests?top={top}").status_code == code
    assert client.get(f"/ui/api/users/u1?top={top}").status_code == code


def test_n_in_bounds_reaches_redis(client) -> None:
    for n in (1, MAX_N):
        assert client.get(f"/ui/api/users/u1?n={n}").status_code == 503


def test_every_ui_route_answers_a_redis_outage_as_the_public_routes_do(client) -> None:
    public = client.get("/users/u1/recommendations")
    assert public.status_code == 503 and public.json()["detail"].startswith("redis unavailable: ")
    for path in ("/ui/api/namespace", "/ui/api/users/u1"):
        r = client.get(path)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["detail"].startswith("redis unavailable: "), (path, r.text)
    for path in ("/ui/api/flow", "/ui/api/alerts", "/ui"):  # no Redis read: they answer
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("uid", ["a%2Fb", "a/b", "a%20b", "x" * 129])
def test_an_id_outside_the_contract_is_not_a_valid_user_id_not_a_404(client, uid) -> None:
    r = client.get(f"/ui/api/users/{uid}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("not a valid user id: ")


def test_the_page_shows_the_routes_reason(client) -> None:
    assert "b.detail" in client.get("/ui").text


def test_the_page_labels_the_list_order_and_a_cold_users_clicks(client) -> None:
    html = client.get("/ui").text
    # the list is a diversity-aware mix, not sorted by score: the column and a note say so
    assert 'data-testid="rec-score-h">relevance<' in html and "diversity-aware mix" in html
    # a cold user's scores are click counts: "clicks", integers
    assert '"clicks"' in html and "Math.round(r.score)" in html


def test_the_page_without_metrics_or_users_has_no_empty_boxes(client) -> None:
    html = client.get("/ui").text
    assert "(read-only) &middot; <span" not in html  # no dangling separator
    assert 'id="flow-charts" data-testid="flow-charts" style="display:none"' in html
    assert "no users yet" in html


def test_an_interests_label_is_the_majority_of_its_shown_items() -> None:
    from serving_cache.recommend import majority_category

    assert majority_category(["Action", "Drama", "Crime", "Drama", "Drama"]) == "Drama"


@pytest.mark.parametrize("path", ["/ui/api/user?id=21%0A", "/ui/api/user?id=21%0D%0A",
                                  "/users/21%0A/recommendations", "/ui/api/users/21%0A",
                                  "/ui/api/users/21%0D%0A"])
def test_a_user_id_ending_in_a_line_break_is_refused_with_422(client, path) -> None:
    """``USER_ID_RE.match`` took '21\\n' (``$`` matches before a final line break), and the
    reader refused it: a 500 with a traceback. Every route refuses it alike."""
    r = client.get(path)
    assert r.status_code == 422, r.text


def test_the_ui_user_view_refuses_a_repeated_parameter(client) -> None:
    r = client.get("/ui/api/user?id=u1&id=u2")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "id"]
