"""Exploration, not a served path: does a long-term interest that survives re-anchoring raise
Recall@20 at matched Entropy@20?

The network sees only the user's last 10 items, so every re-run forgets everything older. This
script adds, at prediction time only, one interest vector per user built from the user's whole
click history in the stream so far (every known item the user clicked, in order, the replay
before the cut included), and hands it to the served list function
(``online_model.aggregate.serve_list``) beside the network's interests: the aggregator's
per-interest search gives it its own candidate list, mixed by d_u as usual. Variants
(``--variants``, comma-separated):

- ``none``: the served interests (the reference; always run first);
- ``append<H>``: append the exponentially decayed mean of the clicked items' embeddings,
  half-life ``H`` clicks (``inf``: the plain mean), scaled to the mean norm of the user's
  interest vectors;
- ``old<H>``: the same over the items older than the network's window (all but the last
  ``infer_items`` = 10 known items; users with no older item get no extra vector);
- ``slot0_<H>``: instead of appending, the decayed mean replaces the global slot (slot 0),
  scaled to its norm;
- ``only<H>`` (a diagnostic): the decayed mean alone, in place of every interest;
- suffixes: ``x<s>`` scales the vector's norm by ``s`` (default 1), ``h`` leaves the user's
  whole history out of the vector's own candidates (the served interests keep the served
  exclusion of the last 50 clicked items), ``u`` averages unit-length item embeddings.

Each variant is applied to both arms, ``reinfer`` and ``guarded`` (an item of state on the user
side is what online state adds whether or not the steps run, so both are reported), with the
served aggregator's diversity sweep (``bench/prequential.py``'s ``SWEEP``). Each arm's front is
read at the reference reinfer's served Entropy@20 (variant ``none``) with a paired bootstrap
over users (2,000 resamples, seed 0, the target point resampled with the users, as
``online_model.prequential._fronts``), and at the same variant's reinfer (the evaluation's own
``matched.reinfer``). Users: the tuning users (default) or the earlier period (``--early``,
every user); the reported users are not read.

The vector is not in serving (``serving_cache`` searches with the stream's interest vectors
alone), so it is added here by wrapping the evaluation's ``recommend`` and the learner's
``apply`` (which records each arm's own users' clicks); a result here is a lead, not a result
of the served system.

    OPENBLAS_NUM_THREADS=1 python bench/prequential_longterm.py --variants append10,append30,\
append100,old30,slot0_30,append30x0.5,append30x0.3,append10x0.3,appendinfx0.3,append3x0.5,\
append30h,append30x0.5h,old30x0.5h,old100x0.3h,slot0_30h,append30u,append30x0.5u,old30x0.3u,\
only30,onlyinf
    OPENBLAS_NUM_THREADS=1 python bench/prequential_longterm.py --early --variants append10x0.3
    (the second only if a variant reads > +2% over reinfer at matched Entropy@20, CI above 0,
    on the tuning users; the reported users are never read)
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prequential import (  # noqa: E402
    SWEEP,
    exploration_args,
    exploration_inputs,
    exploration_row,
)

import online_model.prequential as P  # noqa: E402
from online_model.aggregate import MIN_CANDIDATES  # noqa: E402
from online_model.aggregate import aggregate as merge  # noqa: E402
from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.online import OnlineLearner  # noqa: E402

ARMS = ("reinfer", "guarded")


def parse_variant(v: str) -> tuple[str, float, float, bool, bool]:
    """``append30x0.5hu`` -> ("append", 30.0, 0.5, True, True): kind, half-life in clicks, norm
    scale, whether the vector's own candidates leave out the user's whole history (``h``),
    whether the items' embeddings are made unit length before the mean (``u``); ``none`` ->
    ("none", 0, 0, False, False)."""
    if v == "none":
        return "none", 0.0, 0.0, False, False
    m = re.fullmatch(r"(append|old|slot0_|only)(inf|[0-9.]+)(?:x([0-9.]+))?(h?)(u?)", v)
    if m is None:
        raise SystemExit(f"unknown variant {v!r}")
    hl = math.inf if m[2] == "inf" else float(m[2])
    return m[1].rstrip("_"), hl, float(m[3] or 1.0), m[4] == "h", m[5] == "u"


def long_term(hist: list[int], emb: np.ndarray, half_life: float, skip_last: int) -> np.ndarray | None:
    """The decayed mean of ``emb[hist]`` (newest weight 1, half-life in clicks), leaving out the
    last ``skip_last`` clicks; None if nothing is left."""
    n = len(hist) - skip_last
    if n <= 0:
        return None
    rows = np.asarray(hist[:n], dtype=np.int64)
    age = (len(hist) - 1) - np.arange(n)  # clicks since, counted over the whole history
    w = np.ones(n) if math.isinf(half_life) else np.exp(-math.log(2.0) * age / half_life)
    return (w @ emb[rows].astype(np.float64) / w.sum()).astype(np.float32)


def run(ds, base: BaseView, variant: str, users: str) -> tuple[dict, dict]:
    """One evaluation of reinfer and guarded with ``variant``'s vector, and each arm's per-user
    sweep (hits, entropy sums, counts by delta) for the cross-run comparison."""
    kind, hl, scale_by, ban_all, unit = parse_variant(variant)
    norms = np.linalg.norm(base.item_emb, axis=1, keepdims=True)
    emb = base.item_emb / np.where(norms > 0, norms, 1.0) if unit else base.item_emb
    cfg = OnlineConfig(dim=base.dim)
    window = cfg.infer_items or base.head.seq_len
    cut = int(len(ds.user_ids) * 0.5)  # evaluate_stream's warm_frac
    warm_hist: dict[str, list[int]] = {}  # the replay before the cut (shared by the arms)
    arm_hist: dict[int, list[int]] = {}  # id(state) -> the arm's own stream clicks
    cache: dict[int, tuple[int, np.ndarray | None]] = {}
    plain_apply, plain_recommend, plain_fronts = OnlineLearner.apply, P.recommend, P._fronts
    captured: dict = {}

    def apply(self, st, item, ts, off):  # type: ignore[no-untyped-def]
        r = base.index_of(item)
        if r >= 0:
            if off < cut:
                warm_hist.setdefault(st.user_id, []).append(r)
            else:
                arm_hist.setdefault(id(st), []).append(r)
        return plain_apply(self, st, item, ts, off)

    def recommend(state, base_, n, exclude, aggregate, popular, search=None, d_u=None):  # type: ignore[no-untyped-def]
        if kind == "none" or len(state.recent) == 0 or aggregate is None:
            return plain_recommend(state, base_, n, exclude, aggregate, popular, search, d_u)
        hist = warm_hist.get(state.user_id, []) + arm_hist.get(id(state), [])
        c = cache.get(id(state))
        if c is None or c[0] != len(hist):  # once per event: the sweep reuses it
            lt = long_term(hist, emb, hl, window if kind == "old" else 0)
            c = cache[id(state)] = (len(hist), lt)
        lt = c[1]
        V = state.V
        d = state.d if d_u is None else d_u
        if lt is None or not np.linalg.norm(lt) > 0:
            return aggregate(search, V, d, n, np.unique(exclude), base_.item_emb,
                             base_.item_categories)
        if kind == "only":
            norms = np.linalg.norm(V, axis=1)
            vecs = (lt * (scale_by * float(norms.mean()) / np.linalg.norm(lt)))[None, :]
        elif kind == "slot0":
            vecs = V.copy()
            vecs[0] = lt * (scale_by * np.linalg.norm(V[0]) / np.linalg.norm(lt))
        else:
            norms = np.linalg.norm(V, axis=1)
            scale = float(norms[norms > 0].mean()) if np.any(norms > 0) else 1.0
            vecs = np.vstack([V, (lt * (scale_by * scale / np.linalg.norm(lt)))[None, :]])
        vecs = vecs.astype(np.float32)
        if not ban_all:
            return aggregate(search, vecs, d, n, np.unique(exclude), base_.item_emb,
                             base_.item_categories)
        # serve_list's steps, with the whole history left out of the extra vector's (or the
        # replaced slot's) candidates only; the other interests leave out the served last 50
        banned = np.unique(exclude)
        row = 0 if kind in ("slot0", "only") else len(vecs) - 1
        hset = np.unique(np.asarray(hist))
        m = min(max(2 * n, MIN_CANDIDATES) + len(banned), len(base_.item_emb))
        m_lt = min(max(2 * n, MIN_CANDIDATES) + len(hset), len(base_.item_emb))
        scores, items = search(vecs, max(m, m_lt))
        items = np.where(np.isin(items, banned), -1, items)
        others = np.arange(len(vecs)) != row
        items[others, m:] = -1  # the served interests keep serve_list's candidate count
        items[row] = np.where(np.isin(items[row], hset), -1, items[row])
        return merge(scores, items, base_.item_emb, d, n, base_.item_categories)

    def fronts(run_, deltas, n, *a, **k):  # type: ignore[no-untyped-def]
        users = sorted(set().union(*(run_[x].hits for x in ARMS if x in run_)))
        captured["users"] = users
        captured["cubes"] = {x: P._user_arrays(run_[x], list(deltas), users) for x in ARMS}
        return plain_fronts(run_, deltas, n, *a, **k)

    OnlineLearner.apply, P.recommend, P._fronts = apply, recommend, fronts  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        res = P.evaluate_stream(ds, cfg, base, users=users, arms=ARMS, sweep=SWEEP)
    finally:
        OnlineLearner.apply, P.recommend, P._fronts = plain_apply, plain_recommend, plain_fronts  # type: ignore[method-assign]
    secs = time.perf_counter() - t0
    out = {**exploration_row(res, delta=True),
           "guarded_vs_own_reinfer": res["matched"]["reinfer"]["arms"]["guarded"],
           "inferences_per_event": {a: res["details"][a]["inferences_per_event"] for a in ARMS},
           "seconds": round(secs, 1)}
    return out, captured


def compare(ref: dict, var: dict, deltas: list[float], reps: int = 2000, seed: int = 0) -> dict:
    """Each arm of ``var`` at the reference reinfer's served Entropy@20 (delta 0), minus that
    reinfer's Recall@20, with a paired bootstrap over users (the reference point resampled
    with them, as ``online_model.prequential._fronts``)."""
    assert ref["users"] == var["users"], "the runs scored different users"
    j0 = deltas.index(0.0)
    idx = np.random.default_rng(seed).integers(0, len(ref["users"]), size=(reps, len(ref["users"])))

    def point(cube, sample):  # type: ignore[no-untyped-def]
        h, e, c = cube
        if sample is not None:
            h, e, c = h[:, sample], e[:, sample], c[:, sample]
        cs = np.maximum(c.sum(-1), 1.0)
        return h.sum(-1) / cs, e.sum(-1) / cs

    r0, e0 = point(ref["cubes"]["reinfer"], None)
    rb0, eb0 = point(ref["cubes"]["reinfer"], idx)
    out = {}
    for a in ARMS:
        rec, ent = point(var["cubes"][a], None)
        m = float(P.matched_recall(ent, rec, float(e0[j0])))
        rb, eb = point(var["cubes"][a], idx)
        mb = P.matched_recall(eb.T, rb.T, eb0[j0]) - rb0[j0]
        ok = np.isfinite(mb)
        inside = bool(np.isfinite(m))
        out[a] = {"recall@20_at_reference_entropy": m if inside else None,
                  "diff_to_reference_reinfer": m - float(r0[j0]) if inside else None,
                  "relative": (m / float(r0[j0]) - 1.0) if inside else None,
                  "diff_ci": (list(np.percentile(mb[ok], [2.5, 97.5]).astype(float))
                              if ok.mean() > 0.95 else None),
                  "resamples_inside_front": float(ok.mean())}
    return {"reference_entropy@20": float(e0[j0]), "reference_recall@20": float(r0[j0]),
            "arms": out}


def main() -> None:
    ap = exploration_args(__doc__)
    ap.add_argument("--variants", default="append30",
                    help="comma-separated (none is always run first: the reference)")
    args = ap.parse_args()
    prov, base, ds, users = exploration_inputs(args)
    variants = [v for v in args.variants.split(",") if v and v != "none"]
    for v in variants:
        parse_variant(v)
    rows, caps = {}, {}
    for v in ["none", *variants]:
        rows[v], caps[v] = run(ds, base, v, users)
        print(f"{v} ({rows[v]['seconds']} s): " + ", ".join(
            f"{a} {m['recall@20']:.4f} at {m['entropy@20']:.3f}"
            for a, m in rows[v]["arms"].items()), file=sys.stderr)
    deltas = sorted(SWEEP)
    for v in rows:
        rows[v]["at_reference_reinfer"] = compare(caps["none"], caps[v], deltas)
        for a, m in rows[v]["at_reference_reinfer"]["arms"].items():
            rel = "outside the front" if m["relative"] is None else f"{m['relative']:+.1%}"
            print(f"  {v} {a}: {m['recall@20_at_reference_entropy']} ({rel}) "
                  f"CI {m['diff_ci']}", file=sys.stderr)
    out = {"provenance": prov,
           "what": "exploration: a long-term interest from the user's whole click history, "
                   "added at prediction time; not served",
           "users": ("earlier period, every user" if args.early else "tuning users"),
           "variants_meaning": {"append<H>": "decayed mean of every clicked item, half-life H "
                                "clicks, appended, scaled to the mean interest norm",
                                "old<H>": "the same over the items older than the network's "
                                "10-item window",
                                "slot0_<H>": "the decayed mean in place of slot 0, at its norm",
                                "only<H>": "diagnostic: the decayed mean alone",
                                "x<s>": "the vector's norm times s",
                                "h": "the vector's own candidates leave out the whole history",
                                "u": "the mean of unit-length item embeddings"},
           "fronts_columns": ["delta", "entropy@20", "recall@20"],
           "reference_entropy@20": rows["none"]["arms"]["reinfer"]["entropy@20"],
           "variants": rows}
    path = args.out or ROOT / "bench" / "results" / (
        f"prequential_longterm{'_early' if args.early else ''}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({v: {a: m["recall@20_at_reference_entropy"]
                          for a, m in r["at_reference_reinfer"]["arms"].items()}
                      for v, r in rows.items()}))


if __name__ == "__main__":
    main()
