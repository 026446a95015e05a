"""The operator page of ``diam serve``: ``/ui`` and the read-only JSON it polls.

- ``GET /ui``: one HTML page (``serving_cache/static/ui.html``, no external assets);
- ``GET /ui/api/flow``: lag, events/s, freshness p50/p99, pushes/s and drift events of the
  online dataflow, from its Prometheus endpoints (``diam run --metrics-port``), with the last
  minutes kept in memory and drawn as server-rendered SVG;
- ``GET /ui/api/namespace``: the K_u histogram and d_u distribution of the served namespace
  (a SCAN of Redis, cached for ``namespace_ttl_s``; a 503 while Redis is down, as the
  public routes answer);
- ``GET /ui/api/alerts?n=``: the drift monitor's latest ``n`` (1 to :data:`MAX_ALERTS`) alerts
  of the served namespace;
- ``GET /ui/api/user?id=`` (and ``GET /ui/api/users/{id}``, by which a browser cannot ask
  for the ids ``.`` and ``..``: it collapses those path segments, ``%2E`` too): K_u, d_u, each interest's top items with their categories and
  titles, the recommendation list with the d_u used (the same calls as the public routes) and
  the user's last drift events. Titles come from the catalogue and the training data, so this
  JSON carries no raw ``<``, ``>`` or ``&`` (:func:`html_safe_json`) and the page writes them as
  text, never as markup.

Every ``/ui/api`` route refuses a query parameter it does not take and a value out of its
bounds with a 422, as the public routes do (the same dependency, ``api._known_query``).

Everything here reads (Redis, the metrics endpoints, Kafka topics through the callables given
in :class:`UiSources`); nothing writes. Kafka access is injected so that ``serving_cache``
stays free of Kafka imports (``diam serve`` wires ``streams.tail``). The Kafka callables go
through one :class:`Backoff`: while the broker is down they fail at once (the page says why)
instead of each poll waiting out a timeout, and the outage is logged once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request

from serving_cache import svg
from serving_cache.json_safe import nan_to_none

__all__ = ["Backoff", "MAX_ALERTS", "UiSources", "FlowScraper", "add_increase", "alerts_of_namespace", "mount_ui", "html_safe_json",
           "histogram_quantile", "parse_flow", "quantile_above_top"]

STATIC = Path(__file__).resolve().parent / "static"

log = logging.getLogger(__name__)

MAX_ALERTS = 200
"""The most alerts ``/ui/api/alerts`` answers (``n``); more is a 422."""


class Backoff:
    """Calls to one remote source (the broker) that remember its failure: after a call raises,
    calls fail at once, naming the error, for ``first_s`` seconds, doubling up to ``max_s``
    while the source keeps failing; the first success resets it. The outage is logged once
    (a WARNING when it starts, an INFO when the source answers again), not per call.

    >>> t = [0.0]
    >>> b = Backoff("broker", first_s=5.0, clock=lambda: t[0])
    >>> def down(): raise OSError("refused")
    >>> for now in (0.0, 1.0):
    ...     t[0] = now
    ...     try: b.call(down)
    ...     except OSError as e: print(e)
    refused
    broker unavailable (refused); next try in 4 s
    >>> t[0] = 5.0; b.call(lambda: "up")
    'up'
    """

    def __init__(self, what: str, first_s: float = 5.0, max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.first_s, self.max_s, self.clock = what, first_s, max_s, clock
        self._lock = threading.Lock()
        self._delay = 0.0
        self._until = 0.0
        self._error: str | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            wait = self._until - self.clock()
            if self._error is not None and wait > 0:
                raise OSError(f"{self.what} unavailable ({self._error}); next try in "
                              f"{wait:.0f} s")
        try:
            out = fn(*args)
        except Exception as exc:
            with self._lock:
                if self._error is None:
                    log.warning("%s unavailable: %s; the /ui page shows no alerts or drift "
                                "events until it answers (retried after %g s, then up to "
                                "every %g s)", self.what, exc, self.first_s, self.max_s)
                self._delay = min(self._delay * 2, self.max_s) if self._delay else self.first_s
                self._until = self.clock() + self._delay
                self._error = str(exc) or type(exc).__name__
            raise
        with self._lock:
            if self._error is not None:
                log.info("%s answers again", self.what)
            self._error, self._delay = None, 0.0
        return out



def html_safe_json(content: Any) -> bytes:
    """``content`` as JSON with ``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``,
    ``\\u0026`` (they occur only inside strings, where the escapes mean the same): a title such
    as ``</script><script>`` read by anything that sniffs the body as HTML stays inert.

    >>> html_safe_json({"title": "<b>A & B</b>"})
    b'{"title":"\\\\u003cb\\\\u003eA \\\\u0026 B\\\\u003c/b\\\\u003e"}'
    >>> json.loads(html_safe_json({"title": "<b>A & B</b>"}))["title"]
    '<b>A & B</b>'
    """
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@dataclass
class UiSources:
    """What the page reads besides Redis."""

    flow_metrics: list[str] = field(default_factory=list)
    """URLs of the dataflow processes' metrics (``http://host:port/metrics``)."""
    alerts: Callable[[int], list[dict[str, Any]]] | None = None
    """``alerts(n)``: the latest ``n`` alerts of the drift monitor, oldest first."""
    user_drift: Callable[[str, int], list[dict[str, Any]]] | None = None
    """``user_drift(user_id, n)``: that user's latest ``n`` drift events, oldest first."""
    namespace_ttl_s: float = 10.0
    """How long a namespace summary (a full SCAN) is reused."""
    redis: Any | None = None
    """The client of the namespace summary's SCAN (``diam serve``'s: the writers'
    ``socket_timeout_s``, not the requests' short one); None: the recommender's."""
    history_s: float = 600.0
    """How much of the dataflow's history the charts keep."""


def histogram_quantile(q: float, bounds: list[float], cum: list[float]) -> float:
    """Quantile ``q`` of a cumulative histogram (upper bounds ``bounds``, the last one may be
    ``inf``), interpolated linearly within the bucket, as Prometheus' ``histogram_quantile``.

    >>> round(histogram_quantile(0.5, [0.1, 0.2, float("inf")], [0, 10, 10]), 6)
    0.15
    >>> histogram_quantile(0.99, [1.0, float("inf")], [0, 0])
    nan
    """
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_b
            if c == prev_c:
                return b
            return prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
        prev_b, prev_c = b, c
    return prev_b


def quantile_above_top(q: float, bounds: list[float], cum: list[float]) -> bool:
    """Whether quantile ``q`` falls in the ``+Inf`` bucket, where :func:`histogram_quantile`
    can only answer the top finite bound: the true value is above it, by any amount.

    >>> quantile_above_top(0.99, [300.0, float("inf")], [90, 100])
    True
    >>> quantile_above_top(0.5, [300.0, float("inf")], [90, 100])
    False
    """
    total = cum[-1] if cum else 0.0
    return (total > 0 and len(bounds) >= 2 and bounds[-1] == float("inf")
            and q * total > cum[-2])


def parse_flow(texts: list[str]) -> dict[str, Any]:
    """Totals over the dataflow processes from their exposition ``texts``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"records": 0.0, "valid": 0.0, "rejected": 0.0, "pushes": 0.0,
                           "users": 0.0, "lag": {}, "drift": {}, "fresh_bounds": [],
                           "fresh_cum": [], "fresh_sum": 0.0, "fresh_count": 0.0, "processes": [], "versions": set()}
    fresh: dict[float, float] = {}
    simple = {"diam_flow_records_total": "records", "diam_flow_events_valid_total": "valid",
              "diam_flow_events_rejected_total": "rejected", "diam_flow_pushes_total": "pushes",
              "diam_flow_users": "users"}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in simple:
                    out[simple[s.name]] += s.value
                    if s.name == "diam_flow_records_total":
                        out["processes"].append(s.labels.get("process", "?"))
                elif s.name == "diam_flow_consumer_lag":
                    out["lag"][f"{s.labels['topic']}[{s.labels['partition']}]"] = s.value
                elif s.name == "diam_flow_drift_events_total":
                    k = s.labels["kind"]
                    out["drift"][k] = out["drift"].get(k, 0.0) + s.value
                elif s.name == "diam_flow_freshness_seconds_bucket":
                    le = float(s.labels["le"])
                    fresh[le] = fresh.get(le, 0.0) + s.value
                elif s.name == "diam_flow_freshness_seconds_sum":
                    out["fresh_sum"] += s.value
                elif s.name == "diam_flow_freshness_seconds_count":
                    out["fresh_count"] += s.value
                elif s.name == "diam_flow_base_version":
                    out["versions"].add(s.labels["version"])
    out["fresh_bounds"] = sorted(fresh)
    out["fresh_cum"] = [fresh[b] for b in out["fresh_bounds"]]
    out["versions"] = sorted(out["versions"])
    return out


COUNTERS = ("records", "valid", "rejected", "pushes", "fresh_sum", "fresh_count")
"""The counters of :func:`parse_flow`'s totals (with ``drift`` per kind and the freshness
histogram's ``fresh_cum``): :class:`FlowScraper` adds up their increases, never their values."""


def add_increase(total: dict[str, Any], prev: dict[str, Any] | None, cur: dict[str, Any]) -> None:
    """Add to ``total`` what the counters of one process rose by from ``prev`` to ``cur``
    (both :func:`parse_flow` of that process alone), as Prometheus' ``rate()`` reads them: a
    counter lower than before is a reset (the process restarted), so its new value is the
    increase. A histogram counts as reset as a whole when its count went down or its buckets
    changed. ``prev`` None: the process is new, all of ``cur`` is the increase.

    >>> t = {"records": 0.0, "drift": {}}
    >>> a = {"records": 100.0, "drift": {"freeze": 3.0}}
    >>> b = {"records": 20.0, "drift": {"freeze": 5.0}}
    >>> add_increase(t, None, a); add_increase(t, a, b); t["records"], t["drift"]
    (120.0, {'freeze': 5.0})
    """
    for k in COUNTERS:
        if k in cur:
            old = prev.get(k, 0.0) if prev is not None else 0.0
            total[k] = total.get(k, 0.0) + (cur[k] - old if cur[k] >= old else cur[k])
    drift = total.setdefault("drift", {})
    for kind, v in cur.get("drift", {}).items():
        old = prev["drift"].get(kind, 0.0) if prev is not None else 0.0
        drift[kind] = drift.get(kind, 0.0) + (v - old if v >= old else v)
    if "fresh_cum" not in cur:
        return
    bounds, cum = cur["fresh_bounds"], cur["fresh_cum"]
    before = prev["fresh_cum"] if prev is not None and prev["fresh_bounds"] == bounds else None
    same = (before is not None and prev is not None and prev["fresh_count"] <= cur["fresh_count"]
            and all(x <= y for x, y in zip(before, cum, strict=True)))
    inc = [y - x for x, y in zip(before, cum, strict=True)] if same and before else cum
    if total.get("fresh_bounds") != bounds:  # the first histogram seen, or other buckets
        total["fresh_bounds"], total["fresh_cum"] = list(bounds), [0.0] * len(bounds)
    total["fresh_cum"] = [a + b for a, b in zip(total["fresh_cum"], inc, strict=True)]


class FlowScraper:
    """Scrapes the dataflow's metrics when the page asks (at most every ``min_every_s``) and
    keeps a short history, from which rates and recent quantiles are computed.

    Counters are kept per URL and summed as increases (:func:`add_increase`): a process that
    restarts (its counters back near 0) adds what it counted since, and a URL that does not
    answer keeps its last values (``errors`` names it), so neither shows as negative events/s
    or pushes/s, nor makes the totals drop. The totals (``records``, ``pushes``...) are then
    what the processes counted while this page watched, plus what each had counted when first
    scraped. Gauges (lag, users) are the URLs' last values, a silent URL's carried forward."""

    def __init__(self, urls: list[str], history_s: float = 600.0, min_every_s: float = 1.0,
                 fetch: Callable[[str], str] | None = None) -> None:
        self.urls, self.history_s, self.min_every_s = urls, history_s, min_every_s
        self._fetch = fetch or _http_get
        self._hist: deque[tuple[float, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self._last: dict[str, dict[str, Any]] = {}  # each URL's last parsed exposition
        self._total: dict[str, Any] = {}  # the counters' increases summed (add_increase)

    def sample(self) -> dict[str, Any]:
        with self._lock:
            now = time.time()
            if not self._hist or now - self._hist[-1][0] >= self.min_every_s:
                errors = []
                answered = False
                for url in self.urls:
                    try:
                        snap = parse_flow([self._fetch(url)])
                    except Exception as exc:  # one process down must not blank the page
                        errors.append(f"{url}: {exc}")
                        continue
                    answered = True
                    add_increase(self._total, self._last.get(url), snap)
                    self._last[url] = snap
                self.errors = errors
                if answered:
                    self._hist.append((now, self._merged()))
                while self._hist and now - self._hist[0][0] > self.history_s:
                    self._hist.popleft()
            return self._summary()

    def _merged(self) -> dict[str, Any]:
        """The totals over every URL seen: counters as summed increases, gauges as each URL's
        last values."""
        snaps = [self._last[u] for u in self.urls if u in self._last]
        out: dict[str, Any] = {
            "records": 0.0, "valid": 0.0, "rejected": 0.0, "pushes": 0.0, "fresh_sum": 0.0,
            "fresh_count": 0.0, "fresh_bounds": [], "fresh_cum": [],
            **{k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
               for k, v in self._total.items()},
            "users": sum(s["users"] for s in snaps), "lag": {},
            "processes": [p for s in snaps for p in s["processes"]],
            "versions": sorted({v for s in snaps for v in s["versions"]})}
        for s in snaps:
            out["lag"].update(s["lag"])
        return out

    def _summary(self) -> dict[str, Any]:
        if not self._hist:
            return {"available": False, "errors": self.errors, "urls": self.urls}
        t, cur = self._hist[-1]
        rows = []
        prev = None
        for ts, snap in self._hist:
            row = {"t": ts, "lag": sum(snap["lag"].values())}
            if prev is not None and ts > prev[0]:
                dt = ts - prev[0]
                row["events_per_s"] = (snap["records"] - prev[1]["records"]) / dt
                row["pushes_per_s"] = (snap["pushes"] - prev[1]["pushes"]) / dt
                row["fresh_p99"], row["fresh_p99_above"] = self._quantile(prev[1], snap, 0.99)
            rows.append(row)
            prev = (ts, snap)
        # rates and quantiles over the last ~10 s, not since the start
        base = next((s for ts, s in self._hist if t - ts <= 10.0), cur)
        base_t = next((ts for ts, s in self._hist if t - ts <= 10.0), t)
        dt = t - base_t

        def rate(k: str) -> float:
            return (cur[k] - base[k]) / dt if dt > 0 else float("nan")

        # freshness of the pushes acknowledged in the window; with none (an idle or finished
        # run), of every push since the process started, and the answer says which
        recent = dt > 0 and base["fresh_cum"] and cur["fresh_cum"][-1] > base["fresh_cum"][-1]
        # a quantile in the +Inf bucket is only known to exceed the top bound (a replay of
        # old events is years fresh): the answer says so and gives the exact mean beside it
        bounds = cur["fresh_bounds"]
        same = recent and base["fresh_bounds"] == bounds
        cum = ([y - x for x, y in zip(base["fresh_cum"], cur["fresh_cum"], strict=True)]
               if same else cur["fresh_cum"])
        n = cur["fresh_count"] - (base["fresh_count"] if same else 0.0)
        mean = (cur["fresh_sum"] - (base["fresh_sum"] if same else 0.0)) / n if n > 0 else float("nan")
        p50, p99 = histogram_quantile(0.5, bounds, cum), histogram_quantile(0.99, bounds, cum)
        finite = [b for b in bounds if b != float("inf")]
        xs = [r["t"] for r in rows]
        return {
            "available": True,
            "errors": self.errors,
            "processes": cur["processes"],
            "versions": cur["versions"],
            "records": cur["records"], "valid": cur["valid"], "rejected": cur["rejected"],
            "pushes": cur["pushes"], "users": cur["users"],
            "lag_total": sum(cur["lag"].values()), "lag": cur["lag"],
            "events_per_s": rate("records"), "valid_per_s": rate("valid"),
            "rejected_per_s": rate("rejected"), "pushes_per_s": rate("pushes"),
            "freshness_p50_s": p50, "freshness_p99_s": p99,
            "freshness_p50_above_top": quantile_above_top(0.5, bounds, cum),
            "freshness_p99_above_top": quantile_above_top(0.99, bounds, cum),
            "freshness_top_bucket_s": finite[-1] if finite else float("nan"),
            "freshness_mean_s": mean,
            "freshness_over": "last 10 s" if recent else "since start",
            "drift": cur["drift"],
            "svg": {
                "lag": svg.line(xs, [r["lag"] for r in rows], "consumer lag (records)",
                                testid="chart-lag"),
                "events": svg.line(xs, [r.get("events_per_s", float("nan")) for r in rows],
                                   "events/s", testid="chart-events"),
                # a point in the +Inf bucket is the top bound: drawn and labelled "> 300 s"
                "freshness": svg.line(xs, [r.get("fresh_p99", float("nan")) for r in rows],
                                      "freshness p99", unit=" s", testid="chart-freshness",
                                      above=[r.get("fresh_p99_above", False) for r in rows]),
            },
        }

    @staticmethod
    def _quantile(a: dict[str, Any], b: dict[str, Any], q: float) -> tuple[float, bool]:
        """Quantile ``q`` of the pushes between ``a`` and ``b``, and whether it is above the
        top bound (:func:`quantile_above_top`: the value is then only that bound)."""
        bounds = b["fresh_bounds"]
        cum = (b["fresh_cum"] if a["fresh_bounds"] != bounds else
               [y - x for x, y in zip(a["fresh_cum"], b["fresh_cum"], strict=True)])
        return histogram_quantile(q, bounds, cum), quantile_above_top(q, bounds, cum)


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2.0) as resp:
        return resp.read().decode()


def alerts_of_namespace(alerts: list[dict[str, Any]], ns: str,
                        users_of_ns: Callable[[list[str]], set[str]] | None = None
                        ) -> list[dict[str, Any]]:
    """The ``alerts`` that concern namespace ``ns``: those of a monitor of ``ns``
    (``namespace == ns``), and those of a monitor of every namespace (no ``namespace``) that
    name users of ``ns``, with only those users kept (README "Drift alerts"). A user without a
    namespace (a dataflow that did not say it) is one of ``ns`` if ``users_of_ns`` (which of
    these ids ``ns`` holds) says so; without it, not.

    >>> a = [{"kind": "freezes", "namespace": "other", "top_users": []},
    ...      {"kind": "freezes", "top_users": [{"user_id": "u", "namespace": "x"},
    ...                                         {"user_id": "v", "namespace": "y"},
    ...                                         {"user_id": "w"}, {"user_id": "z"}]},
    ...      {"kind": "k_change", "namespace": "x", "top_users": []}]
    >>> [(al["kind"], [u["user_id"] for u in al["top_users"]])
    ...  for al in alerts_of_namespace(a, "x", lambda ids: {"w"} & set(ids))]
    [('freezes', ['u', 'w']), ('k_change', [])]
    """
    unmarked = sorted({u["user_id"] for al in alerts if al.get("namespace") is None
                       for u in al.get("top_users") or [] if u.get("namespace") is None})
    known = users_of_ns(unmarked) if unmarked and users_of_ns is not None else set()
    out = []
    for al in alerts:
        own = al.get("namespace")
        if own == ns:
            out.append(al)
        elif own is None:
            users = [u for u in al.get("top_users") or [] if u.get("namespace") == ns
                     or (u.get("namespace") is None and u["user_id"] in known)]
            if users:
                out.append({**al, "top_users": users})
    return out


def namespace_view(client: Any, ns: str, max_users: int = 200_000) -> dict[str, Any]:
    """K_u histogram and d_u distribution (10 bins over [0, 1]) of ``ns``, as JSON and SVG."""
    from serving_cache.inspect import iter_users

    ks: dict[int, int] = {}
    ds: list[float] = []
    users = 0
    for _, uv, _size in iter_users(client, ns):
        users += 1
        if uv is not None:
            ks[uv.k] = ks.get(uv.k, 0) + 1
            ds.append(float(uv.d))
        if users >= max_users:
            break
    d_counts, edges = np.histogram(np.asarray(ds, dtype=np.float64), bins=10, range=(0.0, 1.0))
    k_labels = [str(k) for k in sorted(ks)]
    d_labels = [f"{edges[i]:.1f}" for i in range(10)]
    return {
        "namespace": ns, "users": users, "truncated": users >= max_users,
        "k_hist": {str(k): n for k, n in sorted(ks.items())},
        "d_hist": {"edges": edges.round(2).tolist(), "counts": d_counts.tolist()},
        "d_mean": float(np.mean(ds)) if ds else None,
        "svg": {
            "k": svg.bars(k_labels, [ks[int(k)] for k in k_labels], "K_u (users per K)",
                          testid="chart-k"),
            "d": svg.bars(d_labels, d_counts.tolist(), "d_u (users per bin, lower edge)",
                          testid="chart-d"),
        },
    }


_USERS_PATH = "/ui/api/users/"


def _path_tail(request: Request) -> str:
    """The user id of ``/ui/api/users/{user_id:path}``: the request path's whole tail after
    :data:`_USERS_PATH`. Starlette's route regex ends in ``$``, which matches before a final
    line break, so ``/ui/api/users/21%0A`` matched with ``user_id`` '21' and was served as user
    21; the whole tail ('21\n') meets the one rule (``reader.valid_user_id``): a 422."""
    return str(request.scope["path"]).partition(_USERS_PATH)[2]


def mount_ui(app: Any, recommender: Any, ns: str, sources: UiSources) -> None:
    """Add ``/ui`` and its JSON routes to the FastAPI ``app``."""
    from fastapi import Depends, Query
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from serving_cache.api import _known_query, redis_outage_errors
    from serving_cache.reader import USER_ID_ALLOWED, USER_ID_MAX_LEN, valid_user_id
    from serving_cache.recommend import MAX_N, MAX_TOP

    # the public routes' rule for an outage (api.redis_outage_errors): a 503 naming it, not a 500
    redis_errors = redis_outage_errors()

    broker = Backoff("kafka broker (alerts and drift topics)")

    def redis_unavailable(exc: BaseException) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"redis unavailable: {exc}"})

    scan_client = sources.redis if sources.redis is not None else recommender.client
    scraper = FlowScraper(sources.flow_metrics, history_s=sources.history_s)
    cache: dict[str, tuple[float, dict[str, Any]]] = {}
    cache_lock = threading.Lock()

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def ui_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "ui.html").read_text())

    # a parameter a route does not take is a 422 naming the ones it takes, as on the public
    # routes (one owner: api._known_query)
    known = [Depends(_known_query)]

    @app.get("/ui/api/flow", include_in_schema=False, dependencies=known)
    def ui_flow() -> JSONResponse:
        if not sources.flow_metrics:
            return JSONResponse({"available": False, "errors": [
                "no dataflow metrics configured (diam serve --flow-metrics URL)"]})
        return JSONResponse(nan_to_none(scraper.sample()))

    @app.get("/ui/api/namespace", include_in_schema=False, dependencies=known)
    def ui_namespace() -> JSONResponse:
        with cache_lock:
            hit = cache.get(ns)
            if hit is None or time.monotonic() - hit[0] > sources.namespace_ttl_s:
                try:
                    hit = (time.monotonic(), namespace_view(scan_client, ns))
                except redis_errors as exc:
                    return redis_unavailable(exc)
                cache[ns] = hit
        return JSONResponse(nan_to_none(hit[1]))

    def users_of_ns(ids: list[str]) -> set[str]:
        """Which of ``ids`` have vectors in ``ns`` (one pipelined EXISTS each); none while
        Redis is down, so that an outage shows no other namespace's users."""
        from serving_cache.keys import user_key

        try:
            pipe = recommender.client.pipeline(transaction=False)
            for u in ids:
                pipe.exists(user_key(ns, u))
            return {u for u, e in zip(ids, pipe.execute(), strict=True) if e}
        except redis_errors:
            return set()

    @app.get("/ui/api/alerts", include_in_schema=False, dependencies=known)
    def ui_alerts(n: int = Query(20, ge=1, le=MAX_ALERTS)) -> JSONResponse:
        if sources.alerts is None:
            return JSONResponse({"available": False, "alerts": []})
        try:
            # the monitor's topic holds every namespace's alerts: read more than n, keep ns's
            mine = alerts_of_namespace(broker.call(sources.alerts, min(10 * n, 1000)), ns,
                                       users_of_ns)[-n:]
            return JSONResponse({"available": True, "namespace": ns, "alerts": mine,
                                 "filter": f"namespace {ns} only (all-namespace alerts: "
                                           f"its users only)"})
        except Exception as exc:
            return JSONResponse({"available": False, "alerts": [], "error": str(exc)})

    # the public routes' bounds (/users/{id}/recommendations' n, /users/{id}/interests' top):
    # out of them, 422 as there, not a slice row[:-1] or every item of the catalogue
    # {user_id:path}: an id with '/' (which the contract does not allow) reaches this route and
    # is answered "not a valid user id", not a bare 404 of no route; the id is the path's whole
    # tail (_path_tail), not Starlette's match, which leaves a final line break out
    @app.get(_USERS_PATH + "{user_id:path}", include_in_schema=False, dependencies=known)
    def ui_user(user_id: str = Depends(_path_tail),
                n: int = Query(20, ge=1, le=MAX_N),
                top: int = Query(5, ge=1, le=MAX_TOP)) -> Response:
        return user_view(user_id, n, top)

    # the page's route: the id as a query parameter, so that the ids "." and ".." (valid by
    # the contract) reach the server; in a path, browsers collapse them, %2E included
    @app.get("/ui/api/user", include_in_schema=False, dependencies=known)
    def ui_user_by_query(user_id: str = Query(alias="id"),
                         n: int = Query(20, ge=1, le=MAX_N),
                         top: int = Query(5, ge=1, le=MAX_TOP)) -> Response:
        return user_view(user_id, n, top)

    def user_view(user_id: str, n: int, top: int) -> Response:
        if not valid_user_id(user_id):  # the one rule (a bare match let '21\n' through)
            return JSONResponse(status_code=422, content={"detail": (
                f"not a valid user id: {user_id!r} (1 to {USER_ID_MAX_LEN} of "
                f"{USER_ID_ALLOWED})")})
        if recommender.active is None:
            return JSONResponse(status_code=503, content={"detail": "no snapshot loaded"})
        try:
            it = recommender.interests(user_id, top=top)
            rec = recommender.recommend(user_id, n=n)
        except redis_errors as exc:
            return redis_unavailable(exc)
        snap = recommender.active
        interests = []
        for items, label, titles in zip(it.top_items, it.top_category, it.top_titles,
                                        strict=True):
            idx = np.array([snap.index_of(x) for x in items], dtype=np.int64)
            cats = [c if j >= 0 else None
                    for j, c in zip(idx, snap.category_names_of(np.maximum(idx, 0)), strict=True)]
            interests.append({
                "top_category": label,
                "top_items": [{"item_id": x, "category": c, "title": t}
                              for x, c, t in zip(items, cats, titles, strict=True)],
            })
        drift: list[dict[str, Any]] = []
        drift_error = None
        if sources.user_drift is not None:
            try:
                drift = broker.call(sources.user_drift, user_id, 20)
            except Exception as exc:
                drift_error = str(exc)
        body = {
            "user_id": user_id, "cold": it.cold, "k": it.k, "d": it.d, "seq": it.seq,
            "ts": it.ts, "n": it.n, "model": it.model, "stale": it.stale, "reason": it.reason,
            "interests": interests,
            "recommendations": {
                "items": [{"item_id": x, "score": s, "category": c, "title": t}
                          for x, s, c, t in zip(rec.items, rec.scores, rec.categories,
                                                rec.titles, strict=True)],
                "d_user": rec.d_user, "d_used": rec.d_used, "mode": "auto", "cold": rec.cold,
                "k": rec.k, "snapshot": rec.snapshot, "stale": rec.stale, "reason": rec.reason,
            },
            "drift": drift, "drift_error": drift_error,
        }
        return Response(html_safe_json(nan_to_none(body)), media_type="application/json")
