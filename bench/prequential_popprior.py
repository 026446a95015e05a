"""Exploration, not a served path: does a live item-popularity term added to DIAM's scores
raise Recall@20 at matched Entropy@20?

The network is frozen at the cut, so it cannot know which items become popular after it; a
feed could learn that online from every user's clicks. This script adds
``beta * z(log1p(1000 * pop / max(pop)))`` to every item's inner product with every interest
in the prequential evaluation's exact search, where ``pop`` is a click count over all users
decayed by event (half-life ``--half-life`` events: every user's, as the popularity arm's
count) and ``z`` standardises over items; it is refreshed every 100 events (``--freeze``: only
until the cut, a snapshot-time prior), at the first scored user's event after each 100th. Arms
``reinfer`` and ``guarded``, the served aggregator and its diversity sweep, on the tuning users
(default) or the earlier period (``--early``, every user): the reported users are not read.

The term is not in serving (``serving_cache`` searches the snapshot's FAISS index with the
interest vectors alone), so it is added here by wrapping the evaluation's search and the
learner's ``apply`` (which sees every event once per arm, in order); a result here is a lead,
not a result of the served system.

    OPENBLAS_NUM_THREADS=1 python bench/prequential_popprior.py --betas 0,0.2,0.5
    OPENBLAS_NUM_THREADS=1 python bench/prequential_popprior.py --early --betas 0,0.2
    OPENBLAS_NUM_THREADS=1 python bench/prequential_popprior.py --early --betas 0.2 --freeze
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prequential import (  # noqa: E402
    SWEEP,
    at_reference_entropy,
    exploration_args,
    exploration_inputs,
    exploration_row,
)

import online_model.prequential as P  # noqa: E402
from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.online import OnlineLearner  # noqa: E402


def run(ds, base: BaseView, beta: float, half_life: float, freeze: bool, users: str) -> dict:
    """One evaluation with the popularity term at ``beta`` (0: the served scores)."""
    n_items = len(base.item_ids)
    cut = len(ds.user_ids) // 2
    pop = np.zeros(n_items)
    bias = np.zeros(n_items, np.float32)
    grow = math.log(2.0) / half_life
    rows = [base.index_of(x) for x in np.asarray(ds.item_ids).astype(str).tolist()]
    seen = {"next": 0, "scale": 1.0}  # the next event of the stream to count
    plain_apply, plain_search = OnlineLearner.apply, P.exact_search

    def apply(self, st, item, ts, off):  # type: ignore[no-untyped-def]
        # the evaluation calls apply for the kept users' events only: every event of the
        # stream up to this one is counted here (all users, as the popularity arm), and the
        # term refreshed at each 100th, so it lags by the events since the last kept one
        while seen["next"] <= off:
            e = seen["next"]
            seen["next"] = e + 1
            r = rows[e]
            if r >= 0:
                pop[r] += seen["scale"]
                seen["scale"] *= math.exp(grow)
                if seen["scale"] > 1e100:
                    pop[:] /= seen["scale"]
                    seen["scale"] = 1.0
            if beta and e % 100 == 0 and not (freeze and e > cut):
                p = np.log1p(pop / max(pop.max(), 1e-12) * 1000.0)
                bias[:] = beta * (p - p.mean()) / (p.std() + 1e-9)
        return plain_apply(self, st, item, ts, off)

    def exact_search(item_emb, usable):  # type: ignore[no-untyped-def]
        return plain_search(item_emb, usable, bias if beta else None)  # the live term, read per search

    OnlineLearner.apply, P.exact_search = apply, exact_search  # type: ignore[method-assign]
    try:
        res = P.evaluate_stream(ds, OnlineConfig(dim=base.dim), base, users=users,
                                arms=("reinfer", "guarded"), sweep=SWEEP)
    finally:
        OnlineLearner.apply, P.exact_search = plain_apply, plain_search  # type: ignore[method-assign]
    return exploration_row(res)


def main() -> None:
    ap = exploration_args(__doc__)
    ap.add_argument("--betas", default="0,0.2", help="weights of the term (0 first: the reference)")
    ap.add_argument("--half-life", type=float, default=5000.0, help="events")
    ap.add_argument("--freeze", action="store_true", help="the term as of the cut, never refreshed")
    args = ap.parse_args()
    prov, base, ds, users = exploration_inputs(args)
    betas = [float(b) for b in args.betas.split(",")]
    if 0.0 not in betas:
        betas = [0.0, *betas]
    rows = {}
    for b in betas:
        rows[str(b)] = run(ds, base, b, args.half_life, args.freeze, users)
        print(f"beta {b}: " + ", ".join(f"{a} {m['recall@20']:.4f} at {m['entropy@20']:.3f}"
                                        for a, m in rows[str(b)]["arms"].items()), file=sys.stderr)
    e0 = at_reference_entropy(rows, "0.0")  # each arm at the served reinfer's Entropy@20, beta 0
    out = {"provenance": prov, "what": "exploration: a live popularity term in the scores, "
           "not served", "users": ("earlier period, every user" if args.early else "tuning users"),
           "half_life_events": args.half_life, "freeze_at_cut": args.freeze,
           "reference_entropy@20": e0, "betas": rows}
    path = args.out or ROOT / "bench" / "results" / (
        f"prequential_popprior{'_early' if args.early else ''}{'_freeze' if args.freeze else ''}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({b: r["recall@20_at_reference_entropy"] for b, r in rows.items()}))


if __name__ == "__main__":
    main()
