"""The online dataflow with its learning step removed: what decoding, Bytewax's per-user step,
the push bookkeeping and the Redis writes cost on their own.

``bench/stream.py`` runs this as a child process next to ``diam run --bounded`` over the same
topic (``events_per_s_no_learning``): the gap between the two is the learner's cost, and this
figure bounds what any learner could reach in this dataflow on this machine. Everything but
:meth:`OnlineLearner.apply` and ``apply_many`` is the production path (the same ``run_online``, source, sinks,
push cadence and GC settings as ``diam run``); ``apply`` keeps only the bookkeeping a push
needs (offset, time, a user with a known item), so every user is still pushed as often.

Usage (prints the same start and summary lines as ``diam run``)::

    python bench/stream_floor.py TOPIC NAMESPACE CHECKPOINT
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diam.app import load_holder, online_job  # noqa: E402
from diam.commands.run import summary_line  # noqa: E402
from diam.settings import load_settings  # noqa: E402
from online_model.online import DriftEvent, OnlineLearner, UserState  # noqa: E402
from streams.online import FlowStats  # noqa: E402
from streams.runner import run_online, tune_gc  # noqa: E402


class NoLearning(OnlineLearner):
    """The learner without its update: per click only what the push reads is kept."""

    def apply(self, state: UserState, item_id: str | int, ts_ms: int, offset: int,
              session_id: str | None = None) -> list[DriftEvent]:
        if state.n_events and offset <= state.seq:
            return []
        state.n_events += 1
        state.seq, state.last_ts = int(offset), int(ts_ms)
        state.rec["n_recent"] = 1  # "has a known item": the user is pushed
        return []

    def apply_many(self, state: UserState, clicks: list[tuple[str, int, int, str | None]],
                   ) -> list[Sequence[DriftEvent] | Exception]:
        """The per-user step hands a user's clicks of a batch over together: each one through
        :meth:`apply` above (without this, the production ``apply_many`` would learn)."""
        return [self.apply(state, *click) for click in clicks]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes no file: prints diam run's start and summary lines to stdout.")
    ap.add_argument("topic", help="the clicks topic, read from its start to its end (bounded)")
    ap.add_argument("namespace", help="the Redis namespace the pushes are written under")
    ap.add_argument("checkpoint", help="the base model's checkpoint directory")
    args = ap.parse_args(argv)
    topic, ns, ckpt = args.topic, args.namespace, args.checkpoint
    s = load_settings()
    holder = load_holder(s, checkpoint=ckpt, namespace=ns, learner=NoLearning)
    job = online_job(s, topic=topic, namespace=ns, bounded=True)
    tune_gc()  # as diam run
    print(f"online dataflow (no learning): {topic} ns={ns}", flush=True)
    stats = FlowStats()
    t0, c0 = time.perf_counter(), time.process_time()
    run_online(job, holder, stats)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(summary_line("done", stats.as_dict(), dt, cpu), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
