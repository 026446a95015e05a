"""``diam snapshot``: publish, watch, list and roll back versioned base-model snapshots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from diam.commands import (
    finite,
    get_settings,
    namespace_of,
    namespace_option,
    not_empty,
    service_logging,
)
from diam.settings import Settings

if TYPE_CHECKING:
    from snapshotter.store import SnapshotStore


def _parse_period(text: str) -> float:
    """'30s', '5m', '1h' or plain seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a period like 30s, 5m or 1h") from None
    if value <= 0:
        raise click.BadParameter("the period must be positive")
    return value


def _store(settings: Settings, lock_timeout: float | None = None):
    """The store of settings snapshot.dir; a wait for its lock is said on stderr at once, and
    ``lock_timeout`` (``--lock-timeout``) replaces snapshot.lock_timeout_s."""
    from snapshotter.store import SnapshotStore

    cfg = settings.snapshot
    if lock_timeout is not None:
        cfg = cfg.model_copy(update={"lock_timeout_s": lock_timeout})
    return SnapshotStore(cfg, on_wait=lambda line: click.echo(line, err=True))


@contextmanager
def _lock_wait_ends_cleanly() -> Iterator[None]:
    """A wait for the store's lock that ends without it, in one line: at the timeout (exit 1,
    naming the holder), or at Ctrl-C or SIGTERM (exit 128 + the signal: 130, 143) instead of a
    traceback or click's bare 'Aborted!'. Nothing had changed."""
    from snapshotter.store import LockTimeout, LockWaitInterrupted

    try:
        yield
    except LockTimeout as exc:
        raise click.ClickException(str(exc)) from None
    except LockWaitInterrupted as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(128 + exc.signum) from None


_lock_timeout_opt = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=None,
    metavar="SECONDS",
    help="While another publish or rollback of the same directory runs, this one waits for it "
    "(said at once on stderr, naming its pid); refuse after SECONDS instead (default: "
    "snapshot.lock_timeout_s, unset: wait until it ends). Ctrl-C ends the wait, nothing "
    "changed.",
)


def _redis(settings: Settings, no_redis: bool):
    if no_redis:
        return None
    from serving_cache.connection import redis_client

    return redis_client(settings.redis)


# publish, watch and rollback switch the active version; list has read-only options of its own
_ns_opt = namespace_option("whose active version is set")
_no_redis_opt = click.option(
    "--no-redis",
    is_flag=True,
    help="Only switch the pointer on disk; do not set the version in Redis. Servers, "
    "dataflows and `diam recommend` follow the namespace's Redis announcement while it names "
    "a version in the store (the file otherwise): they keep the announced version.",
)


@click.group("snapshot")
def snapshot_group() -> None:
    """Versioned snapshots of the base model: weights + FAISS item index + manifest.

    Snapshots live in settings snapshot.dir (DIAM_SNAPSHOT_DIR, default ./snapshots) as
    <version>/ directories; ACTIVE names the active one, and Redis key diam:<ns>:model:active
    broadcasts it to the dataflow workers and the API, which reload it on their own: `diam
    serve` every --reload-every seconds, a `diam run` at its next batch of events, so an idle
    run (no events arriving on its topic) keeps its base, and its diam_flow_base_version
    gauge, until events arrive. A version a process refused (a file failing its hash) is tried again when
    the active version moves: a publish, or a rollback (to it too, once repaired).
    """


def _stream_can_use(s: Settings, allow_dim_change: bool = False, *,
                    command: str = "publish") -> Callable[[Path], None]:
    """The test that a checkpoint or snapshot directory can be every dataflow's base: publish's
    ``usable`` test, and rollback's before the pointer moves. The check is
    :func:`diam.app.stream_base`, ``diam run``'s own (the directory loads as a base, and its
    embedding size is DIAM_ONLINE_DIM), so no version is activated that every dataflow
    refuses. With ``allow_dim_change`` only the load is checked. ``command`` names the
    ``diam snapshot`` command whose ``--allow-dim-change`` the refusal points to."""
    forced = {"publish": "publishes", "rollback": "activates"}[command]

    def check(path: Path) -> None:
        from diam.app import stream_base_problem
        from snapshotter.store import SnapshotError

        what = f"checkpoint {path}" if command == "publish" else f"snapshot {path.name}"
        problem = stream_base_problem(path, s.online, what, allow_dim_change=allow_dim_change)
        if problem is None:
            return
        if problem.kind == "load":
            raise SnapshotError(f"no dataflow can use it as its base: {problem.message}")
        force = (f"`diam snapshot {command} --allow-dim-change` {forced} it anyway, for a "
                 "deliberate change of dimension")
        raise SnapshotError(f"{problem.message}; nothing was published ({force})"
                            if command == "publish" else f"{problem.message}; {force}")

    return check


def _warn_dim(s: Settings, version: str, dim: int) -> None:
    """What follows from activating a version of another size (``--allow-dim-change``)."""
    if dim != s.online.dim:
        click.echo(f"warning: {version} has d={dim} but DIAM_ONLINE_DIM is "
                   f"{s.online.dim}: a running diam run keeps its current base and a new one "
                   f"refuses to start on it until DIAM_ONLINE_DIM={dim}; stored users "
                   f"are answered cold until a d={dim} dataflow pushes them", err=True)


_allow_dim_change_help = (
    "Running dataflows refuse the new version (one log line) and keep their base; a new `diam "
    "run` refuses to start until DIAM_ONLINE_DIM is the new size (the retrain service's too: "
    "it trains no candidate of another size); users stored in Redis keep vectors of the old "
    "size, answered cold (popularity) until a dataflow of the new size pushes them again.")


@snapshot_group.command("publish")
# no exists=True: the checkpoint reader names what the path is (does not exist, a symlink
# loop, a dangling link, a file), where click says "does not exist" for all of them
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--allow-dim-change",
    is_flag=True,
    help="Publish a checkpoint whose embedding size is not DIAM_ONLINE_DIM (a deliberate "
    "change of dimension; refused otherwise). " + _allow_dim_change_help,
)
@_ns_opt
@_no_redis_opt
@_lock_timeout_opt
@click.pass_context
def publish_cmd(
    ctx: click.Context,
    checkpoint: Path,
    allow_dim_change: bool,
    namespace: str | None,
    no_redis: bool,
    lock_timeout: float | None,
) -> None:
    """Verify CHECKPOINT (a trainer output directory), build its FAISS index, write a new
    snapshot version, make it active and announce it in Redis.

    Catalogues up to snapshot.exact_max_items get an exact index; larger ones IVF+SQ8 trained
    on the real item vectors, with nprobe tuned to snapshot.target_recall on the namespace's
    served users (up to snapshot.tune_users of them; item mixtures when Redis holds too few or
    with --no-redis). A bad checkpoint is refused with the file at fault, and the active version
    does not change. Weights already kept as a version re-activate that version (no copy).
    Publishes and rollbacks of one snapshot directory switch one after the other; old versions
    beyond snapshot.keep are pruned, never the active one, the one before it or one Redis
    announces (nothing is pruned when Redis cannot be read). With --no-redis Redis is not
    read: the version this directory last announced there (by a publish, rollback or watch
    with Redis, recorded in its ANNOUNCED file; `diam drop` and a publish with Redis remove
    the namespaces whose key is gone) is kept instead; when it never announced one, the active
    version and the one before it are.

    A checkpoint no dataflow could use is refused as `diam run` refuses it at start: the base
    must load and its embedding size must be DIAM_ONLINE_DIM (see --allow-dim-change).
    """
    from snapshotter.publish import publish
    from snapshotter.store import SnapshotError

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    client = _redis(s, no_redis)
    store = _store(s, lock_timeout)
    click.echo(f"publishing {checkpoint} into {store.root} ...", err=True)
    try:
        with _lock_wait_ends_cleanly():
            res = publish(checkpoint, store, client, ns, data_dir=s.data_dir,
                          usable=_stream_can_use(s, allow_dim_change))
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from None
    if res.reused:
        click.echo(f"already published as {res.version}; activated")
    info = res.manifest["index"]
    _warn_dim(s, res.version, info["dim"])
    detail = f"{info['factory']}" + (
        f", nprobe {info['nprobe']}, recall@50 {info['recall_at_50']} on "
        f"{info['tuning_queries']} queries from {info['tuning_queries_source']}"
        if info["kind"] != "flat"
        else ""
    )
    click.echo(f"active: {res.version}  ({info['n_items']} items, d={info['dim']}, {detail})")
    if res.previous:
        click.echo(f"previous: {res.previous}  (diam snapshot rollback {res.previous})")
    if res.pruned:
        click.echo(f"removed old versions: {', '.join(res.pruned)}")
    if res.redis_set:
        click.echo(f"redis: diam:{ns}:model:active = {res.version}")


@snapshot_group.command("watch")
@click.option(
    "--every",
    "every",
    default=None,
    help="Polling period, e.g. 30s, 5m (default: snapshot.watch_every_s).",
)
@click.option(
    "--trainer-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Checkpoint directory, or a directory of checkpoints; it must exist (default: "
    "snapshot.trainer_dir, which is waited for when missing).",
)
@click.option("--once", is_flag=True, help="Run a single check and exit (for cron and tests).")
@_ns_opt
@_no_redis_opt
@click.pass_context
def watch_cmd(
    ctx: click.Context,
    every: str | None,
    trainer_dir: Path | None,
    once: bool,
    namespace: str | None,
    no_redis: bool,
) -> None:
    """Publish whenever the trainer's output holds a newer checkpoint.

    A checkpoint is published once its files have not changed for snapshot.settle_s seconds
    and its weights were never published to this directory (recorded in its PUBLISHED file,
    which outlives pruned versions: so a rollback is not undone, even after a restart; `diam
    snapshot publish` still publishes such a checkpoint when asked). Each tick
    also re-syncs the active version into Redis (after a Redis restart, say). Ctrl-C stops.
    Each publish prunes versions beyond snapshot.keep as `diam snapshot publish` does: with
    --no-redis it keeps the active version, the one before it and the version this directory
    last announced in Redis (recorded in its ANNOUNCED file), never asking Redis.
    A checkpoint no dataflow could use (another embedding size than DIAM_ONLINE_DIM, a base
    that does not load) is logged and passed over, as one that fails verification is.

    A --trainer-dir that does not exist is refused (a mistyped path would be watched forever);
    the default, snapshot.trainer_dir, may not exist yet: the stack starts the watcher before
    the trainer has written its first checkpoint, so it is waited for. A snapshot directory
    that does not exist yet is said at start and made by the first publish.
    """
    from snapshotter.publish import Watcher

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    period = _parse_period(every) if every else s.snapshot.watch_every_s
    root = trainer_dir or Path(s.snapshot.trainer_dir)
    service_logging("%(asctime)s %(levelname)s %(message)s")
    store = _store(s)
    watcher = Watcher(store, root, _redis(s, no_redis), ns, data_dir=s.data_dir,
                      usable=_stream_can_use(s))
    if once:  # one tick: no period, nothing to stop, and a missing root is not waited for
        missing = "" if root.is_dir() else " (it does not exist yet: nothing to publish)"
        click.echo(f"checking {root} once{missing}", err=True)
    else:
        waiting = "" if root.is_dir() else " (it does not exist yet; waiting for it)"
        click.echo(f"watching {root}{waiting} every {period:g}s (Ctrl-C stops)", err=True)
    if not store.root.exists():  # watch is a publisher: its first publish makes the store
        click.echo(f"snapshot directory {store.root} does not exist yet: the first publish "
                   "creates it", err=True)
    said = None  # the last skip logged: the same situation is said once, not every tick
    try:
        while True:
            try:
                res = watcher.tick(time.time())
            except OSError as exc:  # a checkpoint removed mid-scan, a full disk: try next tick
                if once:
                    raise click.ClickException(f"watch tick failed: {exc}") from None
                logging.getLogger(__name__).error("watch tick failed: %s", exc)
                res = None
            if res is not None:
                click.echo(f"published {res.version} from {res.manifest['source']['path']}")
            skip = watcher.last_skip
            if once:
                if skip is not None:
                    click.echo(skip.reason, err=True)
                return
            if skip is not None and skip != said:
                logging.getLogger(__name__).info("%s", skip.reason)
            said = skip
            time.sleep(period)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@snapshot_group.command("list")
@click.option(
    "--verify",
    is_flag=True,
    help="Also re-hash every file of every version (slow for big catalogues).",
)
@namespace_option("whose active version is shown beside the list")
@click.option(
    "--no-redis",
    is_flag=True,
    help="List the versions on disk only; do not read the active version from Redis.",
)
@click.pass_context
def list_cmd(ctx: click.Context, verify: bool, namespace: str | None, no_redis: bool) -> None:
    """Versions on disk, oldest first; '*' marks the active one (the pointer on disk), 'never
    active' one a publish committed but never switched to, and the last line the version Redis
    announces. A version is a directory a publish named or one holding a manifest.json (a
    version renamed by hand, e.g. golden: listed, activated and served as any other, never
    pruned). Other directories are listed first as 'not a version, ignored': no command
    activates or deletes them. Only reads: nothing is switched, and a
    snapshot directory that does not exist is said to be missing, not created. A damaged
    pointer ends the list with an error naming it (exit 1)."""
    from snapshotter.store import SnapshotError

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)  # refused before anything is printed, --no-redis or not
    store = _store(s)
    pointer_error = None
    try:
        active = store.active_version()
        never = store.never_activated()
    except SnapshotError as exc:  # still list what is on disk: it is what a repair picks from
        active, never, pointer_error = None, set(), str(exc)
    infos = store.versions()
    for name, why in store.strays():  # e.g. a directory made by hand: never activated nor pruned
        click.echo(f"  {name}  not a version, ignored ({why})")
    if not infos:
        gone = "" if store.root.is_dir() else " (it does not exist)"
        click.echo(f"no snapshots in {store.root}{gone}")
        if pointer_error is not None:
            raise click.ClickException(pointer_error)
        return
    for info in infos:
        man = info.manifest or {}
        idx = man.get("index", {})
        line = (
            f"{'*' if info.version == active else ' '} {info.version}  {info.created_at[:19]}  "
            f"{man.get('model') or '?'}  {idx.get('n_items', '?')} items  {idx.get('factory', '?')}"
        )
        if info.version in never:
            line += "  never active"
        if info.manifest is None:
            line += "  BROKEN (no readable manifest)"
        elif verify:
            try:
                store.verify(info.version)
                line += "  ok"
            except SnapshotError as exc:
                line += f"  FAILED: {exc}"
        click.echo(line)
    if active is None and pointer_error is None:
        click.echo(f"active: none, {store.no_active_reason()}")
    client = _redis(s, no_redis)
    if client is not None:
        from serving_cache.keys import model_active_key

        try:
            raw = client.get(model_active_key(ns))
            click.echo(f"redis active: {raw.decode() if raw else None}")
        except Exception as exc:
            click.echo(f"redis active: unknown ({exc.__class__.__name__}: {exc})")
    if pointer_error is not None:  # listed first: the repair picks one of these versions
        raise click.ClickException(pointer_error)


def _active_or_why(store: SnapshotStore) -> str:
    """The active version for a message, or what is wrong with the pointer."""
    from snapshotter.store import SnapshotError

    try:
        return store.active_version() or "no version"
    except SnapshotError as exc:
        return f"the pointer ({exc})"


@snapshot_group.command("rollback")
# an empty VERSION ("$V" with V unset) is a usage error, never "the previous version"
@click.argument("version", required=False, callback=not_empty)
@click.option(
    "--allow-dim-change",
    is_flag=True,
    help="Activate a version whose embedding size is not DIAM_ONLINE_DIM (a deliberate change "
    "of dimension; refused otherwise, as publish refuses it). " + _allow_dim_change_help,
)
@_ns_opt
@_no_redis_opt
@_lock_timeout_opt
@click.pass_context
def rollback_cmd(
    ctx: click.Context, version: str | None, allow_dim_change: bool, namespace: str | None,
    no_redis: bool, lock_timeout: float | None,
) -> None:
    """Make VERSION active again (default: the version active before the current one, as
    recorded in ACTIVE.history; a version that was never active is not picked).

    A snapshot directory (DIAM_SNAPSHOT_DIR) that does not exist is refused, naming it, and
    is not created. The version is verified first; if a file fails its hash the active
    version stays. A version no dataflow could use is refused as publish refuses it: the
    base must load and its embedding size must be DIAM_ONLINE_DIM (see --allow-dim-change).
    Running it with the active version re-announces it in Redis. --namespace is checked
    before the pointer on disk moves, so a bad one leaves disk and Redis as they were. A
    publish or rollback of the same directory in progress finishes first.
    """
    from snapshotter.store import SnapshotError, validate_version

    s = get_settings(ctx)
    ns = namespace_of(s, namespace)
    client = _redis(s, no_redis)
    store = _store(s, lock_timeout)
    try:  # a mistyped DIAM_SNAPSHOT_DIR or a path for VERSION: said before the lock is waited for
        if version is not None:
            validate_version(version)
        store.require_root()
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from None
    # one switch at a time: a publish or rollback running now finishes first, and what this
    # one reads as the previous version and announces is then what it reports
    try:
        _rollback(s, store, client, ns, version, allow_dim_change)
    except SnapshotError as exc:  # the store's disk (full, read-only): one line, the errno
        raise click.ClickException(str(exc)) from None


def _rollback(s: Settings, store: SnapshotStore, client: Any, ns: str, version: str | None,
              allow_dim_change: bool) -> None:
    """The switch of ``diam snapshot rollback``, under the store's lock."""
    from snapshotter.publish import announce
    from snapshotter.store import SnapshotError

    with _lock_wait_ends_cleanly(), store.locked():
        try:
            target = version or store.previous_version()
        except SnapshotError as exc:  # a damaged pointer: name what is kept
            known = ", ".join(i.version for i in store.versions()) or "none"
            raise click.ClickException(
                f"{exc} (versions: {known}); give the version to roll back to") from None
        if target is None:
            raise click.ClickException("no earlier version to roll back to (see `diam snapshot list`)")
        try:
            store.require_version(target)  # a stray or absent one: said in the store's words
            man = store.verify(target)  # first: a file that fails its hash is named as such
            _stream_can_use(s, allow_dim_change, command="rollback")(store.path(target))
            store.activate(target, verify=False)
        except SnapshotError as exc:
            raise click.ClickException(f"{exc}; {_active_or_why(store)} stays active") from None
        if allow_dim_change and isinstance(dim := man.get("index", {}).get("dim"), int):
            _warn_dim(s, target, dim)
        click.echo(f"active: {target}")
        if client is not None:
            try:
                announce(store, client, ns, target)  # recorded: a --no-redis prune keeps it
            except SnapshotError as exc:  # Redis took it; the store's record was not written
                raise click.ClickException(f"switched on disk and in Redis, but {exc}") from None
            except Exception as exc:
                raise click.ClickException(
                    f"switched on disk, but Redis did not take it ({exc}); rerun once Redis answers"
                ) from None
            click.echo(f"redis: diam:{ns}:model:active = {target}")


COMMANDS = [snapshot_group]
