"""What ``diam run --metrics-port`` costs: the one-process run of ``bench/stream.py --quick``'s
workload (300k events, 2000 users, d = 64, a recovery store, bounded), with metrics off and on,
interleaved (off, on, off, on, ...) so that the machine's load drifts into both alike.

While a metrics run works, a scraper thread reads its endpoint every ``--scrape-every`` seconds
(1 s: more often than Prometheus would), so the cost of answering scrapes (the high-watermark
requests included) is counted too.

Prints one JSON object and writes ``bench/results/metrics_cost.json``: events/s of every run,
the medians, and ``on_over_off`` (median on / median off; 1.0 means no cost).

``--tiny``: the same runs over the tests' tiny base (60 items, d = 16, no DIAM network: users
are anchored on centroids), where a click costs tens of microseconds instead of the network's
anchoring of each new user, so that a per-batch or per-write cost of the metrics would show.
Its runs read 1M events (2000 users; about 10 s each, some ten scrapes). Both defaults were 60k
until 2026-12-05: runs of 1.3-3 s with one or two scrapes each, and one set of pairs in four
missed 5% on either base while the next read 1.0 again.

Run: ``python bench/metrics_cost.py [--repeats 5] [--tiny]`` with the local stack up.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402
from stream import (  # noqa: E402
    dataflow_cmd,
    env_for,
    leaves_nothing,
    made_topic,
    make_checkpoint,
    produce,
    synth_events,
)

from diam.commands.run import parse_summary  # noqa: E402
from diam.settings import load_settings  # noqa: E402


def one_run(cmd: list[str], env: dict[str, str], scrape_every: float | None) -> dict:
    """Events/s of one bounded run from its start-up line to its end, and its scrapes."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # "online dataflow: ..." once the base is loaded
    t0 = time.perf_counter()
    scrapes, stop = [0], threading.Event()
    if scrape_every is not None:
        line = proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)/metrics", line)
        if m is None:
            raise RuntimeError(f"no metrics line: {line!r}")
        url = f"http://127.0.0.1:{m.group(1)}/metrics"

        def scrape() -> None:
            while not stop.wait(scrape_every):
                try:
                    urllib.request.urlopen(url, timeout=5).read()
                    scrapes[0] += 1
                except OSError:
                    pass

        threading.Thread(target=scrape, daemon=True).start()
    out, err = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    stop.set()
    if proc.returncode != 0:
        raise RuntimeError(f"dataflow failed: {err[-2000:]}")
    got = parse_summary(out)
    if not {"records", "cpu_s"} <= got.keys():
        raise RuntimeError(f"no record count or CPU time in the dataflow's summary: {out[-500:]!r}")
    n = int(got["records"])
    return {"events_per_s": round(n / wall, 1), "cpu_s": float(got["cpu_s"]),
            "records": n, "scrapes": scrapes[0]}


FULL_EVENTS = {False: 300_000, True: 1_000_000}
"""``--events``' default, by ``--tiny``."""


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--out: " + sized_out_help("metrics_cost", ("repeats", "events"),
                                          variants=("users", "scrape_every"))
        + "; _tiny after the size with --tiny (metrics_cost_tiny.json at the default sizes)")
    ap.add_argument("--repeats", type=int, default=5, help="pairs of runs (off, on)")
    ap.add_argument("--events", type=int, default=None,
                    help="events in the topic (default: 300,000; 1,000,000 with --tiny)")
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    ap.add_argument("--tiny", action="store_true",
                    help="the tests' tiny base instead of a DIAM checkpoint at d = 64")
    ap.add_argument("--out", default=None,
                    help="JSON written [default: bench/results/metrics_cost[_quick|_large]"
                         "[_tiny].json by the sizes, see below]")
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of these sizes writes (``provenance.sized_out``): only the
    default ``--repeats``/``--events`` write the committed ``metrics_cost.json`` (with
    ``--tiny``: ``metrics_cost_tiny.json``); ``--users``/``--scrape-every`` off their
    defaults need ``--out``."""
    if args.out:
        return Path(args.out)
    sized = sized_out(ap, args, "metrics_cost", ("repeats", "events"),
                      full={"events": FULL_EVENTS[args.tiny]},
                      variants=("users", "scrape_every"))
    size = sized.stem.removeprefix("metrics_cost")
    return sized.with_name(f"metrics_cost{size}{'_tiny' if args.tiny else ''}.json")


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    out = results_path(ap, args)  # a variant without --out is refused here, before anything runs
    prov = provenance()  # when and on which code this run starts
    if args.events is None:
        args.events = FULL_EVENTS[args.tiny]
    if args.events <= 0 or args.users <= 0 or args.repeats <= 0 or args.scrape_every <= 0:
        ap.error("--events, --users, --repeats and --scrape-every must be > 0")
    settings = load_settings()
    run_id = uuid.uuid4().hex[:8]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp, leaves_nothing(settings):
        topic = made_topic(settings.kafka, f"bench.metrics.{run_id}")
        ckpt = Path(tmp) / "ckpt"
        env = env_for(settings)
        if args.tiny:
            from tests.flowkit import click_stream
            from tests.integration.helpers import write_tiny_checkpoint

            write_tiny_checkpoint(ckpt)
            env.update({"DIAM_ONLINE_DIM": "16", "DIAM_ONLINE_K_MAX": "4"})
            produce(settings.kafka, topic, click_stream(args.users, args.events, seed=1))
        else:
            make_checkpoint(ckpt)
            produce(settings.kafka, topic, synth_events(args.events, args.users, seed=1,
                                                        t0=1_700_000_000_000))
        for r in range(args.repeats):
            for mode in ("off", "on"):
                extra = ["--bounded", "--recovery-dir", f"{tmp}/rec-{mode}-{r}"]
                if mode == "on":
                    extra += ["--metrics-port", "0"]
                cmd = dataflow_cmd(topic, f"bm-{run_id}-{mode}-{r}", ckpt, extra)
                res = one_run(cmd, env, args.scrape_every if mode == "on" else None)
                runs[mode].append(res)
                print(mode, r, res, file=sys.stderr, flush=True)
    med = {m: float(np.median([x["events_per_s"] for x in v])) for m, v in runs.items()}
    cpu = {m: float(np.median([x["cpu_s"] for x in v])) for m, v in runs.items()}
    result = {
        "provenance": prov,
        "bench": "metrics_cost", "base": "tiny" if args.tiny else "diam-d64",
        "events": args.events, "users": args.users,
        "repeats": args.repeats, "scrape_every_s": args.scrape_every,
        "events_per_s_off": med["off"], "events_per_s_on": med["on"],
        "on_over_off": round(med["on"] / med["off"], 3),
        "cpu_s_off": cpu["off"], "cpu_s_on": cpu["on"],
        "cpu_on_over_off": round(cpu["on"] / cpu["off"], 3),
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
