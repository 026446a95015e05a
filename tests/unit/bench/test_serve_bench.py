"""bench/serve.py's measuring tools: the open-loop client counts a late answer against every
request it delays, the server histogram's quantiles, and the grown catalogues keep the real
items first."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np

from tests.benchload import load_bench

serve = load_bench("serve")
serve_learner = load_bench("serve_learner")


class _Slow(BaseHTTPRequestHandler):
    """Answers at once, except ``/slow``, which takes 0.3 s; ``/metrics`` is empty."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        if self.path == "/slow":
            time.sleep(0.3)
        body = b"" if self.path == "/metrics" else b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_open_loop_counts_a_late_answer_against_the_requests_it_delays() -> None:
    import os

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        # one client, 100 requests/s for 0.5 s: the first answer takes 0.3 s, so the next ~29
        # requests are sent late and must count the wait from their scheduled time
        rng = np.random.default_rng(0)
        paths = ["/slow"] + ["/fast"] * 1000
        picks = [0] + [1] * 49
        res = _open_loop_with(port, paths, picks, rate=100.0, clients=1, rng=rng,
                              pid=os.getpid())
        assert res["requests"] == 50 and res["errors"] == 0
        assert res["p50_ms"] > 20.0 > res["service_p50_ms"]  # queueing, not service
        assert res["p999_ms"] >= 290.0
    finally:
        httpd.shutdown()


def test_open_loop_stops_at_its_deadline_and_counts_the_backlog_unsent(monkeypatch) -> None:
    """An offered rate the server cannot answer ends DRAIN_S after its last due time (the
    failed ``--processes 2`` run waited minutes for the 1000/s backlog, then timed out)."""
    import os

    monkeypatch.setattr(serve, "DRAIN_S", 0.2)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        # 50 requests of 0.3 s each due within 0.5 s: about three are sent by 0.7 s
        t = time.monotonic()
        res = _open_loop_with(httpd.server_address[1], ["/slow"], [0] * 50, rate=100.0,
                              clients=1, rng=None, pid=os.getpid())
        assert time.monotonic() - t < 5.0
        assert 40 <= res["unsent"] < 50 and res["errors_by_kind"] == {"unsent": res["unsent"]}
        assert res["errors"] == res["unsent"] and res["p50_ms"] >= 290.0
    finally:
        httpd.shutdown()


def _open_loop_with(port, paths, picks, rate, clients, rng, pid):
    """serve.open_loop with a fixed sequence of paths instead of random picks."""
    class FixedRng:
        def integers(self, n, size):
            return np.array(picks[:size])

    return serve.open_loop(port, paths, rate, len(picks) / rate, clients, FixedRng(), pid)


def test_histogram_quantiles_interpolate_within_the_bucket() -> None:
    before = {0.001: 0.0, 0.002: 0.0, 0.005: 0.0, float("inf"): 0.0}
    after = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    p50, p99 = serve.hist_quantiles(before, after)
    assert p50 == 1.0  # the 50th of 100 observations is the first bucket's top
    assert abs(p99 - (2.0 + 0.9 * 3.0)) < 1e-6
    assert serve.hist_quantiles(after, after) == [None, None]


def test_p99_interval_holds_the_sample_p99() -> None:
    ts = list(np.random.default_rng(1).exponential(0.001, 2000))
    lo, hi = serve.p99_ci(ts)
    assert lo <= float(np.percentile(np.array(ts) * 1000, 99)) <= hi


def test_grown_catalogue_keeps_the_real_items_first() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 8)).astype(np.float32)
    emb[3] = 0.0  # an item the base cannot embed is never a parent
    base = SimpleNamespace(item_emb=emb, item_ids=np.array([f"r{i}" for i in range(30)]),
                           item_categories=np.arange(30, dtype=np.int32) % 4)
    ids, vecs, cats = serve_learner.grow_catalogue(base, 500, seed=2)
    assert vecs.shape == (500, 8) and len(ids) == len(cats) == 500
    assert np.array_equal(vecs[:30], emb) and ids[:30].tolist() == base.item_ids.tolist()
    assert len(set(ids.tolist())) == 500
    # each added item sits near its parent and has its category
    near = (vecs[30:] @ emb.T / np.linalg.norm(emb, axis=1).clip(1e-9)).argmax(axis=1)
    assert (cats[30:] == base.item_categories[near]).mean() > 0.9


def test_recall_users_are_not_the_tuning_users() -> None:
    users = [SimpleNamespace(user_id=str(i)) for i in range(1, 944)]
    tune, held = serve.split_users(users)
    assert {u.user_id for u in tune}.isdisjoint(u.user_id for u in held)
    assert len(tune) + len(held) == len(users) and 0.4 < len(tune) / len(users) < 0.6
    again, _ = serve.split_users(list(reversed(users)))  # by id, not by position
    assert {u.user_id for u in again} == {u.user_id for u in tune}
    # pinned: the same split in every run and process (not Python's salted str hash)
    assert [u.user_id for u in tune if int(u.user_id) <= 20] == [
        "4", "5", "6", "7", "14", "15", "16", "17", "20"]
