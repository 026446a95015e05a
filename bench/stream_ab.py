"""Interleaved A/B of the online dataflow's throughput between two git revisions, on the same
topic, the same checkpoint and the same machine state.

Why: on this shared two-core box the same code's throughput drifts by a quarter within an hour
(``bench/results/stream.md``), so a change's effect cannot be read from two ``bench/stream.py``
runs taken at different times. Here the two revisions take turns over one topic: each side first
runs once to compile (or load) its kernels, unrecorded, then ``--rounds`` times alternately.

Each run is ``diam run --bounded`` with a fresh recovery store (the served configuration of
``bench/stream.py``: its DIAM checkpoint, K_max = 8, bursty sessions with new users), from the
revision's own tree (``git worktree``), timed from its start line as ``bench/stream.py`` times
it. Prints one JSON object and writes ``bench/results/stream_ab.json``: per side the revision,
its events/s and CPU µs per event for every run, and the medians; ``speedup`` is the ratio of
the medians (head / base).

Run: ``python bench/stream_ab.py --base REV [--head REV] [--events 200000] [--rounds 3]`` with
the local stack up (``diam stack up``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stream as S  # noqa: E402
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.settings import load_settings  # noqa: E402


def _rev(ref: str) -> str:
    return subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", ref], text=True).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the revision to compare against (A)")
    ap.add_argument("--head", default="HEAD", help="the revision under test (B) [HEAD]")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3, help="recorded runs per side, alternating")
    ap.add_argument("--out", default=None,
                    help=sized_out_help("stream_ab", ("events", "users", "rounds")))
    args = ap.parse_args()
    args.out = args.out or str(sized_out(ap, args, "stream_ab", ("events", "users", "rounds")))
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    revs = {"base": _rev(args.base), "head": _rev(args.head)}
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp, S.leaves_nothing(settings):
        topic = S.made_topic(settings.kafka, f"bench.ab.{uuid.uuid4().hex[:8]}")
        S.produce(settings.kafka, topic, S.synth_events(args.events, args.users, seed=1,
                                                        t0=1_700_000_000_000))
        ckpt = Path(tmp) / "ckpt"
        S.make_checkpoint(ckpt)
        trees = {}
        for side, rev in revs.items():
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                            str(trees[side]), rev], check=True)
        try:
            def one(side: str, tag: str) -> tuple[float, float]:
                env = S.env_for(settings)
                env["PYTHONPATH"] = str(trees[side])
                ns = f"ab-{side}-{tag}-{uuid.uuid4().hex[:6]}"
                cmd = S.dataflow_cmd(topic, ns, ckpt, ["--bounded", "--recovery-dir",
                                                       f"{tmp}/rec-{ns}"])
                wall, cpu = S.timed_run([cmd], env, cwd=trees[side])
                return args.events / wall, cpu / args.events * 1e6

            for side in runs:  # compile or load each side's kernels; not recorded
                one(side, "warm")
            for r in range(args.rounds):
                for side in runs:
                    runs[side].append(one(side, str(r)))
                    print(f"{side} {revs[side][:8]}: {runs[side][-1][0]:,.0f} events/s",
                          file=sys.stderr, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], check=False)
    med = {side: float(np.median([r[0] for r in v])) for side, v in runs.items()}
    out = {
        "provenance": prov,
        "events": args.events, "users": args.users, "rounds": args.rounds, "topic": topic,
        "workload": "bench/stream.py's synth_events and make_checkpoint; diam run --bounded "
                    "with a recovery store, one process",
        **{side: {"rev": revs[side],
                  "events_per_s_runs": [round(r[0], 1) for r in runs[side]],
                  "cpu_us_per_event_runs": [round(r[1], 1) for r in runs[side]],
                  "events_per_s": round(med[side], 1)} for side in runs},
        "speedup": round(med["head"] / med["base"], 3),
        "machine": "2 cores",
    }
    print(json.dumps(out, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
