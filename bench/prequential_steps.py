"""Grids of ``prequential.md`` on the tuning users, one ``python bench/prequential.py --quick
--no-synth --tag st-<name> ...`` (``window-<name>``) run per variant, folded into one JSON
(each variant keeps its command; the per-run JSONs are removed once folded):

- ``steps`` ("Step sizes for the served cadence"): ``OnlineConfig`` fields set on the served
  network -> ``bench/results/prequential_tune_steps.json``;
- ``window`` ("The network's window"): a network trained on I items (``--seq-len``) and run by
  the stream on its whole window (``infer_items`` I), for I in 5, 10 (served), 20, 50 ->
  ``bench/results/prequential_tune_window.json``.

Each row also gives guarded's front at a few common Entropy@20 values (null where the front
does not reach), the comparison that settles a trade-off between recall and diversity.

Run: ``python bench/prequential_steps.py [--grid steps|window] [--only NAME ...]`` (about a
minute per variant, plus training a network the first time a window is asked for).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
from provenance import provenance  # noqa: E402

from online_model.prequential import matched_recall  # noqa: E402

CADENCE3 = ["reanchor_every=3", "reanchor_cos=-1"]
"""The re-anchoring served before the trigger (every 3 events, no trigger): the rows below
that do not set their own were measured on it, when it was the default."""

NO_SETTLE = "k_settle_items=0"
"""The gate-margin rows were measured before the settling window was chosen."""

OLD_GATE = [*CADENCE3, "k_gate_margin=0", "k_hysteresis=4"]
PREVIOUS = [*OLD_GATE, NO_SETTLE]
"""The K_u rule served before the gate margin: the rows that explore the steps, re-anchoring
and K_u's hysteresis were measured on it (and reproduce with it set)."""

STEPS: dict[str, list[str]] = {
    "base": [],
    "c3": CADENCE3,
    "served_before": PREVIOUS,
    "res": [*PREVIOUS, "reanchor_residual=true"],
    "res_keep05": [*PREVIOUS, "reanchor_residual=true", "reanchor_keep=0.5"],
    "res_keep0": [*PREVIOUS, "reanchor_residual=true", "reanchor_keep=0"],
    "lr1": [*PREVIOUS, "lr=1.0"],
    "lr01": [*PREVIOUS, "lr=0.1"],
    "dcap2": [*PREVIOUS, "drift_cap=2.0"],
    "scap1": [*PREVIOUS, "step_cap=1.0", "drift_cap=2.0", "lr=1.0"],
    "lr3": [*PREVIOUS, "lr=3.0", "step_cap=2.0", "drift_cap=3.0", "trust_radius=3.0"],
    "temp05": [*PREVIOUS, "temperature=0.5"],
    "neg64": [*PREVIOUS, "n_negatives=64"],
    "dlr0": [*PREVIOUS, "d_lr=0"],
    "dlr03": [*PREVIOUS, "d_lr=0.3"],
    "ortho01": [*PREVIOUS, "ortho_threshold=0.1", "ortho_margin=0.0"],
    "khyst2": [*CADENCE3, "k_gate_margin=0", "k_hysteresis=2", NO_SETTLE],
    "ksettle10": [*OLD_GATE, "k_settle_items=10"],
    "ksettle20": [*OLD_GATE, "k_settle_items=20"],
    # K_u rising faster than it falls
    "kup1": [*PREVIOUS, "k_hysteresis_up=1"],
    "kup2": [*PREVIOUS, "k_hysteresis_up=2"],
    "kup1_down8": [*CADENCE3, "k_gate_margin=0", "k_hysteresis_up=1", "k_hysteresis=8", NO_SETTLE],
    "kup2_down8": [*CADENCE3, "k_gate_margin=0", "k_hysteresis_up=2", "k_hysteresis=8", NO_SETTLE],
    # the gate's margin (a Schmitt trigger) with shorter hysteresis (gm50_h3 was chosen), then
    # K_u free of both until the window holds 10 (served) or 20 known items
    "gm25": [*CADENCE3, "k_gate_margin=0.25", "k_hysteresis=4", NO_SETTLE],
    "gm25_h2": [*CADENCE3, "k_gate_margin=0.25", "k_hysteresis=2", NO_SETTLE],
    "gm50_h1": [*CADENCE3, "k_gate_margin=0.5", "k_hysteresis=1", NO_SETTLE],
    "gm50_h2": [*CADENCE3, "k_gate_margin=0.5", "k_hysteresis=2", NO_SETTLE],
    "gm50_h3": [*CADENCE3, "k_gate_margin=0.5", "k_hysteresis=3", NO_SETTLE],
    "gm75_h1": [*CADENCE3, "k_gate_margin=0.75", "k_hysteresis=1", NO_SETTLE],
    "gm75_h2": [*CADENCE3, "k_gate_margin=0.75", "k_hysteresis=2", NO_SETTLE],
    "settle20": [*CADENCE3, "k_settle_items=20"],
    # the network on every event (its steps discarded at each re-run), and on every 1, 2 or 3
    # events with the steps' offsets carried across re-runs (the residual), in whole or half
    "c1": ["reanchor_every=1", "reanchor_cos=-1"],
    "c1_res": ["reanchor_every=1", "reanchor_cos=-1", "reanchor_residual=true"],
    "c1_res05": ["reanchor_every=1", "reanchor_cos=-1", "reanchor_residual=true",
                 "reanchor_keep=0.5"],
    "c2_res": ["reanchor_every=2", "reanchor_cos=-1", "reanchor_residual=true"],
    "c3_res": [*CADENCE3, "reanchor_residual=true"],
    # the network also at once on a click its routed interest explains poorly (cosine below)
    "cos00": ["reanchor_every=3", "reanchor_cos=0.0"],
    "cos02": ["reanchor_every=3", "reanchor_cos=0.2"],
    "cos04": ["reanchor_every=3", "reanchor_cos=0.4"],
    "c4_cos02": ["reanchor_every=4", "reanchor_cos=0.2"],
    "c4_cos04": ["reanchor_every=4", "reanchor_cos=0.4"],
    "c6_cos04": ["reanchor_every=6", "reanchor_cos=0.4"],
    "c4_cos05": ["reanchor_every=4", "reanchor_cos=0.5"],
    "c6_cos05": ["reanchor_every=6", "reanchor_cos=0.5"],
    "c8_cos04": ["reanchor_every=8", "reanchor_cos=0.4"],
    "c6_cos03": ["reanchor_every=6", "reanchor_cos=0.3"],
    # the uniform cadence at about the trigger's number of runs: is the targeting worth it?
    "c2": ["reanchor_every=2", "reanchor_cos=-1"],
    # on the served trigger: interests pushed apart from cosine 0.3 instead of 0.5 between
    # runs of the network (the steps pull them toward the clicks), for Entropy@20
    "ortho_m0": ["ortho_margin=0"],
    # on the served trigger: the network also at once on an exploring click (a category none
    # of the last 20 clicks had), where the interests should widen: for Entropy@20
    "c6_exp": ["reanchor_explore=true"],
    "c8_exp": ["reanchor_every=8", "reanchor_explore=true"],
    # with the exploring-click trigger: a lower cosine threshold, for fewer runs of the network
    # per event (the learner's largest cost) at the served quality?
    "c6_cos03_exp": ["reanchor_cos=0.3", "reanchor_explore=true"],
    "c6_cos035_exp": ["reanchor_cos=0.35", "reanchor_explore=true"],
}
"""Variant name -> ``OnlineConfig`` fields set (``--set FIELD=VALUE``); ``base`` was served
when measured (the cosine trigger; ``c3`` was served before it)."""

NO_EXPLORE = "reanchor_explore=false"
"""Every row but the exploring-click ones was measured before that trigger was served: they
reproduce with it off. ``c6_exp`` is the served re-anchoring since."""
EXPLORING = ("c6_exp", "c8_exp", "c6_cos03_exp", "c6_cos035_exp")
STEPS = {k: (v if k in EXPLORING else [*v, NO_EXPLORE]) for k, v in STEPS.items()}


def _before_dec4(sets: list[str]) -> list[str]:
    """Every row was measured before 2026-12-04 23:35 UTC, when ``d_lr`` 0.1 and K_u's one
    count both ways (``k_hysteresis_up`` None: the row's ``k_hysteresis``) were served: the
    rows reproduce with both set, unless they set their own."""
    own = {kv.partition("=")[0] for kv in sets}
    hyst = next((kv.partition("=")[2] for kv in sets if kv.startswith("k_hysteresis=")), "3")
    return [*sets, *(() if "d_lr" in own else ("d_lr=0.1",)),
            *(() if "k_hysteresis_up" in own else (f"k_hysteresis_up={hyst}",))]


STEPS = {k: _before_dec4(v) for k, v in STEPS.items()}

_WIN3 = [a for kv in CADENCE3 for a in ("--set", kv)]
_OFF = [a for kv in _before_dec4([NO_EXPLORE]) for a in ("--set", kv)]
WINDOW: dict[str, list[str]] = {
    "w10": [*_WIN3, *_OFF],
    "w5": [*_WIN3, "--seq-len", "5", "--set", "infer_items=5", *_OFF],
    "w20": [*_WIN3, "--seq-len", "20", "--set", "infer_items=20", *_OFF],
    "w50": [*_WIN3, "--seq-len", "50", "--set", "infer_items=50", *_OFF],
}
"""Variant name -> ``bench/prequential.py`` arguments; ``w10`` is the served window (10
items); all at the cadence served when they ran (:data:`CADENCE3`)."""

GRIDS = {"steps": (STEPS, RESULTS / "prequential_tune_steps.json"),
         "window": (WINDOW, RESULTS / "prequential_tune_window.json")}

AT_ENTROPY = (1.7, 1.8, 1.9, 2.0)
"""Common Entropy@20 values at which every row reads guarded's front."""


def fold(sets: list[str], cmd: list[str], res: dict) -> dict:
    """One variant's row: guarded at its served point, reinfer at guarded's Entropy@20,
    guarded's front at :data:`AT_ENTROPY`."""
    g = res["arms"]["guarded"]
    m = res["matched"]["guarded"]["arms"]["reinfer"]
    front = [[p["entropy@20"], p["recall@20"]] for p in res["fronts"]["guarded"]]
    e, r = (np.array(x) for x in zip(*front, strict=True))
    at = {f"{t:.1f}": float(matched_recall(e, r, t)) for t in AT_ENTROPY}
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "set": sets,
        "guarded_recall@20": g["recall@20"],
        "guarded_entropy@20": g["entropy@20"],
        "reinfer_recall@20_at_guarded_entropy": m["recall@20_at_matched_entropy"],
        "reinfer_minus_guarded_ci": m["diff_ci"],
        "guarded_front_max_entropy@20": max(e for e, _ in front),
        "guarded_front": front,
        "guarded_recall@20_at_entropy": {k: (v if np.isfinite(v) else None)
                                         for k, v in at.items()},
        "k_u_mean_at_end": res["details"]["guarded"]["mean_k_at_end"],
        "mean_drift": g["mean_drift"],
        "k_changes_per_1k": g["k_changes_per_1k"],
        "mean_d_at_end": res["details"]["guarded"]["mean_d_at_end"],
        "inferences_per_event": res["details"]["guarded"]["inferences_per_event"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes bench/results/prequential_tune_steps.json (--grid window: "
               "prequential_tune_window.json; _early with --early).")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="steps")
    ap.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    ap.add_argument("--early", action="store_true",
                    help="on the earlier period, every user (bench/prequential.py --early), "
                         "into *_early.json")
    args = ap.parse_args(argv)
    prov = provenance()  # when and on which code this run starts
    variants, out_path = GRIDS[args.grid]
    if args.early:
        out_path = out_path.with_name(out_path.stem + "_early.json")
    names = args.only or list(variants)
    out = (json.loads(out_path.read_text()) if out_path.is_file() and args.only
           else {"variants": {}})
    for name in names:
        sets = variants[name]
        tag = f"st-{name}" if args.grid == "steps" else f"{args.grid}-{name}"
        cmd = [sys.executable, "bench/prequential.py", "--quick", "--no-synth", "--tag", tag,
               *(["--early"] if args.early else [])]
        if args.grid == "steps":
            for s in sets:
                cmd += ["--set", s]
        else:
            cmd += sets
        print(f"[{name}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        path = RESULTS / f"prequential_quick{'_early' if args.early else ''}_{tag}.json"
        res = json.loads(path.read_text())
        out["variants"][name] = fold(sets, cmd, res)
        for p in (path, path.with_name(path.stem + "_fronts.png")):
            p.unlink(missing_ok=True)
        if name in ("base", "w10"):
            r = res["arms"]["reinfer"]
            out.update({
                "users": "all, the earlier period" if args.early else "tune",
                "dataset": res["dataset"],
                "served": "the OnlineConfig defaults but reanchor_explore off "
                          "(reanchor_every 6, reanchor_cos 0.4, "
                          "infer_items 10, reanchor_residual off, k_gate_margin 0.5, "
                          "k_hysteresis 3)",
                "checkpoint": res["checkpoint"],
                "reinfer": {"recall@20": r["recall@20"], "entropy@20": r["entropy@20"],
                            "front": [[p["entropy@20"], p["recall@20"]]
                                      for p in res["fronts"]["reinfer"]]},
                "nosteps": {k: res["arms"]["nosteps"][k] for k in ("recall@20", "entropy@20")},
            })
        out_path.write_text(json.dumps({"provenance": prov, **out}, indent=1) + "\n")
    print(json.dumps({k: {"recall@20": v["guarded_recall@20"],
                          "entropy@20": v["guarded_entropy@20"]}
                      for k, v in out["variants"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
