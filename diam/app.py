"""Composition: what ``diam run``, ``diam replay`` and the benchmarks run, built from the one
settings object.

Commands parse options and print; this module turns settings into the learner holder and the
dataflow job (:func:`streams.runner.run_online` builds the source and sinks from the job).
A benchmark that needs a different learner passes a ``learner`` factory instead of patching one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from diam.settings import Settings
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.online import OnlineLearner
from streams.growth_log import GrowthLog
from streams.online import LearnerHolder
from streams.runner import OnlineJob

if TYPE_CHECKING:
    from snapshotter.store import SnapshotStore
    from streams.catalog import CatalogItem, Refusals

__all__ = ["BaseProblem", "LearnerFactory", "NoBaseModel", "check_dim", "load_holder",
           "online_job", "stream_base", "stream_base_problem", "weights_problem"]

log = logging.getLogger(__name__)

LearnerFactory = Callable[[BaseView, OnlineConfig], OnlineLearner]
"""Builds the online learner over a base (``OnlineLearner`` itself, or a benchmark's variant);
called again for every base a hot reload brings."""


class NoBaseModel(click.ClickException):
    """No base model to learn from; the message says how to provide one (``diam`` prints it
    and exits 1)."""


def one_base(*, snapshot: str | None = None, checkpoint: str | None = None,
             base_from_data: str | None = None) -> None:
    """The rule of one base model: ``click.UsageError`` naming both options when two of
    ``--snapshot``, ``--checkpoint`` and ``--base-from-data`` are given (which one was meant
    cannot be guessed). It needs no service, so the commands call it before they ask the
    broker: a usage error is said at once, not after ``BROKER_ANSWER_S`` of waiting."""
    given = [(name, value) for name, value in (("--snapshot", snapshot),
                                               ("--checkpoint", checkpoint),
                                               ("--base-from-data", base_from_data))
             if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"give one base model: {given[0][0]} or {given[1][0]}, not both")


def load_holder(settings: Settings, *, checkpoint: str | None = None, snapshot: str | None = None,
                base_from_data: str | None = None, hot_reload: bool = True,
                namespace: str | None = None, learner: LearnerFactory = OnlineLearner,
                topic: str | None = None, pinned: bool = False,
                growth: GrowthLog | None = None,
                stop: threading.Event | None = None,
                catalog_refused: Refusals | None = None) -> LearnerHolder:
    """The learner holder of a run, over the base given explicitly, at most one of:
    ``snapshot`` (a version in the store), ``checkpoint`` (a checkpoint or snapshot directory),
    ``base_from_data`` (a co-occurrence base built from that prepared dataset); else over the
    active snapshot (hot reloaded when a new version is published or new items arrive in the
    catalogue or in the clicks of ``topic``, by default ``kafka.clicks_topic``, unless
    ``hot_reload`` is off). An explicit base wins over the active snapshot: an option the user
    typed is never dropped silently.

    A snapshot base (active or ``snapshot``) starts grown with the new items known at the start
    (:func:`_grown_at_start`: the catalogue, and the clicks topic's items under the
    click-first rule), unless ``hot_reload`` is off; ``pinned`` (a replay) keeps it so for the
    whole run: same version, no item added later, so the result is a function of what the
    topics held at the start, and a live run started over the same topics writes the same
    bytes.

    ``growth`` (``OnlineJob.growth``: the recovery store's growth log, a run with a store) is
    where the order of every version's new items is kept (:mod:`streams.growth_log`): the
    start replays the version's logged growths first and logs its own, and so does a reload
    onto a version (a rollback); without it the order lives in memory for the run's rollbacks
    and a restart appends the new items known then in id order (its state starts over too). A
    replay (``pinned``) ignores it: its base is a function of the topics alone. A growth it
    cannot write during the run is not swapped in: ``stop`` (``OnlineJob.stop``) is set, the
    run stops at its next batch, and ``growth.failed`` says why.

    The catalogue's records that break its contract (``streams.catalog``) are told to
    ``catalog_refused``, at the start and at each poll of the run, each once:
    ``streams.catalog.CatalogDeadLetters`` for ``diam run`` (the dead-letter topic, counted in
    its summary); by default a ``streams.catalog.RefusalLog`` (capped warnings).

    Close the holder when the run ends, however it ends (``LearnerHolder.close``): a hot
    reloading one keeps a thread and Kafka consumers following the topics until then.

    Raises ``click.UsageError`` naming both options when two bases are given (:func:`one_base`;
    the commands refuse an empty one, ``diam.commands.not_empty``),
    and :class:`NoBaseModel` when none is given and no
    snapshot is active, or the one given cannot be read (a directory that is not a
    checkpoint, a dataset that is missing or malformed), or the active or given snapshot
    cannot be used (a damaged ACTIVE pointer, a file that fails its hash, an embedding size
    other than ``settings.online.dim``); a growth log that cannot be read is a
    ``click.ClickException`` naming the file."""
    from online_model.base import BaseLoadError
    from online_model.datasets import DatasetError
    from snapshotter.store import SnapshotError
    from streams.growth_log import GrowthLogError

    one_base(snapshot=snapshot, checkpoint=checkpoint, base_from_data=base_from_data)
    try:
        return _holder(settings, checkpoint, snapshot, base_from_data, hot_reload, namespace,
                       learner, topic if topic is not None else settings.kafka.clicks_topic,
                       pinned, None if pinned else growth, stop, catalog_refused)
    except BaseLoadError as exc:
        raise NoBaseModel(f"cannot use the base: {exc}") from None
    except DatasetError as exc:
        raise NoBaseModel(f"cannot build a base from the dataset: {exc}") from None
    except SnapshotError as exc:
        raise NoBaseModel(str(exc)) from None
    except GrowthLogError as exc:
        raise click.ClickException(str(exc)) from None


def _holder(settings: Settings, checkpoint: str | None, snapshot: str | None,
            base_from_data: str | None, hot_reload: bool, namespace: str | None,
            learner: LearnerFactory, topic: str, pinned: bool,
            growth: GrowthLog | None, stop: threading.Event | None = None,
            refused: Refusals | None = None) -> LearnerHolder:
    from snapshotter.store import SnapshotError, SnapshotStore
    from streams.catalog import RefusalLog

    refused = refused if refused is not None else RefusalLog()  # one: a record is told once
    cfg = settings.online
    store = SnapshotStore(settings.snapshot)
    if snapshot is not None:
        try:  # the store's rule: a stray directory (no manifest) is refused as an absent one
            path = store.require_version(snapshot)
        except SnapshotError as exc:
            raise NoBaseModel(str(exc)) from None
        base = _snapshot_base(store, snapshot, cfg)
        _keep_needed(growth, store, snapshot)
        if hot_reload or pinned:
            base = _pinned_growth(settings, base, _tower(path, snapshot), topic, growth,
                                  refused)
    elif checkpoint is not None:
        base = stream_base(checkpoint, cfg, f"checkpoint {checkpoint}")
    elif base_from_data is not None:
        from online_model.datasets import load_prepared

        base = BaseView.from_events(load_prepared(base_from_data), dim=cfg.dim)
    elif (version := _active(settings, store, namespace)) is not None:
        base = _snapshot_base(store, version, cfg)
        _keep_needed(growth, store, version)
        if pinned:
            base = _pinned_growth(settings, base, _tower(store.path(version), version), topic,
                                  refused=refused)
        elif hot_reload:
            first, reload = _follow_active(settings, store, base, namespace, learner, topic,
                                           growth, stop, refused)
            return LearnerHolder(first, version, reload=reload,
                                 check_every_s=settings.flow.reload_check_s)
    else:
        from diam.commands import default_dataset

        raise NoBaseModel(
            f"no base model ({store.no_active_reason()}): publish a snapshot (diam train ... && diam snapshot publish <checkpoint>), "
            f"pass --checkpoint DIR, or pass --base-from-data {default_dataset(settings)} for a "
            "co-occurrence base")
    return LearnerHolder(learner(base, cfg), base.version)


def _active(settings: Settings, store: SnapshotStore, namespace: str | None) -> str | None:
    """The version the dataflow starts from: the one its namespace's reload would follow
    (``snapshotter.store.resolve_active``: Redis's announcement, else the pointer file), so a
    restart starts where the running dataflow was, not on the file's version and then
    switches at the first poll."""
    from serving_cache import redis_client
    from snapshotter.store import resolve_active

    ns = namespace if namespace is not None else settings.redis.namespace
    return resolve_active(store, redis_client(settings.redis), ns)


def _snapshot_base(store: SnapshotStore, version: str, cfg: OnlineConfig, *,
                  verify: bool = True) -> BaseView:
    """Snapshot ``version`` as the stream's base: its files' hashes checked (``verify``; a
    watcher that offers a version has checked them already), loaded, and of the embedding size
    the learner is configured for. Raises ``SnapshotError`` naming the version and why, at start
    and at every hot reload alike."""
    from snapshotter.store import SnapshotError

    if verify:
        store.verify(version)
    try:
        return stream_base(store.path(version), cfg, f"snapshot {version}", version=version)
    except ValueError as exc:  # BaseLoadError, CheckpointError: the message names the file
        raise SnapshotError(f"snapshot {version}: {exc}") from None


def stream_base(path: str | Path, cfg: OnlineConfig, what: str, *, version: str | None = None,
                allow_dim_change: bool = False) -> BaseView:
    """``path`` (a checkpoint or snapshot directory) as the online learner's base: the one
    check of ``diam run --checkpoint``, of a snapshot at start and at every hot reload, of
    ``diam snapshot publish``/``rollback`` and of the retrain service before it publishes, so
    none of them accepts a base the others refuse. Raises ``BaseLoadError`` (a ``ValueError``
    naming the file) when it does not load as a base, and ``SnapshotError`` from
    :func:`check_dim`, saying ``what`` has another embedding size, unless
    ``allow_dim_change`` (a deliberate change of dimension: only the load is checked)."""
    base = BaseView.from_checkpoint(path, version=version)
    if not allow_dim_change:
        check_dim(base, cfg, what)
    return base


@dataclass(frozen=True)
class BaseProblem:
    """Why a directory cannot be the stream's base (:func:`stream_base_problem`)."""

    kind: Literal["load", "dim"]
    """``"load"``: it does not load as a base (``BaseLoadError``); ``"dim"``: its embedding
    size is not ``OnlineConfig.dim`` (:func:`check_dim`)."""
    message: str
    """The check's own words: the file at fault, or both sizes and how to reconcile them."""


def stream_base_problem(path: str | Path, cfg: OnlineConfig, what: str, *,
                        allow_dim_change: bool = False) -> BaseProblem | None:
    """Why :func:`stream_base` refuses ``path``, or None when every dataflow can use it: the
    one mapping of its two refusals, which each caller words for its own user (the retrain
    decision, ``diam snapshot publish``/``rollback``)."""
    from online_model.base import BaseLoadError
    from snapshotter.store import SnapshotError

    try:
        stream_base(path, cfg, what, allow_dim_change=allow_dim_change)
    except BaseLoadError as exc:
        return BaseProblem("load", str(exc))
    except SnapshotError as exc:  # check_dim's: the only SnapshotError stream_base raises
        return BaseProblem("dim", str(exc))
    return None


def check_dim(base: BaseView, cfg: OnlineConfig, what: str) -> None:
    """The base's item embedding size is the one ``OnlineConfig.dim`` says (two owners of one
    number: the checkpoint and the setting; the learner cannot use any other)."""
    from snapshotter.store import SnapshotError

    if (problem := dim_problem(base.dim, cfg, what)) is not None:
        raise SnapshotError(problem)


def dim_problem(dim: int, cfg: OnlineConfig, what: str) -> str | None:
    """:func:`check_dim`'s refusal of a base of item embedding size ``dim``, or None when the
    learner can use it: the size is known before any weights exist, so the retrain service
    asks before it trains a candidate (``diam.retrain``).

    >>> from online_model.config import OnlineConfig
    >>> dim_problem(16, OnlineConfig(dim=32), "candidate c1")
    'candidate c1 has d=16, DIAM_ONLINE_DIM is 32 (set DIAM_ONLINE_DIM=16 or publish a d=32 model)'
    >>> dim_problem(32, OnlineConfig(dim=32), "candidate c1") is None
    True
    """
    if dim == cfg.dim:
        return None
    return (f"{what} has d={dim}, DIAM_ONLINE_DIM is {cfg.dim} (set DIAM_ONLINE_DIM={dim} or "
            f"publish a d={cfg.dim} model)")


def weights_problem(model: Any) -> str | None:
    """Why the trained ``model`` (a MultiInterestModel) must not be saved, or None: a weight
    that ``save_checkpoint`` would write (state dict and online head) holds NaN or inf, as a
    diverged training leaves them (a too large learning rate). Every loader refuses such a
    checkpoint (``online.item_emb holds NaN or inf``), so ``diam train`` and the retrain
    service ask before the save, and a good checkpoint at the same path stays in place.

    >>> import torch
    >>> from online_model.models import ModelConfig, build_model
    >>> m = build_model(ModelConfig(model="single", n_items=5, n_categories=1, dim=4, seq_len=2),
    ...                 torch.zeros(5, dtype=torch.long))
    >>> weights_problem(m) is None
    True
    >>> with torch.no_grad():
    ...     _ = m.item_emb.weight.fill_(float("nan"))
    >>> weights_problem(m)
    'the trained weights hold NaN or inf (2 of 6 tensors: item_emb.weight, online.item_emb): training diverged'
    """
    import numpy as np

    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()
               if v.is_floating_point()}
    tensors.update(model.export_online())
    bad = sorted(k for k, v in tensors.items() if not np.isfinite(v).all())
    if not bad:
        return None
    named = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")  # a diverged one: all of them
    return (f"the trained weights hold NaN or inf ({len(bad)} of {len(tensors)} tensors: "
            f"{named}): training diverged")


def _tower(path: Path, version: str) -> object:
    """The snapshot's content tower (``streams.new_items.load_tower``), or SnapshotError."""
    from snapshotter.store import SnapshotError
    from streams.new_items import load_tower

    try:
        return load_tower(path)
    except Exception as exc:  # safetensors raises its own types; any of them refuses the version
        raise SnapshotError(f"snapshot {version}: content tower cannot be read ({exc})") from None


def _catalog_now(settings: Settings, refused: Refusals | None = None) -> dict[str, Any]:
    """The catalogue topic read to its end (``streams.catalog.read_catalog``): item id ->
    ``CatalogItem``; empty when no catalogue was published. Its bad records are told to
    ``refused``. Raises :class:`NoBaseModel` when it cannot be read (the base it grows would
    depend on the broker's mood)."""
    from streams.catalog import read_catalog
    from streams.kafka_io import UnknownTopic

    try:
        return dict(read_catalog(settings.kafka, settings.kafka.items_topic,
                                 refused=refused).items)
    except UnknownTopic:
        return {}
    except RuntimeError as exc:  # RangeStalled, a broker that does not answer
        raise NoBaseModel(f"cannot read the catalogue topic {settings.kafka.items_topic!r} "
                          f"to grow the base with its new items: {exc}") from None


def _keep_needed(growth: GrowthLog | None, store: SnapshotStore, served: str) -> None:
    """The growth log keeps the growths of the versions a rollback can reach (the snapshot
    store's, asked when the log opens) and of ``served``; the others' rows are never read
    again."""
    if growth is not None:
        growth.keep_only(lambda: {info.version for info in store.versions()} | {served})


def _grown_at_start(settings: Settings, base: BaseView, tower: object, topic: str,
                    catalog: dict[str, Any], known: Callable[[str], bool], *,
                    follow: bool, growth: GrowthLog | None = None) -> tuple[BaseView, Any]:
    """``base`` grown with the new items known now, the one rule of ``diam run`` and
    ``diam replay``: every item of ``catalog`` (:func:`_catalog_now`) and every item the
    click-first rule (``streams.new_items.ClickFirst``, asking ``known``, unless
    ``FlowConfig.click_first_min_clicks`` is 0) finds on ``topic`` from its start to where it
    ends now, appended in item id order (a catalogue item's metadata wins over the rule's).
    The order does not depend on how the partitions' records interleaved while they were read,
    so two runs over the same topics get the same rows, and the same negatives for every user
    (the item count and rows enter each event's draw, ``online_model.kernels``). Applied before
    the dataflow starts, not at a worker's first batch, so worker threads see one base.

    With ``growth`` (:mod:`streams.growth_log`) the growths it logged for the version come
    first, in their order and with the metadata they had (the rows the store's users hold),
    then the items above that they lack, in id order, logged as one more growth.

    With ``follow`` the click-first tail goes on and is returned (the caller's hot reload takes
    what it finds next, and closes it); without, or when this raises, it is closed and None is
    returned. Clicks not read within ``FlowConfig.click_first_catch_up_s`` are left out, with a
    warning: the base then depends on timing."""
    from streams.new_items import ClickFirstFollower, grow

    flow = settings.flow
    clicks = None
    found: dict[str, Any] = {}
    try:
        if flow.click_first_min_clicks > 0:
            clicks = ClickFirstFollower(
                settings.kafka, topic, flow.click_first_min_clicks, known=known,
                max_pending=flow.click_first_max_pending, flow=flow)
            if not clicks.wait_caught_up(flow.click_first_catch_up_s):
                log.warning("the click-first rule read %r for %.0f s without reaching its end "
                            "(click_first_catch_up_s): items first seen in the clicks after "
                            "that are not in the starting base, which then depends on timing",
                            topic, flow.click_first_catch_up_s)
            found = {it.item_id: it for it in clicks.take()}
            if not follow:
                clicks.close()
                clicks = None
        found.update(catalog)  # after the rule's: a catalogue item keeps its metadata
        logged = base if growth is None else growth.replay(base, tower)
        grown, batch = grow(logged, [found[i] for i in sorted(found)], tower)
        if growth is not None:
            growth.record(base.version, batch)
    except BaseException:  # the follower's thread and consumer end with this start
        if clicks is not None:
            clicks.close()
        raise
    if grown is not base:
        log.info("base %s starts with %d new item(s) (catalogue and click-first%s)",
                 base.version, len(grown.item_ids) - len(base.item_ids),
                 f", {len(logged.item_ids) - len(base.item_ids)} in the growth log's order"
                 if logged is not base else "")
    return grown, clicks


def _pinned_growth(settings: Settings, base: BaseView, tower: object, topic: str,
                   growth: GrowthLog | None = None, refused: Refusals | None = None) -> BaseView:
    """``base`` grown once, at the start (:func:`_grown_at_start`, after ``growth``'s logged
    growths), for a run whose base then stays as it is (a replay, ``--snapshot``)."""
    catalog = _catalog_now(settings, refused)
    grown, _ = _grown_at_start(settings, base, tower, topic, catalog,
                               lambda item: base.index_of(item) >= 0 or item in catalog,
                               follow=False, growth=growth)
    return grown


def _follow_active(settings: Settings, store, base: BaseView, namespace: str | None,  # type: ignore[no-untyped-def]
                   learner: LearnerFactory, topic: str, growth: GrowthLog | None = None,
                   stop: threading.Event | None = None, refused: Refusals | None = None
                   ) -> tuple[OnlineLearner, _Following]:
    """The first learner of a run on the active snapshot ``base`` (grown with the new items
    known at the start, :func:`_grown_at_start`), and the holder's reload hook: a newly
    published snapshot replaces the base; new catalogue items, and items first seen in clicks
    (``streams.new_items.ClickFirst``, the API's rule, unless
    ``FlowConfig.click_first_min_clicks`` is 0), enter the running base with a content
    embedding, under the same version. Both are read from their topics' start, so a restarted
    dataflow rebuilds the same content rows. Each new learner succeeds the current one (it
    takes over the bases users were recorded under). Items that arrive while the run goes on
    enter it when a reload check finds them (``FlowConfig.reload_check_s``), a point in the
    stream that depends on timing.

    Every growth is logged in ``growth`` (in memory when None) before the grown base is
    handed to the holder, and a version loaded again (a rollback, a re-publish of an earlier
    version) replays its logged growths first: a user still recorded under it finds its rows'
    items where they were (``OnlineLearner.apply`` re-anchors on another version only). A
    growth that cannot be logged is not swapped in, and no reload follows it: ``stop`` is set
    (the run stops at its next batch; ``growth.failed`` says why).

    A new version the stream cannot use (another embedding size, a file the base loader
    refuses) is refused as a failed hash is: one error line naming it, the current base stays,
    and it is not offered again until the pointer moves. Both are counted in the hook's
    ``refusals`` (``diam_flow_snapshot_refusals_total``): the watcher's own (failing its hash,
    no manifest) and the stream's.

    The hook has a ``close()`` (:class:`_Following`; ``LearnerHolder.close`` calls it): the
    click-first reader's thread stops and its consumer, the catalogue follower's consumer and
    the watcher's Redis client are closed. This closes them itself when it raises."""
    from serving_cache import redis_client
    from snapshotter.store import ActiveWatcher, SnapshotError
    from streams.catalog import CatalogFollower
    from streams.new_items import grow

    version = base.version
    growth = growth if growth is not None else GrowthLog()
    client = redis_client(settings.redis)
    follower = CatalogFollower(settings.kafka, settings.kafka.items_topic, refused=refused)
    clicks = None
    unusable = 0  # versions that verified but the stream refused (the watcher counts its own)

    def close() -> None:
        try:
            if clicks is not None:
                clicks.close()
        finally:
            follower.close()
            client.close()

    try:
        watcher = ActiveWatcher(store, client, check_every_s=0.0,
                                ns=namespace if namespace is not None else settings.redis.namespace,
                                current=version)
        tower = _tower(store.path(version), version)
        # its first poll brings them again: known, and its bad records told once (``refused``)
        follower.items.update(_catalog_now(settings, refused))
        base, clicks = _grown_at_start(
            settings, base, tower, topic, dict(follower.items),
            lambda item: base.index_of(item) >= 0 or item in follower.items, follow=True,
            growth=growth)
        current = learner(base, settings.online)
    except BaseException:
        close()
        raise

    def reload() -> tuple[OnlineLearner, str] | None:
        nonlocal base, tower, current, unusable
        if growth.failed is not None:  # stopping: the base stays what the log says
            return None
        found = watcher.poll()
        if found is None:
            fresh = follower.poll() + (clicks.take() if clicks is not None else [])
            new, batch = grow(base, fresh, tower)
            if new is base:
                return None
            if not _logged(growth, new.version, batch, stop):  # durable before the swap
                return None
        else:
            new_version, path = found
            try:
                loaded = _snapshot_base(store, new_version, settings.online, verify=False)
                new_tower = _tower(path, new_version)
            except SnapshotError as exc:
                log.error("hot reload refused, keeping %s: %s", base.version, exc)
                watcher.refuse(new_version, keep=base.version)
                unusable += 1
                return None
            tower = new_tower
            new, batch = grow(growth.replay(loaded, tower), list(follower.items.values())
                              + (clicks.items() if clicks is not None else []), tower)
            if not _logged(growth, new.version, batch, stop):
                return None
        base = new
        nxt = learner(new, settings.online)
        nxt.succeed(current)
        current = nxt
        return nxt, new.version

    return current, _Following(reload, close, lambda: watcher.refusals + unusable)


def _logged(growth: GrowthLog, version: str, batch: list[CatalogItem],
            stop: threading.Event | None) -> bool:
    """``growth.record``; False when it cannot be written (``growth.failed``), after setting
    ``stop``: the run ends at its next batch, at a clean point, with the base the log has."""
    from streams.growth_log import GrowthLogError

    try:
        growth.record(version, batch)
    except GrowthLogError as exc:
        log.error("%s: the run stops (the new items' base is not used)", exc)
        if stop is not None:
            stop.set()
        return False
    return True


class _Following:
    """The hot-reload hook of a run on the active snapshot (:func:`_follow_active`): calling it
    reloads; :meth:`close` stops the followers it reads (once); :attr:`refusals` counts the
    new versions it refused."""

    def __init__(self, reload: Callable[[], tuple[OnlineLearner, str] | None],
                 close: Callable[[], None], refusals: Callable[[], int] = lambda: 0) -> None:
        self._reload, self._close, self._refusals = reload, close, refusals
        self._closed = False

    @property
    def refusals(self) -> int:
        """Announced versions refused (failing their hash, without a manifest, or unusable by
        the stream): ``diam_flow_snapshot_refusals_total``."""
        return self._refusals()

    def __call__(self) -> tuple[OnlineLearner, str] | None:
        return self._reload()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


def online_job(settings: Settings, *, topic: str | None = None, namespace: str | None = None,
               bounded: bool = False, workers: int = 1, process_id: int | None = None,
               addresses: list[str] | None = None, recovery_dir: Path | None = None,
               no_recovery: bool = False, partitions: list[int] | None = None,
               stop: threading.Event | None = None) -> OnlineJob:
    """One run of the online dataflow. A tailing run in one process is a service and must
    survive a crash without losing or redoing work: without ``recovery_dir`` (or
    ``no_recovery``) it gets a recovery store of its own under the stack's home,
    ``recovery/<namespace>--<topic>[--p<partitions>]``. Bounded runs (replays, batch jobs)
    and Bytewax clusters use none unless given. A run with a store keeps its growth log there
    (``OnlineJob.growth``, :mod:`streams.growth_log`; pass it to :func:`load_holder`)."""
    ns = namespace if namespace is not None else settings.redis.namespace
    topic = topic if topic is not None else settings.kafka.clicks_topic
    if recovery_dir is None and not (bounded or no_recovery or addresses):
        tag = "" if partitions is None else "--p" + "-".join(map(str, sorted(set(partitions))))
        recovery_dir = Path(settings.stack.home) / "recovery" / f"{ns}--{topic}{tag}"
    job = OnlineJob(kafka=settings.kafka, redis=settings.redis, flow=settings.flow, topic=topic,
                    namespace=ns, bounded=bounded, workers=workers, process_id=process_id,
                    addresses=list(addresses or []), recovery_dir=recovery_dir,
                    partitions=partitions, stop=stop)
    if recovery_dir is not None:
        from streams.runner import _store_partitions  # the one reader of a store's state

        store = Path(recovery_dir)
        job.growth = GrowthLog.in_store(  # its shape matters once the store holds users' state
            store, process_id or 0, (len(addresses or []) or 1, workers),
            held=lambda: bool(_store_partitions(store, f"{job.flow_id}.clicks")))
    return job
