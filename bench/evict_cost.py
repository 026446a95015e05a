"""What eviction costs the online dataflow's throughput, on and off in turns over one topic.

Why: with ``FlowConfig.evict_idle_s`` set, the per-user step reads each click's event clock
(``RawRecord.clock_ms``) to find idle gaps, a user idle that long starts over from the base
(its network re-anchors it), and every batch that drops a user from the state waits for that
user's last push to reach Redis (``streams.redis_sink.RELEASED``) before it returns. Eviction
is off by default; this says what turning it on costs where users come and go.

The topic: ``bench/stream.py``'s bursty sessions with a trickle of new users, produced at
``--rate`` events/s so that the records' timestamps (the partitions' clocks) span
``events / rate`` seconds as live traffic would (a backlog produced at once would put every
click within a second or two). Each run is ``diam run --bounded`` with a fresh recovery store
on ``bench/stream.py``'s served DIAM checkpoint (K_max = 8), one process, timed from its start
line as ``bench/stream.py`` times it; eviction off and on (``DIAM_FLOW_EVICT_IDLE_S=--idle``)
take turns, one unrecorded run each first. ``start_overs`` is how many clicks come ``--idle``
or more after their user's previous one on the partition's clock, counted here from the
records the broker stored (the rule in ``streams.online._UserLogic``, recomputed offline):
the churn the "on" runs learn through. Users are dropped from the state as well, during a run,
once the wall clock and the partition's clock both say so. Each run's own counts, from ``diam
run``'s summary line, are kept per run (``counts``): user states started, users dropped as idle,
start-overs of users still held; ``counts_match`` checks them against the records: a run with
eviction on starts one more state per start-over (``users`` = distinct users + start_overs,
whether the user was held or dropped meanwhile), a run with it off one per user.

Run: ``OPENBLAS_NUM_THREADS=1 python bench/evict_cost.py [--events 100000] [--rate 4000]
[--idle 2] [--rounds 3]`` with the local stack up (``diam stack up``). Prints one JSON object
and writes ``bench/results/evict_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stream as S  # noqa: E402
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.commands.run import parse_summary  # noqa: E402
from diam.settings import load_settings  # noqa: E402
from streams.kafka_io import consume_all  # noqa: E402


def produce_paced(kafka, topic: str, events, rate: int) -> None:  # type: ignore[no-untyped-def]
    """Produce ``events`` in order at about ``rate`` per second: tenth-of-a-second slices, each
    delivered (``bench/stream.py``'s producer) before the next is due."""
    step = max(rate // 10, 1)
    t0 = time.monotonic()
    for i in range(0, len(events), step):
        S.produce(kafka, topic, events[i:i + step])
        wait = t0 + (i + step) / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)


def start_overs(kafka, topic: str, idle_ms: int) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    """Clicks that start their user over under the eviction rule, users, and the seconds the
    partitions' clocks span, from the records as the broker stored them."""
    per_part: dict[int, list] = {}
    for rec in consume_all(kafka, topic):
        per_part.setdefault(rec.partition, []).append(rec)
    n, users, lo, hi = 0, set(), None, None
    for recs in per_part.values():
        clock, last = -1, {}
        for rec in sorted(recs, key=lambda r: r.offset):
            clock = max(clock, rec.ts_ms)
            user = rec.key
            users.add(user)
            if user in last and clock - last[user] >= idle_ms:
                n += 1
            last[user] = clock
            lo = clock if lo is None else min(lo, clock)
            hi = clock if hi is None else max(hi, clock)
    return n, len(users), ((hi or 0) - (lo or 0)) / 1000


def run_counts(summary: str) -> dict[str, int]:
    """User states started, idle users dropped and start-overs, from ``diam run``'s summary."""
    got = parse_summary(summary)
    if not {"users", "evictions", "restarts"} <= got.keys():
        raise RuntimeError(f"no user counts in the dataflow's summary: {summary!r}")
    return {"users": int(got["users"]), "dropped": int(got["evictions"]), "restarts": int(got["restarts"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=4_000, help="events/s the topic is produced at")
    ap.add_argument("--idle", type=float, default=2.0, help="DIAM_FLOW_EVICT_IDLE_S of the 'on' runs")
    ap.add_argument("--rounds", type=int, default=3, help="recorded runs per side, in turns")
    ap.add_argument("--out", default=None,
                    help=sized_out_help("evict_cost", ("events", "users", "rounds"),
                                      variants=("rate", "idle")))
    args = ap.parse_args()
    args.out = args.out or str(sized_out(ap, args, "evict_cost", ("events", "users", "rounds"),
                                         variants=("rate", "idle")))
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    counts: dict[str, list[dict[str, int]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp, S.leaves_nothing(settings):
        topic = S.made_topic(settings.kafka, f"bench.evict.{uuid.uuid4().hex[:8]}")
        events = S.synth_events(args.events, args.users, seed=1, t0=1_700_000_000_000)
        print(f"producing {len(events):,} events at {args.rate:,}/s", file=sys.stderr, flush=True)
        produce_paced(settings.kafka, topic, events, args.rate)
        overs, users, span = start_overs(settings.kafka, topic, round(args.idle * 1000))
        ckpt = Path(tmp) / "ckpt"
        S.make_checkpoint(ckpt)

        def one(side: str, tag: str) -> tuple[float, float]:
            env = S.env_for(settings)
            if side == "on":
                env["DIAM_FLOW_EVICT_IDLE_S"] = str(args.idle)
            ns = f"ev-{side}-{tag}-{uuid.uuid4().hex[:6]}"
            cmd = S.dataflow_cmd(topic, ns, ckpt, ["--bounded", "--recovery-dir", f"{tmp}/rec-{ns}"])
            lines: list[str] = []
            wall, cpu = S.timed_run([cmd], env, expect_valid=len(events), summaries=lines)
            if tag != "warm":
                counts[side].append(run_counts(lines[-1]))
            return len(events) / wall, cpu / len(events) * 1e6

        for side in runs:  # compile or load the kernels; not recorded
            one(side, "warm")
        for r in range(args.rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                runs[side].append(one(side, str(r)))
                print(f"{side}: {runs[side][-1][0]:,.0f} events/s", file=sys.stderr, flush=True)
    med = {side: float(np.median([r[0] for r in v])) for side, v in runs.items()}
    out = {
        "provenance": prov,
        "events": len(events), "users": users, "rate": args.rate, "idle_s": args.idle,
        "rounds": args.rounds, "clock_span_s": round(span, 1), "start_overs": overs,
        "workload": "bench/stream.py's synth_events (seed 1) produced at --rate; its DIAM "
                    "checkpoint; diam run --bounded with a recovery store, one process",
        **{side: {"events_per_s_runs": [round(r[0], 1) for r in runs[side]],
                  "cpu_us_per_event_runs": [round(r[1], 1) for r in runs[side]],
                  "events_per_s": round(med[side], 1)} for side in runs},
        "on_over_off": round(med["on"] / med["off"], 3),
        "counts": counts,
        "counts_match": all(c["users"] == users + (overs if side == "on" else 0)
                            and (side == "on" or c["dropped"] == c["restarts"] == 0)
                            for side, cs in counts.items() for c in cs),
        "machine": "2 cores",
    }
    print(json.dumps(out, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
