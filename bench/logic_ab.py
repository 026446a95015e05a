"""The learner's own cost per event for two online settings, in turns, on the real-clicks
replay of ``bench/stream.py`` (ml-100k's second half on ``bench/prequential.py``'s first-half
network), in process.

Why: a full ``bench/stream.py`` run cannot tell a setting's cost from the shared box's drift
(``bench/results/stream.md``), and ``bench/stream_ab.py`` compares revisions on the synthetic
stream, whose untrained network re-runs more often than ml-100k's trained one. Here the served
settings (A) and the same with ``--set FIELD=VALUE`` overrides (B) take turns over the same
events, each pass through the dataflow's own per-user step (``stream.logic_pass``: no Kafka,
Bytewax or Redis), so both see the same box. Prints one JSON object and writes it to ``--out``:
per side the settings, µs per event of every pass, the network's runs per event, and the
ratio of the medians (B / A).

Run: ``python bench/logic_ab.py --set reanchor_explore=false [--rounds 3] [--copies 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import stream as S  # noqa: E402
from prequential import cached_first_half, with_sets  # noqa: E402
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.settings import load_settings  # noqa: E402
from online_model.base import BaseView  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", required=True,
                    help="OnlineConfig override for side B (repeatable)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per side, alternating")
    ap.add_argument("--copies", type=int, default=8, help="times each ml-100k user is replayed")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("logic_ab", ("rounds", "copies")))
    args = ap.parse_args(argv)
    args.out = args.out or sized_out(ap, args, "logic_ab", ("rounds", "copies"))
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    base = BaseView.from_checkpoint(cached_first_half(args.data, epochs=4))
    served = settings.online.model_copy(update={"dim": base.dim})
    sides = {"A": served, "B": with_sets(served, args.set)}
    events, info = S.replay_events(args.data, args.copies)
    runs: dict[str, list[float]] = {"A": [], "B": []}
    per_event: dict[str, float] = {}
    for r in range(args.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            us, nets, _ = S.logic_pass(base, sides[side], settings.flow, events)
            runs[side].append(round(us, 2))
            per_event[side] = nets
            print(f"round {r} {side}: {us:.1f} µs/event, {nets} runs/event", file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    out = {
        "events": len(events), "ids": info["users"], "copies": args.copies,
        "checkpoint": "bench/prequential.py's first-half network (cached_first_half, 4 epochs)",
        "A": {"settings": "served (OnlineConfig defaults)", "us_per_event_runs": runs["A"],
              "us_per_event": med["A"], "network_runs_per_event": per_event["A"]},
        "B": {"settings": args.set, "us_per_event_runs": runs["B"], "us_per_event": med["B"],
              "network_runs_per_event": per_event["B"]},
        "b_over_a": round(med["B"] / med["A"], 3),
        "machine": f"{os.cpu_count()} cores",
    }
    out = {"provenance": prov, **out}
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
