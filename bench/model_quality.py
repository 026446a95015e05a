"""Offline quality of DIAM against MIND, ComiRec-SA, ComiRec-DR and a single-interest model.

Trains every model on ml-100k for each seed (the seed also draws the 80/10/10 user split, so
every model of a seed sees the same users), evaluates the test users with ComiRec's protocol
(``online_model.evaluate``) and reports mean ± std over seeds. Then, on a synthetic set with
planted truth, trains DIAM and measures how well K_u recovers the planted number of interests
(accuracy, confusion) and d_u the planted diversity preference (Spearman).

Writes ``bench/results/model_quality.json`` (shape of issue 3, plus ``variants``, ``sweeps``,
``synthetic``, ``timing``), ``model_quality.md`` (tables) and PNG plots:
``model_quality_tradeoff.png`` (Recall@20 against Entropy@20 when sweeping DIAM's manual delta
and ComiRec's lambda) and ``model_quality_ku_du.png`` (K_u and d_u histograms).

With ``--lr-grid`` each model is trained at every rate of the grid and keeps the one with the
best mean validation Recall@20 over seeds (the committed table: ``--lr-grid 0.003 0.01``).

Run: ``python bench/model_quality.py`` (full: 3 seeds, all models; hours on a shared 2-core
CPU) or ``python bench/model_quality.py --quick`` (one seed, tiny epochs, < 2 min; prints the
JSON and writes nothing unless --out is given). Per-run results are cached under
``runs/model_quality/`` so an interrupted full run resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from online_model.corpus import Corpus, corpus_from_prepared, windows  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.evaluate import (  # noqa: E402
    evaluate,
    interest_diagnostics,
    make_eval_set,
    reference_embedding,
    retrieve,
    split_users,
)
from online_model.metrics import spearman  # noqa: E402
from online_model.models import MODELS, ModelConfig  # noqa: E402
from online_model.train import Features, TrainConfig, train  # noqa: E402

METRICS = ["recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50", "entropy@20",
           "ild@20", "ild_cat@20", "coverage@20"]
ORDER = ["diam", "comirec-sa", "comirec-dr", "mind", "single"]
DELTAS = [-0.5, -0.25, 0.0, 0.25, 0.5]
LAMBDAS = [0.0, 0.02, 0.05, 0.1, 0.2]
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "model_quality"
LR = 3e-3  # one rate for every model; --lr-grid 0.003 0.01 picks per model (all chose 1e-2)
NOTES = "<!-- notes: kept across re-runs -->"
DIAM_OPTS = ("global_interest", "readout", "neg_max")
DIAM_PLAIN = {"global_interest": False, "readout": "gumbel", "neg_max": False}
"""DIAM's training options before the global slot (its runs are cached without a suffix)."""
DIAM_VARIANTS = {
    "diam, previous default (no global slot, Gumbel readout)": DIAM_PLAIN,
    "diam, neg_max without global slot (interests collapse)": {**DIAM_PLAIN, "neg_max": True},
}
"""Variant rows added to the table when all their seeds are cached (run them with the
matching --diam-* flags)."""
DIAM_AGG = "_agg2"
"""Cache-name tag of DIAM's aggregator (online_model.aggregate): its lists, hence its cached
runs, change with it. ``_agg2``: category diminishing-returns bonus, interests' share
0.5 d_u (the runs cached without a tag used the max-similarity bonus and all-quota lists)."""


def diam_suffix(opts: dict) -> str:
    """Cache-name suffix of a DIAM option set; the earlier runs' names stay valid."""
    o = {**DIAM_PLAIN, **opts}
    if o == DIAM_PLAIN:
        return ""
    if o == {**DIAM_PLAIN, "neg_max": True}:
        return "_negmax"
    return f"_g{int(o['global_interest'])}_{o['readout']}_n{int(o['neg_max'])}"


def _load(path: Path) -> Corpus:
    c = corpus_from_prepared(load_prepared(path))
    c.info["path"] = str(path)
    return c


def _ensure_synth(path: Path, users: int, seed: int = 0) -> Path:
    if not (path / "events.tsv").is_file():
        from online_model.synth import SynthParams, write_synth

        write_synth(SynthParams(users=users, items=3000, categories=20, events_per_user=50.0,
                                seed=seed), path)
    return path


def _saved(ckpt: Path | None) -> bool:
    """Whether an earlier run saved its trained model in ``ckpt``."""
    return ckpt is not None and (ckpt / "config.json").is_file()


def _trained(corpus: Corpus, feats: Features, name: str, seed: int, epochs: int,
             max_per_user: int, lr: float, keep_best: bool, diam_opts: dict | None,
             ckpt: Path | None) -> tuple:
    """``(model, training record)``: trained now, or loaded from the checkpoint directory
    ``ckpt`` when an earlier run saved one there (a run saves it when ``ckpt`` is given)."""
    if _saved(ckpt):
        from online_model.checkpoint import load_checkpoint

        ck = load_checkpoint(ckpt)
        return ck.model, {**ck.config["train_record"], "from_checkpoint": str(ckpt)}
    mcfg = ModelConfig(model=name, n_items=corpus.n_items, n_categories=corpus.n_categories,
                       **((diam_opts or {}) if name == "diam" else {}))
    tcfg = TrainConfig(epochs=epochs, seed=seed, max_per_user=max_per_user, lr=lr,
                       eval_every=1 if keep_best else 0, keep_best=keep_best)
    t0 = time.perf_counter()
    res = train(corpus, mcfg, tcfg, feats=feats, progress=False,
                log=lambda s: print(f"  [{name} seed {seed}] {s}", file=sys.stderr, flush=True))
    record = {"train_seconds": round(time.perf_counter() - t0, 1),
              "seconds_per_epoch": round(res.seconds_per_epoch, 2),
              "best_epoch": res.best_epoch,
              "valid_curve": [h.get("valid_recall@20") for h in res.history]}
    if ckpt is not None:
        from online_model.checkpoint import save_checkpoint

        save_checkpoint(ckpt, res.model, corpus, seed=seed, train_metrics=res.metrics(),
                        extra={"train_record": record})
    return res.model, record


def run_one(corpus: Corpus, feats: Features, name: str, seed: int, epochs: int,
            max_per_user: int, ref_cache: dict, sweeps: bool, lr: float = LR,
            keep_best: bool = True, diam_opts: dict | None = None,
            ckpt: Path | None = None) -> dict:
    """Train one model, evaluate its test users; returns metrics and sweep points.

    Every model gets the same trainer settings; with ``keep_best`` each ends with the weights of
    its epoch best on the seed's VALIDATION users (test users are never looked at in training).
    With ``ckpt`` the trained weights are saved there, and a later call finding them evaluates
    them without training again (for changes that only touch evaluation, e.g. the aggregator).
    """
    model, record = _trained(corpus, feats, name, seed, epochs, max_per_user, lr, keep_best,
                             diam_opts, ckpt)
    split = split_users(corpus.users, seed)  # the trainer's split of this seed
    es = make_eval_set(corpus, split["test"], feats.signals)
    if seed not in ref_cache:
        ref_cache[seed] = reference_embedding(corpus, split["train"])
    ref = ref_cache[seed]
    cands = retrieve(model, corpus, es, m=50)
    out = {"model": name, "seed": seed, "epochs": epochs, "lr": lr, **record,
           "merge": evaluate(model, corpus, es, agg="merge", ref=ref, cands=cands),
           "model_agg": evaluate(model, corpus, es, agg="model", ref=ref, cands=cands)}
    if cands.d_u is not None:
        out["interests"] = interest_diagnostics(model, corpus, es, cands)
        out["diam_opts"] = {k: getattr(model.cfg, k) for k in DIAM_OPTS}
        out["k_u"] = cands.k.tolist()
        out["d_u"] = cands.d_u.tolist()
    if sweeps:
        pts = []
        if name == "diam":
            for d in DELTAS:
                r = evaluate(model, corpus, es, agg="model", delta=d, ref=ref, cands=cands)
                pts.append({"delta": d, "recall@20": r["recall@20"], "entropy@20": r["entropy@20"],
                            "ild@20": r["ild@20"]})
        elif name.startswith("comirec"):
            for lam in LAMBDAS:
                r = evaluate(model, corpus, es, agg="controllable", lam=lam, ref=ref,
                             cands=cands)
                pts.append({"lambda": lam, "recall@20": r["recall@20"],
                            "entropy@20": r["entropy@20"], "ild@20": r["ild@20"]})
        out["sweep"] = pts
    out["_model"] = model
    return out


def recovery(model, corpus: Corpus) -> dict:
    """K_u and d_u against the planted truth, for every user on their whole history."""
    import torch

    from online_model.models import Batch
    from online_model.signals import batch_signals

    assert corpus.truth is not None
    ends = corpus.offsets[1:]
    seq, length = windows(corpus, ends, model.cfg.seq_len, users=np.arange(corpus.n_users))
    sig = np.stack([batch_signals(corpus.item_cat[corpus.items[a:b]], corpus.ts[a:b],
                                  corpus.n_categories)
                    for a, b in zip(corpus.offsets[:-1], ends, strict=True)])
    model.eval()
    ks, ds = [], []
    with torch.no_grad():
        for s in range(0, len(seq), 512):
            b = Batch(torch.from_numpy(seq[s:s + 512]), torch.from_numpy(length[s:s + 512]),
                      torch.from_numpy(sig[s:s + 512]))
            out = model.interests(b)
            ks.append(out.k.numpy())
            ds.append(out.d_u.numpy())
    k = np.concatenate(ks)
    d = np.concatenate(ds)
    true_k = np.array([corpus.truth[u][0] for u in corpus.users])
    true_d = np.array([corpus.truth[u][1] for u in corpus.users])
    kmax = int(max(true_k.max(), k.max()))
    conf = np.zeros((kmax, kmax), dtype=int)
    for t, p in zip(true_k, k, strict=True):
        conf[t - 1, p - 1] += 1
    return {"users": len(k), "k_accuracy": float((k == true_k).mean()),
            "k_within_1": float((np.abs(k - true_k) <= 1).mean()),
            "k_spearman": spearman(k, true_k), "k_confusion": conf.tolist(),
            "d_spearman": spearman(d, true_d), "k_pred_hist": np.bincount(k).tolist(),
            "d_u_mean": float(d.mean()), "d_u_std": float(d.std())}


def _agg(vals: list[float]) -> dict:
    v = np.asarray(vals, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def summarise(runs: list[dict], key: str = "model_agg") -> dict:
    out: dict[str, dict] = {}
    for name in ORDER:
        rs = [r for r in runs if r["model"] == name]
        if rs:
            out[name] = {m: _agg([r[key][m] for r in rs]) for m in METRICS}
    return out


def markdown(result: dict) -> str:
    lr_text = (f"lr per model chosen on validation users: {result['lr_per_model']}"
               if "lr_per_model" in result else f"lr {result.get('lr', 1e-3):g}")
    lines = [f"# Model quality on {result['dataset']} (seeds {result['seeds']}, "
             f"{result['epochs']} epochs, {lr_text}, "
             f"best valid epoch kept: {result.get('keep_best', False)})", "",
             f"Command: `{result['command']}`", ""]
    cols = ["recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@50", "entropy@20", "ild@20",
            "coverage@20"]
    lines += ["| model | " + " | ".join(cols) + " | s/epoch |",
              "|---|" + "---|" * (len(cols) + 1)]
    rows = [(n, result["models"][n]) for n in ORDER if n in result["models"]]
    rows += [(n, m) for n, m in result.get("variants", {}).items()]
    for name, m in rows:
        cells = [f"{m[c]['mean']:.4f} ± {m[c]['std']:.4f}" for c in cols]
        key = name if name in result["timing"] else name.split(" ")[0]
        t = result["timing"].get(key, {}).get("seconds_per_epoch", float("nan"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {t:.1f} |")
    if result.get("best_epochs"):
        lines += ["", "Epoch kept per seed (best on validation users): "
                  + ", ".join(f"{n} {v}" for n, v in result["best_epochs"].items())]
    if "lr_selection_valid_recall@20" in result:
        lines += ["", "Mean validation Recall@20 (kept epoch, merge by score) per rate: "
                  + ", ".join(f"{n} {v}" for n, v in
                              result["lr_selection_valid_recall@20"].items())]
    g = result.get("goal")
    if g:
        lines += ["", "## Goal check", "", "```", json.dumps(g, indent=2), "```"]
    if "diam_interests" in result:
        lines += ["", "## DIAM interest collapse check (test users with K_u >= 2)", "",
                  "Mean pairwise cosine of a user's interest vectors and mean pairwise Jaccard "
                  "overlap of their per-interest top-20 lists (1.0 and ~1.0: collapsed).", "",
                  "```", json.dumps({"diam": result["diam_interests"],
                                     **result.get("variant_interests", {})}, indent=1), "```"]
    if "diam_ku_du" in result:
        lines += ["", "## DIAM on ml-100k test users", "", "```",
                  json.dumps(result["diam_ku_du"], indent=1), "```"]
    if "synthetic" in result:
        lines += ["", "## Synthetic set: K_u / d_u recovery", "", "```",
                  json.dumps(result["synthetic"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def plots(result: dict, runs: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, key in (("diam", "delta"), ("comirec-sa", "lambda"), ("comirec-dr", "lambda")):
        rs = [r for r in runs if r["model"] == name and r.get("sweep")]
        if not rs:
            continue
        xs = np.mean([[p["entropy@20"] for p in r["sweep"]] for r in rs], axis=0)
        ys = np.mean([[p["recall@20"] for p in r["sweep"]] for r in rs], axis=0)
        ax.plot(xs, ys, marker="o", label=f"{name} ({key})")
        for p, x, y in zip(rs[0]["sweep"], xs, ys, strict=True):
            ax.annotate(f"{p[key]:g}", (x, y), fontsize=7)
    for name in ("mind", "single"):
        if name in result["models"]:
            m = result["models"][name]
            ax.scatter(m["entropy@20"]["mean"], m["recall@20"]["mean"], label=name, marker="x")
    ax.set_xlabel("Entropy@20 (nats)")
    ax.set_ylabel("Recall@20")
    ax.set_title(f"accuracy vs diversity, {result['dataset']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    f = out_dir / "model_quality_tradeoff.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(f.name)

    ku = [k for r in runs if r["model"] == "diam" and "k_u" in r for k in r["k_u"]]
    du = [d for r in runs if r["model"] == "diam" and "d_u" in r for d in r["d_u"]]
    if ku:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].hist(ku, bins=np.arange(0.5, max(ku) + 1.5), rwidth=0.8)
        axes[0].set_xlabel("K_u")
        axes[0].set_title("DIAM K_u, test users (all seeds)")
        axes[1].hist(du, bins=20)
        axes[1].set_xlabel("d_u")
        axes[1].set_title("DIAM d_u, test users (all seeds)")
        fig.tight_layout()
        f = out_dir / "model_quality_ku_du.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f.name)
    return files


def synthetic(args: argparse.Namespace, keep_best: bool, lr: float | None = None) -> dict:
    """DIAM on the planted synthetic set: K_u / d_u recovery (cached like the ml-100k runs);
    ``lr`` defaults to ``--lr``."""
    epochs = args.synth_epochs or args.epochs
    lr = args.lr if lr is None else lr
    cache = RUNS / (f"synth_u{args.synth_users}_s{args.seeds[0]}_e{epochs}"
                    f"_m{args.max_per_user}_lr{lr:g}{'_kb' if keep_best else ''}"
                    f"{diam_suffix(_diam_opts(args))}{DIAM_AGG}.json")  # its recall@20 too
    if args.resume and cache.is_file():
        return json.loads(cache.read_text())
    sc = _load(_ensure_synth(args.synth, args.synth_users))
    sf = Features.of(sc)
    r = run_one(sc, sf, "diam", args.seeds[0], epochs, args.max_per_user, {}, False,
                lr=lr, keep_best=keep_best, diam_opts=_diam_opts(args))
    model = r.pop("_model")
    out = {"dataset": sc.name, "users": sc.n_users, "items": sc.n_items,
           "events": len(sc.items), "seed": args.seeds[0], "epochs": epochs, "lr": lr,
           "recall@20": r["model_agg"]["recall@20"], "recovery": recovery(model, sc)}
    if not args.quick:
        RUNS.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
    return out


def _valid_score(run: dict) -> float:
    """Validation Recall@20 of a cached run at the epoch it kept (the last one without
    keep_best)."""
    curve = [v for v in run.get("valid_curve", []) if v is not None]
    if not curve:
        return float("nan")
    best = run.get("best_epoch") or len(run["valid_curve"])
    v = run["valid_curve"][best - 1]
    return float(v if v is not None else curve[-1])


def _diam_opts(args: argparse.Namespace) -> dict:
    return {"global_interest": args.diam_global, "readout": args.diam_readout,
            "neg_max": args.diam_neg_max}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, tiny epochs, stdout only")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--synth", type=Path, default=ROOT / "data" / "synth-quality")
    ap.add_argument("--synth-users", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-per-user", type=int, default=64)
    ap.add_argument("--models", nargs="+", default=ORDER, choices=sorted(MODELS))
    ap.add_argument("--no-synth", action="store_true")
    ap.add_argument("--lr", type=float, default=LR, help="peak learning rate, every model")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=None,
                    help="give each model the rate of this grid with the best mean VALIDATION "
                         "Recall@20 over seeds (trains every rate); --lr then only sets the "
                         "DIAM variant rows' and the synthetic run's rate")
    ap.add_argument("--no-keep-best", action="store_true",
                    help="end with the last epoch's weights instead of the best on valid users")
    ap.add_argument("--resume", action="store_true", help="reuse cached per-run results")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="save each trained model here (one directory per run, named as its "
                         "cache) and evaluate saved ones instead of training them again")
    ap.add_argument("--out", type=Path, default=None)
    dflt = ModelConfig(model="diam", n_items=1, n_categories=1)
    ap.add_argument("--diam-global", action=argparse.BooleanOptionalAction,
                    default=dflt.global_interest,
                    help="DIAM's slot 0 is a global single-interest-style vector")
    ap.add_argument("--diam-readout", choices=["gumbel", "argmax"], default=dflt.readout,
                    help="DIAM's training readout of its (diverse) interests")
    ap.add_argument("--diam-neg-max", action=argparse.BooleanOptionalAction,
                    default=dflt.neg_max,
                    help="DIAM scores the target and negatives by their best interest, as "
                         "retrieval does (without the global slot: interests collapse)")
    ap.add_argument("--synth-epochs", type=int, default=0,
                    help="epochs of the synthetic run [default: --epochs]")
    ap.add_argument("--synth-only", action="store_true",
                    help="only the synthetic K_u / d_u recovery run (cached for --resume)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.max_per_user, args.no_synth = args.seeds[:1], 2, 6, True
    keep_best = not args.no_keep_best
    command = "python bench/model_quality.py " + " ".join(sys.argv[1:])
    if args.synth_only:
        print(json.dumps(synthetic(args, not args.no_keep_best), indent=2))
        return

    corpus = _load(args.data)
    feats = Features.of(corpus)
    ref_cache: dict = {}
    lrs = args.lr_grid or [args.lr]
    by_lr: dict[tuple[str, float], list[dict]] = {}
    for seed in args.seeds:
        for name in args.models:
            for lr in lrs:
                stem = (f"{corpus.name}_{name}_s{seed}_e{args.epochs}_m{args.max_per_user}"
                        f"_lr{lr:g}{'_kb' if keep_best else ''}"
                        f"{diam_suffix(_diam_opts(args)) if name == 'diam' else ''}")
                # DIAM's lists come from its aggregator: a new one invalidates its cached runs
                cache = RUNS / f"{stem}{DIAM_AGG if name == 'diam' else ''}.json"
                ckpt = args.checkpoints / stem if args.checkpoints else None
                if args.resume and cache.is_file():
                    by_lr.setdefault((name, lr), []).append(json.loads(cache.read_text()))
                    continue
                older = RUNS / f"{stem}.json"  # the same DIAM training, an older aggregator
                if (args.resume and name == "diam" and older.is_file()
                        and not _saved(ckpt)):
                    # good for choosing the rate (validation scores do not use the
                    # aggregator), refused below if it is the chosen one
                    r = {**json.loads(older.read_text()), "stale_aggregator": str(older)}
                    by_lr.setdefault((name, lr), []).append(r)
                    continue
                r = run_one(corpus, feats, name, seed, args.epochs, args.max_per_user,
                            ref_cache, sweeps=not args.quick, lr=lr, keep_best=keep_best,
                            diam_opts=_diam_opts(args), ckpt=ckpt)
                r.pop("_model")
                by_lr.setdefault((name, lr), []).append(r)
                if not args.quick:
                    RUNS.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(r))
                print(f"{name} seed {seed} lr {lr:g}: recall@20 "
                      f"{r['model_agg']['recall@20']:.4f} entropy@20 "
                      f"{r['model_agg']['entropy@20']:.4f} ({r['seconds_per_epoch']} s/epoch)",
                      file=sys.stderr, flush=True)
    # each model's rate: the best mean VALIDATION Recall@20 (at the kept epoch) over seeds
    selection = {n: {f"{lr:g}": float(np.mean([_valid_score(r) for r in by_lr[(n, lr)]]))
                     for lr in lrs} for n in args.models}
    chosen = {n: max(lrs, key=lambda lr, n=n: selection[n][f"{lr:g}"]) for n in args.models}
    runs = [r for n in args.models for r in by_lr[(n, chosen[n])]]
    stale = [r["stale_aggregator"] for r in runs if "stale_aggregator" in r]
    if stale:
        raise SystemExit(f"{', '.join(stale)}: DIAM evaluated with an older aggregator and no "
                         "checkpoint to evaluate again; give --checkpoints with the saved "
                         "weights or let these runs train again (move the files away)")

    result: dict = {"dataset": corpus.name, "seeds": args.seeds, "epochs": args.epochs,
                    "lr": args.lr, "keep_best": keep_best, "models": summarise(runs),
                    "command": command,
                    "best_epochs": {n: [r.get("best_epoch") for r in runs if r["model"] == n]
                                    for n in args.models}}
    if args.lr_grid:
        result["lr_per_model"] = {n: chosen[n] for n in args.models}
        result["lr_selection_valid_recall@20"] = selection
    if "diam" in args.models:
        result["variants"] = {"diam (merge by score)": summarise(
            [r for r in runs if r["model"] == "diam"], "merge")["diam"]}
        # other DIAM option sets, when all their seeds are cached
        result["variant_timing"] = {}
        for label, opts in DIAM_VARIANTS.items():
            if opts == _diam_opts(args):
                continue
            paths = [RUNS / (f"{corpus.name}_diam_s{s}_e{args.epochs}_m{args.max_per_user}"
                             f"_lr{args.lr:g}{'_kb' if keep_best else ''}{diam_suffix(opts)}.json")
                     for s in args.seeds]
            if all(p.is_file() for p in paths):
                vr = [json.loads(p.read_text()) for p in paths]
                if args.lr_grid:
                    label = f"{label}, lr {args.lr:g}"
                result["variants"][label] = summarise(vr)["diam"]
                result["variant_timing"][label] = {
                    "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in vr]))}
                if all("interests" in r for r in vr):
                    result.setdefault("variant_interests", {})[label] = {
                        k: _agg([r["interests"][k] for r in vr]) for k in ("cos", "overlap")}
        dr = [r for r in runs if r["model"] == "diam"]
        result["diam_opts"] = _diam_opts(args)
        if all("interests" in r for r in dr):
            result["diam_interests"] = {k: _agg([r["interests"][k] for r in dr])
                                        for k in ("cos", "overlap")}
        ku = np.concatenate([r["k_u"] for r in dr]).astype(int)
        result["diam_ku_du"] = {
            "k_u_hist": np.bincount(ku).tolist(),
            "d_u_mean": float(np.mean([r["model_agg"]["d_u_mean"] for r in dr])),
            "d_u_std": float(np.mean([r["model_agg"]["d_u_std"] for r in dr])),
            "spearman_d_entropy": _agg([r["model_agg"]["spearman_d_entropy"] for r in dr])}
        base = [n for n in result["models"] if n != "diam"]
        if base:
            best_r = max(base, key=lambda n: result["models"][n]["recall@20"]["mean"])
            best_e = max(base, key=lambda n: result["models"][n]["entropy@20"]["mean"])
            dm = result["models"]["diam"]
            result["goal"] = {
                "best_baseline_recall@20": best_r,
                "diam_recall@20_gain": dm["recall@20"]["mean"]
                / result["models"][best_r]["recall@20"]["mean"] - 1,
                "best_baseline_entropy@20": best_e,
                "diam_entropy@20_gain_vs_best_recall_baseline": dm["entropy@20"]["mean"]
                / result["models"][best_r]["entropy@20"]["mean"] - 1,
                "diam_entropy@20_gain_vs_best_entropy_baseline": dm["entropy@20"]["mean"]
                / result["models"][best_e]["entropy@20"]["mean"] - 1,
                "targets": {"recall@20_gain": 0.03, "entropy@20_gain": 0.15},
            }
    result["timing"] = {
        n: {"seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs
                                                if r["model"] == n]))}
        for n in args.models}
    result["timing"].update(result.pop("variant_timing", {}))
    result["timing"]["note"] = ("CPU, 1 torch thread, batch 256, up to "
                                f"{args.max_per_user} positions per training user per epoch")

    if not args.no_synth and "diam" in args.models:
        result["synthetic"] = synthetic(args, keep_best, chosen.get("diam"))

    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or (None if args.quick else RESULTS / "model_quality.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        md = out.with_suffix(".md")
        old = md.read_text() if md.is_file() else ""
        kept = old[old.index(NOTES):] if NOTES in old else ""  # hand-written notes survive
        md.write_text(markdown(result) + ("\n" + kept if kept else ""))
        if not args.quick:
            plots(result, runs, out.parent)


if __name__ == "__main__":
    main()
