"""Exploration, not a served path: do the online step's negatives drawn by item popularity
(instead of uniformly) make the steps add more over the network?

The step is a sampled softmax over the click and 16 negatives drawn uniformly from the items
the base can embed (``online_model.routing.NegativeTable``). Uniform negatives are mostly
items nobody clicks, so the step is nearly a pull toward the click; negatives drawn in
proportion to ``(count + 1) ** alpha`` (``count``: the checkpoint's training clicks,
``item_pop.npy``, known at the cut; word2vec's 0.75 sits between the two alphas tried) push the
interest away from the popular items the user did not click, a step the network's window does
not take. This script swaps the learner's negative table for such a table (the same size,
seed and window rule) and runs the arms ``reinfer`` (no steps: unchanged, the reference),
``nosteps`` and ``guarded`` with the served aggregator and its diversity sweep, on the tuning
users (default) or the earlier period (``--early``, every user): the reported users are not
read. A result here is a lead, not a result of the served system.

    OPENBLAS_NUM_THREADS=1 python bench/prequential_popneg.py --early --alphas 0,0.5,1
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prequential import (  # noqa: E402
    SWEEP,
    at_reference_entropy,
    cached_first_half,
    exploration_args,
    exploration_inputs,
    exploration_row,
)

import online_model.online as O  # noqa: E402
import online_model.prequential as P  # noqa: E402
from online_model.checkpoint import read_checkpoint  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402


def popularity_table(count: np.ndarray, alpha: float) -> type:
    """A drop-in for ``NegativeTable`` whose draws follow ``(count[row] + 1) ** alpha``."""
    plain = O.NegativeTable

    class PopularTable:
        def __init__(self, rows: np.ndarray, size: int = 1 << 16, seed: int = 0x5EED) -> None:
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) == 0 or alpha == 0.0:
                self.table = plain(rows, size, seed).table
                return
            w = (count[rows].astype(np.float64) + 1.0) ** alpha
            self.table = rows[np.random.default_rng(seed).choice(len(rows), size, p=w / w.sum())]

    return PopularTable


def run(ds, base, count: np.ndarray, alpha: float, users: str) -> dict:  # type: ignore[no-untyped-def]
    """One evaluation with the step's negatives drawn at ``alpha`` (0: the served table)."""
    plain = O.NegativeTable
    O.NegativeTable = popularity_table(count, alpha)  # type: ignore[misc]
    try:
        res = P.evaluate_stream(ds, OnlineConfig(dim=base.dim), base, users=users,
                                arms=("reinfer", "nosteps", "guarded"), sweep=SWEEP)
    finally:
        O.NegativeTable = plain  # type: ignore[misc]
    return exploration_row(res)


def main() -> None:
    ap = exploration_args(__doc__)
    ap.add_argument("--alphas", default="0,0.5,1",
                    help="exponents of the popularity (0 first: the served uniform table)")
    args = ap.parse_args()
    prov, base, ds, users = exploration_inputs(args)
    ck = read_checkpoint(cached_first_half(args.data, 4, None, args.early))
    if ck.item_pop is None:
        raise SystemExit("Error: the checkpoint has no item_pop.npy")
    count = np.asarray(ck.item_pop, dtype=np.float64)
    if len(count) != len(base.item_ids):
        raise SystemExit(f"Error: item_pop has {len(count)} rows, the base {len(base.item_ids)}")
    alphas = [float(a) for a in args.alphas.split(",")]
    if 0.0 not in alphas:
        alphas = [0.0, *alphas]
    rows = {}
    for a in alphas:
        rows[str(a)] = run(ds, base, count, a, users)
        print(f"alpha {a}: " + ", ".join(f"{k} {m['recall@20']:.4f} at {m['entropy@20']:.3f}"
                                         for k, m in rows[str(a)]["arms"].items()),
              file=sys.stderr)
    e0 = at_reference_entropy(rows, "0.0")  # each arm at reinfer's Entropy@20, alpha 0
    out = {"provenance": prov, "what": "exploration: the online step's negatives drawn by "
           "training popularity ** alpha, not served",
           "users": ("earlier period, every user" if args.early else "tuning users"),
           "reference_entropy@20": e0, "alphas": rows}
    path = args.out or ROOT / "bench" / "results" / (
        f"prequential_popneg{'_early' if args.early else ''}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({a: r["recall@20_at_reference_entropy"] for a, r in rows.items()}))


if __name__ == "__main__":
    main()
