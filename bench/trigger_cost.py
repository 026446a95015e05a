"""What a re-anchoring setting costs on the throughput benchmark's stream, in process.

``bench/stream.py`` measures the served settings end to end (Kafka, Bytewax, Redis) in about
half an hour; most of the learner's time per event is the network's runs. This script replays
the same synthetic stream (``stream.synth_events``: 20,000 users in bursty sessions with a
trickle of new ones, on ``stream.make_checkpoint``'s DIAM checkpoint) through the dataflow's
own per-user step (``stream.logic_pass``) once per variant, in turns, and prints the network's
runs per event and the learner's µs per event for each: a minute's answer to "how many runs
would this setting save?" before a setting goes through the quality cycle
(``bench/prequential.py --early``) and the end-to-end benchmark.

Variants are ``OnlineConfig`` overrides, ``;``-separated groups of ``FIELD=VALUE``; the empty
group is the served settings. The defaults draw the stream exactly as ``bench/stream.py`` does
(400,000 events, 20,000 users, seed 1: its ``network_runs_per_event`` is the served row's).
Runs per event are exact and deterministic; the µs depend on the box (run it alone, compare
variants within one run; their order alternates by turn).

Run: ``python bench/trigger_cost.py [--events 400000] [--repeats 2]
[--variants ';reanchor_gap=2;reanchor_gap=3'] [--out bench/results/trigger_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import stream  # noqa: E402
from prequential import with_sets  # noqa: E402

from diam.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=";reanchor_gap=2;reanchor_gap=3",
                    help="';'-separated groups of ','-separated FIELD=VALUE overrides "
                         "(empty: the served settings)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results [default: stdout only]")
    args = ap.parse_args()
    settings = load_settings()
    variants = {v.strip(): [s.strip() for s in v.split(",") if s.strip()]
                for v in args.variants.split(";")}
    cfgs = {}
    for name, sets in variants.items():
        try:
            cfgs[name or "served"] = with_sets(settings.online, sets)
        except Exception as exc:  # noqa: BLE001 - say which variant is refused, and why
            sys.exit(f"variant {name!r}: {exc}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows: dict[str, dict] = {n: {"overrides": variants[n if n != "served" else ""], "us": []}
                             for n in cfgs}
    with tempfile.TemporaryDirectory() as tmp:
        base = stream.make_checkpoint(Path(tmp) / "ckpt",
                                      seq_len=settings.online.train_seq_len("diam"))
        events = stream.synth_events(args.events, args.users, seed=1, t0=1_700_000_000_000)
        order = list(cfgs.items())
        for r in range(args.repeats):  # in turns, so that every variant sees the same spells
            for name, cfg in (order if r % 2 == 0 else order[::-1]):
                us, runs, _ = stream.logic_pass(base, cfg, settings.flow, events)
                rows[name]["us"].append(round(us, 2))
                rows[name]["runs_per_event"] = runs
                print(f"[{r + 1}/{args.repeats}] {name}: {runs:.3f} runs/event, {us:.1f} µs/event",
                      file=sys.stderr, flush=True)
    for row in rows.values():
        row["us_per_event_median"] = float(np.median(row["us"]))
    out = {"bench": "trigger_cost", "started": started,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join(["python bench/trigger_cost.py", *sys.argv[1:]]),
           "events": args.events, "users": args.users, "repeats": args.repeats,
           "served": {k: getattr(settings.online, k) for k in
                      ("reanchor_every", "reanchor_cos", "reanchor_explore", "reanchor_gap",
                       "infer_items")},
           "variants": rows}
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
