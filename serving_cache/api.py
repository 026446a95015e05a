"""The recommendation HTTP API (FastAPI), built by :func:`get_app`.

Routes: ``GET /users/{id}/recommendations``, ``GET /users/{id}/interests``, ``GET /health``
(503 while Redis does not answer or no snapshot is loaded), ``GET /metrics`` (Prometheus) and
the OpenAPI schema at ``/openapi.json``; ``HEAD`` on each of them answers the GET's status and
headers without the body. Invalid parameters answer 422 with FastAPI's
validation body (``detail: [{loc, msg, type}]``); every rule is in the schema, so a request
the schema accepts is answered (parameters a mode does not use, like ``delta`` with
``mode=auto``, are ignored, and ``d_used`` in the answer shows what ran). A query parameter the
route does not take is refused (422, ``extra_forbidden``, naming the ones it takes): ``k=5``
for ``n=5`` answered 20 items without a word; so is one of a single value given twice (422,
``repeated``: ``n=5&n=7`` was answered with the last), ``seen`` being given once per value. Unknown users, and users
whose stored value does not decode, get a cold-start answer marked ``cold`` with its
``reason``; an answer from the active index for vectors of an unloaded snapshot is marked
``stale``, and its ``reason`` says so (and that the user's last seen items were not left out).

Hot reload: give a ``watcher`` with ``poll() -> (version, path) | None`` (e.g.
``snapshotter.ActiveWatcher``, which verifies hashes first); a background thread polls it every
``reload_every_s`` and swaps the new snapshot in, while requests keep using the old one until
the new one is fully loaded. A snapshot that fails to load leaves the old one serving.
``diam_snapshot_reloads_total`` counts ``ok`` for a new version swapped in (the first load,
nothing served before, is none: a restart is no reload) and ``failed`` for each announced
version refused, the watcher's own refusals included (its ``refusals``: a file failing its
hash, no manifest); ``/health`` names the announced version when another one is served
(``announced``, and ``refused`` with the reason).

Latency (bench/serve.py): the recommendation route answers JSON encoded by ``orjson`` in
``RecommendationOut``'s shape instead of having FastAPI validate and encode the model; the
metrics middleware is plain ASGI; at startup the aggregator's kernels are compiled and the
loaded state is frozen out of the garbage collector's scans (:func:`settle_heap`). uvicorn
picks ``httptools`` and ``uvloop`` when they are installed (dependencies): a C parser and a C
event loop instead of ``h11`` and asyncio's Python loop.

The recommendation route is ``async def``: it runs in the event loop's thread, Redis GET
included, instead of being handed to a worker thread and back. The hand-off (a queue, a thread
wake-up, a wake-up of the loop, and the GIL passed each way) cost about as much CPU as
FastAPI's whole request handling, and one process computes one request's Python at a time
anyway (the GIL); more cores are used by more processes (``diam serve --processes``). The
price: a Redis that hangs holds every request, /health and /metrics included, while a GET
waits (a worker pool of 40 threads would be used up within a fraction of a second at a few
hundred requests/s all the same, and /health waits for a worker too). ``diam serve`` bounds
that: its client's read timeout is ``ServeConfig.redis_read_timeout_s`` (0.25 s, not the
writers' 5 s), a timed-out read is not retried (``serving_cache.reader.fail_fast``: the retry
is for a broken connection), and the recommender's ``breaker`` (``serving_cache.breaker``)
sends the next read at once as a probe; after two in a row the users' reads answer 503 at once
for a pause (0.5 s, doubled at each probe that times out up to 1.5 s) before one read asks
Redis again, and ``/health`` answers 503 with ``reads_paused_s``: a hung Redis costs the server
one read timeout every pause, a brief stall only the reads it delays. The other routes
are rare and stay plain ``def``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import types
import typing
from collections import Counter
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from redis.cluster import RedisCluster

from serving_cache.connection import primaries_down
from serving_cache.reader import USER_ID_CHARS, USER_ID_MAX_LEN, USER_ID_PATTERN
from serving_cache.recommend import DEVICE_DELTA, MAX_DELTA, MAX_N, MAX_TOP, Recommender
from serving_cache.retrieval import SnapshotIndex

__all__ = ["get_app", "redis_outage_errors", "settle_heap", "MAX_N", "MAX_SEEN"]

log = logging.getLogger(__name__)

MAX_SEEN = 500


class RecItem(BaseModel):
    item_id: str
    score: float
    category: str | None
    title: str | None = None
    """The item's title (the snapshot's ``item_titles.json``, or the catalogue's for an item
    added since); null when unknown."""


class RecommendationOut(BaseModel):
    user_id: str
    items: list[RecItem]
    cold: bool
    mode: Literal["auto", "manual", "context"]
    d_user: float | None
    d_used: float | None
    k: int
    snapshot: str
    user_model: str | None
    stale: bool
    reason: str | None


class InterestOut(BaseModel):
    vector: list[float]
    top_items: list[str]
    top_category: str | None
    top_titles: list[str | None] = []
    """The title of each of ``top_items``, null when unknown."""


class InterestsOut(BaseModel):
    user_id: str
    cold: bool
    k: int
    d: float | None
    dim: int
    seq: int | None
    ts: int | None
    n: int | None
    model: str | None
    interests: list[InterestOut]
    stale: bool
    """The top items come from the active index, not from the vectors' own snapshot."""
    reason: str | None
    """Why the user is cold, has no top items, or is stale (the recommendations' words)."""


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool
    snapshot: str | None
    pid: int
    """The server process that answered (``diam serve --processes`` runs several)."""
    redis_down: list[str] | None = None
    """On a Redis Cluster, the primaries that did not answer PING (``host:port``; each is
    asked, ``serving_cache.connection.primaries_down``); absent when all answered, and on a
    single server (``redis`` says it)."""
    reads_paused_s: float | None = None
    """Set while the users' reads are refused without asking Redis (reads timed out in a row:
    ``serving_cache.breaker``): the seconds before a read asks it again (0.0 while that probe is
    out); ``status`` is then ``unavailable``. Absent when reads go to Redis."""
    announced: str | None = None
    """The active version announced (``diam:<ns>:model:active``, else ``ACTIVE``) when it is
    not the one served: a new version refused (``refused`` says why) or not loaded yet.
    ``status`` does not change for it: the served version still answers. Absent otherwise."""
    refused: str | None = None
    """Why the ``announced`` version was refused (a file failing its hash, no manifest, a
    load that failed); absent when it was not."""


class ErrorOut(BaseModel):
    detail: str


_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Redis down or no snapshot loaded"}
}
UserId = Path(pattern=USER_ID_PATTERN,
              description=f"User id: 1..{USER_ID_MAX_LEN} of [{USER_ID_CHARS}]. The ids '.' "
              "and '..' are sent percent-encoded, %2E and %2E%2E (curl and HTTP libraries "
              "send those as they are): as bare path segments clients collapse them, and "
              "browsers collapse %2E too (the /ui page asks /ui/api/user?id=)")


def _metrics(app_name: str) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()  # one per app, so several apps (tests) never collide
    return {
        "registry": registry,
        "requests": Counter(
            "diam_api_requests", "HTTP requests", ["route", "status"], registry=registry
        ),
        "latency": Histogram(
            "diam_api_request_seconds",
            "Request latency",
            ["route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        ),
        "cold": Counter("diam_recommend_cold", "Cold-start answers", registry=registry),
        "stale": Counter(
            "diam_recommend_stale",
            "Answers from vectors of an unloaded snapshot",
            registry=registry,
        ),
        "snapshot": Gauge(
            "diam_snapshot_active",
            "1 for the loaded active snapshot version",
            ["version"],
            registry=registry,
        ),
        "reloads": Counter(
            "diam_snapshot_reloads", "Snapshot reloads: ok, a new version swapped in (not the "
            "start's first load); failed, an announced version refused (its hash, no manifest, "
            "a load that failed)", ["outcome"], registry=registry
        ),
    }


class _Observe:
    """Counts requests by route template and status, and times them (Prometheus).

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs
    the app in a separate task with memory streams between them, which cost more than the whole
    recommendation on a loaded machine."""

    def __init__(self, app: Any, metrics: dict[str, Any]) -> None:
        self.app = app
        self.m = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the scope: label by its template, never by
            # the raw path, so the label set stays bounded.
            name = getattr(scope.get("route"), "path", "unmatched")
            self.m["requests"].labels(name, str(status)).inc()
            self.m["latency"].labels(name).observe(time.perf_counter() - start)


async def _known_query(request: Request) -> None:
    """Refuse query parameters the matched route does not declare (its dependant's query
    parameters: one owner, the signature), and a parameter of one value given more than once
    (``n=5&n=7`` was answered with the last, without a word; a list, as ``seen``, is given
    once per value), as FastAPI's own 422. ``async``: a plain ``def`` dependency would be
    handed to a worker thread and back on every request."""
    route = request.scope.get("route")
    params = route.dependant.query_params if route is not None else []
    known = {q.alias for q in params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([{
            "loc": ("query", name), "type": "extra_forbidden",
            "msg": f"unknown query parameter (this route takes {', '.join(sorted(known))})",
        } for name in unknown])
    single = {q.alias for q in params if not _takes_many(q.field_info.annotation)}
    given = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name in single if given[name] > 1)
    if repeated:
        raise RequestValidationError([{
            "loc": ("query", name), "type": "repeated",
            "msg": f"given {given[name]} times: this parameter takes one value",
        } for name in repeated])


def _takes_many(annotation: Any) -> bool:
    """Whether a query parameter's annotation is a list of values (``list[str] | None``).

    >>> _takes_many(list[str] | None), _takes_many(int | None), _takes_many(bool)
    (True, False, False)
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_many(a) for a in typing.get_args(annotation))
    return (typing.get_origin(annotation) or annotation) in (list, tuple, set, frozenset)


class _HeadAsGet:
    """Answers ``HEAD`` on every ``GET`` route as HTTP says a server should: the GET's status
    and headers, no body (load balancers probe ``/health`` with HEAD; FastAPI registers GET
    only and answered 405). The route runs as for a GET; the body is dropped here, whatever
    the server does with it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def no_body(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, no_body)


def settle_heap() -> None:
    """Collect, then freeze what is alive now (modules, the loaded snapshot) out of the cyclic
    garbage collector's scans: with a large snapshot loaded, a full collection is a long pause
    on whichever request happens to trigger it (``bench/serve.py`` counts the collector's
    pauses). Frozen objects are still freed by reference counting when a snapshot is dropped."""
    gc.collect()
    gc.freeze()


def redis_outage_errors() -> tuple[type[BaseException], ...]:
    """The redis exceptions that mean Redis is unreachable: the routes answer them with a 503
    ("redis unavailable"). :data:`serving_cache.outage.UNREACHABLE_ERRORS` (a connection
    refused or broken, a timeout, a Redis Cluster none of whose nodes answers, a slot no node
    serves) and a cluster saying CLUSTERDOWN: the cluster client raises the last three outside
    ``redis.ConnectionError``, and they were a 500 with a traceback."""
    import redis

    from serving_cache.outage import UNREACHABLE_ERRORS

    return (*UNREACHABLE_ERRORS, redis.exceptions.ClusterDownError)


def get_app(
    recommender: Recommender,
    watcher: Any | None = None,
    reload_every_s: float = 5.0,
    ui: Any | None = None,
) -> FastAPI:
    """Build the API around a :class:`Recommender` (and optionally a snapshot watcher).

    ``ui`` (a :class:`serving_cache.ui.UiSources`) adds the read-only operator page at ``/ui``.
    """
    m = _metrics("diam")
    stop = threading.Event()
    redis_errors = redis_outage_errors()

    def set_snapshot_gauge() -> None:
        m["snapshot"].clear()
        if recommender.active is not None:
            m["snapshot"].labels(recommender.active.version).set(1)

    # the refusals seen: the watcher's own (failed verification, counted by it: ``refusals``,
    # ``last_refusal``) and the loads that failed here; /health names the last one's reason
    seen = {"watcher": 0}
    last_refused: list[tuple[str, str]] = []  # [(version, reason)], the last refusal

    def refresh() -> str | None:
        """Poll the watcher once; load and swap in a new version. Returns the new version."""
        if watcher is None:
            return None
        found = watcher.poll()
        refusals = int(getattr(watcher, "refusals", 0))
        if refusals > seen["watcher"]:  # it logged why
            m["reloads"].labels("failed").inc(refusals - seen["watcher"])
            seen["watcher"] = refusals
            last_refused[:] = [watcher.last_refusal]
        if found is None:
            return None
        version, path = found
        was = recommender.active.version if recommender.active is not None else None
        t0 = time.monotonic()
        try:
            snap = SnapshotIndex.load(path, version)
        except Exception as exc:  # keep serving the old one
            log.warning("snapshot reload: refused %s, it failed to load (%s); still serving %s",
                        version, exc, was)
            m["reloads"].labels("failed").inc()
            last_refused[:] = [(version, f"failed to load: {exc}")]
            return None
        recommender.swap(snap)
        settle_heap()
        set_snapshot_gauge()
        if was is None:
            # the first load (the start's, or the first version ever announced) is no reload:
            # counted, an alert on increase(..{outcome="ok"}) > 0 fired at every restart
            log.info("snapshot: serving %s, loaded in %.2f s", version, time.monotonic() - t0)
            return version
        m["reloads"].labels("ok").inc()
        # one line per reload, so that a log says which model answered when, and how long
        # the swap took (the /metrics counter says only how many)
        log.info("snapshot reload: serving %s (was %s), loaded in %.2f s", version, was,
                 time.monotonic() - t0)
        return version

    def announced(served: str | None) -> tuple[str | None, str | None]:
        """The announced version when it is not ``served``, and why it was refused (None when
        it was not): what /health says beside the served one."""
        version = getattr(watcher, "announced", None)
        if version is None or version == served:
            return None, None
        why = [reason for refused, reason in last_refused if refused == version]
        return str(version), (why[0] if why else None)

    def reload_loop() -> None:
        while not stop.wait(reload_every_s):
            try:
                refresh()
            except Exception as exc:  # the loop must survive anything a poll throws
                log.warning("snapshot poll failed: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        thread = None
        if watcher is not None:
            refresh()
            thread = threading.Thread(target=reload_loop, name="snapshot-reload", daemon=True)
            thread.start()
        recommender.warm_up()
        settle_heap()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = FastAPI(
        title="diam-stream recommendations",
        version="1",
        description="Top-N recommendations from fresh multi-interest vectors (Redis) and the "
        "active snapshot's FAISS item index.",
        lifespan=lifespan,
    )
    app.state.recommender = recommender
    app.state.refresh = refresh
    app.state.metrics = m
    set_snapshot_gauge()

    app.add_middleware(_Observe, metrics=m)
    app.add_middleware(_HeadAsGet)  # outermost: _Observe sees the GET scope the router fills

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationOut,
        responses=_UNAVAILABLE,
        summary="Top-N items for a user",
        dependencies=[Depends(_known_query)],
    )
    async def recommendations(
        user_id: Annotated[str, UserId],
        n: Annotated[int, Query(ge=1, le=MAX_N, description="Number of items")] = 20,
        mode: Annotated[
            Literal["auto", "manual", "context"], Query(description="How d_u is chosen")
        ] = "auto",
        delta: Annotated[
            float,
            Query(
                ge=-MAX_DELTA,
                le=MAX_DELTA,
                allow_inf_nan=False,
                description="Diversity shift d_u·(1+delta) for mode=manual and mode=context; "
                "mode=auto ignores it",
            ),
        ] = 0.0,
        hour: Annotated[
            int | None, Query(ge=0, le=23, description="Local hour; only mode=context uses it")
        ] = None,
        device: Annotated[
            str | None,
            Query(
                pattern=f"^({'|'.join(DEVICE_DELTA)})$",
                description=f"Device kind ({', '.join(DEVICE_DELTA)}); only mode=context uses it",
            ),
        ] = None,
        exclude_seen: Annotated[
            bool, Query(description="Leave out the user's last seen items (pushed by the "
                                    "stream with the vectors; new items among them through the "
                                    "namespace's list of added ids) and the items listed in "
                                    "seen")
        ] = True,
        seen: Annotated[
            list[str] | None,
            Query(
                max_length=MAX_SEEN,
                description=f"Item ids the user has seen (at most {MAX_SEEN}), the parameter "
                "repeated for each: seen=A&seen=B. A comma is part of an id, not a separator "
                "(item ids may hold one): seen=A,B is the one id 'A,B'",
            ),
        ] = None,
    ) -> Any:
        seen = seen or []
        if recommender.active is None:
            return JSONResponse(status_code=503, content={"detail": "no snapshot loaded"})
        context = {k: v for k, v in (("hour", hour), ("device", device)) if v is not None}
        try:
            rec = recommender.recommend(
                user_id,
                n=n,
                mode=mode,
                delta=delta,
                context=context,
                exclude_seen=exclude_seen,
                seen=seen,
            )
        except redis_errors as exc:
            return JSONResponse(status_code=503, content={"detail": f"redis unavailable: {exc}"})
        if rec.cold:
            m["cold"].inc()
        if rec.stale:
            m["stale"].inc()
        # Serialised here, in RecommendationOut's shape (the schema test holds it to that):
        # returning the model made FastAPI validate it and encode it field by field.
        body = {
            "user_id": rec.user_id,
            "items": [
                {"item_id": i, "score": s, "category": c, "title": t}
                for i, s, c, t in zip(rec.items, rec.scores, rec.categories, rec.titles,
                                      strict=True)
            ],
            "cold": rec.cold,
            "mode": mode,
            "d_user": rec.d_user,
            "d_used": rec.d_used,
            "k": rec.k,
            "snapshot": rec.snapshot,
            "user_model": rec.user_model,
            "stale": rec.stale,
            "reason": rec.reason,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get(
        "/users/{user_id}/interests",
        response_model=InterestsOut,
        responses=_UNAVAILABLE,
        summary="A user's interest vectors and the top items of each",
        dependencies=[Depends(_known_query)],
    )
    def interests(
        user_id: Annotated[str, UserId], top: Annotated[int, Query(ge=1, le=MAX_TOP)] = 5
    ) -> Any:
        if recommender.active is None:
            return JSONResponse(status_code=503, content={"detail": "no snapshot loaded"})
        try:
            it = recommender.interests(user_id, top=top)
        except redis_errors as exc:
            return JSONResponse(status_code=503, content={"detail": f"redis unavailable: {exc}"})
        per = [
            InterestOut(
                vector=v,
                top_items=it.top_items[i] if i < len(it.top_items) else [],
                top_category=it.top_category[i] if i < len(it.top_category) else None,
                top_titles=it.top_titles[i] if i < len(it.top_titles) else [],
            )
            for i, v in enumerate(it.vectors)
        ]
        return InterestsOut(
            user_id=it.user_id,
            cold=it.cold,
            k=it.k,
            d=it.d,
            dim=it.dim,
            seq=it.seq,
            ts=it.ts,
            n=it.n,
            model=it.model,
            interests=per,
            stale=it.stale,
            reason=it.reason,
        )

    @app.get(
        "/health",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "Redis down or no snapshot loaded"}},
        summary="Redis answers PING (each primary of a cluster) and a snapshot is loaded",
        response_model_exclude_none=True,
    )
    def health() -> Any:
        # the users' reads refused (the breaker open) is this process unavailable, whatever a
        # PING says: a load balancer sends the users elsewhere rather than to 503s (read
        # before the PINGs, which a hung node holds longer than a first pause)
        breaker = recommender.reader.breaker
        paused = round(breaker.paused_for(), 3) if breaker is not None and breaker.open else None
        down: list[str] = []
        try:
            if isinstance(recommender.client, RedisCluster):  # PING reaches one node of it
                down = primaries_down(recommender.client)
                redis_ok = not down
            else:
                redis_ok = bool(recommender.client.ping())
        except Exception:
            redis_ok = False
        snap = recommender.active.version if recommender.active is not None else None
        other, refused = announced(snap)
        body = HealthOut(
            status="ok" if redis_ok and snap and paused is None else "unavailable",
            redis=redis_ok, snapshot=snap, pid=os.getpid(), redis_down=down or None,
            reads_paused_s=paused, announced=other, refused=refused,
        )
        return (
            body
            if body.status == "ok"
            else JSONResponse(status_code=503, content=body.model_dump(exclude_none=True)
                              | {"snapshot": snap})
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(m["registry"]), media_type=CONTENT_TYPE_LATEST)

    if ui is not None:
        from serving_cache.ui import mount_ui

        mount_ui(app, recommender, recommender.reader.ns, ui)
    return app
