"""Prequential (test-then-train) evaluation of the served path on a DIAM checkpoint.

Writes ``bench/results/prequential.json`` shaped ``{"dataset", "base": "diam", "merge":
"aggregate", "tuned_on", "arms": {"popularity"|"reinfer"|"frozen"|"nosteps"|"guarded"|
"unguarded": {"recall@20", "recall@20_ci", "ndcg@20", "entropy@20", "k_changes_per_1k",
"mean_drift", ...}}, "synthetic_recovery": {...}}`` (protocol in ``online_model.prequential``).

The base is a DIAM checkpoint trained only on the first half of the stream in time (a model
trained on all of ml-100k has seen the evaluated events); it is trained once and cached under
``checkpoints/`` (``--epochs``, seed 0), reused only for the events it was trained on
(:func:`cache_mismatch`), and any checkpoint that has read the evaluated period is refused
before a run (:func:`refuse_leak`, as ``diam evaluate-stream``). Online settings (``reanchor_every``) are chosen with
``--tune`` on the tuning users (a stable 10% by hash, ``online_model.prequential.user_group``)
and reported on the other 90%.

Run: ``python bench/prequential.py [--tune] [--quick] [--epochs 4] [--checkpoint DIR]``.
``--quick`` evaluates the tuning users only (a tenth of the work) into
``prequential_quick.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.online import OnlineLearner  # noqa: E402
from online_model.prequential import (  # noqa: E402
    ARMS,
    evaluate_stream,
    format_table,
    matched_recall,
)

RESULTS = ROOT / "bench" / "results"
WARM_FRAC = 0.5
"""The past's share of the stream (``evaluate_stream``'s ``warm_frac``): the first-half
checkpoint is trained on it, and :func:`refuse_leak` checks a checkpoint against it."""


def apply_cost(ds, base: BaseView, cfg: OnlineConfig, n: int) -> dict[str, float]:
    """µs per ``apply`` over the first n events (guarded config), next to the µs of one 8x64
    matrix-vector product: the per-event path is ~40 such small numpy calls."""
    learner = OnlineLearner(base, cfg)
    users, items, ts = ds.user_ids[:n].tolist(), ds.item_ids[:n].tolist(), ds.ts_ms[:n].tolist()
    states: dict = {}
    t0 = time.perf_counter()
    for off, (u, i, t) in enumerate(zip(users, items, ts, strict=True)):
        st = states.get(u)
        if st is None:
            st = states[u] = learner.new_state(u)
        learner.apply(st, i, t, off)
    per_event = (time.perf_counter() - t0) / n * 1e6
    v, m = np.ones(64, np.float32), np.ones((8, 64), np.float32)
    unit = min(timeit.repeat(lambda: m @ v, number=20_000, repeat=3)) / 20_000 * 1e6
    return {
        "apply_us_per_event": per_event,
        "numpy_call_us": unit,
        "apply_in_numpy_calls": per_event / unit,
        "events_timed": n,
    }


def first_half(ds):
    """The first half of a prepared stream in time order (the same dataset type)."""
    import dataclasses

    cut = len(ds.user_ids) // 2
    return dataclasses.replace(ds, user_ids=ds.user_ids[:cut], item_ids=ds.item_ids[:cut],
                               ts_ms=ds.ts_ms[:cut], item_index=ds.item_index[:cut],
                               name=f"{ds.name}-first-half")


def design_stream(data: Path, early: bool):
    """The stream a run evaluates: the prepared dataset, or with ``early`` (``--early``) its
    first half, the earlier period online settings can be designed on with every user (its
    checkpoint is trained on the first quarter; the reported run scores only the second
    half, so the two never score the same events)."""
    ds = load_prepared(data)
    return first_half(ds) if early else ds


def exploration_args(doc: str | None) -> argparse.ArgumentParser:
    """The options every exploration of the served path shares (``bench/prequential_*.py``):
    ``--early``, ``--data``, ``--out``; the caller adds its own and calls
    :func:`exploration_inputs` with the parsed arguments."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--early", action="store_true",
                    help="the earlier period, every user (a first-quarter network)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON written [default: bench/results/<script name>.json, with _early "
                         "(and _freeze) for those options]")
    return ap


def exploration_inputs(args: argparse.Namespace) -> tuple[dict, BaseView, object, str]:
    """What an exploration reads, from :func:`exploration_args`' options: the provenance (taken
    first), the cached first-half (``--early``: first-quarter) network, the stream, and which
    users it scores (the tuning users, or with ``--early`` every user of the earlier period:
    never the reported users)."""
    prov = provenance()
    ckpt = cached_first_half(args.data, 4, None, args.early)
    base = BaseView.from_checkpoint(ckpt)
    ds = design_stream(args.data, args.early)
    refuse_leak(ckpt, base, ds)
    return prov, base, ds, "all" if args.early else "tune"


ROW_METRICS = ("recall@20", "recall@20_ci", "ndcg@20", "entropy@20")
"""The metrics an exploration keeps per arm in its JSON row."""


def exploration_row(res: dict, delta: bool = False) -> dict:
    """An exploration's evaluation (:func:`online_model.prequential.evaluate_stream`'s result)
    folded into its JSON row: each arm's :data:`ROW_METRICS` and its sweep's front as
    ``[entropy@20, recall@20]`` points (``[delta, entropy@20, recall@20]`` with ``delta``)."""
    keys = ("delta", "entropy@20", "recall@20") if delta else ("entropy@20", "recall@20")
    return {"arms": {a: {k: res["arms"][a][k] for k in ROW_METRICS} for a in res["arms"]},
            "fronts": {a: [[q[k] for k in keys] for q in f]
                       for a, f in res.get("fronts", {}).items()}}


def at_entropy(front: list[list[float]], e: float) -> float | None:
    """Recall@20 on ``front`` at Entropy@20 ``e`` (linear between the sweep's points)."""
    pts = sorted(front)
    if not pts:
        return None
    es, rs = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return None if not es[0] <= e <= es[-1] else float(np.interp(e, es, rs))


def at_reference_entropy(rows: dict, reference: str) -> float:
    """Add to every row of ``rows`` (:func:`exploration_row`) each arm's Recall@20 at the
    reference row's reinfer Entropy@20 (``recall@20_at_reference_entropy``); returns that
    entropy."""
    e0 = rows[reference]["arms"]["reinfer"]["entropy@20"]
    for r in rows.values():
        r["recall@20_at_reference_entropy"] = {a: at_entropy(f, e0) for a, f in r["fronts"].items()}
    return e0


DATA_RECORD = "bench_data.json"
"""The file beside a cached first-half checkpoint that records which events it was trained on
(:func:`half_fingerprint`): a cache is reused only for the same events."""


def half_fingerprint(half) -> dict:
    """What a first-half checkpoint is trained on, to compare a cache with: the events' count,
    time range and a sha256 of the events (user, item, time) and of the item table's ids."""
    import hashlib

    h = hashlib.sha256()
    for arr in (half.user_ids, half.item_ids, half.items.ids):
        h.update("\t".join(map(str, arr.tolist())).encode())
        h.update(b"\n")
    h.update(np.ascontiguousarray(half.ts_ms, dtype=np.int64).tobytes())
    n = len(half.ts_ms)
    return {"events": n, "ts_min": int(half.ts_ms.min()) if n else None,
            "ts_max": int(half.ts_ms.max()) if n else None, "sha256": h.hexdigest()}


def cache_mismatch(out: Path, fp: dict) -> str | None:
    """Why the checkpoint cached in ``out`` was not trained on the events ``fp`` describes
    (:func:`half_fingerprint`), None when it was: its :data:`DATA_RECORD` when present, else
    (a cache written before the record) the count and time range its ``config.json`` records."""
    record = out / DATA_RECORD
    if record.is_file():
        got = json.loads(record.read_text(encoding="utf-8"))
        return None if got.get("sha256") == fp["sha256"] else (
            f"{record} records events sha256 {str(got.get('sha256'))[:12]}..., these are "
            f"{fp['sha256'][:12]}...")
    data = json.loads((out / "config.json").read_text(encoding="utf-8")).get("data") or {}
    diff = [f"{k} {data.get(k)} != {fp[k]}" for k in ("events", "ts_min", "ts_max")
            if data.get(k) != fp[k]]
    return f"its config.json's data differs: {', '.join(diff)}" if diff else None


def train_first_half(data: Path, epochs: int, out: Path, seq_len: int,
                     early: bool = False) -> Path:
    """A DIAM checkpoint trained only on the first half of the prepared stream (time order),
    or with ``early`` on the first half of that, cached: the same arguments on the same events
    reuse the directory (:data:`DATA_RECORD`); a cache trained on other events is refused,
    never reused nor overwritten. ``seq_len``: the network's window in training."""
    return _cached_train(first_half(design_stream(data, early)), data, epochs, out, seq_len,
                         early)


def _cached_train(half, data: Path, epochs: int, out: Path, seq_len: int, early: bool) -> Path:
    fp = half_fingerprint(half)
    if (out / "weights.safetensors").is_file():
        why = cache_mismatch(out, fp)
        if why:
            sys.exit(f"{out}: a cached checkpoint trained on other events than {data}'s first "
                     f"{'quarter' if early else 'half'} ({why}): move it away to retrain")
        return out
    from online_model.checkpoint import save_checkpoint
    from online_model.corpus import corpus_from_prepared
    from online_model.models import ModelConfig
    from online_model.train import Features, TrainConfig, train

    cut = len(half.user_ids)
    corpus = corpus_from_prepared(half)
    mcfg = ModelConfig(model="diam", n_items=corpus.n_items, n_categories=corpus.n_categories,
                       seq_len=seq_len)
    tcfg = TrainConfig(epochs=epochs, lr=1e-2, seed=0, device="auto", threads=1)
    res = train(corpus, mcfg, tcfg, feats=Features.of(corpus), progress=sys.stderr.isatty(),
                log=lambda line: print(line, file=sys.stderr))
    metrics = res.metrics()
    metrics["history"] = res.history
    saved = save_checkpoint(out, res.model, corpus, seed=0, train_metrics=metrics,
                            extra={"split_seed": 0, "cut_events": cut})
    (saved / DATA_RECORD).write_text(json.dumps({"data": str(data), **fp}, indent=2) + "\n",
                                     encoding="utf-8")
    return saved


def cached_first_half(data: Path, epochs: int, seq_len: int | None = None,
                      early: bool = False) -> Path:
    """The benchmark's first-half checkpoint (:func:`train_first_half`), cached under
    ``checkpoints/prequential-diam-half-e<epochs>-L<seq_len>`` (``-quarter-`` with
    ``early``) for the default dataset (``data/ml-100k``), with ``-<events' sha256>`` after it
    for any other ``--data`` (the cache checks its events either way): the one place that
    names it. ``seq_len`` None: the served window (``OnlineConfig.train_seq_len``), as ``diam
    train``."""
    if seq_len is None:
        seq_len = OnlineConfig().train_seq_len("diam")
    part = "quarter" if early else "half"
    name = f"prequential-diam-{part}-e{epochs}-L{seq_len}"
    half = first_half(design_stream(data, early))
    if Path(data).resolve() != (ROOT / "data" / "ml-100k").resolve():
        name += "-" + half_fingerprint(half)["sha256"][:10]
    return _cached_train(half, data, epochs, ROOT / "checkpoints" / name, seq_len, early)


def refuse_leak(ckpt: Path, base: BaseView, ds) -> None:
    """Exit, saying why, unless the checkpoint was trained only on events before the evaluated
    period of ``ds`` (``online_model.prequential.trained_before``, as ``diam evaluate-stream``
    checks): a base that has seen the events it is scored on reports what it learnt."""
    from online_model.prequential import trained_before

    got = trained_before(base.meta.get("config") or {}, ds.ts_ms, WARM_FRAC)
    if got.verdict == "before":
        return
    if got.verdict == "unknown":
        sys.exit(f"{ckpt}: cannot check that it was trained only on events before the cut "
                 f"({got.why})")
    sys.exit(f"{ckpt} was trained on {got.trained_events} events up to {got.trained_until_ms} "
             f"ms, but {ds.name}'s evaluated period starts at event {got.cut} "
             f"({got.cut_ms} ms): it has seen the events it would be scored on")


def with_sets(cfg: OnlineConfig, sets: list[str]) -> OnlineConfig:
    """``cfg`` with ``FIELD=VALUE`` overrides (the ``--set`` options), validated as settings."""
    over = dict(kv.partition("=")[::2] for kv in sets)
    return OnlineConfig(**{**cfg.model_dump(), **over}) if over else cfg


def run(ds, cfg: OnlineConfig, base: BaseView, users: str, arms=ARMS, sweep=()) -> dict:
    t0 = time.perf_counter()
    res = evaluate_stream(ds, cfg, base, warm_frac=WARM_FRAC, users=users, arms=arms, sweep=sweep,
                          progress=sys.stderr.isatty())
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{res['dataset']} ({res['base']}, users={users})\n{format_table(res)}",
          file=sys.stderr)
    for ref, m in res.get("matched", {}).items():
        print(f"at {ref}'s Entropy@20 {m['entropy@20']:.3f} (its Recall@20 {m['recall@20']:.4f}):",
              file=sys.stderr)
        for a, row in m["arms"].items():
            print(f"  {a:<10} {row['recall@20_at_matched_entropy']}  diff CI {row['diff_ci']}",
                  file=sys.stderr)
    return res


SWEEP = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
"""Shifts of the served diversity dial (``aggregate.manual_d``: d_u -> clip(d_u (1 + delta)))
for the fronts: the API's range [-0.5, 0.5] and beyond it, down to d_u = 0 (the merge by
score) and up to twice d_u, so that the arms' fronts overlap in Entropy@20."""


TUNE_GRID = ("1:10", "2:10", "3:10", "4:10", "5:10", "10:10", "3:5")
"""``reanchor_every:infer_items`` pairs for ``--tune`` (0 items: the network's whole window).
The served network is trained on ``infer_items`` (``OnlineConfig.train_seq_len``), so windows
longer than 10 are capped at the network's 10; longer windows are compared with networks trained
on them (``--seq-len``, ``prequential.md``)."""


def head_cost(base: BaseView, reps: int = 300) -> dict[str, float]:
    """µs per inference of the compiled head by history length (best of three), one thread:
    with ``inferences_per_event`` it gives the per-event cost of a cadence."""
    from online_model.signals import SignalState

    rng = np.random.default_rng(0)
    sig = SignalState(base.n_categories).values()
    out = {}
    for n in (5, 10, 20, 50):
        rows = rng.integers(0, len(base.item_ids), n).astype(np.int32)
        base.head.infer(rows, sig)
        out[str(n)] = round(min(timeit.repeat(lambda r=rows: base.head.infer(r, sig),
                                              number=reps, repeat=3)) / reps * 1e6, 1)
    return out


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_name` reads its defaults)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=sized_out_help("prequential", ("epochs",), quick="--quick", beside="its _fronts.png")
        + "; then _early with --early, _TAG with --tag; with --tune: prequential_tune[_quick|_large]"
          "[_TAG].json. --data/--checkpoint/--seq-len/--reanchor-every/--no-synth/--set/--sweep "
          "off their defaults need --tag.",
    )
    ap.add_argument("--quick", action="store_true", help="tuning users only")
    ap.add_argument("--early", action="store_true",
                    help="design on the earlier period: every user's second quarter of the "
                         "stream, on a checkpoint trained on the first quarter (with --quick: "
                         "every user, not only the tuning users) -> *_early*.json")
    ap.add_argument("--tune", action="store_true",
                    help="sweep reanchor_every:infer_items over --grid on the tuning users")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a DIAM checkpoint trained before the cut [default: trained and cached]")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="train the cached checkpoint on windows of this many items "
                         "[default: the served window, OnlineConfig.train_seq_len: 10]")
    ap.add_argument("--reanchor-every", type=int, default=None,
                    help="override the served setting (OnlineConfig.reanchor_every)")
    ap.add_argument("--no-synth", action="store_true", help="skip the synthetic stream")
    ap.add_argument("--grid", default=",".join(map(str, TUNE_GRID)),
                    help="with --tune: reanchor_every:infer_items pairs")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an OnlineConfig field (repeatable), e.g. d_lr=0")
    ap.add_argument("--sweep", default=",".join(map(str, SWEEP)),
                    help="diversity-slider shifts for the Recall@20-Entropy@20 fronts "
                         "('' to skip)")
    ap.add_argument("--tag", default="",
                    help="suffix of the results file (with --tune, or a variant's report)")
    return ap


VARIANTS = ("data", "checkpoint", "seq_len", "reanchor_every", "no_synth", "set", "sweep")
"""Options that change what a reported run measures: without ``--tag`` naming its output such a
run is refused (``provenance.refuse_variant``) rather than overwrite ``prequential.json``."""


def results_name(ap: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The file under ``bench/results`` a run writes: ``provenance.sized_out``'s name (only a
    full run at the default ``--epochs`` writes the committed ``prequential.json`` and its
    ``_fronts.png``), then ``_early`` and ``_TAG``; with ``--tune`` ``prequential_tune``, the
    same size suffix (``--quick`` changes no tuning run), then ``_TAG``."""
    named = bool(args.tag) or args.tune  # a tag names a variant's output; --tune writes its own
    sized = sized_out(ap, args, "prequential", ("epochs",), quick=args.quick and not args.tune,
                      variants=() if named else VARIANTS, named_by="--tag")
    size = sized.stem.removeprefix("prequential")  # "", "_quick" or "_large"
    tag = f"_{args.tag}" if args.tag else ""
    if args.tune:
        return f"prequential_tune{size}{tag}.json"
    return f"prequential{size}{'_early' if args.early else ''}{tag}.json"


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    results_name(ap, args)  # a variant without --tag is refused here, before anything runs
    prov = provenance()  # when and on which code this run starts
    if not args.data.is_dir():
        if args.data.name != "ml-100k":
            sys.exit(f"{args.data}: no such dataset (diam data prepare / diam data synth)")
        from online_model.movielens import prepare_movielens

        prepare_movielens("ml-100k", args.data)
    ckpt = args.checkpoint or cached_first_half(args.data, args.epochs, args.seq_len, args.early)
    base = BaseView.from_checkpoint(ckpt)
    if base.head is None:
        sys.exit(f"{ckpt}: not a DIAM checkpoint with its extractor")
    ds = design_stream(args.data, args.early)
    refuse_leak(ckpt, base, ds)
    cfg = OnlineConfig(dim=base.dim)
    if args.reanchor_every is not None:
        cfg = cfg.model_copy(update={"reanchor_every": args.reanchor_every})
    cfg = with_sets(cfg, args.set)
    tuned_on = ("design run: the earlier period, every user" if args.early else
                "tuning users: a stable 10% by hash of the user id "
                "(online_model.prequential.user_group), disjoint from the reported users; "
                "the re-anchoring trigger (reanchor_every, reanchor_cos, reanchor_explore) and "
                "K_u's up-count with d_u's step (k_hysteresis_up, d_lr) on the earlier period "
                "(--early: every user's second quarter, a first-quarter network)")
    sweep = tuple(float(x) for x in args.sweep.split(",") if x.strip())
    if args.tune:
        rows = {}
        for spec in args.grid.split(","):
            r, _, items = spec.partition(":")
            c = cfg.model_copy(update={"reanchor_every": int(r),
                                       "infer_items": int(items or cfg.infer_items)})
            res = run(ds, c, base, "tune", arms=("guarded", "nosteps", "unguarded"), sweep=sweep)
            rows[spec] = {a: {k: v for k, v in m.items()} for a, m in res["arms"].items()}
            rows[spec]["fronts"] = res.get("fronts", {})
            rows[spec]["inferences_per_event_guarded"] = \
                res["details"]["guarded"]["inferences_per_event"]
            rows[spec]["us_per_apply_guarded"] = res["details"]["guarded"]["us_per_apply"]
        ref = run(ds, cfg, base, "tune", arms=("reinfer", "frozen", "popularity"), sweep=sweep)
        ref_front = ref.get("fronts", {}).get("reinfer")
        if ref_front:  # each cadence against the network's front, at matched Entropy@20
            e_ref = np.array([q["entropy@20"] for q in ref_front])
            r_ref = np.array([q["recall@20"] for q in ref_front])
            e0 = ref["arms"]["reinfer"]["entropy@20"]
            for row in rows.values():
                g = row["fronts"]["guarded"]
                e_g = np.array([q["entropy@20"] for q in g])
                r_g = np.array([q["recall@20"] for q in g])
                m = [float(matched_recall(e_g, r_g, e0)),
                     float(matched_recall(e_ref, r_ref, row["guarded"]["entropy@20"]))]
                # null: the other arm's served entropy lies outside this front
                row["guarded_recall_at_reinfer_entropy"], row["reinfer_recall_at_guarded_entropy"] \
                    = (x if np.isfinite(x) else None for x in m)
        out = {"provenance": prov, "dataset": ds.name, "checkpoint": str(ckpt), "users": "tune",
               "config": cfg.model_dump(), "overrides": args.set,
               "grid": "reanchor_every:infer_items (0: the network's whole window)",
               "cadence": rows, "reference": ref["arms"],
               "reference_fronts": ref.get("fronts", {}),
               "head_us_by_items": head_cost(base)}
        name = results_name(ap, args)
        (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
        return
    # the earlier period is design data for every user; the later one reports its 90%
    users = "all" if args.early else "tune" if args.quick else "report"
    res = run(ds, cfg, base, users, sweep=sweep)
    res.update({"provenance": prov, "base": "diam", "merge": "aggregate", "tuned_on": tuned_on,
                "checkpoint": {"path": str(ckpt), "trained_on": f"the first "
                               f"{'quarter' if args.early else 'half'} of the events "
                               "in time (users split 80/10/10 by seed 0), "
                               f"{args.epochs} epochs, windows of "
                               f"{base.head.seq_len} items"}})
    res["cost"] = apply_cost(ds, base, cfg, 2_000 if args.quick else 5_000)
    if not args.no_synth:
        res["synthetic_recovery"] = synthetic_recovery(args.quick, cfg)
    name = results_name(ap, args)
    (RESULTS / name).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    if res.get("fronts"):
        plot_fronts(res, RESULTS / name.replace(".json", "_fronts.png"))
    print(json.dumps({"dataset": res["dataset"], "arms": res["arms"],
                      "synthetic_recovery": res.get("synthetic_recovery")}, indent=2))


def plot_fronts(res: dict, path: Path) -> None:
    """Each model arm's Recall@20-Entropy@20 front (the dial's shifts), its served point
    circled, and popularity and frozen as single points: where the arms stand at matched
    diversity, which the served points alone do not show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, front in res.get("fronts", {}).items():
        e = [q["entropy@20"] for q in front]
        r = [q["recall@20"] for q in front]
        (line,) = ax.plot(e, r, marker=".", label=arm)
        served = res["arms"][arm]
        ax.plot(served["entropy@20"], served["recall@20"], "o", mfc="none", ms=10,
                color=line.get_color())
    for arm in ("popularity", "frozen"):
        if arm in res["arms"]:
            row = res["arms"][arm]
            ax.plot(row["entropy@20"], row["recall@20"], "x", label=arm)
    ax.set_xlabel("Entropy@20 (nats)")
    ax.set_ylabel("Recall@20")
    users = res.get("protocol", {}).get("users", "")
    ax.set_title(f"Prequential fronts over the diversity dial ({users} users; circles: served)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def synthetic_recovery(quick: bool, cfg: OnlineConfig | None = None) -> dict:
    """The streaming learner's K_u and d_u at the end of a synthetic stream with planted truth,
    against the truth, on a DIAM checkpoint trained on the first half of that stream."""
    from scipy.stats import spearmanr

    from online_model.synth import SynthParams, write_synth

    p = (SynthParams(users=600, items=1_500, events_per_user=40.0, seed=0) if quick
         else SynthParams(users=1_500, items=2_500, events_per_user=50.0, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        d = write_synth(p, Path(tmp) / "synth")
        seq_len = (cfg or OnlineConfig()).train_seq_len("diam")
        ck = train_first_half(d, 3, ROOT / "checkpoints" / (
            f"prequential-synth-{p.users}-{p.items}-{p.seed}-half-e3-L{seq_len}"), seq_len)
        base = BaseView.from_checkpoint(ck)
        ds = load_prepared(d)
        cfg = (cfg or OnlineConfig()).model_copy(update={"dim": base.dim})
        learner = OnlineLearner(base, cfg)
        states: dict = {}
        for off, (u, i, t) in enumerate(zip(ds.user_ids.tolist(), ds.item_ids.tolist(),
                                            ds.ts_ms.tolist(), strict=True)):
            st = states.get(u)
            if st is None:
                st = states[u] = learner.new_state(u)
            learner.apply(st, i, t, off)
        truth = ds.truth or {}
        us = [u for u in states if u in truth and states[u].anchored]
        k_hat = np.array([states[u].k for u in us])
        k_true = np.array([truth[u][0] for u in us])
        d_hat = np.array([states[u].d for u in us])
        d_true = np.array([truth[u][1] for u in us])
        return {
            "users": len(us),
            "k_exact": float(np.mean(k_hat == k_true)),
            "k_within_1": float(np.mean(np.abs(k_hat - k_true) <= 1)),
            "k_spearman": float(spearmanr(k_hat, k_true).statistic),
            "d_spearman": float(spearmanr(d_hat, d_true).statistic),
            "stream": f"{p.users} users, {p.items} items, {p.events_per_user} events per user",
            "checkpoint": "DIAM trained 3 epochs on the first half of the synthetic stream, "
                          f"windows of {seq_len} items",
        }


if __name__ == "__main__":
    main()
