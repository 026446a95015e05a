"""Offline quality of DIAM against the baselines, every model through the same re-rankers.

Protocol (issue 15). Each seed draws the 80/10/10 user split, the weights and the sampling, so
every model of a seed sees the same users. Every model is trained with the same trainer and keeps
the weights of its epoch best on the seed's VALIDATION users; its learning rate is the rate of
its grid with the best mean validation Recall@20 over seeds, and a grid whose best rate is at an
edge is extended past that edge (``--extend``) until the best is inside. Nothing of that reads
test users.

Every model is then scored on the evaluation users (validation users by default, test users
only with ``--final``) in two ways:

- merge by score (ComiRec's merge of the per-interest lists): the primary row;
- through the same diversity re-rankers, swept over their strength: the aggregator of
  ``online_model.aggregate`` at one fixed d for every user (``D_GRID``), ComiRec's controllable
  λ aggregation (``LAMBDAS``), and for DIAM also its own learned d_u moved by the manual δ
  (``DELTAS``).

All the points of a model give its Recall@20 -- Entropy@20 front (``metrics.pareto_front``).
DIAM's default operating point (own d_u, δ = 0) fixes the matched Entropy@20; each front's
Recall@20 there is interpolated (``metrics.front_at``), and DIAM's gain over the best baseline's
front gets a paired bootstrap over seeds × users (seeds drawn with replacement, then each drawn
seed's users: the models of a seed share users, so the pairs stay paired). The merge-by-score
difference gets the same bootstrap.

Seeds: ``DESIGN_SEEDS`` were read while designing DIAM (their test users too); the committed
table uses ``SEEDS``, never used before this protocol. Ablation rows (``ABLATIONS``) train at
DIAM's chosen rate.

Run (design, validation users):  ``python bench/model_quality.py``
Run (the committed table):        ``python bench/model_quality.py --final``
(the exact commands of the committed results are in their Markdown). The defaults, 4 epochs of
at most 16 positions per training user, fit a shared 2-core CPU; they undertrain every model
next to the 10 x 64 of earlier rounds.
``--lr-from JSON`` fixes every row's rate to that committed result's ``lr_per_model`` (no grid,
no selection, no training at other rates; a row it lacks is refused) and records ``"lr_from"``.
``--quick`` (one seed, two tiny epochs, stdout only) checks that everything runs. Trained
weights are kept under ``runs/model_quality/ckpt/`` and every evaluation under
``runs/model_quality/eval/``, so the ``--final`` run after a design run trains nothing again.
Writes ``bench/results/model_quality{,_valid}.json`` / ``.md`` and ``model_quality_fronts.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from online_model import metrics as M  # noqa: E402
from online_model.corpus import Corpus, corpus_from_prepared  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.evaluate import (  # noqa: E402
    evaluate,
    interest_diagnostics,
    lists_for,
    make_eval_set,
    reference_embedding,
    retrieve,
    score_lists,
    split_users,
)
from online_model.models import ModelConfig  # noqa: E402
from online_model.train import Features, TrainConfig, train  # noqa: E402

METRICS = ["recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50", "entropy@20",
           "ild@20", "ild_cat@20", "coverage@20"]
BASELINES = ["comirec-sa", "comirec-dr", "mind", "single", "remi", "adasr"]
ORDER = ["diam", *BASELINES]
ABLATIONS: dict[str, dict] = {
    "diam, global slot alone at inference (same weights)": {"model": "diam", "from": "diam",
                                                            "infer": {"fixed_k": 1}},
    "diam K=1 (global slot only)": {"model": "diam", "fixed_k": 1},
    "diam without global slot": {"model": "diam", "global_interest": False},
    "single + DIAM encoder, hard negatives, profile": {"model": "single", "single_diam": True},
    "diam without towers": {"model": "diam", "w_towers": 0.0, "w_dis": 0.0},
    "diam without utility loss": {"model": "diam", "w_util": 0.0},
}
"""Rows that say where DIAM's gain comes from; model options on top of ``ModelConfig``."""
D_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # d = 0 is the merge by score
LAMBDAS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]  # lambda = 0 is the merge by score
DELTAS = [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]  # beyond the UI's +-0.5, for the front
DESIGN_SEEDS = [0, 1, 2, 3, 4, 5]
SEEDS = [10, 11, 12, 13, 14, 15]
LR_GRID = [0.01, 0.03]
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "model_quality"
NOTES = "<!-- notes: kept across re-runs -->"


def _load(path: Path) -> Corpus:
    c = corpus_from_prepared(load_prepared(path))
    c.info["path"] = str(path)
    return c


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


ROW_OPTIONS: dict[str, dict] = {"adasr": {"n_interests": 8}}
"""Options of baseline rows: the adaptive-K model may use up to DIAM's K_max = 8 interests."""


def _options(name: str) -> dict:
    """Model name and options of a row (a model, or an ablation)."""
    return dict(ABLATIONS.get(name, {"model": name, **ROW_OPTIONS.get(name, {})}))


def corpus_fingerprint(c: Corpus) -> str:
    """12 hex digits of a sha256 of what a row trains and is scored on: the users' click
    sequences (users, offsets, items, times) and the item table (ids, categories)."""
    import hashlib

    h = hashlib.sha256()
    for arr in (c.users, c.item_ids):
        h.update("\t".join(map(str, arr.tolist())).encode() + b"\n")
    for arr in (c.offsets, c.items, c.ts, c.item_cat):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update("\t".join(c.category_names).encode())
    return h.hexdigest()[:12]


def row_fingerprint(name: str, c: Corpus) -> str:
    """8 hex digits of a sha256 of a row's resolved model configuration (``ModelConfig`` with
    its options, every default included) or, for an inference-time ablation, of the row it
    reads and what it changes: a row whose definition changes is trained anew."""
    import dataclasses
    import hashlib

    opts = _options(name)
    if "from" in opts:
        spec: dict = {"from": row_fingerprint(opts["from"], c), "infer": opts["infer"]}
    else:
        spec = dataclasses.asdict(ModelConfig(n_items=c.n_items, n_categories=c.n_categories,
                                              **opts))
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class Bench:
    """Training (cached as checkpoints) and evaluation (cached as JSON) of every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.corpus = _load(args.data)
        self.data_fp = corpus_fingerprint(self.corpus)
        self.feats = Features.of(self.corpus)
        self.refs: dict[int, np.ndarray] = {}
        self.lr_seeds = args.lr_seeds or args.seeds

    def stem(self, name: str, seed: int, lr: float) -> str:
        """The cache name of a row's run: the dataset's name and content
        (:func:`corpus_fingerprint`: ``--min-rating`` 4 and 5 prepare the same name), the row
        and its resolved model configuration (:func:`row_fingerprint`), seed, sizes and rate."""
        a = self.args
        return (f"{self.corpus.name}-{self.data_fp}_{_slug(name)}-"
                f"{row_fingerprint(name, self.corpus)}_s{seed}_e{a.epochs}_m{a.max_per_user}"
                f"_lr{lr:g}")

    def trained(self, name: str, seed: int, lr: float) -> tuple:
        """``(model, training record)``, trained now or loaded from its checkpoint."""
        from online_model.checkpoint import load_checkpoint, save_checkpoint

        opts = _options(name)
        if "from" in opts:  # an inference-time ablation of another row's trained weights
            model, record = self.trained(opts["from"], seed, lr)
            model = copy.deepcopy(model)
            for k, v in opts["infer"].items():
                setattr(model.cfg, k, v)
            return model, record
        ckpt = RUNS / "ckpt" / self.stem(name, seed, lr)
        if (ckpt / "config.json").is_file() and not self.args.quick:
            ck = load_checkpoint(ckpt)
            return ck.model, ck.config["train_record"]
        if self.args.no_train:
            raise SystemExit(f"{ckpt}: not trained, and --no-train was given")
        mcfg = ModelConfig(n_items=self.corpus.n_items, n_categories=self.corpus.n_categories,
                           **opts)
        tcfg = TrainConfig(epochs=self.args.epochs, seed=seed, lr=lr,
                           max_per_user=self.args.max_per_user, eval_every=1, keep_best=True)
        t0 = time.perf_counter()
        res = train(self.corpus, mcfg, tcfg, feats=self.feats, progress=False,
                    log=lambda s: print(f"  [{name} s{seed} lr{lr:g}] {s}", file=sys.stderr,
                                        flush=True))
        record = {"train_seconds": round(time.perf_counter() - t0, 1),
                  "seconds_per_epoch": round(res.seconds_per_epoch, 2),
                  "best_epoch": res.best_epoch,
                  "valid_curve": [h.get("valid_recall@20") for h in res.history]}
        if not self.args.quick:
            save_checkpoint(ckpt, res.model, self.corpus, seed=seed, train_metrics=res.metrics(),
                            extra={"train_record": record})
        return res.model, record

    def valid_score(self, name: str, seed: int, lr: float) -> float:
        """Validation Recall@20 (merge by score) at the kept epoch: what chooses the rate."""
        _, rec = self.trained(name, seed, lr)
        return float(rec["valid_curve"][rec["best_epoch"] - 1])

    def choose_lr(self, name: str, grid: list[float],
                  extend: int) -> tuple[float, dict[str, float]]:
        """The grid's rate with the best mean validation score; extended past an edge that
        wins (x3 or /3, at most ``extend`` times)."""
        grid = sorted(grid)
        scores: dict[float, float] = {}
        for _ in range(extend + 1):
            for lr in grid:
                if lr not in scores:
                    scores[lr] = float(np.mean([self.valid_score(name, s, lr)
                                                for s in self.lr_seeds]))
            best = max(grid, key=lambda lr: scores[lr])
            if len(grid) > 1 and best == grid[-1]:
                grid.append(round(best * 3, 6))
            elif len(grid) > 1 and best == grid[0]:
                grid.insert(0, round(best / 3, 6))
            else:
                break
        best = max(scores, key=lambda lr: scores[lr])
        return best, {f"{lr:g}": round(v, 4) for lr, v in sorted(scores.items())}

    def evaluated(self, name: str, seed: int, lr: float, split: str) -> dict:
        """Every scored point of one trained row on the ``split`` users of ``seed``, with the
        per-user Recall@20 and Entropy@20 of each (cached)."""
        cache = RUNS / "eval" / f"{self.stem(name, seed, lr)}_{split}.json"
        if cache.is_file() and not self.args.quick:
            return json.loads(cache.read_text())
        model, record = self.trained(name, seed, lr)
        c = self.corpus
        users = split_users(c.users, seed)
        es = make_eval_set(c, users[split], self.feats.signals)
        if seed not in self.refs:
            self.refs[seed] = reference_embedding(c, users["train"])
        ref = self.refs[seed]
        cands = retrieve(model, c, es, m=50)
        settings: list[tuple[str, dict]] = [("merge", {"agg": "merge"})]
        settings += [(f"d={d:g}", {"agg": "fixed", "d": d}) for d in D_GRID]
        settings += [(f"lambda={lam:g}", {"agg": "controllable", "lam": lam}) for lam in LAMBDAS]
        if cands.d_u is not None:
            settings += [(f"delta={dl:g}", {"agg": "model", "delta": dl}) for dl in DELTAS]
        points = []
        for label, kw in settings:
            per = score_lists(lists_for(cands, c, n=50, **kw), es, c, ref, per_user=True)
            points.append({"label": label, "recall@20": per["recall@20"].round(6).tolist(),
                           "entropy@20": per["entropy@20"].round(6).tolist()})
        out = {"name": name, "seed": seed, "lr": lr, "split": split, **record,
               "users": es.users.tolist(), "points": points,
               "merge": evaluate(model, c, es, agg="merge", ref=ref, cands=cands),
               "model_agg": evaluate(model, c, es, agg="model", ref=ref, cands=cands)}
        if cands.d_u is not None:
            out["interests"] = interest_diagnostics(model, c, es, cands)
        if not self.args.quick:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(out))
        return out


# ------------------------------------------------------------------------------ fronts, bootstrap

def _point_arrays(runs: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels and per-user Recall@20, Entropy@20 ``[P, U]`` of a row, its seeds concatenated."""
    labels = [p["label"] for p in runs[0]["points"]]
    rec = np.stack([np.concatenate([r["points"][i]["recall@20"] for r in runs])
                    for i in range(len(labels))])
    ent = np.stack([np.concatenate([r["points"][i]["entropy@20"] for r in runs])
                    for i in range(len(labels))])
    return labels, rec, ent


def _front(rec: np.ndarray, ent: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """The Pareto front of a row's points, means over users ``idx`` (all when None)."""
    if idx is not None:
        rec, ent = rec[:, idx], ent[:, idx]
    return M.pareto_front(np.stack([ent.mean(1), rec.mean(1)], 1))


def _bootstrap_index(sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    """Seeds drawn with replacement, then each drawn seed's users: flat indices into the
    concatenation of the seeds' users."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    parts = []
    for s in rng.integers(0, len(sizes), len(sizes)):
        parts.append(starts[s] + rng.integers(0, sizes[s], sizes[s]))
    return np.concatenate(parts)


def compare(evals: dict[str, list[dict]], n_boot: int, entropies: list[float]) -> dict:
    """Matched-entropy gain of DIAM over the best baseline front, and the merge-by-score
    difference, with paired bootstrap CIs (seeds x users)."""
    sizes = [len(r["users"]) for r in evals["diam"]]
    arrays = {n: _point_arrays(rs) for n, rs in evals.items()}
    for n, rs in evals.items():  # paired: every row scored the same users of the same seeds
        assert [r["users"] for r in rs] == [r["users"] for r in evals["diam"]], n
    labels, rec, ent = arrays["diam"]
    e_star = float(ent[labels.index("delta=0")].mean())
    base = [n for n in BASELINES if n in evals]

    def fronts(idx: np.ndarray | None) -> dict[str, np.ndarray]:
        return {n: _front(arrays[n][1], arrays[n][2], idx) for n in ["diam", *base]}

    def at(fr: dict[str, np.ndarray], e: float) -> tuple[float, str, float]:
        d = M.front_at(fr["diam"], e)
        vals = {n: M.front_at(fr[n], e) for n in base}
        vals = {n: v for n, v in vals.items() if np.isfinite(v)}
        if not vals:
            return d, "", float("nan")
        b = max(vals, key=lambda n: vals[n])
        return d, b, vals[b]

    def merge_rec(n: str, idx: np.ndarray | None) -> float:
        labs, r, _ = arrays[n]
        row = r[labs.index("merge")]
        return float(row.mean() if idx is None else row[idx].mean())

    def num(x: float) -> float | None:
        return round(float(x), 4) if np.isfinite(x) else None  # JSON has no NaN

    fr0 = fronts(None)
    d0, b0, v0 = at(fr0, e_star)
    capped = not np.isfinite(v0)
    if capped:  # no baseline front reaches DIAM's entropy: compare where the best one ends
        e_star = max(float(_front(arrays[n][1], arrays[n][2])[-1, 0]) for n in base)
        d0, b0, v0 = at(fr0, e_star)
    best_merge = max(base, key=lambda n: merge_rec(n, None))
    # ablation rows against the row they take something from (merge by score, paired)
    abl = {n: ("single" if n.startswith("single") and "single" in evals else "diam")
           for n in evals if n != "diam" and n not in BASELINES}
    adiffs: dict[str, list[float]] = {n: [] for n in abl}
    rng = np.random.default_rng(0)
    gains, mgains, curve = [], [], {e: [] for e in entropies}
    for _ in range(n_boot):
        idx = _bootstrap_index(sizes, rng)
        fr = fronts(idx)
        d, _, v = at(fr, e_star)
        gains.append(d / v - 1)
        mgains.append(merge_rec("diam", idx) / merge_rec(best_merge, idx) - 1)
        for n, ref in abl.items():
            adiffs[n].append(merge_rec(n, idx) - merge_rec(ref, idx))
        for e in entropies:
            d_e, _, v_e = at(fr, e)
            curve[e].append(d_e / v_e - 1)

    def ci(v: list[float]) -> list[float]:
        a = np.asarray(v, dtype=float)
        a = a[np.isfinite(a)]
        return [round(float(x), 4) for x in np.percentile(a, [2.5, 97.5])] if len(a) else []

    def p_le0(v: list[float]) -> float:
        a = np.asarray(v, dtype=float)
        a = a[np.isfinite(a)]
        return round(float((a <= 0).mean()), 4) if len(a) else float("nan")

    gain_curve = []
    for e in entropies:
        d_e, b_e, v_e = at(fr0, e)
        gain_curve.append({"entropy@20": e, "diam_recall@20": num(d_e), "best_baseline": b_e,
                           "baseline_recall@20": num(v_e), "gain": num(d_e / v_e - 1),
                           "ci": ci(curve[e])})
    dm, bm = merge_rec("diam", None), merge_rec(best_merge, None)
    return {
        "matched_entropy": {"entropy@20": round(e_star, 4), "diam_recall@20": num(d0),
                            "best_baseline": b0, "baseline_recall@20": num(v0),
                            "gain": num(d0 / v0 - 1), "ci": ci(gains),
                            "capped_at_baseline_max": capped,
                            "p_gain_le_0": p_le0(gains), "bootstrap": n_boot},
        "merge_by_score_vs_best": {"best_baseline": best_merge, "diam_recall@20": round(dm, 4),
                                   "baseline_recall@20": round(bm, 4),
                                   "gain": round(dm / bm - 1, 4), "ci": ci(mgains),
                                   "p_gain_le_0": p_le0(mgains)},
        "gain_by_entropy": gain_curve,
        "ablations_merge_by_score": {
            n: {"against": ref, "recall@20": round(merge_rec(n, None), 4),
                "against_recall@20": round(merge_rec(ref, None), 4),
                "diff": round(merge_rec(n, None) - merge_rec(ref, None), 4), "ci": ci(adiffs[n])}
            for n, ref in abl.items()},
    }


# ------------------------------------------------------------------------------ report

def _agg(vals: list[float]) -> dict:
    v = np.asarray(vals, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def summary(runs: list[dict], lr: float, selection: dict) -> dict:
    """A row's JSON entry: its own aggregation's metrics (mean, std over seeds), plus the merge
    by score, its front, its rate and kept epochs."""
    labels, rec, ent = _point_arrays(runs)
    out: dict = {m: _agg([r["model_agg"][m] for r in runs]) for m in METRICS}
    out["merge_by_score"] = {m: _agg([r["merge"][m] for r in runs]) for m in METRICS}
    out["front"] = [[round(e, 4), round(r, 4)] for e, r in _front(rec, ent).tolist()]
    out["points"] = {lab: [round(float(ent[i].mean()), 4), round(float(rec[i].mean()), 4)]
                     for i, lab in enumerate(labels)}
    out["lr"] = lr
    out["lr_selection_valid_recall@20"] = selection
    out["epoch"] = [r["best_epoch"] for r in runs]
    out["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in runs]))
    if all("interests" in r for r in runs):
        out["interests"] = {k: _agg([r["interests"][k] for r in runs]) for k in ("cos", "overlap")}
        out["k_u_mean"] = _agg([r["model_agg"]["k_u_mean"] for r in runs])
        out["spearman_d_entropy"] = _agg([r["model_agg"]["spearman_d_entropy"] for r in runs])
    return out


def markdown(res: dict, plot_name: str) -> str:
    split = "TEST users (--final)" if res["final"] else "VALIDATION users (design run)"
    lines = [f"# Model quality on {res['dataset']}: {split}", "",
             f"Command: `{res['command']}`", "",
             f"Seeds {res['seeds']} (design seeds, not used here: {res['design_seeds']}); "
             f"{res['epochs']} epochs, up to {res['max_per_user']} positions per training user "
             "per epoch; each row keeps its epoch best on validation users; "
             + (f"rate per row fixed from `{res['lr_from']}` (chosen there on validation users "
                f"of seeds {res['lr_seeds']}; not re-chosen here)" if res.get("lr_from") else
                "rate per row chosen on validation users")
             + ". Every figure below is in the JSON beside this file.", ""]
    cols = ["recall@20", "recall@50", "ndcg@20", "hr@50", "entropy@20", "ild@20", "coverage@20"]
    rows = [n for n in [*ORDER, *ABLATIONS] if n in res["models"]]

    def table(title: str, pick) -> None:
        nonlocal lines
        lines += ["", f"## {title}", "", "| row | " + " | ".join(cols) + " | lr | epochs kept |",
                  "|---|" + "---|" * (len(cols) + 2)]
        for n in rows:
            m = res["models"][n]
            cells = [f"{pick(m)[c]['mean']:.4f} ± {pick(m)[c]['std']:.4f}" for c in cols]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {m['lr']:g} | {m['epoch']} |")

    table("Merge by score (the same merge for every row; primary)", lambda m: m["merge_by_score"])
    table("Each row's own aggregation (DIAM: its aggregator with learned d_u; others: merge)",
          lambda m: m)
    if "matched_entropy" not in res:  # no DIAM row, or no baseline: nothing to compare
        lines += ["", "No comparison at matched Entropy@20: it needs the diam row and a "
                  "baseline among --models."]
    else:
        me, mb = res["matched_entropy"], res["merge_by_score_vs_best"]
        lines += ["", "## Recall@20 at matched Entropy@20 (every row through the same re-rankers)", "",
                  f"Matched Entropy@20 = {me['entropy@20']} ("
                  + ("the most any baseline front reaches; DIAM's default operating point is more "
                     "diverse" if me["capped_at_baseline_max"] else
                     "DIAM's default operating point: own d_u, δ = 0")
                  + f"). DIAM's front: Recall@20 {me['diam_recall@20']}; best baseline "
                  f"front there: {me['best_baseline']} {me['baseline_recall@20']}; gain "
                  f"{100 * me['gain']:+.1f}% (95% CI {100 * me['ci'][0]:+.1f}% .. "
                  f"{100 * me['ci'][1]:+.1f}%, P(gain <= 0) = {me['p_gain_le_0']}; paired "
                  f"bootstrap over seeds x users, {me['bootstrap']} draws).", "",
                  f"Merge by score: DIAM {mb['diam_recall@20']} vs best baseline "
                  f"{mb['best_baseline']} {mb['baseline_recall@20']}: {100 * mb['gain']:+.1f}% "
                  f"(95% CI {100 * mb['ci'][0]:+.1f}% .. {100 * mb['ci'][1]:+.1f}%, "
                  f"P(gain <= 0) = {mb['p_gain_le_0']}).", "",
                  "| Entropy@20 | DIAM front R@20 | best baseline front | its R@20 | gain | 95% CI |",
                  "|---|---|---|---|---|---|"]
        for g in res["gain_by_entropy"]:
            if g["gain"] is None:
                lines.append(f"| {g['entropy@20']} | {g['diam_recall@20']} | not reached by "
                             "DIAM or by any baseline | | | |")
                continue
            c = f"{100 * g['ci'][0]:+.1f}% .. {100 * g['ci'][1]:+.1f}%" if g["ci"] else "n/a"
            lines.append(f"| {g['entropy@20']} | {g['diam_recall@20']} | {g['best_baseline']} | "
                         f"{g['baseline_recall@20']} | {100 * g['gain']:+.1f}% | {c} |")
    if res.get("ablations_merge_by_score"):
        lines += ["", "## Ablations (merge by score, paired over seeds x users)", "",
                  "| row | against | its Recall@20 | the other's | difference | 95% CI |",
                  "|---|---|---|---|---|---|"]
        for n, a in res["ablations_merge_by_score"].items():
            c = f"{a['ci'][0]:+.4f} .. {a['ci'][1]:+.4f}" if a["ci"] else "n/a"
            lines.append(f"| {n} | {a['against']} | {a['recall@20']} | {a['against_recall@20']} "
                         f"| {a['diff']:+.4f} | {c} |")
    lines += ["", "Fronts (Entropy@20, Recall@20), means over seeds x users; plot: "
              f"`{plot_name}`.", "", "```"]
    lines += [f"{n}: {res['models'][n]['front']}" for n in rows]
    lines += ["```", "", ("Rates fixed by --lr-from (mean validation Recall@20 at the kept epoch, "
                          "these seeds):" if res.get("lr_from") else
                          "Learning-rate selection (mean validation Recall@20 at the kept epoch):"),
              ""]
    lines += [f"- {n}: {res['models'][n]['lr_selection_valid_recall@20']} -> "
              f"{res['models'][n]['lr']:g}" for n in rows]
    if "diam" in res["models"] and "interests" in res["models"]["diam"]:
        d = res["models"]["diam"]
        lines += ["", f"DIAM interests: cos {d['interests']['cos']['mean']:.3f}, top-20 overlap "
                  f"{d['interests']['overlap']['mean']:.3f}, mean K_u "
                  f"{d['k_u_mean']['mean']:.2f}, Spearman(d_u, realised entropy) "
                  f"{d['spearman_d_entropy']['mean']:.3f} ± {d['spearman_d_entropy']['std']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for n in [*ORDER, *ABLATIONS]:
        if n not in res["models"]:
            continue
        f = np.asarray(res["models"][n]["front"])
        style = "-" if n in ORDER else ":"
        ax.plot(f[:, 0], f[:, 1], style, marker="o", ms=3, label=n, lw=2 if n == "diam" else 1)
    me = res["matched_entropy"]
    ax.axvline(me["entropy@20"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("Entropy@20 (nats)")
    ax.set_ylabel("Recall@20")
    users = "test" if res["final"] else "validation"
    ax.set_title(f"Recall@20 vs Entropy@20 fronts, {res['dataset']} {users} users, "
                 f"seeds {', '.join(map(str, res['seeds']))}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fixed_rates(path: Path, rows: list[str]) -> dict:
    """``--lr-from``: every row's rate from a result JSON's ``lr_per_model``."""
    src = json.loads(path.read_text())
    rates = src.get("lr_per_model") or {}
    missing = [n for n in rows if n not in rates]
    if missing:
        raise SystemExit(f"--lr-from {path}: no rate in its lr_per_model for {missing} "
                         f"(it has {sorted(rates)})")
    return {"path": str(path), "rates": {n: float(rates[n]) for n in rows},
            "lr_seeds": src.get("lr_seeds")}


VARIANTS = ("data", "models", "seeds", "lr_grid", "diam_lr_grid", "extend", "diam_extend",
            "lr_from")
"""Options that change what the table measures (other data, rows, seeds, rate choice): off
their defaults a written run needs ``--out`` (``provenance.refuse_variant``); ``--ablations``
and ``--lr-seeds`` (which the committed ``--final`` run gives) add rows and pick the seeds
that choose the rates."""


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, tiny epochs, stdout only")
    ap.add_argument("--final", action="store_true",
                    help="evaluate TEST users (otherwise validation users only)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-per-user", type=int, default=16)
    ap.add_argument("--models", nargs="*", default=ORDER)
    ap.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS),
                    help="ablation rows to add (trained at DIAM's chosen rate)")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=LR_GRID)
    ap.add_argument("--diam-lr-grid", type=float, nargs="+", default=None,
                    help="DIAM's own grid [default: --lr-grid]")
    ap.add_argument("--extend", type=int, default=1,
                    help="times a grid may be extended past a winning edge")
    ap.add_argument("--lr-seeds", type=int, nargs="+", default=None,
                    help="seeds whose validation users choose each row's rate [default: all]")
    ap.add_argument("--train-only", action="store_true",
                    help="train (and cache) every row at every rate of its grid on --seeds, "
                         "no extension, no evaluation: to spread training over processes")
    ap.add_argument("--eval-cache", action="store_true",
                    help="with --train-only: also evaluate (and cache) each run on the split")
    ap.add_argument("--no-train", action="store_true",
                    help="stop instead of training a run that has no checkpoint")
    ap.add_argument("--diam-extend", type=int, default=None,
                    help="DIAM's --extend [default: --extend]")
    ap.add_argument("--lr-from", type=Path, default=None,
                    help="use the rates of this result JSON's lr_per_model: no grid, no "
                         "selection, no training at other rates")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("model_quality", ("epochs", "max_per_user", "bootstrap"),
                                        variants=VARIANTS)[:-1]
                    + "; _valid after the size without --final; --quick or --train-only: "
                      "stdout only]")
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path | None:
    """``--out``, else None for ``--quick`` and ``--train-only`` (nothing written), else where
    the run writes (``provenance.sized_out``): only ``--final`` at the default sizes writes the
    committed ``model_quality.json`` (without ``--final``: ``model_quality_valid.json``); a
    variant (:data:`VARIANTS`) without ``--out`` is refused (exit 2)."""
    if args.out:
        return Path(args.out)
    if args.quick or args.train_only:
        return None
    sized = sized_out(ap, args, "model_quality", ("epochs", "max_per_user", "bootstrap"),
                      variants=VARIANTS)
    size = sized.stem.removeprefix("model_quality")
    return sized.with_name(f"model_quality{size}{'' if args.final else '_valid'}.json")


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    out = results_path(ap, args)  # a variant without --out is refused here, before anything runs
    if args.ablations and "diam" not in args.models and args.lr_from is None:
        ap.error("--ablations train at DIAM's chosen rate: give diam among --models")
    prov = provenance()  # when and on which code this run starts
    if args.quick:
        args.seeds, args.epochs, args.max_per_user, args.extend = args.seeds[:1], 2, 6, 0
        args.lr_grid, args.bootstrap = args.lr_grid[:1], 50
    command = "python bench/model_quality.py " + shlex.join(sys.argv[1:])
    fixed = _fixed_rates(args.lr_from, [*args.models, *args.ablations]) if args.lr_from else None
    if fixed is not None and args.lr_seeds:
        raise SystemExit("--lr-from fixes every rate: --lr-seeds has nothing to choose")
    bench = Bench(args)
    split = "test" if args.final else "valid"
    print(f"evaluation users: {split}", file=sys.stderr, flush=True)
    res: dict = {"dataset": bench.corpus.name, "final": args.final, "split": split,
                 "seeds": args.seeds, "design_seeds": DESIGN_SEEDS, "epochs": args.epochs,
                 "max_per_user": args.max_per_user, "keep_best": True, "command": command,
                 "lr_seeds": bench.lr_seeds if fixed is None else fixed["lr_seeds"],
                 "re_rankers": {"fixed_d": D_GRID, "lambda": LAMBDAS, "diam_delta": DELTAS}}
    if fixed is not None:
        res["lr_from"] = fixed["path"]
    if args.train_only:
        for name in [*args.models, *args.ablations]:
            grid = args.diam_lr_grid if name == "diam" and args.diam_lr_grid else args.lr_grid
            if fixed is not None:
                grid = [fixed["rates"][name]]
            for seed in args.seeds:
                for lr in grid:
                    if args.eval_cache:
                        bench.evaluated(name, seed, lr, split)
                    else:
                        bench.trained(name, seed, lr)
        return
    chosen: dict[str, tuple[float, dict]] = {}
    for name in args.models if fixed is None else []:
        grid = args.diam_lr_grid if name == "diam" and args.diam_lr_grid else args.lr_grid
        extend = args.diam_extend if name == "diam" and args.diam_extend is not None \
            else args.extend
        chosen[name] = bench.choose_lr(name, list(grid), extend)
        print(f"{name}: lr {chosen[name][0]:g} {chosen[name][1]}", file=sys.stderr, flush=True)
    for name in [*args.models, *args.ablations] if fixed is not None else []:
        # no selection: the record is the fixed rate's mean validation score on these seeds
        lr = fixed["rates"][name]
        chosen[name] = (lr, {f"{lr:g}": round(float(np.mean(
            [bench.valid_score(name, s, lr) for s in args.seeds])), 4)})
    for name in args.ablations if fixed is None else []:
        lr = chosen["diam"][0]
        chosen[name] = (lr, {f"{lr:g}": round(float(np.mean(
            [bench.valid_score(name, s, lr) for s in bench.lr_seeds])), 4)})
    evals = {n: [bench.evaluated(n, s, lr, split) for s in args.seeds]
             for n, (lr, _) in chosen.items()}
    res["lr_per_model"] = {n: lr for n, (lr, _) in chosen.items()}
    res["lr"] = res["lr_per_model"]  # was one float that no model used; now each row's rate
    res["models"] = {n: summary(evals[n], *chosen[n]) for n in evals}
    if "diam" in evals and any(n in evals for n in BASELINES):
        res.update(compare(evals, args.bootstrap, [1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]))
    res["timing"] = {n: {"seconds_per_epoch": m["seconds_per_epoch"]}
                     for n, m in res["models"].items()}
    res["timing"]["note"] = ("CPU, 1 torch thread, batch 256, niced, on a 2-core machine shared "
                             "with other jobs")
    text = json.dumps({"provenance": prov, **res}, indent=1)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        md = out.with_suffix(".md")
        old = md.read_text() if md.is_file() else ""
        kept = old[old.index(NOTES):] if NOTES in old else ""  # hand-written notes survive
        png = out.with_name(out.stem.replace("model_quality", "model_quality_fronts") + ".png")
        md.write_text(markdown(res, png.name) + ("\n" + kept if kept else ""))
        if "matched_entropy" in res:
            plot(res, png)


if __name__ == "__main__":
    main()
