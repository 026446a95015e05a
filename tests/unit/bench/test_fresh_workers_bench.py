"""bench/fresh_workers.py reads the epoch-end pauses from a scrape of ``diam run``'s metrics:
the histogram of the real exposition (``streams.metrics.FlowMetrics``), its count, sum and the
observations above a bucket bound."""

from __future__ import annotations

from streams.metrics import FlowMetrics
from tests.benchload import load_bench

fw = load_bench("fresh_workers")


def test_the_pause_histogram_is_read_from_a_real_exposition() -> None:
    m = FlowMetrics()
    for s in (0.02, 0.2, 0.3, 0.7):
        m.observe_pause(s)
    h = fw._histogram(m.exposition().decode(), "diam_flow_epoch_pause_seconds")
    assert h["count"] == 4
    assert abs(h["sum"] - 1.22) < 1e-9
    assert fw._over(h, "0.1") == 3 and fw._over(h, "0.5") == 1 and fw._over(h, "1.0") == 0


def test_an_empty_scrape_reads_as_no_pauses() -> None:
    h = fw._histogram("", "diam_flow_epoch_pause_seconds")
    assert h == {"count": 0.0, "sum": 0.0, "buckets": {}}
