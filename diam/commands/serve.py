"""``diam serve``: the recommendation HTTP API."""

from __future__ import annotations

import click

from diam.commands import (
    _without_password,
    finite,
    get_settings,
    namespace_of,
    namespace_option,
    not_empty,
)


def _http_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """--flow-metrics: each an http(s) URL with a host (the page would poll a typo forever)."""
    from urllib.parse import urlsplit

    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise click.BadParameter(f"{url!r} is not an http(s) URL, e.g. "
                                     "http://127.0.0.1:9108/metrics")
    return urls


@click.command("serve")
@click.option("--host", default=None, callback=not_empty,
              help="Bind address (default: settings serve.host).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Bind port, 1..65535 (default: settings serve.port).")
@namespace_option("to read users from")
@click.option(
    "--reload-every",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=5.0,
    show_default=True,
    help="Seconds between checks for a new active snapshot (hot reload).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="FAISS (OpenMP) and numpy BLAS threads. One is fastest for the few small "
    "searches and products of a request; concurrency comes from request threads.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Server processes sharing the port, each a full server (default: settings "
    "serve.processes, DIAM_SERVE_PROCESSES; 1). One process is bound by the GIL; use about "
    "one per core. A process that dies stops the server with exit code 1.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--flow-metrics",
    multiple=True,
    metavar="URL",
    callback=lambda _c, _p, urls: _http_urls(urls),
    help="Metrics endpoint of a dataflow process (diam run --metrics-port), e.g. "
    "http://127.0.0.1:9108/metrics; repeat for each process. The /ui page shows their lag, "
    "events/s and freshness.",
)
@click.option("--ui/--no-ui", default=True, show_default=True, help="Serve the operator page at /ui.")
@click.option(
    "--follow-items/--no-follow-items",
    default=True,
    show_default=True,
    help="Tail the catalogue topic (kafka.items_topic): items the snapshot does not know get "
    "a content-tower embedding and are added to the FAISS index at once.",
)
@click.option(
    "--live-popularity/--no-live-popularity",
    default=True,
    show_default=True,
    help="Tail the clicks topic: cold users get the items most clicked lately (decayed count), "
    "and items first seen in clicks become recommendable.",
)
@click.option(
    "--popularity-half-life",
    type=click.FloatRange(min=1.0),
    callback=finite,
    default=3600.0,
    show_default=True,
    help="Half-life in seconds of the live click count.",
)
@click.pass_context
def serve_cmd(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    namespace: str | None,
    reload_every: float,
    threads: int,
    processes: int | None,
    log_level: str,
    flow_metrics: tuple[str, ...],
    ui: bool,
    follow_items: bool,
    live_popularity: bool,
    popularity_half_life: float,
) -> None:
    """Serve recommendations over HTTP from Redis user vectors and the active snapshot.

    GET /users/{id}/recommendations (query: n, mode=auto|manual|context, delta, hour, device,
    seen, exclude_seen; the user's last seen items and the items in seen are left out unless
    exclude_seen=false: new items the user clicked too, through the namespace's list of added
    ids, diam:<ns>:added, which the stream writes; a namespace written by a release before
    it, or by a run on another version than the user's vectors', leaves out only the snapshot's
    own items), GET /users/{id}/interests, GET /health (503 while Redis or the snapshot is missing; `pid`
    names the process that answered), GET /metrics (Prometheus, per process), OpenAPI schema at
    /openapi.json and docs at /docs, and the read-only operator page at /ui (lag, freshness,
    K_u and d_u of the namespace, alerts, users). A newly published snapshot is picked up
    within --reload-every seconds.

    With --processes N, N processes share the port; SIGINT or SIGTERM stops them all (exit 0
    once each has stopped cleanly).
    """
    from diam.server import ServeOptions, serve
    from serving_cache.connection import redis_client_waiting
    from snapshotter.store import SnapshotError, SnapshotStore, resolve_active

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    if processes is not None:
        s = s.model_copy(update={"serve": s.serve.model_copy(update={"processes": processes})})
    store = SnapshotStore(s.snapshot)
    client = redis_client_waiting(s.redis, lambda exc: click.echo(
        f"Redis at {_without_password(s.redis.url)} does not answer ({exc}); waiting for it "
        "(Ctrl-C to stop)", err=True))
    try:  # what the server will follow: the namespace's announcement, else the pointer file
        active = resolve_active(store, client, ns)
    except SnapshotError as exc:  # a damaged pointer: serve 503 until it is repaired, as a reload
        click.echo(f"warning: {exc}; /health answers 503 until then", err=True)
    else:
        if active is None:
            click.echo(
                f"warning: no active snapshot in {store.root}; /health answers 503 until "
                "`diam snapshot publish` makes one",
                err=True,
            )
    _warn_if_empty(client, ns)
    opts = ServeOptions(namespace=ns, reload_every_s=reload_every, threads=threads,
                        flow_metrics=flow_metrics, ui=ui, follow_items=follow_items,
                        live_popularity=live_popularity,
                        popularity_half_life_s=popularity_half_life, log_level=log_level)
    ctx.exit(serve(s, opts, host if host is not None else s.serve.host,
                   port if port is not None else s.serve.port,
                   echo=lambda line: click.echo(line, err=True)))


def _warn_if_empty(client, ns: str) -> None:  # type: ignore[no-untyped-def]
    """A namespace that holds no users answers every user cold, as a typo'd --namespace would:
    say so at start (one EXISTS, or a SCAN when it is empty). Redis away: /health says it."""
    from serving_cache.namespaces import namespace_in_use

    try:
        empty = not namespace_in_use(client, ns)
    except Exception:  # noqa: BLE001 - Redis down at start: /health answers 503 until it is back
        return
    if empty:
        click.echo(f"warning: namespace {ns!r} holds no users yet: every user is answered cold "
                   "until a dataflow writes it (a typo?)", err=True)


COMMANDS = [serve_cmd]
