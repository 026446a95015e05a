"""Prequential (test-then-train) evaluation of the online learner: frozen vs guarded vs unguarded.

Writes ``bench/results/prequential.json`` (ml-100k) and ``bench/results/prequential_synth.json``
(a synthetic stream with planted interests), each shaped
``{"dataset", "arms": {"frozen"|"guarded"|"unguarded": {"recall@20", "ndcg@20", "entropy@20",
"k_changes_per_1k", "mean_drift"}}, ...}`` plus the protocol, the base used, per-arm details and
the per-event cost of ``OnlineLearner.apply`` (with the cost of one tiny numpy call measured in
the same run, so the figure can be read on a loaded machine).

Run: ``python bench/prequential.py [--quick] [--data data/ml-100k] [--checkpoint DIR]``.
``--quick`` evaluates a stable 10% of the users (users are independent, so it is an exact
subset, not an approximation) and a smaller synthetic stream.
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

from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.online import OnlineLearner  # noqa: E402
from online_model.prequential import evaluate_stream, format_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"


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


def run(
    ds, cfg: OnlineConfig, base: BaseView | None, user_fraction: float, cost_events: int, out: Path
) -> dict:
    t0 = time.perf_counter()
    res = evaluate_stream(ds, cfg, base, user_fraction=user_fraction, progress=sys.stderr.isatty())
    res["seconds"] = round(time.perf_counter() - t0, 1)
    cost_base = base or BaseView.from_events(ds, dim=cfg.dim, upto=len(ds.user_ids) // 2)
    res["cost"] = apply_cost(ds, cost_base, cfg, min(cost_events, len(ds.user_ids)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"{res['dataset']} ({res['base']})\n{format_table(res)}", file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="10%% of users, small synthetic stream")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--no-synth", action="store_true", help="skip the synthetic stream")
    args = ap.parse_args()
    cfg = OnlineConfig()
    frac = 0.1 if args.quick else 1.0
    if not args.data.is_dir():
        if args.data.name != "ml-100k":
            sys.exit(f"{args.data}: no such dataset (diam data prepare / diam data synth)")
        from online_model.movielens import prepare_movielens

        prepare_movielens("ml-100k", args.data)
    base = BaseView.from_checkpoint(args.checkpoint) if args.checkpoint else None
    report = {
        "ml": run(
            load_prepared(args.data),
            cfg,
            base,
            frac,
            5_000 if args.quick else 20_000,
            RESULTS / "prequential.json",
        )
    }
    if not args.no_synth:
        from online_model.synth import SynthParams, write_synth

        p = (
            SynthParams(users=1_000, items=2_000, events_per_user=40.0, seed=0)
            if args.quick
            else SynthParams(users=2_000, items=3_000, events_per_user=50.0, seed=0)
        )
        with tempfile.TemporaryDirectory() as tmp:
            ds = load_prepared(write_synth(p, Path(tmp) / "synth"))
            report["synth"] = run(ds, cfg, None, frac, 5_000, RESULTS / "prequential_synth.json")
    print(
        json.dumps(
            {k: {"dataset": v["dataset"], "arms": v["arms"]} for k, v in report.items()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
