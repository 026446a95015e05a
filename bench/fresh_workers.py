"""Where the longer freshness tail of two worker threads comes from (``bench/results/stream.md``):
``bench/stream.py``'s freshness run at 5,000 events/s (the same arrivals, tailing ``diam run``,
recovery store on), with one worker and with two in turns, the order alternating by repeat, each
run also serving its Prometheus metrics (``--metrics-port``), scraped every second. From the last
scrape before the run stops:

- ``epoch_pauses``: ``diam_flow_epoch_pause_seconds``, from a source partition's epoch snapshot
  to its next poll (the epoch end's state snapshots, recovery writes and flushes): count, mean,
  and how many lasted over 0.1 / 0.5 / 1 s (the histogram's bucket bounds);
- ``state_snapshot_s``: ``diam_flow_epoch_state_snapshot_seconds`` (the users' own snapshot
  calls per epoch): count and mean;
- next to the sampled produce-to-Redis p50 / p99 / p99.9 that ``stream.py`` reports.

Prints one JSON object and writes ``bench/results/fresh_workers.json``.

Run: ``OPENBLAS_NUM_THREADS=1 python bench/fresh_workers.py [--repeats 2]`` with the local stack
up (about 2 minutes per repeat).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stream  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.settings import load_settings  # noqa: E402

PORT = 9473


def _histogram(text: str, name: str) -> dict:
    """Count, sum and cumulative buckets of one histogram family in a scrape."""
    out: dict = {"count": 0.0, "sum": 0.0, "buckets": {}}
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            if s.name.endswith("_count"):
                out["count"] += s.value
            elif s.name.endswith("_sum"):
                out["sum"] += s.value
            elif s.name.endswith("_bucket"):
                le = s.labels["le"]
                out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
    return out


def _over(h: dict, bound: str) -> float:
    """How many observations exceeded ``bound`` (a bucket's upper bound, as scraped)."""
    return h["count"] - h["buckets"].get(bound, 0.0)


def one_run(settings, ckpt: Path, env, workers: int, seed: int, rate: int, seconds: float,
            warmup_s: float) -> dict:
    topic = stream.made_topic(settings.kafka, f"bench.freshw.{uuid.uuid4().hex[:8]}")
    last: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=1) as r:
                    last[:] = [r.read().decode()]
            except OSError:
                pass  # not up yet, or stopping
            time.sleep(1.0)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    try:
        p50, p99, p999 = stream.freshness(settings, topic, f"bfw{workers}-{topic[-8:]}", ckpt,
                                          rate, seconds, env, warmup_s=warmup_s, seed=seed,
                                          workers=workers,
                                          extra=("--metrics-port", str(PORT)))
    finally:
        done.set()
        t.join(5)
    text = last[0] if last else ""
    pause = _histogram(text, "diam_flow_epoch_pause_seconds")
    snap = _histogram(text, "diam_flow_epoch_state_snapshot_seconds")
    return {
        "workers": workers, "seed": seed,
        "freshness_p50_ms": round(p50, 2), "freshness_p99_ms": round(p99, 2),
        "freshness_p999_ms": round(p999, 2),
        "epoch_pauses": {"count": pause["count"],
                         "mean_ms": round(1000 * pause["sum"] / max(pause["count"], 1), 1),
                         "over_0.1_s": _over(pause, "0.1"), "over_0.5_s": _over(pause, "0.5"),
                         "over_1_s": _over(pause, "1.0")},
        "state_snapshot_s": {"count": snap["count"],
                             "mean_ms": round(1000 * snap["sum"] / max(snap["count"], 1), 1)},
        "scraped": bool(text),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (one worker, two)")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=30.0, help="sampled window per run")
    ap.add_argument("--out", default=None,
                    help=sized_out_help("fresh_workers", ("repeats", "seconds"), variants=("rate",)))
    args = ap.parse_args()
    args.out = args.out or str(sized_out(ap, args, "fresh_workers", ("repeats", "seconds"),
                                         variants=("rate",)))
    prov = provenance()  # when and on which code this run starts
    settings = load_settings()
    env = stream.env_for(settings)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, stream.leaves_nothing(settings):
        ckpt = Path(tmp) / "ckpt"
        stream.make_checkpoint(ckpt, seq_len=settings.online.train_seq_len("diam"))
        for r in range(args.repeats):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for workers in order:
                runs.append(one_run(settings, ckpt, env, workers, 5 + r, args.rate,
                                    args.seconds, warmup_s=10.0))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"provenance": prov, "rate": args.rate, "window_s": args.seconds, "warmup_s": 10.0,
              "epoch_interval_s": settings.flow.epoch_interval_s, "runs": runs,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
