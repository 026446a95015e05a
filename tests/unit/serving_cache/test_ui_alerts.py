"""The /ui alerts panel lists the served namespace's alerts only: a monitor of another namespace
is left out, and an all-namespaces alert keeps only the served namespace's users."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving_cache.api import get_app
from serving_cache.recommend import Recommender
from serving_cache.retrieval import SnapshotIndex
from serving_cache.ui import UiSources
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint

ALERTS = [
    {"kind": "freezes", "namespace": "other", "value": 382.0, "window_end_ms": 1,
     "top_users": [{"user_id": "o1", "value": 3.0, "namespace": "other"}]},
    {"kind": "freezes", "value": 12.0, "window_end_ms": 2,
     "top_users": [{"user_id": "o2", "value": 5.0, "namespace": "other"},
                   {"user_id": "m1", "value": 4.0, "namespace": "mine"}]},
    {"kind": "freezes", "value": 9.0, "window_end_ms": 3,
     "top_users": [{"user_id": "o3", "value": 9.0, "namespace": "other"}]},
    {"kind": "d_swing", "value": 1.0, "window_end_ms": 3,
     "top_users": [{"user_id": "unmarked", "value": 1.0}]},
    {"kind": "k_change", "namespace": "mine", "value": 2.0, "window_end_ms": 4, "top_users": []},
]


class _Keys:
    """A Redis client that holds only ``keys``: enough for the page's EXISTS pipeline."""

    def __init__(self, keys: set[str]) -> None:
        self.keys, self.asked = keys, []

    def pipeline(self, transaction: bool = True):
        return self

    def exists(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[int]:
        out, self.asked = [int(k in self.keys) for k in self.asked], []
        return out


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui_alerts")
    res = publish(write_checkpoint(tmp / "ck", n_items=20, dim=4, item_pop=np.arange(20)),
                  SnapshotStore(SnapshotConfig(dir=str(tmp / "s"))))

    def make(ns: str) -> TestClient:
        rec = Recommender(SnapshotIndex.load(res.path), _Keys({"diam:mine:u:unmarked"}), ns)
        return TestClient(get_app(rec, ui=UiSources(alerts=lambda n: ALERTS[-n:])))
    return make


def test_alerts_are_those_of_the_served_namespace(tiny_app) -> None:
    body = tiny_app("mine").get("/ui/api/alerts?n=15").json()
    assert [(a["kind"], [u["user_id"] for u in a["top_users"]]) for a in body["alerts"]] == [
        ("freezes", ["m1"]), ("d_swing", ["unmarked"]), ("k_change", [])]
    assert "mine" in body["filter"]


def test_a_namespace_without_alerts_lists_none(tiny_app) -> None:
    # "unmarked" (a user without a namespace) is a user of "mine" only: Redis says so
    assert tiny_app("empty").get("/ui/api/alerts?n=15").json()["alerts"] == []


def test_the_panel_says_the_filter_shows_a_time_and_integer_counts(tiny_app) -> None:
    html = tiny_app("mine").get("/ui").text
    assert 'data-testid="alerts-filter"' in html and "<th>time (UTC)</th>" in html
    assert "num(al.value)" in html and "fmt(al.value, 3)" not in html
