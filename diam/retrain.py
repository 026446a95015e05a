"""The retrain service (``diam retrain``): train from the clicks topic, behind a promotion gate.

One retrain (:meth:`Retrainer.run_once`), one at a time per snapshot store (its retrain lock:
a second retrain, ``--once`` or service, is refused naming the first, and trains nothing):

0. the active model, as every server resolves it (:func:`snapshotter.store.resolve_active`:
   Redis's announcement when the store holds it, else the pointer file), by one rule for
   ``--once`` and the service (:meth:`Retrainer._gate_target`): when the pointer and Redis
   name two versions the store holds, the pointer is the truth and Redis is re-synced from
   it first; when none resolves but the store holds versions or Redis announces one
   elsewhere, nothing is trained (:class:`CannotRetrain` says what to do): a model from
   scratch would replace it ungated;
1. the window: the newest ``window_events`` records of the clicks topic, the catalogue topic;
2. the newest ``holdout_fraction`` of the window's events (by event time) is held out;
3. a candidate is trained on the rest, warm-started from the active snapshot's weights (item
   rows matched by id, so new items start fresh) and written to ``candidates_dir/<name>``;
4. candidate and active are measured on the held-out slice (Recall@20, Entropy@20; items the
   active model does not know are never recommended by it), and the gate
   (:mod:`snapshotter.gate`) decides;
5. a passing candidate that the dataflows can use as their base (``diam.app.stream_base``: it
   loads, of size DIAM_ONLINE_DIM) is published through the snapshotter (verified, indexed,
   pointer switched atomically, Redis told: the dataflow and the API hot-reload it) only in
   place of the version it was compared with (checked under the store's lock; a version made
   active meanwhile, by a publish or rollback by hand, is compared with on the same slice
   first); a refused one stays in ``candidates_dir`` with its ``decision.json``, never
   activated;
6. the decision (versions, metrics, reason, durations) goes to the ``diam.models`` topic, to
   Prometheus and to the log. ``published``: the pointer on disk names the candidate's
   version; ``announced``: Redis's ``diam:<ns>:model:active`` named it too (what servers
   follow). A publish whose Redis step failed is published, not announced, and still a
   decision: its window counts as done.

Nothing touches the active snapshot before step 5, and publishing switches it in one rename,
so a retrain that crashes or is killed at any point leaves the active version as it was.

:meth:`Retrainer.serve` runs one whenever ``every_events`` new clicks arrived or
``every_minutes`` passed with new clicks; where the last retrain ended is read back from the
``diam.models`` topic at start, so a restarted service does not retrain on the same events.
While Redis may not name the active version on disk (at start, after a publish Redis did not
take), the service only re-syncs it (:func:`snapshotter.sync.sync_active`, ``diam snapshot
watch``'s rule) with backoff, one log line per change, and trains nothing; once Redis answers,
an unannounced decision is written again, announced.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from snapshotter.gate import GateConfig

__all__ = ["CannotRetrain", "RetrainConfig", "Decision", "Retrainer", "outcome_line",
           "window_range"]

log = logging.getLogger("diam.retrain")

MAX_REGATES = 3
"""How many times a retrain compares its candidate again with a version that became active
while it trained (a publish or rollback by hand) before it refuses rather than chase it."""


class CannotRetrain(Exception):
    """Nothing was trained: the store or Redis is in a state a retrain must not act on (no
    active version resolves, yet a model trained from scratch would replace one). Says what to
    do; ``diam retrain --once`` exits 1 with it, the service says it once and looks again at
    each poll."""


class RetrainConfig(BaseModel):
    """When and how the retrain service trains (``DIAM_RETRAIN_*``)."""

    model_config = ConfigDict(extra="forbid")

    every_events: int = Field(default=100_000, ge=1)
    """Retrain once this many new click records arrived since the last retrain."""

    every_minutes: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """... or once this much time passed since the last one, when any new click arrived."""

    poll_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """How often the service looks at the topic's end offsets (one metadata request)."""

    window_events: int = Field(default=1_000_000, ge=100)
    """The sliding window: the newest this-many records of the clicks topic (split over the
    partitions in proportion to what each holds)."""

    holdout_fraction: float = Field(default=0.1, gt=0, lt=1, allow_inf_nan=False)
    """Newest share of the window's events (by event time) held out of training; candidate and
    active are compared on it."""

    warm_start: bool = True
    """Start from the active snapshot's weights (item rows matched by id); False trains from a
    random initialisation."""

    model: str = "diam"
    """Model to train when there is no active snapshot to warm-start from (or warm_start is
    off), on the window it is served on (``OnlineConfig.train_seq_len``) and at the size it is
    served at (``OnlineConfig.dim``, DIAM_ONLINE_DIM: the one owner of the model size); a warm
    start keeps the active model's kind and shape, its window and size included."""

    epochs: int = Field(default=2, ge=1)
    """Epochs per retrain. A warm start needs fewer than a first training."""

    lr: float = Field(default=1e-2, gt=0, allow_inf_nan=False)
    """Peak learning rate of a retrain from scratch: ``online_model.train.TrainConfig.lr``,
    diam train's default (restated here, where torch is not imported; a test pins them)."""

    warm_lr: float = Field(default=1e-2, gt=0, allow_inf_nan=False)
    """Peak learning rate of a warm-started retrain (its optimizer starts without the active
    model's moments, so early steps move each weight by about this rate). The from-scratch
    rate by default: measured through the served path, warm retrains at 1e-3 gained much
    less over the first model than at 1e-2 (``bench/results/loop.md``)."""

    warm_fast_lr_scale: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """In a warm start, the multiple of ``warm_lr`` at which DIAM's d_u fusion and light gate
    train (10, as from scratch, where they must leave their prior quickly). A warm start
    begins from fitted values; at 10x a fresh optimizer moves them far (refused candidates had
    a lower mean d_u than the active model, ``bench/results/loop.md``)."""

    batch_size: int = Field(default=256, ge=2)
    """Training batch size."""

    max_per_user: int = Field(default=64, ge=1)
    """Training positions drawn per user per epoch."""

    device: str = "auto"
    """auto: CUDA when present, else the CPU."""

    threads: int = Field(default=1, ge=0)
    """CPU threads for torch (0: torch's default)."""

    seed: int = 0
    """Seeds the weights, the sampling and the trainer's user split."""

    candidates_dir: str = "candidates"
    """Where candidates are written; refused ones stay here (with decision.json) for
    inspection."""

    keep_candidates: int = Field(default=20, ge=1)
    """Candidate directories kept; the oldest go first."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus endpoint of ``diam retrain`` (None: no endpoint; 0: any free
    port)."""

    gate: GateConfig = Field(default_factory=GateConfig)
    """Tolerances of the promotion gate."""


@dataclass
class Decision:
    """One retrain's outcome, as written to the models topic and ``decision.json``.

    ``published`` and ``announced`` are the two steps of a publish: the pointer on disk
    switched to ``version`` (the snapshot store's truth, what ``diam run`` and ``diam serve``
    load on start), and Redis's ``diam:<ns>:model:active`` named it (what running servers and
    dataflows follow). A Redis that did not answer leaves a decision published and not
    announced; the service re-syncs Redis from the pointer once it answers and writes the
    decision again with ``announced`` true and ``announced_at`` (same candidate, same window:
    a reader keeps the newest record of a candidate). Records written before ``announced``
    existed lack both keys; their publishes were announced (a Redis failure raised instead)."""

    candidate: str
    published: bool
    reason: str
    active_before: str | None
    """The version the candidate was last compared with: the one its publish replaced (None:
    no active model, or not known for a rebuilt decision)."""
    version: str | None = None
    """The published version (None when refused)."""
    announced: bool = False
    """Redis named ``version`` as the active one when this record was written."""
    announced_at: str | None = None
    """When the service announced ``version`` after Redis failed at the publish (None: with
    the publish, or never)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """``{"candidate": {...}, "active": {...} | None, "eval_users": int, "diff_ci": {metric:
    [lo, hi]}}``: ``diff_ci`` the paired 95% interval of candidate minus active over the
    held-out users (empty without an active model, or when too few held-out users refused the
    candidate before any comparison)."""
    window: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warm_start: dict[str, Any] | None = None
    created_at: str = ""
    candidate_path: str = ""
    window_done: bool = True
    """The service counts ``window`` as trained and resumes after it. False for the decision
    rebuilt for a run stopped between its snapshot's commit and its activation
    (:meth:`Retrainer.reconcile`): nothing went live, so the next retrain takes those events
    again; for a retrain refused before training because no dataflow could use a model of
    the size it would train at; and for a training that diverged (NaN or inf weights, nothing
    saved). The last two are a setting to fix (the model's size, the learning rate), not the
    window's fault: once it is fixed the restarted service trains those events, and ``diam
    retrain --once`` exits 1. Too few clicks or users in the window is the window's own
    answer: done (the next window holds those events too). Records written before the key
    existed count as done."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, default=_jsonable).encode()


def outcome_line(d: Decision) -> str:
    """The one line the service says when a retrain ends: the outcome, its reason, the
    held-out recall@20 of the candidate and of the active model when they were measured, and
    the time taken. A candidate refused before training (too few clicks or users, a size no
    dataflow can use) has no metrics, so none are printed (not "recall@20 None vs active
    None"); a candidate evaluated with no active model says so.

    >>> outcome_line(Decision("c1", False, "only 3 valid clicks in the window", None,
    ...                       seconds={"total": 0.5}))
    'retrain c1: REFUSED (only 3 valid clicks in the window), 0.5 s'
    >>> outcome_line(Decision("c2", True, "no active model", None, version="v", announced=True,
    ...                       metrics={"candidate": {"recall@20": 0.12}, "active": None},
    ...                       seconds={"total": 3.0}))
    'retrain c2: PUBLISHED v (no active model); recall@20 0.12, no active model, 3.0 s'
    """
    outcome = ("REFUSED" if not d.published else f"PUBLISHED {d.version}" if d.announced
               else f"PUBLISHED {d.version} on disk, NOT ANNOUNCED in Redis")
    cm, am = d.metrics.get("candidate") or {}, d.metrics.get("active") or {}
    measured = ""
    if cm.get("recall@20") is not None:
        versus = (f" vs active {am['recall@20']}" if am.get("recall@20") is not None
                  else ", no active model")
        measured = f"; recall@20 {cm['recall@20']}{versus}"
    return (f"retrain {d.candidate}: {outcome} ({d.reason}){measured}, "
            f"{d.seconds.get('total', 0.0):.1f} s")


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _clean(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def window_range(kafka: Any, topic: str, window_events: int):  # -> ReplayRange
    """The newest ``window_events`` records of ``topic``, split over partitions in proportion
    to what each holds now."""
    from streams.kafka_io import watermarks
    from streams.replay import ReplayRange

    marks = watermarks(kafka, topic)
    total = sum(hi - lo for lo, hi in marks.values())
    start, end = {}, {}
    for p, (lo, hi) in marks.items():
        share = (hi - lo) / total if total else 0.0
        start[p] = max(lo, hi - math.ceil(window_events * share))
        end[p] = hi
    return ReplayRange(topic, start, end)


class _Metrics:
    """Prometheus series of the service (one registry per service)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.decisions = Counter("diam_retrain_decisions", "Retrain decisions", ["outcome"],
                                 registry=self.registry)
        self.seconds = Gauge("diam_retrain_last_seconds", "Duration of the last retrain",
                             ["phase"], registry=self.registry)
        self.metric = Gauge("diam_retrain_last_metric", "Held-out metrics of the last retrain",
                            ["model", "metric"], registry=self.registry)
        self.last = Gauge("diam_retrain_last_timestamp_seconds", "When the last retrain ended",
                          registry=self.registry)
        self.unsynced = Gauge("diam_retrain_redis_unsynced",
                              "1 while Redis may not name the active snapshot version (the "
                              "service retries the announcement and trains nothing)",
                              registry=self.registry)

    def record(self, d: Decision) -> None:
        """Count ``d`` and make the ``last`` series its own: a phase or metric the decision
        does not have (refused before training or evaluation) has no series, rather than the
        previous retrain's value read as this one's."""
        self.decisions.labels("published" if d.published else "refused").inc()
        self.seconds.clear()
        self.metric.clear()
        for phase, s in d.seconds.items():
            self.seconds.labels(phase).set(s)
        for who in ("candidate", "active"):
            for k in ("recall@20", "entropy@20"):
                v = (d.metrics.get(who) or {}).get(k)
                if v is not None:
                    self.metric.labels(who, k).set(float(v))
        self.last.set(time.time())


def _content_init(state: dict[str, Any], snapshot_dir: Path, corpus: Any, known_ids: Any,
                  catalog: Any) -> int:
    """Start the rows of items the active model does not know from its content tower (what
    serving gave them) instead of a random vector: one warm-started epoch cannot train a random
    row far, and an under-trained row with a random direction lands in users' top lists.
    Returns how many rows were set."""
    import numpy as np
    import torch

    from streams.new_items import load_tower

    tower = load_tower(snapshot_dir)
    w = state.get("item_emb.weight")
    if tower is None or w is None or tower.dim != w.shape[1]:
        return 0
    ids = corpus.item_ids.astype(str)
    rows = np.flatnonzero(~np.isin(ids, np.asarray(known_ids).astype(str)))
    if not len(rows):
        return 0
    items = [catalog.items.get(ids[r]) for r in rows.tolist()]
    emb = tower.embed([list(it.categories) if it else [] for it in items],
                      [it.title if it else "" for it in items])
    w[torch.as_tensor(rows + 1)] = torch.from_numpy(emb).to(w.dtype)
    return int(len(rows))


class Retrainer:
    """The retrain service over one clicks topic, one snapshot store and one namespace."""

    def __init__(self, settings: Any, topic: str | None = None, namespace: str | None = None,
                 log_line: Any = None) -> None:
        from serving_cache import redis_client
        from snapshotter.store import SnapshotStore

        self.s = settings
        self.cfg: RetrainConfig = settings.retrain
        # `is not None`: an empty name is an error for the caller to raise, never the default
        self.topic = topic if topic is not None else settings.kafka.clicks_topic
        self.ns = namespace if namespace is not None else settings.redis.namespace
        self.store = SnapshotStore(settings.snapshot)
        self.redis = redis_client(settings.redis)
        self.metrics = _Metrics()
        self._say = log_line or log.info
        self._sync_at: float | None = None
        """Monotonic time of the next try to re-sync Redis from the pointer; None while
        Redis names the active version as far as the service knows."""
        self._sync_tries = 0
        self._unannounced: dict[str, Any] | None = None
        """The decision (as on the topic) whose version Redis did not take at its publish."""
        self._locked = False
        """This retrainer holds the store's retrain lock (:meth:`serve`, for its lifetime)."""
        self._service = False
        """:meth:`serve` is running (it retries what a single :meth:`run_once` cannot)."""
        self._blocked: str | None = None
        """The :class:`CannotRetrain` the service said last (said once, not at every poll)."""

    # -- one retrain ---------------------------------------------------------------------
    def run_once(self) -> Decision:
        """Train a candidate on the current window, gate it, publish or keep it; report.

        Holds the store's retrain lock (:meth:`snapshotter.store.SnapshotStore.retrain_lock`)
        throughout: while another retrain of the store runs, it raises
        :class:`snapshotter.store.RetrainLocked` naming it, and trains nothing. Raises
        :class:`CannotRetrain` when no active version resolves but a model trained from
        scratch would replace one (:meth:`_why_not_from_scratch`)."""
        if self._locked:  # the service's own
            return self._run_once()
        with self.store.retrain_lock():
            self._locked = True
            try:
                return self._run_once()
            finally:
                self._locked = False

    def _run_once(self) -> Decision:
        import torch

        from diam.app import weights_problem
        from online_model.checkpoint import load_checkpoint, save_checkpoint
        from online_model.checkpoint_config import warm_lineage
        from online_model.corpus import prefix_signals
        from online_model.models import ModelConfig, build_model
        from online_model.retrain import (
            evaluate_slice,
            remap_state,
            slice_eval_set,
            time_split,
            unknown_rows,
        )
        from online_model.train import Features, TrainConfig, train
        from snapshotter.gate import decide
        from streams.catalog import Catalog, read_catalog
        from streams.topic_corpus import corpus_from_topic, read_clicks

        t0 = time.monotonic()
        kafka, cfg = self.s.kafka, self.cfg
        active_version = self._gate_target()
        rng = window_range(kafka, self.topic, cfg.window_events)
        items_topic: str | None = kafka.items_topic
        try:
            catalog = read_catalog(kafka, kafka.items_topic)
        except RuntimeError as exc:  # no catalogue yet: every item is 'unknown', still trainable
            self._say(f"no catalogue ({exc}); items get the category 'unknown'")
            catalog, items_topic = Catalog(), None  # none recorded: evaluate reads none again
        clicks = read_clicks(kafka, rng, self.s.flow)
        full = corpus_from_topic(clicks, catalog, name=self.topic, items_topic=items_topic)
        t_read = time.monotonic()
        created = datetime.now(UTC)
        name = f"{created:%Y%m%dT%H%M%S%f}"
        window = {"topic": self.topic, "start": {str(p): o for p, o in rng.start.items()},
                  "end": {str(p): o for p, o in rng.end.items()}, "records": clicks.records,
                  "clicks": len(clicks), "rejected": clicks.rejected,
                  "users": full.n_users, "items": full.n_items}
        if len(clicks) < 10:
            return self._finish(Decision(name, False, f"only {len(clicks)} valid clicks in the "
                                         "window", active_version, window=window,
                                         created_at=created.isoformat()), t0, {})
        train_c, cut = time_split(full, cfg.holdout_fraction)
        window["holdout_from_ts"] = cut
        if train_c.n_users < 10:
            return self._finish(Decision(name, False, f"only {train_c.n_users} users before the "
                                         "held-out slice; need 10", active_version,
                                         window=window, created_at=created.isoformat()), t0, {})
        active, active_dir = None, None
        if active_version is not None:
            active_dir = self.store.path(active_version)
            active = load_checkpoint(active_dir)
        if active is not None and cfg.warm_start:
            mcfg = ModelConfig.from_dict({**active.config, "n_items": full.n_items,
                                          "n_categories": full.n_categories})
        else:
            mcfg = ModelConfig(model=cfg.model, n_items=full.n_items,
                               n_categories=full.n_categories, dim=self.s.online.dim,
                               seq_len=self.s.online.train_seq_len(cfg.model))
        if (why := self._untrainable(mcfg.dim, name)) is not None:  # before the training time
            return self._finish(Decision(name, False, f"not trained: no dataflow can use it: "
                                         f"{why}", active_version, window=window,
                                         created_at=created.isoformat(), window_done=False),
                                t0, {"read": t_read - t0})
        init_state, warm = None, None
        if (active is not None and active_dir is not None and cfg.warm_start
                and active.config.get("model") == mcfg.model):
            torch.manual_seed(cfg.seed)
            fresh = build_model(mcfg, full.item_cat)
            init_state, warm = remap_state(active.model, active.item_ids, fresh, full.item_ids,
                                           active.categories or None, full.category_names)
            warm["from"] = active_version
            warm["lineage"] = warm_lineage(active.config, started_from=active_version)
            warm["items_content_init"] = _content_init(
                init_state, active_dir, full, active.item_ids, catalog)
        tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                           device=cfg.device, max_per_user=cfg.max_per_user, threads=cfg.threads)
        if warm:
            tcfg = replace(tcfg, lr=cfg.warm_lr, fast_lr_scale=cfg.warm_fast_lr_scale)
        self._say(f"retrain {name}: training {mcfg.model} on {len(train_c.items):,} events of "
                  f"{train_c.n_users:,} users ({full.n_items:,} items), "
                  f"{f'warm from {active_version}' if warm else 'from scratch'}, "
                  f"{cfg.epochs} epoch(s)")
        res = train(train_c, mcfg, tcfg, feats=Features.of(train_c), progress=False,
                    log=lambda line: self._say(f"  {line}"), init_state=init_state)
        t_train = time.monotonic()
        if (broken := weights_problem(res.model)) is not None:  # no candidate a loader refuses
            # a setting to fix, not the window's fault: the window stays to be trained
            return self._finish(Decision(name, False, f"not saved: {broken} (a smaller "
                                         f"DIAM_RETRAIN_{'WARM_LR' if warm else 'LR'}?)",
                                         active_version, window=window, warm_start=warm,
                                         created_at=created.isoformat(), window_done=False),
                                t0, {"read": t_read - t0, "train": t_train - t_read})
        cand_dir = Path(cfg.candidates_dir) / name
        save_checkpoint(cand_dir, res.model, train_c, seed=cfg.seed,
                        train_metrics={**res.metrics(), "history": res.history},
                        extra={"split_seed": cfg.seed, "retrain": {"window": window,
                                                                   "warm_start": warm}})
        # new items get their first embedding from this tower (titles + categories), exported
        # with the snapshot; fitted on the candidate's trained rows
        from online_model.models.content import FILE, ContentTower

        titles = {k: v.title for k, v in catalog.items.items()}
        cats_of = {k: list(v.categories) for k, v in catalog.items.items()}
        ids = full.item_ids.astype(str).tolist()
        ContentTower.fit(full.category_names, [cats_of.get(i, []) for i in ids],
                         [titles.get(i, "") for i in ids],
                         res.model.export_online()["online.item_emb"]).save(
            cand_dir / FILE)
        es = slice_eval_set(full, cut, prefix_signals(full))
        dev = str(next(res.model.parameters()).device)
        cand_m = evaluate_slice(res.model, full, es, device=dev, per_user=True)
        cand_u = cand_m.pop("per_user")

        def gate_against(ck: Any) -> tuple[Any, dict[str, Any]]:
            """The gate's decision on the candidate against the active checkpoint ``ck``
            (None: no active model) on the held-out slice, and the decision's metrics."""
            act_m = act_u = None
            if ck is not None:
                torch.manual_seed(cfg.seed)
                acfg = ModelConfig.from_dict({**ck.config, "n_items": full.n_items,
                                              "n_categories": full.n_categories})
                view = build_model(acfg, full.item_cat)
                state, _ = remap_state(ck.model, ck.item_ids, view, full.item_ids,
                                       ck.categories or None, full.category_names)
                view.load_state_dict(state)
                act_m = evaluate_slice(view.to(dev).eval(), full, es,
                                       exclude=unknown_rows(full, ck.item_ids), device=dev,
                                       per_user=True)
                act_u = act_m.pop("per_user")
            pairs = (None if act_u is None else
                     {m: (cand_u[m], act_u[m]) for m in ("recall@20", "entropy@20")})
            gate = decide(cand_m, act_m, cfg.gate, eval_users=len(es.users), per_user=pairs)
            return gate, {"candidate": _clean(cand_m), "active": _clean(act_m),
                          "eval_users": len(es.users),
                          "diff_ci": {m: [round(lo, 6), round(hi, 6)]
                                      for m, (lo, hi) in gate.intervals.items()}}

        gate, metrics = gate_against(active)
        t_eval = time.monotonic()
        d = Decision(name, False, gate.reason, active_version, metrics=metrics,
                     window=window, warm_start=warm, created_at=created.isoformat(),
                     candidate_path=str(cand_dir))
        phases = {"read": t_read - t0, "train": t_train - t_read, "eval": t_eval - t_train}
        why = None
        if gate.publish and (why := self._unusable(cand_dir)) is not None:
            d.reason = f"{gate.reason}, but no dataflow can use it: {why}"
        elif gate.publish:
            why = self._publish_gated(d, cand_dir, gate_against, load_checkpoint)
            phases["publish"] = time.monotonic() - t_eval
        d = self._finish(d, t0, phases, cand_dir)
        if d.published and not d.announced:
            self._unannounced = json.loads(d.to_json())
            self._sync_failed(why or "", d.version)
        return d

    def _publish_gated(self, d: Decision, cand_dir: Path, gate_against: Any,
                       load: Any) -> str | None:
        """Publish ``d``'s candidate in place of ``d.active_before``, the version the gate
        compared it with (:func:`snapshotter.publish.publish`'s ``expect_active``, checked
        under the store's lock). When another version became active meanwhile (a publish or
        rollback by hand), the candidate is compared with that one on the same held-out
        slice and published only if the gate passes it again (at most :data:`MAX_REGATES`
        times); ``d`` then names the version it was last compared with and keeps the first
        comparison under ``metrics["moved_from"]``. Updates ``d``; returns why the publish
        was not announced (None: it was, or nothing was published)."""
        from snapshotter.publish import ActiveMoved

        moves = 0
        while True:
            try:
                d.version, d.announced, why = self._publish(cand_dir, d.active_before)
            except ActiveMoved as moved:
                moves += 1
                was = d.active_before
                self._say(f"retrain {d.candidate}: the active version moved while it trained "
                          f"({moved})")
                try:  # the rule it was first gated by: the pointer wins, Redis re-synced
                    now = self._gate_target()
                except CannotRetrain as stop:
                    d.reason = f"{was} stopped being active while it trained: {stop}"
                    return None
                if now == was and moves <= MAX_REGATES:  # Redis only re-synced to it
                    continue
                self._say(f"retrain {d.candidate}: {now or 'no version'} became active while "
                          f"it trained (it was compared with {was or 'none'})")
                d.metrics.setdefault("moved_from", {"version": was,
                                                    "active": d.metrics.get("active")})
                d.active_before = now
                if moves > MAX_REGATES:
                    d.reason = (f"the active version moved {moves} times while the candidate "
                                f"was gated (last to {now or 'none'}); refused rather than "
                                "publish it over a version it was not compared with")
                    return None
                gate, metrics = gate_against(None if now is None else load(self.store.path(now)))
                d.metrics.update(metrics)
                d.reason = (f"{now or 'no version'} became active while it trained (it was "
                            f"compared with {was or 'none'}); compared with it: {gate.reason}")
                if not gate.publish:
                    return None
                continue
            d.published = True
            if why is not None:
                d.reason = f"{d.reason}; {why}"
            return why

    def _gate_target(self) -> str | None:
        """The active version a retrain warm-starts from and gates against (and that its
        publish must still find active, :func:`snapshotter.publish.publish`'s
        ``expect_active``), by one rule for ``--once`` and the service, at the start and
        after the active version moved: the version every reader resolves
        (:func:`snapshotter.store.resolve_active`: Redis's announcement when this store holds
        it, else the pointer file: ACTIVE missing while servers serve a version is not "no
        active model"). When the pointer and Redis name two different versions the store
        holds (a publish or rollback with ``--no-redis``, a publish killed between its switch
        and its announcement), the pointer is the truth and Redis is re-synced from it first
        (:meth:`sync_redis`, :func:`snapshotter.sync.sync_active`: what the service does at
        start and ``diam snapshot watch`` on every tick), so the candidate is compared with
        the version the next server start would load, and a hand switch of the pointer is
        never replaced without that comparison. Raises :class:`CannotRetrain` when that
        re-sync fails, or when no version resolves but a model trained from scratch would
        replace one (:meth:`_why_not_from_scratch`)."""
        from snapshotter.store import resolve_active

        elsewhere: list[str] = []
        active = resolve_active(self.store, self.redis, self.ns, on_absent=elsewhere.append)
        pointer = self.store.active_version()
        if pointer is not None and active != pointer:
            self._say(f"the pointer {self.store.root}/ACTIVE names {pointer} and Redis's "
                      f"diam:{self.ns}:model:active {active}: the pointer is the truth (Redis "
                      "broadcasts it); Redis is re-synced from it before the retrain gates "
                      "against it")
            if not self.sync_redis():
                raise CannotRetrain(
                    f"not retraining: the pointer {self.store.root}/ACTIVE names {pointer} "
                    f"and Redis's diam:{self.ns}:model:active {active}, and Redis could not "
                    f"be re-synced from the pointer; `diam snapshot rollback {pointer}` (or "
                    f"`rollback {active}`) makes both name one version")
            elsewhere.clear()
            active = resolve_active(self.store, self.redis, self.ns,
                                    on_absent=elsewhere.append)
            if active != (pointer := self.store.active_version()):
                raise CannotRetrain(
                    f"not retraining: the pointer {self.store.root}/ACTIVE names {pointer} "
                    f"and Redis's diam:{self.ns}:model:active {active} again after a re-sync "
                    "(a publish or rollback is switching them); the next retrain looks again")
        if active is None and (
                why := self._why_not_from_scratch(elsewhere[0] if elsewhere else None)):
            raise CannotRetrain(f"not retraining: {why}")
        return active

    def _why_not_from_scratch(self, elsewhere: str | None) -> str | None:
        """Why a retrain must not train from scratch and publish although no active version
        resolves (:func:`snapshotter.store.resolve_active`), or None: a model compared with
        nothing would replace one servers serve or may serve. Redis announces ``elsewhere``,
        a version this store does not hold, or the store holds versions while no pointer
        names one (ACTIVE deleted or emptied)."""
        if elsewhere is not None:
            return (f"Redis's diam:{self.ns}:model:active names {elsewhere}, which "
                    f"{self.store.root} does not hold, and no version there is active: a "
                    "model trained from scratch would replace it, compared with nothing; "
                    f"point DIAM_SNAPSHOT_DIR at the store that holds {elsewhere}, or retrain "
                    "into another namespace (--namespace)")
        held = [i.version for i in self.store.versions()]
        if held:
            return (f"{self.store.no_active_reason()}, yet it holds {len(held)} version(s) "
                    f"(newest {held[-1]}): a model trained from scratch would replace them, "
                    "compared with nothing; `diam snapshot rollback VERSION` makes one active "
                    "(retrains then warm-start from it and are gated against it)")
        return None

    def _publish(self, cand_dir: Path, expect: str | None) -> tuple[str, bool, str | None]:
        """Publish the candidate in place of ``expect`` (else
        :class:`snapshotter.publish.ActiveMoved`, nothing published): ``(version, announced,
        why not announced)``. A publish that
        switched the pointer on disk and then failed (Redis did not take the version, most
        likely) is a publish: the pointer is the truth, and a retrain must not run again on
        the same window for a Redis outage (every poll published another version). Anything
        that failed before the switch raises, as before."""
        from snapshotter.publish import ActiveMoved, publish
        from snapshotter.store import SnapshotError, sha256_file

        try:
            pub = publish(cand_dir, self.store, self.redis, ns=self.ns, data_dir=self.s.data_dir,
                          expect_active=expect)
            return pub.version, pub.redis_set, None
        except ActiveMoved:
            raise
        except SnapshotError as exc:
            active = self.store.active_version()
            sha = sha256_file(cand_dir / "weights.safetensors")
            if active is None or (self.store.manifest(active).get("source") or {}).get(
                    "weights_sha256") != sha:
                raise
            return active, False, (f"published {active} on disk, but it is not announced in "
                                   f"Redis ({exc.__cause__ or exc})")

    def _unusable(self, cand_dir: Path) -> str | None:
        """Why no dataflow could use the candidate as its base (``diam.app.stream_base``,
        ``diam run``'s and ``diam snapshot publish``'s own check: it loads, and its embedding
        size is DIAM_ONLINE_DIM), or None. A candidate of another size (a warm start from an
        active model whose size is not DIAM_ONLINE_DIM) is refused as a gate refusal is: kept
        with its decision, never published; every dataflow would refuse it."""
        from diam.app import stream_base_problem

        problem = stream_base_problem(cand_dir, self.s.online, f"candidate {cand_dir.name}")
        if problem is None:
            return None
        if problem.kind == "load":
            return f"it does not load as a base ({problem.message})"
        return self._dim_why(problem.message)

    def _untrainable(self, dim: int, name: str) -> str | None:
        """Why no dataflow could use candidate ``name`` of embedding size ``dim`` (the size it
        is about to be trained at: the active model's, or DIAM_ONLINE_DIM from scratch), in
        :meth:`_unusable`'s words, or None. Asked before training, so that a size every
        dataflow refuses costs no training time; :meth:`_unusable` stays the guard after it."""
        from diam.app import dim_problem

        problem = dim_problem(dim, self.s.online, f"candidate {name}")
        return None if problem is None else self._dim_why(problem)

    def _dim_why(self, problem: str) -> str:
        return (f"{problem}; the retrain service trains at the active model's size, or at "
                "DIAM_ONLINE_DIM from scratch (DIAM_RETRAIN_WARM_START=false)")

    def _finish(self, d: Decision, t0: float, phases: dict[str, float],
                cand_dir: Path | None = None) -> Decision:
        d.seconds = {k: round(v, 3) for k, v in {**phases, "total": time.monotonic() - t0}.items()}
        if cand_dir is not None and cand_dir.is_dir():
            (cand_dir / "decision.json").write_bytes(d.to_json())
        self._emit(d)
        self.metrics.record(d)
        self._say(outcome_line(d))
        self._prune()
        return d

    def _emit(self, d: Decision) -> None:
        self._emit_raw(d.candidate, d.to_json())

    def _emit_raw(self, candidate: str, body: bytes) -> bool:
        from streams.kafka_io import ensure_topic
        from streams.producer import produce_raw

        # one partition: the decisions are a log, read back in order
        ensure_topic(self.s.kafka, self.s.kafka.models_topic, partitions=1, timeout=15.0)
        rep = produce_raw(self.s.kafka, self.s.kafka.models_topic, [(candidate.encode(), body)])
        if not rep.ok:
            log.error("decision %s not written to %s: %s", candidate,
                      self.s.kafka.models_topic, rep.errors)
        return bool(rep.ok)

    def reconcile(self, decisions: list[dict[str, Any]] | None = None) -> list[str]:
        """Write to the models topic the decisions of this clicks topic that a candidate's
        ``decision.json`` holds but the topic lacks, oldest first; return their candidates.

        A retrain writes ``decision.json`` and then the topic record: one stopped between the
        two (a kill, a broker away) left a published version with no decision on the topic,
        and the service, which resumes after the topic's last decision, would train that
        window again. The service calls this when it starts. A run stopped between its
        publish and ``decision.json`` left a candidate without one whose snapshot is in the
        store (the manifest names the candidate as its source): its decision is rebuilt from
        the candidate's config (window) and the snapshot (version), without the gate's
        metrics, which died with the run. ``decisions``: the topic's, when the caller has
        just read them (:meth:`_decisions`)."""
        root = Path(self.cfg.candidates_dir)
        if not root.is_dir():
            return []
        known = {b.get("candidate") for b in (self._decisions() if decisions is None
                                              else decisions)}
        missing: list[tuple[str, str, bytes]] = []
        for p in sorted(root.iterdir()):
            f = p / "decision.json"
            if p.name.startswith(".") or not p.is_dir():
                continue
            if not f.is_file() and p.name not in known:
                self._rebuild_decision(p)
            if not f.is_file():
                continue
            try:
                raw = f.read_bytes()
                body = json.loads(raw)
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s (%s); skipped", f, exc)
                continue
            if (isinstance(body, dict) and (body.get("window") or {}).get("topic") == self.topic
                    and body.get("candidate") not in known):
                missing.append((str(body.get("created_at")), str(body.get("candidate")), raw))
        written = []
        for _, name, raw in sorted(missing):
            if self._emit_raw(name, raw):
                written.append(name)
                self._say(f"retrain {name}: its decision.json was not on "
                          f"{self.s.kafka.models_topic} (a retrain stopped before writing it "
                          "there); written now")
        return written

    def _prune(self) -> None:
        root = Path(self.cfg.candidates_dir)
        if not root.is_dir():
            return
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for p in dirs[:max(0, len(dirs) - self.cfg.keep_candidates)]:
            shutil.rmtree(p, ignore_errors=True)

    # -- the service -----------------------------------------------------------------------
    def _rebuild_decision(self, cand: Path) -> None:
        """``cand``'s decision.json, when a snapshot of the store was committed from it (its
        run stopped during or after the publish), window from the candidate's config.json.
        Nothing when no snapshot came from it (it was never published, and a refusal needs
        the gate's figures, which are gone).

        Published as that version when it was ever activated (the activation history, the
        pointer, or Redis names it), ``active_before`` the version activated before it. A
        version committed and never activated (the run stopped between the commit and the
        pointer switch) is recorded ``published: false`` with ``window_done: false``: nothing
        went live, and it is not finished now, because the gate's figures and the version it
        was compared with died with the run (the active one may have moved since) and
        re-gating it would take the whole evaluation again, on a window the next retrain
        covers anyway; so the service trains those events again, gated against what is
        active then. The version stays in the store (``diam snapshot rollback`` can still
        activate it by hand) until a prune removes it."""
        from snapshotter.store import SnapshotError

        source = str(cand.resolve())
        version = next((i.version for i in self.store.versions()
                        if i.source.get("path") == source), None)
        if version is None:
            return
        try:
            cfg = json.loads((cand / "config.json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s/config.json (%s); its decision is not rebuilt", cand, exc)
            return
        retrain: dict[str, Any] = cfg.get("retrain") if isinstance(cfg.get("retrain"), dict) else {}
        window: dict[str, Any] = (retrain["window"] if isinstance(retrain.get("window"), dict)
                                  else {})
        if window.get("topic") != self.topic:
            return
        created = self.store.manifest(version).get("created_at", "")
        try:
            announced = self._redis_active() == version
        except Exception:  # Redis away: not known to be announced; serve re-syncs it
            announced = False
        history = [v for _, v in self.store.activations()]
        try:
            pointer = self.store.active_version()
        except SnapshotError:  # a damaged pointer names nothing; the history still tells
            pointer = None
        first = history.index(version) if version in history else 0
        before = history[first - 1] if first > 0 else None
        if version not in history and version != pointer and not announced:
            d = Decision(cand.name, False, f"committed as {version} but never activated: the "
                         "run stopped between the commit and the pointer switch, so nothing "
                         "went live; rebuilt when the service started, not finished (the "
                         "gate's figures and the version it was compared with were not kept): "
                         "the next retrain trains on these events again; `diam snapshot "
                         f"rollback {version}` would activate it by hand", None,
                         window=window, warm_start=retrain.get("warm_start"),
                         created_at=str(created), candidate_path=str(cand), window_done=False)
        else:
            d = Decision(cand.name, True, f"published as {version}; the run stopped before "
                         "writing its decision, rebuilt when the service started (the gate's "
                         "figures were not kept)", before,
                         version=version, announced=announced, window=window,
                         warm_start=retrain.get("warm_start"), created_at=str(created),
                         candidate_path=str(cand))
        (cand / "decision.json").write_bytes(d.to_json())

    def _redis_active(self) -> str | None:
        """The version Redis announces for the namespace (raises when Redis does not answer)."""
        from serving_cache.keys import model_active_key

        raw = self.redis.get(model_active_key(self.ns))
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw

    # -- Redis's active version: re-synced from the pointer ----------------------------------
    ANNOUNCE_BACKOFF_MAX_S = 60.0
    """Longest wait between two tries to re-sync Redis (the first waits ``poll_s``, doubling)."""

    def _sync_failed(self, why: str, version: str | None = None) -> None:
        """Redis may not name the active version: schedule the next try (backoff), and say so
        once per state change, not per try. Outside the service (one :meth:`run_once`,
        ``diam retrain --once``) nothing retries: the line says how to finish the job."""
        if self._sync_at is None and not self._service:
            self._say(f"Redis does not name the active snapshot version ({why}); this single "
                      "retrain does not retry it: run `diam snapshot rollback "
                      f"{version or 'VERSION'}` once Redis answers (or keep `diam snapshot "
                      "watch` or a `diam retrain` service running, which re-sync it)")
        elif self._sync_at is None:
            self._say(f"Redis does not name the active snapshot version yet ({why}); the "
                      f"service re-syncs it from {self.store.root}/ACTIVE with backoff (up to "
                      f"{self.ANNOUNCE_BACKOFF_MAX_S:g} s) and trains nothing until it does")
        self.metrics.unsynced.set(1)
        delay = min(self.ANNOUNCE_BACKOFF_MAX_S, self.cfg.poll_s * 2 ** min(self._sync_tries, 30))
        self._sync_tries += 1
        self._sync_at = time.monotonic() + delay

    def sync_redis(self) -> bool:
        """One try to make Redis name the active version on disk
        (:func:`snapshotter.sync.sync_active`, ``diam snapshot watch``'s rule): True once it
        does (an unannounced decision of that version is then written again, announced),
        False when Redis (or the pointer) refused, the next try scheduled."""
        from snapshotter.sync import sync_active

        try:
            got = sync_active(self.store, self.redis, self.ns)
        except Exception as exc:  # Redis away, or a damaged pointer: retried, never fatal
            self._sync_failed(f"{type(exc).__name__}: {exc}")
            return False
        if self._sync_at is not None or got.changed:
            self._say(f"Redis answers: diam:{self.ns}:model:active names {got.active}"
                      + (f" (it named {got.was})" if got.changed else ""))
        self._sync_at, self._sync_tries = None, 0
        self.metrics.unsynced.set(0)
        body, self._unannounced = self._unannounced, None
        if body is None:
            return True
        if got.active != body.get("version"):
            self._say(f"retrain {body.get('candidate')}: {body.get('version')} was never "
                      f"announced; the pointer on disk names {got.active} now")
            return True
        body = {**body, "announced": True, "announced_at": datetime.now(UTC).isoformat()}
        raw = json.dumps(body, sort_keys=True).encode()
        cand = Path(str(body.get("candidate_path") or ""))
        if body.get("candidate_path") and cand.is_dir():
            (cand / "decision.json").write_bytes(raw)
        self._emit_raw(str(body.get("candidate")), raw)
        self._say(f"retrain {body.get('candidate')}: {body.get('version')} announced in Redis; "
                  "its decision written again, announced")
        return True

    def _decisions(self) -> list[dict[str, Any]]:
        """The decisions about this clicks topic on the models topic, in offset order (none
        while the topic does not exist)."""
        from streams.kafka_io import consume_all, partition_ids

        try:
            partition_ids(self.s.kafka, self.s.kafka.models_topic, timeout=10)
        except RuntimeError:
            return []
        out = []
        for rec in consume_all(self.s.kafka, self.s.kafka.models_topic):
            try:
                body = json.loads(rec.value or b"")
            except ValueError:
                continue
            if isinstance(body, dict) and (body.get("window") or {}).get("topic") == self.topic:
                out.append(body)
        return out

    def last_decision(self, decisions: list[dict[str, Any]] | None = None
                      ) -> dict[str, Any] | None:
        """The newest decision about this clicks topic on the models topic (or among
        ``decisions``, as :meth:`_decisions` read them), if any; of records of one retrain
        (equal ``created_at``: a decision written again, announced), the later one."""
        last = None
        for body in self._decisions() if decisions is None else decisions:
            if last is None or str(body.get("created_at")) >= str(last.get("created_at")):
                last = body
        return last

    def resume_point(self, decisions: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any] | None:
        """The decision the service resumes after: :meth:`last_decision` of those whose
        window counts as trained (``window_done``, true for records without the key)."""
        return self.last_decision([b for b in (self._decisions() if decisions is None
                                               else decisions)
                                   if b.get("window_done", True) is not False])

    def serve(self, stop: Any = None) -> None:
        """Retrain whenever ``every_events`` new records or ``every_minutes`` (with new records)
        passed; ``stop`` (a threading.Event) ends the loop. Holds the store's retrain lock
        while it runs: raises :class:`snapshotter.store.RetrainLocked` at once when another
        retrain of the store holds it."""
        with self.store.retrain_lock():
            self._locked = self._service = True
            try:
                self._serve(stop)
            finally:
                self._locked = self._service = False

    def _serve(self, stop: Any) -> None:
        from streams.kafka_io import watermarks

        # a retrain stopped before its topic record: resume after it, not before. The topic is
        # read once, and again only when reconcile wrote to it
        decisions = self._decisions()
        if self.reconcile(decisions):
            decisions = self._decisions()
        last = self.last_decision(decisions)
        if last is not None and last.get("published") and last.get("announced") is False:
            self._unannounced = last  # announced by the first sync that succeeds
        self.sync_redis()  # a run stopped after a publish Redis did not take left them apart
        resume = self.resume_point(decisions)
        done_at = sum((resume or {}).get("window", {}).get("end", {}).values()) if resume else 0
        last_t = time.time() if resume is None else datetime.fromisoformat(
            resume["created_at"]).timestamp()
        again = ("" if last is None or last is resume else
                 f" (retrain {last.get('candidate')} never went live: its events are trained "
                 "again)")
        self._say(f"retrain service on {self.topic}: every {self.cfg.every_events:,} events or "
                  f"{self.cfg.every_minutes:g} min; last retrain ended at offset sum "
                  f"{done_at:,}{again}")
        while stop is None or not stop.is_set():
            if self._sync_at is not None and time.monotonic() >= self._sync_at:
                self.sync_redis()
            if self._sync_at is not None:  # a candidate published now could not be announced
                if stop is not None and stop.wait(self.cfg.poll_s):
                    break
                if stop is None:
                    time.sleep(self.cfg.poll_s)
                continue
            try:
                total = sum(hi for _, hi in watermarks(self.s.kafka, self.topic).values())
            except Exception as exc:  # broker away: wait and look again, never crash
                log.warning("cannot read %s end offsets (%s); retrying", self.topic, exc)
                total = done_at
            new = total - done_at
            due = new >= self.cfg.every_events or (
                new > 0 and time.time() - last_t >= self.cfg.every_minutes * 60)
            if due:
                try:
                    d = self.run_once()
                    done_at = sum(d.window.get("end", {}).values()) or total
                    self._blocked = None
                    last_t = time.time()
                except CannotRetrain as exc:  # nothing trained: said once, looked at each poll
                    if str(exc) != self._blocked:  # (last_t kept: still due at the next one)
                        self._say(f"{exc} (the service looks again every "
                                  f"{self.cfg.poll_s:g} s)")
                    self._blocked = str(exc)
                except Exception as exc:  # one failed retrain must not end the service
                    log.exception("retrain failed: %s", exc)
                    self.metrics.decisions.labels("failed").inc()
                    last_t = time.time()
            if stop is not None:
                if stop.wait(self.cfg.poll_s):
                    break
            else:
                time.sleep(self.cfg.poll_s)
