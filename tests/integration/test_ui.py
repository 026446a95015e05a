"""The operator page (/ui) in a real headless Chromium, over users the real dataflow wrote.

Needs Debian's ``chromium`` and ``chromium-driver`` (installed by .ci/run) and the ``selenium``
package (the ``test`` extra). ``DIAM_UI_SCREENSHOT=docs/ui.png`` saves the page as shown.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from serving_cache.api import get_app
from serving_cache.recommend import Recommender, majority_category
from serving_cache.retrieval import SnapshotIndex
from serving_cache.ui import UiSources
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint
from streams.events import ClickEvent
from streams.metrics import FlowMetrics, serve_metrics
from streams.online import FlowStats, LearnerHolder
from streams.runner import OnlineJob, run_online
from streams.tail import latest_alerts, user_drift_events
from tests.integration.helpers import click_payloads, produce

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(n_items: int, t0: int) -> list[ClickEvent]:
    """3000 clicks 100 ms apart (a third of them alice's), the last one at ``t0 + 300 s``."""
    rng = np.random.default_rng(4)
    out = []
    for e in range(3000):
        user = f"u{int(rng.integers(30))}" if e % 3 else "alice"
        out.append(ClickEvent(user_id=user, item_id=f"i{int(rng.integers(n_items))}", ts=t0 + 100 * e))
    return out


@pytest.fixture
def page(stack, topic, namespace, redis_client, tmp_path):
    """A namespace filled by the dataflow from a real topic, served with /ui on a free port."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    kafka = stack.settings.kafka.model_copy(update={"drift_topic": f"{topic}.drift",
                                                    "deadletter_topic": f"{topic}.dlq",
                                                    "alerts_topic": f"{topic}.alerts"})
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    # titles as a catalogue gives them, one with markup the page must show as text
    titles = [f"Film {i}: <Director's Cut> & <b>more</b>" if i % 7 == 0 else f"Film {i} (1997)"
              for i in range(300)]
    ck = write_checkpoint(tmp_path / "ck", n_items=300, dim=16, n_categories=5, seed=3,
                          item_pop=np.arange(300)[::-1], item_titles=titles)
    version = publish(ck, store, redis_client, namespace).version
    base = BaseView.from_checkpoint(store.path(version), version=version)
    holder = LearnerHolder(OnlineLearner(base, OnlineConfig(dim=16)), version)
    # event times of the last five minutes, so that freshness (event time to the Redis
    # acknowledgement) is that of a five-minute backlog read at once
    t0 = int(time.time() * 1000) - 300_000
    produce(kafka, topic, click_payloads(_events(300, t0)))
    # an alert on the alerts topic, as the drift monitor writes them
    alert = {"kind": "k_change_rate", "value": 0.5, "threshold": 0.2, "seq": 1, "ts_ms": t0,
             "top_users": [{"user_id": "alice", "value": 3.0, "k_from": 4, "k_to": 3}],
             "window": {"start_ms": t0,
                                                                          "end_ms": t0 + 1},
             "detail": {}}
    # and one of a monitor of another namespace: the page of this one leaves it out
    other = {**alert, "kind": "d_swing", "namespace": f"{namespace}-other"}
    produce(kafka, f"{topic}.alerts", [(b"k_change_rate", json.dumps(alert).encode()),
                                       (b"d_swing", json.dumps(other).encode())])
    stats = FlowStats()
    metrics = FlowMetrics(stats, holder, "main", kafka=kafka, topic=topic)
    mport = serve_metrics(metrics, 0, addr="127.0.0.1")
    job = OnlineJob(kafka=kafka, redis=stack.settings.redis, flow=stack.settings.flow.model_copy(
        update={"push_every_events": 4, "push_every_ms": 50, "epoch_interval_s": 0.2}),
        topic=topic, namespace=namespace, bounded=True)
    run_online(job, holder, stats, metrics)

    import uvicorn

    sources = UiSources(flow_metrics=[f"http://127.0.0.1:{mport}/metrics"],
                        alerts=lambda n: latest_alerts(kafka, n, namespace=namespace),
                        user_drift=lambda u, n: user_drift_events(kafka, u, n))
    snap = SnapshotIndex.load(store.path(version), version)
    app = get_app(Recommender(snap, redis_client, namespace), ui=sources)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1500"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver, url, snap, kafka
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
        metrics.close()


def _texts(el, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in el.find_elements(By.CSS_SELECTOR, css)]


@pytest.mark.timeout(900)  # the fixture's dataflow compiles the kernels on a cold checkout
def test_user_view_shows_what_the_api_answers(page) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, url, snap, kafka = page
    api = httpx.Client(base_url=url, timeout=10)
    interests = api.get("/users/alice/interests", params={"top": 5}).json()
    recs = api.get("/users/alice/recommendations", params={"n": 20}).json()
    assert not interests["cold"] and interests["k"] >= 1 and len(recs["items"]) == 20

    driver.get(url + "/ui")
    box = driver.find_element(By.CSS_SELECTOR, "[data-testid=user-input]")
    box.send_keys("alice")
    driver.find_element(By.CSS_SELECTOR, "[data-testid=user-go]").click()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-user-loaded") == "alice")
    view = driver.find_element(By.CSS_SELECTOR, "[data-testid=user-view]")

    assert view.find_element(By.CSS_SELECTOR, "[data-testid=user-k]").text == str(interests["k"])
    assert view.find_element(By.CSS_SELECTOR, "[data-testid=user-d]").text == f"{interests['d']:.3f}"
    assert view.find_element(By.CSS_SELECTOR, "[data-testid=rec-d-used]").text == f"{recs['d_used']:.3f}"
    # each interest: the API's top items, in order, each with its category in the snapshot
    shown = view.find_elements(By.CSS_SELECTOR, "[data-testid=interest]")
    assert len(shown) == interests["k"] == len(interests["interests"])
    for li, want in zip(shown, interests["interests"], strict=True):
        items = _texts(li, "[data-testid=item]")
        assert items == want["top_items"]
        assert _texts(li, "[data-testid=item-title]") == want["top_titles"]
        cats = _texts(li, "[data-testid=item-cat]")
        assert cats == [snap.category_name(snap.index_of(x)) for x in items]
        # labelled as the API labels it: the majority category of the items shown
        known = [None if c == "-" else c for c in cats]
        assert want["top_category"] == majority_category(known)
        assert li.text.startswith(f"{want['top_category'] or '?'}:")
    # the recommendation list: the API's items, categories and scores, in order
    assert _texts(view, "[data-testid=rec-item]") == [it["item_id"] for it in recs["items"]]
    assert _texts(view, "[data-testid=rec-cat]") == [it["category"] or "-" for it in recs["items"]]
    # titles from the checkpoint, as text: markup in a title is shown, never interpreted
    assert all(it["title"] for it in recs["items"])
    assert _texts(view, "[data-testid=rec-title]") == [it["title"] for it in recs["items"]]
    assert any("<b>" in it["title"] for it in recs["items"])  # the markup case is on the page
    assert not view.find_elements(By.CSS_SELECTOR, "[data-testid=user-view] b")
    assert _texts(view, "[data-testid=rec-score]") == [f"{it['score']:.4f}" for it in recs["items"]]
    # the user's last drift events, as on the drift topic
    drift = user_drift_events(kafka, "alice", 20)
    assert drift, "alice has no drift events: the table below would be checked on nothing"
    rows = view.find_elements(By.CSS_SELECTOR, "[data-testid=drift-row]")
    shown = [tuple(td.text for td in r.find_elements(By.TAG_NAME, "td")[:2]) for r in rows]
    assert shown == [(d["kind"], str(d["offset"])) for d in reversed(drift)]  # newest first
    # why a user is answered as they are: nothing for alice, the API's reason for a stranger
    assert view.find_element(By.CSS_SELECTOR, "[data-testid=user-reason]").text == ""
    box.clear()
    box.send_keys("nobody")
    driver.find_element(By.CSS_SELECTOR, "[data-testid=user-go]").click()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-user-loaded") == "nobody")
    assert api.get("/users/nobody/interests").json()["reason"] == "unknown user"
    assert driver.find_element(By.CSS_SELECTOR, "[data-testid=user-reason]").text == "unknown user"
    assert driver.find_element(By.CSS_SELECTOR, "[data-testid=user-k]").text == "cold"

    # the overview: the namespace's K_u histogram sums to its users; the flow panel has read
    # the dataflow's metrics (lag 0 after the bounded run); the alert is listed
    ns = api.get("/ui/api/namespace").json()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=kpi-lag]").text == "0")
    fresh = api.get("/ui/api/flow").json()
    assert fresh["freshness_p50_s"] is not None and 0 < fresh["freshness_p50_s"] <= fresh["freshness_p99_s"]
    assert driver.find_element(By.CSS_SELECTOR, "[data-testid=kpi-fresh]").text.endswith(" ms")
    bars = driver.find_elements(By.CSS_SELECTOR, "[data-testid=chart-k] rect")
    assert sum(float(b.get_attribute("data-value")) for b in bars) == ns["users"] == 31
    WebDriverWait(driver, 20).until(lambda d: "k_change_rate" in d.find_element(
        By.CSS_SELECTOR, "[data-testid=alerts]").text)
    shown = driver.find_element(By.CSS_SELECTOR, "[data-testid=alerts]").text
    assert "alice (K_u 4\u21923)" in shown and "d_swing" not in shown  # from -> to
    shot = os.environ.get("DIAM_UI_SCREENSHOT")
    if shot:  # with a learnt user shown, as an operator would look at one
        box = driver.find_element(By.CSS_SELECTOR, "[data-testid=user-input]")
        box.clear()
        box.send_keys("alice")
        driver.find_element(By.CSS_SELECTOR, "[data-testid=user-go]").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                        .get_attribute("data-user-loaded") == "alice")
        time.sleep(2.5)  # one more flow poll: the charts then have two points
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(shot)


@pytest.mark.timeout(900)
def test_ui_routes_only_read(page) -> None:
    """The page's routes answer GET only: nothing on /ui writes."""
    _driver, url, _snap, _kafka = page
    api = httpx.Client(base_url=url, timeout=10)
    for path in ("/ui", "/ui/api/flow", "/ui/api/namespace", "/ui/api/alerts",
                 "/ui/api/users/alice"):
        assert api.get(path).status_code == 200, path
        assert api.post(path).status_code == 405, path
