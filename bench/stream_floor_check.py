"""The no-learning floor again, beside the learning dataflow, on a topic a ``bench/stream.py``
run left behind: both in turns, so both see the same box.

Why: a ``stream.json`` whose floor was measured wrongly (``bench/stream_floor.py`` replaced
only ``OnlineLearner.apply``; once the per-user step called ``apply_many``, the "floor" learnt
too) needs its floor, and the box's speed at the time, re-read without the 20 minutes of a
full run. Prints one JSON object and writes ``--out``: the revision, per side the events/s of
every run and their median.

Run: ``python bench/stream_floor_check.py --topic bench.clicks.<run> [--rounds 3]`` with the
local stack up; the synthetic stream's checkpoint is rebuilt (``stream.make_checkpoint`` is
deterministic), or ``--checkpoint`` names one (the replay's).
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
from streams.kafka_io import watermarks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topic", required=True)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the topic's checkpoint [bench/stream.py's synthetic one, rebuilt]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("stream_floor_check", ("rounds",)))
    args = ap.parse_args()
    args.out = args.out or sized_out(ap, args, "stream_floor_check", ("rounds",))
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    env = S.env_for(settings)
    n = sum(hi - lo for lo, hi in watermarks(settings.kafka, args.topic).values())
    rid = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = Path(tmp) / "ckpt"
            S.make_checkpoint(ckpt, seq_len=settings.online.train_seq_len("diam"))
        runs: dict[str, list[float]] = {"learning": [], "no_learning": []}
        for r in range(args.rounds):
            wall, _ = S.timed_run([S.dataflow_cmd(args.topic, f"fc1-{rid}-{r}", ckpt, [
                "--bounded", "--recovery-dir", f"{tmp}/rec-{r}"])], env, expect_valid=n)
            runs["learning"].append(round(n / wall, 1))
            wall, _ = S.timed_run([S.floor_cmd(args.topic, f"fc0-{rid}-{r}", ckpt)], env)
            runs["no_learning"].append(round(n / wall, 1))
            print(f"round {r}: {runs['learning'][-1]} / {runs['no_learning'][-1]} events/s",
                  file=sys.stderr)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    out = {"topic": args.topic, "events": n, "revision": rev, "rounds": args.rounds,
           **{f"events_per_s_{k}_runs": v for k, v in runs.items()},
           **{f"events_per_s_{k}": float(np.median(v)) for k, v in runs.items()},
           "machine": "2 cores"}
    out = {"provenance": prov, **out}
    print(json.dumps(out, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
