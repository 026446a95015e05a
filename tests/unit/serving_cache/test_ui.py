"""The operator page's flow panel: scraped exposition text in, rates and quantiles out."""

from __future__ import annotations

import numpy as np

from serving_cache.ui import FlowScraper, histogram_quantile, quantile_above_top
from streams.metrics import FlowMetrics
from streams.online import FlowStats


def test_rates_lag_and_freshness_from_two_scrapes_of_two_processes() -> None:
    procs = []
    for name in ("parts0-1", "parts2-3"):
        st = FlowStats()
        m = FlowMetrics(st, process=name)
        procs.append((st, m))
    clock = [1000.0]
    texts = {f"p{i}": m for i, (_, m) in enumerate(procs)}
    scraper = FlowScraper(list(texts), min_every_s=0.0,
                          fetch=lambda url: texts[url].exposition().decode())
    import serving_cache.ui as ui

    real_time = ui.time.time
    ui.time.time = lambda: clock[0]  # type: ignore[assignment]  (the one time module)
    try:
        scraper.sample()
        for i, (st, m) in enumerate(procs):
            st.records += 500 * (i + 1)
            st.pushes += 100
            m.positions[i] = 10
            m.marks[i] = 10 + 7 * i

            class UV:
                ts = int(clock[0] * 1000) - 40  # 40 ms old when acknowledged (same clock)

            m.observe_redis_write([("u", UV())] * 50, 0.002)
        clock[0] += 5.0
        out = scraper.sample()
    finally:
        ui.time.time = real_time  # type: ignore[assignment]
    assert out["available"] and sorted(out["processes"]) == ["parts0-1", "parts2-3"]
    assert out["events_per_s"] == 1500 / 5.0
    assert out["pushes_per_s"] == 200 / 5.0
    assert out["lag_total"] == 7 and out["lag"] == {"[0]": 0.0, "[1]": 7.0}
    # 100 values between 25 and 50 ms (bucket le=0.05): p50 interpolates inside it
    assert 0.025 < out["freshness_p50_s"] <= 0.05
    assert out["svg"]["lag"].startswith("<svg")


def test_quantile_matches_numpy_on_bucket_edges() -> None:
    bounds = [1.0, 2.0, 3.0, float("inf")]
    values = np.array([0.5, 1.5, 1.5, 2.5])
    cum = [float((values <= b).sum()) for b in bounds]
    assert histogram_quantile(0.25, bounds, cum) == 1.0
    assert histogram_quantile(0.75, bounds, cum) == 2.0
    assert histogram_quantile(1.0, bounds, cum) == 3.0


def test_freshness_beyond_the_top_bucket_is_reported_as_above_it_with_the_exact_mean() -> None:
    # a replay of old events: every push is years fresh, far past the top bucket (300 s)
    st = FlowStats()
    m = FlowMetrics(st, process="replay")

    class Old:
        ts = 0  # 1970: decades old when acknowledged

    m.observe_redis_write([("u", Old())] * 20, 0.002)
    out = FlowScraper(["p"], fetch=lambda _url: m.exposition().decode()).sample()
    top = out["freshness_top_bucket_s"]
    assert out["freshness_p99_s"] == top  # the old field keeps its meaning: clamped at the top
    assert out["freshness_p50_above_top"] and out["freshness_p99_above_top"]
    assert out["freshness_mean_s"] > 50 * 365 * 86400
    assert out["freshness_over"] == "since start"


def test_quantile_above_top_only_in_the_inf_bucket() -> None:
    bounds = [1.0, 2.0, float("inf")]
    assert not quantile_above_top(0.5, bounds, [5.0, 9.0, 10.0])
    assert quantile_above_top(0.99, bounds, [5.0, 9.0, 10.0])
    assert not quantile_above_top(0.99, bounds, [0.0, 0.0, 0.0])
