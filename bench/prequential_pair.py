"""Two served configurations (two DIAM checkpoints, or one with two sets of online settings),
compared paired on the same users and events.

The served arm (``guarded``, the stream's settings) runs the prequential protocol of
``bench/prequential.py`` on the reported users once per checkpoint; each user's Recall@20 hits
and scored events are kept (``evaluate_stream(per_user=True)``), and the difference B − A gets
a bootstrap interval over users, paired (``online_model.prequential.bootstrap_ci``).

Default pair: the 50-item network and the one trained on the served 10-item window, both the
benchmark's cached first-half checkpoints, with the served settings; ``--set-a``/``--set-b``
override ``OnlineConfig`` fields on one side (e.g. two re-anchoring cadences on one network).
Writes ``bench/results/prequential_pair_<tag>.json``.

Run: ``python bench/prequential_pair.py [--seq-len-a 50] [--seq-len-b 10] [--set-b
reanchor_every=2] [--users tune] [--tag seq10]``.
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
sys.path.insert(0, str(ROOT / "bench"))
from prequential import cached_first_half, with_sets  # noqa: E402
from provenance import provenance  # noqa: E402

from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.datasets import load_prepared  # noqa: E402
from online_model.prequential import bootstrap_ci, evaluate_stream  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Writes bench/results/prequential_pair_TAG.json.")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seq-len-a", type=int, default=50)
    ap.add_argument("--seq-len-b", type=int, default=10)
    ap.add_argument("--set-a", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an OnlineConfig field on side A (repeatable)")
    ap.add_argument("--set-b", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an OnlineConfig field on side B (repeatable)")
    ap.add_argument("--users", default="report", choices=["report", "tune"])
    ap.add_argument("--tag", default="seq10")
    args = ap.parse_args()
    prov = provenance()  # when and on which code this run starts
    ds = load_prepared(args.data)
    runs = {}
    for side, L, sets in (("a", args.seq_len_a, args.set_a), ("b", args.seq_len_b, args.set_b)):
        ck = cached_first_half(args.data, args.epochs, L)
        base = BaseView.from_checkpoint(ck)
        cfg = with_sets(OnlineConfig(dim=base.dim), sets)
        t0 = time.perf_counter()
        res = evaluate_stream(ds, cfg, base, users=args.users, arms=("guarded",), per_user=True)
        runs[side] = {"seq_len": L, "checkpoint": str(ck), "set": sets, "res": res,
                      "seconds": round(time.perf_counter() - t0, 1)}
        g = res["arms"]["guarded"]
        print(f"{side}: seq_len {L}: Recall@20 {g['recall@20']:.4f} Entropy@20 "
              f"{g['entropy@20']:.3f}", file=sys.stderr)
    pa, pb = (runs[s]["res"]["per_user"]["guarded"] for s in ("a", "b"))
    if pa["users"] != pb["users"] or pa["n"] != pb["n"]:
        sys.exit("the two runs scored different users or events: no paired comparison")
    ha, hb, n = np.array(pa["hits"]), np.array(pb["hits"]), np.array(pa["n"])
    ra, rb = ha.sum() / n.sum(), hb.sum() / n.sum()
    lo, hi = bootstrap_ci(hb, n, ref=ha)
    out = {
        "dataset": ds.name, "users": args.users, "arm": "guarded (the served settings)",
        "config": OnlineConfig().model_dump(),
        "a": {k: v for k, v in runs["a"].items() if k != "res"}
        | {m: runs["a"]["res"]["arms"]["guarded"][m] for m in ("recall@20", "entropy@20",
                                                                "k_changes_per_1k")},
        "b": {k: v for k, v in runs["b"].items() if k != "res"}
        | {m: runs["b"]["res"]["arms"]["guarded"][m] for m in ("recall@20", "entropy@20",
                                                                "k_changes_per_1k")},
        "users_evaluated": len(n), "events_scored": int(n.sum()),
        "recall@20_b_minus_a": float(rb - ra), "recall@20_b_over_a": float(rb / ra - 1),
        "recall@20_b_minus_a_ci": [lo, hi],
        "ci": "95% bootstrap over users (2000 resamples), paired: the same users' hits",
        "command": "python bench/prequential_pair.py " + " ".join(sys.argv[1:]),
    }
    out = {"provenance": prov, **out}
    (RESULTS / f"prequential_pair_{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
