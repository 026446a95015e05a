"""Prequential (test-then-train) evaluation of the online learner over a time-ordered stream.

Protocol (one run; the arms differ only in :class:`OnlineConfig`):

1. the first ``warm_frac`` of the events (time order) is the past: the base (a DIAM checkpoint
   trained on those events only, or a PPMI+SVD base built from them) and every arm replay it
   through :meth:`OnlineLearner.apply` without learning (signals, recent items);
2. at the cut every user is anchored (:meth:`OnlineLearner.reanchor`): what a snapshot
   published at that moment gives each user;
3. for each later event, in time order: recommend top-n from the user's *current* state with
   :func:`online_model.aggregate.serve_list`, the function ``serving_cache.recommend`` serves
   with (per-interest search, the user's seen items excluded, the aggregator at the live d_u;
   the search is exact, as the Flat index of a small catalogue), score the clicked item, then
   :meth:`OnlineLearner.apply` it -- the very call the dataflow makes. Re-clicks are not
   scored. Ties in time keep the prepared dataset's order (time, then user, then item).

Arms (:data:`ARMS`): ``popularity`` (a decayed count over the stream, ``pop_half_life``
events, seen items excluded), ``reinfer`` (the DIAM network re-run on the current history
before every prediction, no steps: what the model knows), ``frozen`` (anchors from the cut,
never updated), ``nosteps`` (the served re-anchoring cadence without gradient steps: what the
steps add is ``guarded`` minus this), ``guarded`` (the served configuration) and
``unguarded`` (the same without guards or K_u hysteresis). On a base without DIAM's head only
popularity, frozen, guarded and unguarded apply.

``users`` picks whom to evaluate by a stable hash of the id (users are independent): ``tune``
is the 10% that ``--quick`` and online-setting choices use, ``report`` the other 90%.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from online_model.aggregate import manual_d
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.metrics import bootstrap_ci
from online_model.online import OnlineLearner, UserState
from online_model.routing import stable_hash64

__all__ = ["ARMS", "SWEEP_ARMS", "NoUsersSelected", "TrainedBefore", "arm_configs", "recommend",
           "evaluate_stream", "evaluate_path", "format_table", "matched_recall", "stream_cut",
           "trained_before"]

ARMS = ("popularity", "reinfer", "frozen", "nosteps", "guarded", "unguarded")
MODEL_ARMS = ("reinfer", "nosteps")
"""Arms that exist only on a base with DIAM's head."""
SWEEP_ARMS = ("reinfer", "nosteps", "guarded", "unguarded")
"""Arms whose lists are also scored at shifted d_u (``sweep``), for the Recall@20-Entropy@20
fronts: every model arm goes through the same aggregator at the same shifts."""


class NoUsersSelected(ValueError):
    """``users`` and ``user_fraction`` keep none of the users who click after the cut: every
    metric would be 0/0, so the run is refused rather than reported as zeros. ``candidates``:
    how many users click after the cut (0: no event to evaluate, whatever the fraction)."""

    def __init__(self, message: str, candidates: int) -> None:
        super().__init__(message)
        self.candidates = candidates


def stream_cut(n_events: int, warm_frac: float) -> int:
    """The position of the first evaluated event in a stream of ``n_events`` (time order):
    the first ``warm_frac`` of the events are the past.

    >>> stream_cut(100_000, 0.5), stream_cut(1, 0.5), stream_cut(0, 0.5)
    (50000, 0, 0)
    """
    return int(n_events * warm_frac)


@dataclass(frozen=True)
class TrainedBefore:
    """What :func:`trained_before` found: ``verdict`` ``"before"`` (the checkpoint read no
    event of the evaluated period), ``"overlap"`` (it read some) or ``"unknown"`` (its config
    does not say, ``why``). Times are epoch ms; ``cut_ms`` is the first evaluated event's time
    (None: nothing is evaluated); ``trained_events``: how many events its training read."""

    verdict: str
    cut: int
    n_events: int
    cut_ms: int | None = None
    last_ms: int | None = None
    trained_from_ms: int | None = None
    trained_until_ms: int | None = None
    trained_events: int | None = None
    why: str = ""


def trained_before(config: dict[str, Any], ts_ms: Any, warm_frac: float) -> TrainedBefore:
    """Whether a checkpoint (its ``config.json``) was trained only on events before the cut of
    a stream whose event times are ``ts_ms`` (the prepared dataset's, time order): the
    protocol's requirement, since a base that saw the evaluated period scores what it learnt.

    The checkpoint read events up to ``corpus.trained_until`` (``data.ts_max``, or below the
    cut its training recorded). Before the first evaluated event's time it is clean, after it
    it overlaps. At that very time, events fall on both sides of the cut (ties keep the
    dataset's order), so it is clean only if it read no more events than the past holds (a
    checkpoint trained on the first ``cut`` events of this stream: ``bench/prequential.py``'s).

    >>> ts = [1, 2, 2, 3]
    >>> [trained_before({"data": {"ts_max": t, "events": 2}}, ts, 0.5).verdict for t in (1, 2, 3)]
    ['before', 'before', 'overlap']
    >>> trained_before({"data": {"ts_max": 2, "events": 3}}, ts, 0.5).verdict
    'overlap'
    >>> trained_before({"left_out_from_ts": 2}, ts, 0.5).verdict
    'before'
    >>> trained_before({"model": "diam"}, ts, 0.5).why
    'its config.json records neither data.ts_max nor a training cut'
    """
    from online_model.corpus import trained_until

    ts = np.asarray(ts_ms, dtype=np.int64)
    n = len(ts)
    cut = stream_cut(n, warm_frac)
    data = config.get("data")
    info: dict[str, Any] = data if isinstance(data, dict) else {}
    first, events = info.get("ts_min"), info.get("events")
    got = TrainedBefore(
        "before", cut, n,
        cut_ms=int(ts[cut:].min()) if cut < n else None,
        last_ms=int(ts.max()) if n else None,
        trained_from_ms=first if type(first) is int else None,
        trained_events=events if type(events) is int else None,
    )
    try:
        until = trained_until(config)
    except ValueError as exc:
        return replace(got, verdict="unknown", why=f"its config.json has {exc}")
    if until is None:
        return replace(got, verdict="unknown",
                       why="its config.json records neither data.ts_max nor a training cut")
    got = replace(got, trained_until_ms=until)
    if got.cut_ms is None or until < got.cut_ms:
        return got
    if until == got.cut_ms and got.trained_events is not None and got.trained_events <= cut:
        return got
    return replace(got, verdict="overlap")


def arm_configs(cfg: OnlineConfig) -> dict[str, OnlineConfig]:
    """Each learner arm's configuration, derived from the served one (``cfg``)."""
    return {
        "reinfer": cfg.model_copy(update={"learn": False, "guards": False, "reanchor_every": 1,
                                          "infer_items": 0}),
        "frozen": cfg.model_copy(update={"learn": False, "guards": True, "reanchor_every": 0}),
        "nosteps": cfg.model_copy(update={"learn": False, "guards": True}),
        "guarded": cfg.model_copy(update={"learn": True, "guards": True}),
        "unguarded": cfg.model_copy(update={"learn": True, "guards": False}),
    }


def user_group(user_id: str) -> str:
    """``"tune"`` for the stable 10% of users online settings are chosen on, else ``"report"``."""
    return "tune" if stable_hash64(user_id) % 10_000 < 1_000 else "report"


def _aggregator(merge: str) -> tuple[Callable[..., np.ndarray] | None, str]:
    if merge == "score":
        return None, "max-score merge (ComiRec): top-n of each item's best score over interests"
    from online_model.aggregate import serve_list

    return serve_list, ("online_model.aggregate.serve_list: the serving path (per-interest "
                        "search of max(2n, 50) + seen, seen excluded, aggregator at the live d_u)")


def exact_search(item_emb: np.ndarray, usable: np.ndarray, bias: np.ndarray | None = None,
                 ) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """An exact inner-product search over the rows of ``item_emb`` where ``usable`` is true,
    shaped as the snapshot index's ``search``: ``(vecs [K, d], m) -> (scores, items) [K, m]``
    sorted by score (ties by row). ``bias`` [N] float32, when given, is added to every
    interest's scores at each search (read then: the caller may update it in place); serving
    has none, an exploration may (``bench/prequential_popprior.py``)."""
    t = np.ascontiguousarray(item_emb.T)
    bad = ~usable

    def search(vecs: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(vecs, dtype=np.float32) @ t  # [K, N]
        if bias is not None:
            s += bias[None, :]
        s[:, bad] = -np.inf
        top = np.argpartition(-s, m - 1, axis=1)[:, :m]
        ts = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -ts), axis=1) if top.shape[0] else top
        top = np.take_along_axis(top, order, axis=1)
        ts = np.take_along_axis(ts, order, axis=1)
        top[~np.isfinite(ts)] = -1
        return ts, top

    return search


def recommend(
    state: UserState,
    base: BaseView,
    n: int,
    exclude: np.ndarray,
    aggregate: Callable[..., np.ndarray] | None,
    popular: np.ndarray,
    search: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
    d_u: float | None = None,
) -> np.ndarray:
    """Top-n item rows for ``state``.

    With ``aggregate`` None the interests are merged by best score (exactly the top-n of
    ``max_k v_k·e``); otherwise the list is :func:`online_model.aggregate.serve_list`'s, the
    serving path, at the user's d_u (or at ``d_u`` when given: the sweep's shifted value).
    Users with no known item yet get ``popular``.
    """
    if len(state.recent) == 0:
        return popular[~np.isin(popular, exclude)][:n]
    if aggregate is None:
        best = (state.V @ base.item_emb.T).max(axis=0)
        best[exclude] = -np.inf
        best[base.item_norms == 0] = -np.inf  # items the base cannot embed
        top = np.argpartition(-best, n)[:n]
        return top[np.lexsort((top, -best[top]))]  # ties by item row: deterministic
    if search is None:
        search = exact_search(base.item_emb, base.item_norms > 0)
    return aggregate(search, state.V, state.d if d_u is None else d_u, n, np.unique(exclude),
                     base.item_emb, base.item_categories)


@dataclass
class _Arm:
    learner: OnlineLearner | None  # None: the popularity arm
    states: dict[str, UserState]
    hits: dict[str, list[float]] = field(default_factory=dict)  # user -> [hits, ndcg, n]
    entropy: float = 0.0
    n_eval: int = 0
    k_changes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    drift_sum: float = 0.0
    drift_n: int = 0
    apply_s: float = 0.0

    # delta -> user -> [hits, entropy sum, n]: the lists at manual_d(d_u, delta)
    sweep: dict[float, dict[str, list[float]]] = field(default_factory=dict)

    def score(self, user: str, rec: np.ndarray, row: int, cats: np.ndarray) -> None:
        h = self.hits.setdefault(user, [0.0, 0.0, 0.0])
        pos = np.flatnonzero(rec == row)
        if len(pos):
            h[0] += 1.0
            h[1] += 1.0 / math.log2(int(pos[0]) + 2)
        h[2] += 1.0
        self.entropy += _entropy(cats[rec])
        self.n_eval += 1

    def score_shifted(self, delta: float, user: str, rec: np.ndarray, row: int,
                      cats: np.ndarray) -> None:
        h = self.sweep.setdefault(delta, {}).setdefault(user, [0.0, 0.0, 0.0])
        h[0] += float(np.any(rec == row))
        h[1] += _entropy(cats[rec])
        h[2] += 1.0


def _entropy(cats: np.ndarray) -> float:
    cats = cats[cats >= 0]
    if len(cats) == 0:
        return 0.0
    p = np.bincount(cats) / len(cats)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def evaluate_stream(
    ds: Any,
    cfg: OnlineConfig,
    base: BaseView | None = None,
    *,
    warm_frac: float = 0.5,
    n: int = 20,
    user_fraction: float = 1.0,
    users: str = "all",
    arms: Iterable[str] = ARMS,
    merge: str = "aggregate",
    pop_half_life: int = 5_000,
    exclude_last: int | None = 50,
    sweep: Sequence[float] = (),
    progress: bool = False,
    per_user: bool = False,
) -> dict[str, Any]:
    """Run the prequential protocol on a prepared dataset; returns the result dictionary
    (``{"dataset", "arms": {arm: {recall@20, recall@20_ci, ndcg@20, entropy@20,
    k_changes_per_1k, mean_drift, recall@20_diff_to_guarded_ci}}, ...}`` plus details). An
    arm that scored no event (every event after the cut a re-click) has None for its recall,
    intervals, NDCG and entropy: undefined, not 0.

    ``users``: ``"all"``, ``"tune"`` or ``"report"`` (:func:`user_group`); ``user_fraction``
    further keeps a stable fraction of those. ``exclude_last``: the lists leave out the user's
    last this many clicked items, as serving does with the ones the stream pushes
    (``FlowConfig.seen_items``); None leaves out the whole history.

    ``sweep``: shifts ``delta`` of the served diversity slider
    (:func:`online_model.aggregate.manual_d`, d_u -> clip(d_u (1 + delta), 0, 1)); each model
    arm's lists are also scored at every shift, on the same events and states, giving each arm
    a Recall@20-Entropy@20 front (``out["fronts"]``) and recall at matched entropy
    (``out["matched"]``, :func:`matched_recall`). The steps do not depend on the lists, so
    the shifts change nothing else.

    ``per_user``: also return each arm's per-user hits, under ``out["per_user"][arm]``
    (``users``, ``hits``, ``n``: Recall@20 numerators and denominators), for paired
    comparisons across runs, e.g. of two checkpoints on the same users."""
    n_events = len(ds.user_ids)
    cut = stream_cut(n_events, warm_frac)
    base_desc = "checkpoint"
    if base is None:
        base = BaseView.from_events(ds, dim=cfg.dim, upto=cut, k_max=cfg.k_max)
        base_desc = (
            f"events: PPMI+SVD item embeddings from the first {cut} events, "
            f"norms = clicks^{base.meta['pop_exponent']}"
        )
    arms = [a for a in arms if base.head is not None or a not in MODEL_ARMS]
    aggregate, agg_name = _aggregator(merge)
    search = exact_search(base.item_emb, base.item_norms > 0)
    user_list = np.asarray(ds.user_ids).astype(str).tolist()
    items = np.asarray(ds.item_ids).astype(str).tolist()
    ts = np.asarray(ds.ts_ms, dtype=np.int64).tolist()
    rows = [base.index_of(x) for x in items]
    keep_user: dict[str, bool] = {}

    def kept(u: str) -> bool:
        k = keep_user.get(u)
        if k is None:
            k = (stable_hash64(u) % 10_000) < user_fraction * 10_000
            if users != "all":
                k = k and user_group(u) == users
            keep_user[u] = k
        return k

    stream_users = set(user_list[cut:])
    if not any(kept(u) for u in stream_users):
        raise NoUsersSelected(f"user_fraction {user_fraction:g} and users {users!r} keep none of "
                              f"the {len(stream_users)} users who click after the cut",
                              len(stream_users))

    # popularity: a count decayed by event (half-life pop_half_life events), over every event
    # of the stream so far (all users: the feed's own popularity list)
    n_items = len(base.item_ids)
    grow = math.log(2.0) / pop_half_life
    pop = np.zeros(n_items)
    for off in range(cut):
        if rows[off] >= 0:
            pop[rows[off]] += math.exp(grow * (off - cut))
    popular = np.lexsort((np.arange(n_items), -pop))[: 10 * n]

    # 1-2: replay the past without learning, then anchor everyone (the snapshot at the cut)
    cfgs = arm_configs(cfg)
    warm = OnlineLearner(base, cfgs["frozen"])
    states: dict[str, UserState] = {}
    seen: dict[str, list[int]] = {}
    for off in range(cut):
        u = user_list[off]
        if not kept(u):
            continue
        st = states.get(u)
        if st is None:
            st = states[u] = warm.new_state(u)
        warm.apply(st, items[off], ts[off], off)
        if rows[off] >= 0:
            seen.setdefault(u, []).append(rows[off])
    for st in states.values():
        warm.reanchor(st)
    run = {a: _Arm(None if a == "popularity" else OnlineLearner(base, cfgs[a]),
                   {} if a == "popularity" else copy.deepcopy(states)) for a in arms}

    # 3: test, then train
    it: Iterable[int] = range(cut, n_events)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="prequential", unit="ev", total=n_events - cut)
    n_stream = 0
    scale = 1.0  # popularity weights are exp(grow * (off - rescale point))
    for off in it:
        row = rows[off]
        u = user_list[off]
        if kept(u):
            n_stream += 1
            hist = np.array(seen.get(u, ()), dtype=np.int64)
            target_new = row < 0 or not np.any(hist == row)
            excl = hist if exclude_last is None else hist[len(hist) - exclude_last:] \
                if len(hist) > exclude_last else hist
            for name, arm in run.items():
                if name == "popularity":
                    if target_new:
                        top = popular[~np.isin(popular, excl)][:n]
                        arm.score(u, top, row, base.item_categories)
                    continue
                learner = arm.learner
                assert learner is not None
                st = arm.states.get(u)
                if st is None:
                    st = arm.states[u] = learner.new_state(u)
                if target_new:  # a re-click of a seen item is not a recommendation task
                    rec = recommend(st, base, n, excl, aggregate, popular, search)
                    arm.score(u, rec, row, base.item_categories)
                    if name in SWEEP_ARMS:
                        for delta in sweep:
                            shifted = rec if delta == 0 else recommend(
                                st, base, n, excl, aggregate, popular, search,
                                d_u=manual_d(st.d, delta))
                            arm.score_shifted(delta, u, shifted, row, base.item_categories)
                t0 = time.perf_counter()
                evs = learner.apply(st, items[off], ts[off], off)
                arm.apply_s += time.perf_counter() - t0
                for e in evs:
                    arm.kinds[e.kind] = arm.kinds.get(e.kind, 0) + 1
                    arm.k_changes += e.kind == "k_change"
                if st.anchored:
                    arm.drift_sum += st.drift() / base.scale
                    arm.drift_n += 1
            if row >= 0:
                seen.setdefault(u, []).append(row)
        if row >= 0:  # every user's click counts toward popularity
            pop[row] += scale
            scale *= math.exp(grow)
            if scale > 1e100:
                pop /= scale
                scale = 1.0
            if (off - cut) % 100 == 0:  # the list is refreshed every 100 events
                popular = np.lexsort((np.arange(n_items), -pop))[: 10 * n]

    out: dict[str, Any] = {"dataset": getattr(ds, "name", "dataset"), "arms": {}, "details": {}}
    nk = f"@{n}"
    by_user = {}
    for name, arm in run.items():
        us = sorted(arm.hits)
        by_user[name] = (us, np.array([arm.hits[x][0] for x in us]),
                         np.array([arm.hits[x][1] for x in us]),
                         np.array([arm.hits[x][2] for x in us]))
    for name, arm in run.items():
        us, h, g, cnt = by_user[name]
        tot = max(float(cnt.sum()), 1.0)
        if not us:  # nothing scored (every event after the cut a re-click): undefined, null
            row_out: dict[str, Any] = {
                "recall" + nk: None, "recall" + nk + "_ci": None, "ndcg" + nk: None,
                "entropy" + nk: None,
                "k_changes_per_1k": 1000.0 * arm.k_changes / max(n_stream, 1),
                "mean_drift": arm.drift_sum / max(arm.drift_n, 1),
            }
            if "guarded" in by_user and name != "guarded" and not by_user["guarded"][0]:
                row_out["recall" + nk + "_diff_to_guarded_ci"] = None
        else:
            row_out = {
                "recall" + nk: float(h.sum()) / tot,
                "recall" + nk + "_ci": list(bootstrap_ci(h, cnt)),
                "ndcg" + nk: float(g.sum()) / tot,
                "entropy" + nk: arm.entropy / max(arm.n_eval, 1),
                "k_changes_per_1k": 1000.0 * arm.k_changes / max(n_stream, 1),
                "mean_drift": arm.drift_sum / max(arm.drift_n, 1),
            }
            if "guarded" in by_user and name != "guarded" and by_user["guarded"][0] == us:
                row_out["recall" + nk + "_diff_to_guarded_ci"] = list(
                    bootstrap_ci(h, cnt, ref=by_user["guarded"][1]))
        out["arms"][name] = row_out
        ks = [s.k for s in arm.states.values() if s.anchored]
        out["details"][name] = {
            "events_evaluated": arm.n_eval,
            "users_evaluated": len(us),
            "drift_events": dict(sorted(arm.kinds.items())),
            "us_per_apply": 1e6 * arm.apply_s / max(n_stream, 1),
            "inferences_per_event": (arm.learner.inferences / max(n_stream, 1)
                                     if arm.learner is not None else 0.0),
            "mean_k_at_end": float(np.mean(ks)) if ks else 0.0,
            "mean_d_at_end": float(np.mean([s.d for s in arm.states.values()]))
            if arm.states
            else 0.0,
        }
    if per_user:
        out["per_user"] = {a: {"users": u, "hits": h.tolist(), "n": c.tolist()}
                           for a, (u, h, _, c) in by_user.items()}
    if sweep:
        out["fronts"], out["matched"] = _fronts(run, sorted(sweep), n)
    out["base"] = (
        base_desc
        if base_desc != "checkpoint"
        else f"checkpoint {base.meta.get('path', '')} ({base.version})"
    )
    out["anchors"] = base.anchor_kind
    out["aggregation"] = agg_name
    out["protocol"] = {
        "warm_frac": warm_frac,
        "events": n_events,
        "stream_events": n_stream,
        "users": users,
        "user_fraction": user_fraction,
        "n": n,
        "reanchor_every": cfg.reanchor_every,
        "reanchor_cos": cfg.reanchor_cos,
        "reanchor_explore": cfg.reanchor_explore,
        "reanchor_residual": cfg.reanchor_residual,
        "reanchor_gap": cfg.reanchor_gap,
        "settings_not_default": {k: v for k, v in cfg.model_dump().items()
                                 if v != type(cfg).model_fields[k].default},
        "popularity": f"decayed click count, half-life {pop_half_life} events, refreshed every 100",
        "entropy": "nats, primary category of the recommended list",
        "mean_drift": "RMS distance of vectors from anchors in base-scale units, averaged over stream events of anchored users",
        "excluded": (f"the user's last {exclude_last} clicked items, as serving excludes the seen items "
                     "the stream pushes; re-clicks of any earlier item are not scored"
                     ) if exclude_last is not None else
                    "every item the user clicked before; re-clicks are not scored",
        "ties": "events with equal timestamps keep the prepared order (time, user, item)",
        "ci": "95% bootstrap over users (2000 resamples); differences paired on the same users",
    }
    return out


def _user_arrays(arm: _Arm, deltas: list[float], users: list[str]) -> tuple[np.ndarray, ...]:
    """``(hits, entropy sums, n)``, each ``[len(deltas), len(users)]``."""
    cube = np.array([[arm.sweep.get(dl, {}).get(u, [0.0, 0.0, 0.0]) for u in users]
                     for dl in deltas])
    return cube[..., 0], cube[..., 1], cube[..., 2]


def matched_recall(entropy: np.ndarray, recall: np.ndarray, target: np.ndarray | float) -> np.ndarray:
    """Recall on a front interpolated linearly at ``target`` entropy: the front is the points
    ``(entropy[..., j], recall[..., j])`` of a sweep (last axis), put in entropy order; NaN
    where ``target`` lies outside the front's entropy range (no extrapolation).

    >>> float(matched_recall(np.array([1.0, 2.0]), np.array([0.3, 0.1]), 1.5))
    0.2
    >>> bool(np.isnan(matched_recall(np.array([1.0, 2.0]), np.array([0.3, 0.1]), 2.5)))
    True
    """
    e = np.atleast_2d(entropy)
    r = np.atleast_2d(recall)
    t = np.broadcast_to(np.asarray(target, dtype=float), e.shape[:-1])
    order = np.argsort(e, axis=-1, kind="stable")
    e = np.take_along_axis(e, order, axis=-1)
    r = np.take_along_axis(r, order, axis=-1)
    out = np.full(e.shape[:-1], np.nan)
    for i in range(e.shape[0]):
        if e[i, 0] <= t[i] <= e[i, -1]:
            out[i] = np.interp(t[i], e[i], r[i])
    return out if np.ndim(entropy) > 1 or np.ndim(target) > 0 else out[0]


def _fronts(run: dict[str, _Arm], deltas: list[float], n: int, reps: int = 2000,
            seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each sweep arm's front, and recall at matched entropy against ``reinfer`` and
    ``guarded``'s served points with paired bootstrap intervals over users (the entropy of the
    target point is resampled with the users, so the interval includes its uncertainty)."""
    nk = f"@{n}"
    arms = [a for a in SWEEP_ARMS if a in run and run[a].sweep]
    fronts: dict[str, Any] = {}
    if not arms:
        return fronts, {}
    users = sorted(set().union(*(run[a].hits for a in arms)))
    cubes = {a: _user_arrays(run[a], deltas, users) for a in arms}
    for a in arms:
        h, e, c = cubes[a]
        tot = np.maximum(c.sum(1), 1.0)
        fronts[a] = [{"delta": dl, "recall" + nk: float(h[j].sum() / tot[j]),
                      "entropy" + nk: float(e[j].sum() / tot[j])} for j, dl in enumerate(deltas)]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(reps, len(users)))

    def point(a: str, j: int | None, sample: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        h, e, c = cubes[a]
        if sample is not None:
            h, e, c = h[:, sample], e[:, sample], c[:, sample]
        hs, es, cs = h.sum(-1), e.sum(-1), np.maximum(c.sum(-1), 1.0)  # [deltas(, reps)]
        rec, ent = hs / cs, es / cs
        return (rec, ent) if j is None else (rec[j], ent[j])

    matched: dict[str, Any] = {}
    if 0.0 not in deltas:
        return fronts, matched
    j0 = deltas.index(0.0)
    for ref in ("reinfer", "guarded"):
        if ref not in cubes:
            continue
        rows: dict[str, Any] = {}
        r_ref, e_ref = point(ref, j0, None)
        rb_ref, eb_ref = point(ref, j0, idx)  # [reps]
        for a in arms:
            if a == ref:
                continue
            rec, ent = point(a, None, None)
            m = float(matched_recall(ent, rec, float(e_ref)))
            rb, eb = point(a, None, idx)  # [deltas, reps]
            mb = matched_recall(eb.T, rb.T, eb_ref) - rb_ref
            ok = np.isfinite(mb)
            inside = bool(np.isfinite(m))  # None: the target lies outside this front
            rows[a] = {
                "recall" + nk + "_at_matched_entropy": m if inside else None,
                "diff_to_" + ref: m - float(r_ref) if inside else None,
                "diff_ci": (list(np.percentile(mb[ok], [2.5, 97.5]).astype(float))
                            if ok.mean() > 0.95 else None),
                "resamples_inside_front": float(ok.mean()),
            }
        matched[ref] = {"entropy" + nk: float(e_ref), "recall" + nk: float(r_ref), "arms": rows}
    return fronts, matched


def evaluate_path(
    data: str | Path,
    cfg: OnlineConfig,
    checkpoint: str | Path | None = None,
    *,
    check_base: Callable[[Any, BaseView], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate_stream` on a prepared dataset directory, with the base read from
    ``checkpoint`` (a ``diam train`` output or a snapshot) when given, else built from the
    events before the cut. ``check_base(dataset, base)`` is called on a checkpoint's base
    before the run, to refuse one that does not fit the data (``diam evaluate-stream`` refuses
    another item vocabulary with ``diam evaluate``'s rule)."""
    from online_model.datasets import load_prepared

    ds = load_prepared(data)
    base = None if checkpoint is None else BaseView.from_checkpoint(checkpoint)
    if base is not None and check_base is not None:
        check_base(ds, base)
    if base is not None and base.dim != cfg.dim:
        cfg = cfg.model_copy(update={"dim": base.dim})
    return evaluate_stream(ds, cfg, base, **kwargs)


def format_table(result: dict[str, Any]) -> str:
    """The arms as a fixed-width text table (scalar columns; intervals as ``[lo, hi]``). Each
    column is as wide as its name plus two spaces (at least 22), so that long names such as
    ``recall@20_diff_to_guarded_ci`` stay apart from their neighbours."""
    arms = result["arms"]
    cols = sorted({c for row in arms.values() for c in row}, key=lambda c: (c.endswith("_ci"), c))
    width = {c: max(len(c), 20) + 2 for c in cols}
    name_w = max([len("arm"), *map(len, arms)]) + 1

    def cell(v: Any, w: int) -> str:
        if v is None:  # undefined: nothing scored
            return "null".rjust(w)
        if isinstance(v, list):
            return f"[{v[0]:.4f}, {v[1]:.4f}]".rjust(w)
        return f"{v:>{w}.4f}"

    lines = [f"{'arm':<{name_w}}" + "".join(c.rjust(width[c]) for c in cols)]
    for name, row in arms.items():
        lines.append(f"{name:<{name_w}}" + "".join(
            cell(row[c], width[c]) if c in row else " " * width[c] for c in cols))
    return "\n".join(lines)
