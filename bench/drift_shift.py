"""Exploration, not a served path: which cheap statistic tells a user whose taste switched
(a new genre, K_u unchanged) from a user who just goes on clicking?

Today's drift records (K_u changes, guard trips, drift-cap reach counts, freezes) miss such a
switch. This script measures candidate signals on ml-100k with the served configuration on the
first-half DIAM network (``bench/prequential.py``'s cached checkpoint, the ``guarded`` arm of
``online_model.prequential.arm_configs``, re-anchoring on the network included) and the
prequential protocol's warm start (the first half replayed without learning, every user
anchored at the cut). Then, per user X with at least ``switch_at`` + W events in the second
half, two streams from X's state at the cut, both with X's own timestamps and offsets (so the
rate limit, sessions and the step's negatives are the same):

- **normal**: X's own second-half events;
- **planted**: X's first ``switch_at`` second-half items, then the first items of another user
  Y whose taste differs (Y's top category is not X's, and the cosine between their mean item
  embeddings is in the lowest quarter of X's candidates; a seeded draw among those).

In the window of W events from the switch (the same positions for the normal stream) it
computes, from outside the kernel (state.A / state.V copied around each ``apply``):

- ``shift_cos_*``: at each re-anchoring, 1 - mean over the new anchors of the largest cosine to
  the old ones; ``_max`` and ``_sum`` over the window;
- ``shift_rms_*``: at each re-anchoring, the RMS distance of the anchors row by row (the
  network's slots; rows both K_u share) over ``base.scale``; ``_max`` and ``_sum``;
- ``shift_mean_*``: at each re-anchoring, 1 - the cosine of the mean new anchor to the mean
  old one; ``hseq_shift_*``: 1 - the cosine of the encoder's summary (``state.hseq``, already
  in the user's state) to the previous one; ``_max`` and ``_sum``;
- ``cap_events``: events after which the drift cap binds (``state.capped``); ``cap_reached``:
  the ``guard_trip``/``drift_cap`` records; ``records``: every drift record the learner emitted;
- ``disp_set`` / ``disp_mean``: the vectors at the window's end against the vectors before
  its first event (1 - mean max cosine row to set; 1 - cosine of the mean vectors);
- ``surprised``: clicks whose routed cosine (the largest cosine of the click to an interest,
  before the step) is below ``reanchor_cos``, the kernel's own re-anchoring trigger;
  ``surprise_mean``: 1 - the mean routed cosine; ``reanchors``: re-anchorings in the window;
- ``k_changes``, ``d_swing`` (max - min of d_u over the window), for contrast;
- ``disp_mean_excess`` / ``shift_cos_excess``: ``disp_mean`` and the mean ``shift_cos`` per
  re-anchoring, less the same over the min(W, ``switch_at``) events before the window: the
  user against its own recent pace.

Each statistic (higher: more alarm) gets its ROC AUC planted vs normal and a threshold chosen
on the tuning half of the users X (``stable_hash64(X)`` even) as the lowest value that leaves
at most 1% (5%) of its normal users above it; recall and the false alerts it gives are read on
the other half, the reported users, with the AUC and its bootstrap 95% interval over users
(the pair of streams of one X resampled together). The switches are planted, so the numbers say
how separable a switch of this kind is, not how many real users switch.

Users: every second-half user with enough events; the prequential protocol's reported users are
read too (nothing served is chosen on their recall here; the signal's threshold is chosen on
this script's own tuning half). A result here is a lead, not a result of the served system.

    OPENBLAS_NUM_THREADS=1 python bench/drift_shift.py
"""
from __future__ import annotations

import copy
import json
import shlex
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prequential import (  # noqa: E402
    WARM_FRAC,
    apply_cost,
    exploration_args,
    exploration_inputs,
)
from provenance import sized_out, sized_out_help  # noqa: E402

from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.online import OnlineLearner, UserState  # noqa: E402
from online_model.prequential import arm_configs, stream_cut  # noqa: E402
from online_model.routing import stable_hash64  # noqa: E402

STATS = ("shift_cos_max", "shift_cos_sum", "shift_rms_max", "shift_rms_sum", "shift_mean_max",
         "shift_mean_sum", "hseq_shift_max", "hseq_shift_sum", "cap_events",
         "cap_reached", "records", "disp_set", "disp_mean", "surprised", "surprise_mean",
         "reanchors", "k_changes", "d_swing", "disp_mean_excess", "shift_cos_excess")
"""The per-user statistics of a window, each oriented so that higher means more alarm."""

VARIANTS = ("data", "switch_at", "windows", "seed")
"""Options that change what is measured: off their defaults a run must name its ``--out``."""

EPS = 1e-12


def unit_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / (np.linalg.norm(X, axis=1, keepdims=True) + EPS)


def set_shift(new: np.ndarray, old: np.ndarray) -> float:
    """1 - mean over the rows of ``new`` of their largest cosine to a row of ``old``: 0 when
    every new interest points where an old one did, up to 2.

    >>> a = np.eye(3, dtype=np.float32)
    >>> round(set_shift(a, a), 6), round(set_shift(a[:2], a[2:]), 6)
    (0.0, 1.0)
    """
    return float(1.0 - (unit_rows(new) @ unit_rows(old).T).max(axis=1).mean())


def rows_rms(new: np.ndarray, old: np.ndarray, scale: float) -> float:
    """RMS distance of the rows both arrays have (the network's slots), over ``scale``."""
    m = min(len(new), len(old))
    d = np.asarray(new[:m], np.float64) - np.asarray(old[:m], np.float64)
    return float(np.sqrt((d * d).sum() / m) / scale)


def run_stream(learner: OnlineLearner, state: UserState, base: BaseView, rows: list[int],
               items: list[str], ts: list[int], offs: list[int]) -> dict:
    """Apply the clicks to ``state`` one by one with the served ``apply``; per event what the
    statistics read (arrays by position), and the vectors before each event (``V``; the last
    entry: after the last event)."""
    n = len(items)
    rec = {k: np.zeros(n) for k in ("shift_cos", "shift_rms", "shift_mean", "hseq", "reanchor",
                                     "capped", "reached", "records", "routed", "routed_ok",
                                     "k_change", "d", "frozen")}
    Vs = []
    emb = base.item_emb
    for j in range(n):
        V0, A0, h0 = state.V.copy(), state.A.copy(), state.hseq.copy()
        Vs.append(V0)
        was = state.anchored
        r = rows[j]
        routed = None
        if was and r >= 0 and base.item_norms[r] > 0:
            routed = float((unit_rows(V0) @ (emb[r] / (np.linalg.norm(emb[r]) + EPS))).max())
        evs = learner.apply(state, items[j], ts[j], offs[j])
        rec["frozen"][j] = state.frozen
        if routed is not None and not state.frozen:
            rec["routed"][j], rec["routed_ok"][j] = routed, 1.0
        if was and state.anchored and state.since_anchor == 0 and not state.frozen:
            rec["reanchor"][j] = 1.0
            rec["shift_cos"][j] = set_shift(state.A, A0)
            rec["shift_rms"][j] = rows_rms(state.A, A0, base.scale)
            rec["shift_mean"][j] = mean_cos_distance(A0, state.A)
            rec["hseq"][j] = mean_cos_distance(h0[None, :], state.hseq[None, :])
        rec["capped"][j] = state.capped
        rec["reached"][j] = sum(e.kind == "guard_trip" and e.detail.get("guard") == "drift_cap"
                                for e in evs)
        rec["records"][j] = len(evs)
        rec["k_change"][j] = sum(e.kind == "k_change" for e in evs)
        rec["d"][j] = state.d
    Vs.append(state.V.copy())
    rec["k"] = np.array([len(v) for v in Vs], dtype=np.float64)
    return {"rec": rec, "V": Vs}


def mean_cos_distance(V0: np.ndarray, V1: np.ndarray) -> float:
    """1 - the cosine of the two sets' mean vectors."""
    m0, m1 = V0.mean(axis=0, dtype=np.float64), V1.mean(axis=0, dtype=np.float64)
    return float(1.0 - m0 @ m1 / (np.linalg.norm(m0) * np.linalg.norm(m1) + EPS))


def mean_shift(rec: dict, a: int, b: int) -> float:
    """The mean ``shift_cos`` per re-anchoring in events ``a .. b-1`` (0 without one)."""
    n = rec["reanchor"][a:b].sum()
    return float(rec["shift_cos"][a:b].sum() / n) if n else 0.0


def window_stats(run: dict, s: int, w: int, cos_thr: float) -> dict[str, float]:
    """The statistics of the window of events ``s .. s+w-1`` of one stream (:data:`STATS`)."""
    r = {k: v[s:s + w] for k, v in run["rec"].items() if k != "k"}
    V0, V1 = run["V"][s], run["V"][s + w]
    ok = r["routed_ok"] > 0
    pre = min(w, s)
    disp_mean = mean_cos_distance(V0, V1)
    return {
        "shift_cos_max": float(r["shift_cos"].max(initial=0.0)),
        "shift_cos_sum": float(r["shift_cos"].sum()),
        "shift_rms_max": float(r["shift_rms"].max(initial=0.0)),
        "shift_rms_sum": float(r["shift_rms"].sum()),
        "shift_mean_max": float(r["shift_mean"].max(initial=0.0)),
        "shift_mean_sum": float(r["shift_mean"].sum()),
        "hseq_shift_max": float(r["hseq"].max(initial=0.0)),
        "hseq_shift_sum": float(r["hseq"].sum()),
        "cap_events": float(r["capped"].sum()),
        "cap_reached": float(r["reached"].sum()),
        "records": float(r["records"].sum()),
        "disp_set": set_shift(V1, V0),
        "disp_mean": disp_mean,
        "surprised": float((r["routed"][ok] < cos_thr).sum()),
        "surprise_mean": float(1.0 - r["routed"][ok].mean()) if ok.any() else 0.0,
        "reanchors": float(r["reanchor"].sum()),
        "k_changes": float(r["k_change"].sum()),
        "d_swing": float(r["d"].max() - r["d"].min()),
        "disp_mean_excess": disp_mean - mean_cos_distance(run["V"][s - pre], V0),
        "shift_cos_excess": mean_shift(run["rec"], s, s + w) - mean_shift(run["rec"], s - pre, s),
        # not statistics: what the window was
        "frozen": float(r["frozen"].sum()),
        "k_same": float(run["rec"]["k"][s] == run["rec"]["k"][s + w]),
    }


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a planted value > a normal value), ties counted half (Mann-Whitney).

    >>> auc(np.array([2.0, 3.0]), np.array([1.0, 2.0]))
    0.875
    """
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def threshold_at(neg: np.ndarray, alpha: float) -> float:
    """The lowest threshold t among the normal values (or -inf) with mean(neg > t) <= alpha:
    an alert is a value above it.

    >>> threshold_at(np.arange(100.0), 0.05), threshold_at(np.zeros(10), 0.01)
    (94.0, 0.0)
    """
    for t in np.concatenate(([-np.inf], np.unique(neg))):
        if np.mean(neg > t) <= alpha:
            return float(t)
    return float("inf")  # (not reached: the largest value leaves none above it)


def evaluate(rows: list[dict], stats: tuple[str, ...], n_boot: int, seed: int) -> dict:
    """Per statistic: AUC on the reported half with its bootstrap interval, and recall /
    false alerts there at thresholds chosen on the tuning half."""
    tune = [r for r in rows if r["half"] == "tune"]
    rep = [r for r in rows if r["half"] == "report"]
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, len(rep), (n_boot, len(rep)))
    out: dict[str, dict] = {}
    for st in stats:
        tn = np.array([r["normal"][st] for r in tune])
        p = np.array([r["planted"][st] for r in rep])
        n = np.array([r["normal"][st] for r in rep])
        aucs = np.array([auc(p[b], n[b]) for b in boot])
        row: dict = {"auc": auc(p, n), "auc_ci": [float(np.percentile(aucs, 2.5)),
                                                    float(np.percentile(aucs, 97.5))],
                     "auc_tune": auc(np.array([r["planted"][st] for r in tune]), tn)}
        for alpha in (0.01, 0.05):
            t = threshold_at(tn, alpha)
            rec = np.array([(p[b] > t).mean() for b in boot])
            row[f"at_{alpha:g}"] = {"threshold": t, "recall": float((p > t).mean()),
                                    "recall_ci": [float(np.percentile(rec, 2.5)),
                                                  float(np.percentile(rec, 97.5))],
                                    "false_alerts": float((n > t).mean())}
        out[st] = row
    return out


def taste(base: BaseView, rows: list[int]) -> np.ndarray:
    """A user's taste: the unit mean of the unit embeddings of its known items."""
    r = np.array([x for x in rows if x >= 0 and base.item_norms[x] > 0], dtype=np.int64)
    if not len(r):
        return np.zeros(base.dim)
    m = unit_rows(base.item_emb[r]).mean(axis=0)
    return m / (np.linalg.norm(m) + EPS)


def top_category(base: BaseView, rows: list[int]) -> int:
    c = base.item_categories[[x for x in rows if x >= 0]]
    c = c[c >= 0]
    return int(np.bincount(c).argmax()) if len(c) else -1


def shift_cost(k: int, dim: int) -> dict[str, float]:
    """µs of :func:`set_shift`'s arithmetic compiled (numba) for K_u = k, d = dim: what the
    kernel would add at a re-anchoring."""
    from numba import njit

    @njit(cache=False)
    def shift(new, old):
        kn, ko, d = new.shape[0], old.shape[0], new.shape[1]
        tot = 0.0
        for i in range(kn):
            ni = 0.0
            for t in range(d):
                ni += new[i, t] * new[i, t]
            best = -2.0
            for j in range(ko):
                dot = 0.0
                nj = 0.0
                for t in range(d):
                    dot += new[i, t] * old[j, t]
                    nj += old[j, t] * old[j, t]
                c = dot / (np.sqrt(ni * nj) + 1e-12)
                best = max(best, c)
            tot += best
        return 1.0 - tot / kn

    a = np.random.default_rng(0).standard_normal((2, k, dim)).astype(np.float32)
    shift(a[0], a[1])
    us = min(timeit.repeat(lambda: shift(a[0], a[1]), number=20_000, repeat=3)) / 20_000 * 1e6
    return {"k": k, "dim": dim, "us_per_reanchoring": us}


def parser():  # type: ignore[no-untyped-def]
    ap = exploration_args(__doc__)
    ap.add_argument("--switch-at", type=int, default=20,
                    help="the planted switch after this many of X's second-half events")
    ap.add_argument("--windows", default="10,20,40", help="window lengths W (events)")
    ap.add_argument("--seed", type=int, default=0, help="Y's draw and the bootstrap")
    ap.add_argument("--boot", type=int, default=2_000, help="bootstrap resamples")
    ap.add_argument("--quick", action="store_true", help="60 users X only (a smoke run)")
    out = next(a for a in ap._actions if a.dest == "out")  # exploration_args' --out
    out.help = sized_out_help("drift_shift", (), quick="--quick", variants=VARIANTS) + (
        "; with --early, _early before .json")
    return ap


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    if args.out is None:
        args.out = sized_out(ap, args, "drift_shift", (), quick=args.quick, variants=VARIANTS)
        if args.early:
            args.out = args.out.with_name(args.out.stem + "_early.json")
    t_start = time.perf_counter()
    prov, base, ds_, _ = exploration_inputs(args)
    ds: Any = ds_
    s = args.switch_at
    windows = sorted(int(w) for w in args.windows.split(","))
    w_max = windows[-1]
    cfg = OnlineConfig(dim=base.dim)
    arms = arm_configs(cfg)
    guarded, warm = OnlineLearner(base, arms["guarded"]), OnlineLearner(base, arms["frozen"])

    users = np.asarray(ds.user_ids).astype(str).tolist()
    items = np.asarray(ds.item_ids).astype(str).tolist()
    ts = np.asarray(ds.ts_ms, dtype=np.int64).tolist()
    rows = [base.index_of(x) for x in items]
    cut = stream_cut(len(users), WARM_FRAC)
    # the protocol's warm start: the past replayed without learning, everyone anchored at the cut
    states: dict[str, UserState] = {}
    past: dict[str, list[int]] = {}
    for off in range(cut):
        u = users[off]
        st = states.get(u) or states.setdefault(u, warm.new_state(u))
        warm.apply(st, items[off], ts[off], off)
        past.setdefault(u, []).append(rows[off])
    for st in states.values():
        warm.reanchor(st)
    later: dict[str, list[int]] = {}
    for off in range(cut, len(users)):
        later.setdefault(users[off], []).append(off)

    xs = sorted((u for u, o in later.items() if len(o) >= s + windows[0]), key=stable_hash64)
    if args.quick:
        xs = xs[:60]
    pool = sorted(u for u, o in later.items() if len(o) >= w_max)
    y_taste = {y: taste(base, [rows[o] for o in later[y][:w_max]]) for y in pool}
    y_top = {y: top_category(base, [rows[o] for o in later[y][:w_max]]) for y in pool}
    rng = np.random.default_rng(args.seed)
    out_rows: list[dict[str, Any]] = []
    for x in xs:
        offs = later[x][:s + w_max]
        hist = past.get(x, []) + [rows[o] for o in offs[:s]]
        tx, cx = taste(base, hist), top_category(base, hist)
        cands = [y for y in pool if y != x and y_top[y] != cx]
        cos = np.array([float(tx @ y_taste[y]) for y in cands])
        low = [y for y, c in zip(cands, cos, strict=True) if c <= np.quantile(cos, 0.25)]
        y = low[int(rng.integers(len(low)))]
        y_offs = later[y][:len(offs) - s]
        planted_items = [items[o] for o in offs[:s]] + [items[o] for o in y_offs]
        st0 = states.get(x)
        runs = {}
        for kind, its in (("normal", [items[o] for o in offs]), ("planted", planted_items)):
            st = copy.deepcopy(st0) if st0 is not None else guarded.new_state(x)
            runs[kind] = run_stream(guarded, st, base, [base.index_of(i) for i in its], its,
                                    [ts[o] for o in offs], offs)
        row: dict[str, Any] = {"user": x, "y": y, "taste_cos": float(tx @ y_taste[y]),
               "top_category": [cx, y_top[y]], "events": len(offs),
               "warm": st0 is not None,
               "half": "tune" if stable_hash64(x) % 2 == 0 else "report", "windows": {}}
        for w in windows:
            if len(offs) >= s + w:
                row["windows"][str(w)] = {k: window_stats(runs[k], s, w, cfg.reanchor_cos)
                                          for k in runs}
        out_rows.append(row)

    results: dict[str, dict] = {}
    for w in windows:
        rs = [{"half": r["half"], **r["windows"][str(w)]} for r in out_rows
              if str(w) in r["windows"]]
        ev = evaluate(rs, STATS, args.boot, args.seed)
        pl = [r["planted"] for r in rs]
        nm = [r["normal"] for r in rs]
        results[str(w)] = {
            "users": len(rs), "tune_users": sum(r["half"] == "tune" for r in rs),
            "planted_k_same": float(np.mean([p["k_same"] for p in pl])),
            "normal_k_same": float(np.mean([p["k_same"] for p in nm])),
            "planted_frozen_events": float(np.mean([p["frozen"] for p in pl])),
            "stats": ev,
            "mean": {st: {"planted": float(np.mean([p[st] for p in pl])),
                          "normal": float(np.mean([p[st] for p in nm]))} for st in STATS},
        }
    res = {
        "provenance": prov,
        "what": "exploration: separability of planted taste switches by per-user statistics "
                "of the served learner, not served",
        "command": "OPENBLAS_NUM_THREADS=1 python " + " ".join(
            shlex.quote(a) for a in ["bench/drift_shift.py", *sys.argv[1:]]),
        "dataset": ds.name, "cut": cut, "switch_at": s, "windows": windows,
        "config": arms["guarded"].model_dump(),
        "users_x": len(xs), "pool_y": len(pool),
        "taste_cos": {"mean": float(np.mean([r["taste_cos"] for r in out_rows])),
                      "median": float(np.median([r["taste_cos"] for r in out_rows]))},
        "warm_users_x": sum(r["warm"] for r in out_rows),
        "results": results,
        "cost": {"shift": shift_cost(4, base.dim), "shift_k8": shift_cost(8, base.dim),
                 "apply": apply_cost(ds, base, arms["guarded"], 5_000)},
        "seconds": round(time.perf_counter() - t_start, 1),
        "pairs": out_rows,
    }
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(table(res))


def table(res: dict) -> str:
    """The results as a markdown table (reported half)."""
    lines = ["| W | statistic | AUC [95% CI] | recall @1% FA (FA) | recall @5% FA (FA) |",
             "|---|---|---|---|---|"]
    for w, r in res["results"].items():
        for st, m in r["stats"].items():
            a1, a5 = m["at_0.01"], m["at_0.05"]
            lines.append(f"| {w} | {st} | {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, "
                         f"{m['auc_ci'][1]:.3f}] | {a1['recall']:.2f} ({a1['false_alerts']:.3f})"
                         f" | {a5['recall']:.2f} ({a5['false_alerts']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
