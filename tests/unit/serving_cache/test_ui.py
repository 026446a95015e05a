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


def test_a_restarted_or_silent_process_never_makes_rates_negative_nor_totals_drop() -> None:
    """Two real expositions: b stops answering (its last counts are carried forward), then b
    comes back as a new process whose counters restarted below where they were: the rates
    are never negative and the totals add what each process counted (Prometheus' rate())."""
    import serving_cache.ui as ui

    stats = {u: FlowStats() for u in ("a", "b")}
    metrics = {u: FlowMetrics(stats[u], process=u) for u in ("a", "b")}
    down: set[str] = set()

    def fetch(url: str) -> str:
        if url in down:
            raise ConnectionRefusedError("connection refused")
        return metrics[url].exposition().decode()

    clock = [1000.0]
    scraper = FlowScraper(["a", "b"], min_every_s=0.0, fetch=fetch)
    real_time = ui.time.time
    ui.time.time = lambda: clock[0]  # type: ignore[assignment]

    def step(a: int, b: int) -> dict:
        stats["a"].records += a
        stats["a"].pushes += a // 10
        stats["b"].records += b
        stats["b"].pushes += b // 10
        clock[0] += 2.0
        return scraper.sample()

    try:
        stats["a"].records, stats["b"].records = 1000, 5000
        scraper.sample()
        out = step(100, 200)
        assert out["events_per_s"] == 150.0 and out["records"] == 6300
        down.add("b")  # b refuses: its 5200 records stay in the total
        out = step(100, 200)
        assert out["records"] == 1200 + 5200 and out["errors"] and out["events_per_s"] >= 0
        # b restarts: a new process, its counters from 0, now 300 (< 5200 before)
        down.discard("b")
        stats["b"] = FlowStats()
        metrics["b"] = FlowMetrics(stats["b"], process="b")
        stats["b"].records, stats["b"].pushes = 300, 30
        out = step(100, 0)
        assert out["records"] == 1300 + 5200 + 300 and not out["errors"]
        for _ in range(3):
            out = step(100, 50)
    finally:
        ui.time.time = real_time  # type: ignore[assignment]
    assert out["records"] == 1600 + 5200 + 450
    # over the last 10 s (from t=1002): a 5 x 100, b 300 after its restart + 3 x 50
    assert out["events_per_s"] == (500 + 450) / 10
    hist = list(scraper._hist)
    for key in ("records", "pushes", "valid"):
        steps = [b[key] - a[key] for (_, a), (_, b) in zip(hist, hist[1:], strict=False)]
        assert min(steps) >= 0, (key, steps)  # what the charts draw per scrape
    assert out["pushes_per_s"] >= 0 and out["valid_per_s"] >= 0


def test_the_freshness_chart_marks_a_point_above_the_top_bucket_as_above_it() -> None:
    """The chart's p99 points above the top bucket are the bound only: each is drawn as a
    hollow circle labelled "> 300 s", and the chart's title says "> 300 s" as the headline
    does (it said "300 s", and the line sat at 300 as if that were the value)."""
    st = FlowStats()
    m = FlowMetrics(st, process="replay")

    class Old:
        ts = 0  # 1970: decades old when acknowledged

    scraper = FlowScraper(["p"], min_every_s=0.0, fetch=lambda _url: m.exposition().decode())
    for _ in range(3):
        m.observe_redis_write([("u", Old())] * 20, 0.002)
        out = scraper.sample()
    chart = out["svg"]["freshness"]
    top = out["freshness_top_bucket_s"]
    assert out["freshness_p99_above_top"]
    assert f"freshness p99: &gt; {top:.0f} s" in chart, chart
    assert chart.count('data-above="1"') == 2 and f"<title>&gt; {top:.0f} s</title>" in chart
