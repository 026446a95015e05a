"""The step-size grid of ``prequential.md`` ("Step sizes for the served cadence"), on the tuning
users: one ``python bench/prequential.py --quick --no-synth --tag st-<name> --set ...`` run per
variant, folded into ``bench/results/prequential_tune_steps.json`` (each variant keeps its
command; the per-run JSONs are removed once folded).

Run: ``python bench/prequential_steps.py [--only NAME ...]`` (about a minute per variant).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "prequential_tune_steps.json"

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr1": ["lr=1.0"],
    "lr01": ["lr=0.1"],
    "dcap2": ["drift_cap=2.0"],
    "scap1": ["step_cap=1.0", "drift_cap=2.0", "lr=1.0"],
    "lr3": ["lr=3.0", "step_cap=2.0", "drift_cap=3.0", "trust_radius=3.0"],
    "temp05": ["temperature=0.5"],
    "neg64": ["n_negatives=64"],
    "dlr0": ["d_lr=0"],
    "dlr03": ["d_lr=0.3"],
    "nores": ["reanchor_residual=false"],
}
"""Variant name -> ``OnlineConfig`` fields set (``--set FIELD=VALUE``); ``base`` is served."""


def fold(sets: list[str], cmd: list[str], res: dict) -> dict:
    """One variant's row: guarded at its served point, reinfer at guarded's Entropy@20."""
    g = res["arms"]["guarded"]
    m = res["matched"]["guarded"]["arms"]["reinfer"]
    front = [[p["entropy@20"], p["recall@20"]] for p in res["fronts"]["guarded"]]
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "set": sets,
        "guarded_recall@20": g["recall@20"],
        "guarded_entropy@20": g["entropy@20"],
        "reinfer_recall@20_at_guarded_entropy": m["recall@20_at_matched_entropy"],
        "reinfer_minus_guarded_ci": m["diff_ci"],
        "guarded_front_max_entropy@20": max(e for e, _ in front),
        "guarded_front": front,
        "mean_drift": g["mean_drift"],
        "k_changes_per_1k": g["k_changes_per_1k"],
        "mean_d_at_end": res["details"]["guarded"]["mean_d_at_end"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    args = ap.parse_args(argv)
    names = args.only or list(VARIANTS)
    out = json.loads(OUT.read_text()) if OUT.is_file() and args.only else {"variants": {}}
    for name in names:
        sets = VARIANTS[name]
        tag = f"st-{name}"
        cmd = [sys.executable, "bench/prequential.py", "--quick", "--no-synth", "--tag", tag]
        for s in sets:
            cmd += ["--set", s]
        print(f"[{name}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        path = RESULTS / f"prequential_quick_{tag}.json"
        res = json.loads(path.read_text())
        out["variants"][name] = fold(sets, cmd, res)
        for p in (path, path.with_name(path.stem + "_fronts.png")):
            p.unlink(missing_ok=True)
        if name == "base":
            r = res["arms"]["reinfer"]
            out.update({
                "users": "tune", "dataset": res["dataset"],
                "served": "reanchor_every 3, infer_items 10, the other OnlineConfig defaults",
                "checkpoint": res["checkpoint"],
                "reinfer": {"recall@20": r["recall@20"], "entropy@20": r["entropy@20"],
                            "front": [[p["entropy@20"], p["recall@20"]]
                                      for p in res["fronts"]["reinfer"]]},
                "nosteps": {k: res["arms"]["nosteps"][k] for k in ("recall@20", "entropy@20")},
            })
        OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: {"recall@20": v["guarded_recall@20"],
                          "entropy@20": v["guarded_entropy@20"]}
                      for k, v in out["variants"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
