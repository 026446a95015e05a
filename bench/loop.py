"""The continuous loop measured on ml-100k in time order through the real stack (issue 16).

Writes ``bench/results/loop.json`` (and ``loop.png``) shaped as the issue asks. What runs, all
in this process against the real broker and Redis:

- one fresh clicks topic; the stream is cut into ten windows of 10% of the events, in time
  order. Windows 1-3 are produced at once (the history the first model trains on); windows
  4-10 at a fixed rate (``--rate`` events/s). An item's catalogue record (``diam.items``) is
  produced just before its first click;
- the retrain service (:class:`diam.retrain.Retrainer`, what ``diam retrain`` runs) trains the
  first model on windows 1-3 and, after each later window but the last, retrains (warm start
  from the active snapshot unless ``--cold-retrain``, newest 10% held out, promotion gate) and
  publishes what the gate passes. The stream is paused while it trains (the clock of the
  stream stops; in production the retrain runs beside the stream and lands later);
- three arms, each its own snapshot store, Redis namespace, online dataflow and recommender:
  ``never`` (the first model only), ``retrain`` (every snapshot the retrain service publishes),
  ``retrain_new_items`` (the same snapshots, plus new items: catalogue items and items first
  seen in clicks enter the dataflow's base and the API's index with the content tower's
  embedding, and cold lists come from live click counts). The arms without new items follow
  an empty catalogue topic and take no items first seen in clicks;
- each arm's dataflow is the code ``diam run`` runs (:func:`diam.app.online_job`,
  :func:`diam.app.load_holder` with hot reload of new snapshots and catalogue items,
  :func:`streams.runner.run_online`), consuming the topic as it is produced, writing users'
  vectors to the arm's namespace;
- each arm's recommender is the one ``diam serve`` answers with
  (:class:`serving_cache.recommend.Recommender`: the user's vectors from Redis, FAISS, the
  diversity-aware aggregator, seen items excluded); a new snapshot is swapped in as the API's
  reload does (:class:`snapshotter.store.ActiveWatcher`, then ``swap``);
- Recall@20, prequential as served: just before each click of windows 4-10 is produced, every
  arm's recommender answers 20 items for the clicking user from what is in Redis at that
  moment (the click itself is not in Kafka yet, so it cannot have been applied; earlier clicks
  are there once the dataflow pushed them, as for a real user). A hit is the clicked item in
  the list; ``recall@20_by_window`` is the share of hits per window (Recall@20 with the one
  next item as truth);
- ``unknown_item_click_share``: clicks of windows 4-10 on items the arm's serving index does
  not hold at that moment;
- ``new_item_ready_s``: from an item's catalogue record (produced just before its first click)
  to the item being in the ``retrain_new_items`` API's index, for items first seen in windows
  4-10; ``new_item_ready_dataflow_s`` the same up to its dataflow's base; ``click_first``:
  after the stream, items with no catalogue record clicked twice, timed up to the API's index
  and the dataflow's base;
- ``max_stall_ms``: the longest call of any arm's running dataflow's reload hook
  (:attr:`streams.online.LearnerHolder.longest_reload_s`: polls, new snapshots loaded, new
  items appended); the dataflow's thread processes nothing meanwhile.

The dataflow checks for a new snapshot or new items when a batch of clicks arrives (every
``FlowConfig.reload_check_s`` at most), so an item announced just before the stream pauses
waits for the next window's first batch.

Reduced configuration (two shared CPU cores): DIAM at dim 32, 2 epochs for the first model and
per retrain (the service's default; a warm start trains at ``RetrainConfig.warm_lr``),
16 training positions per user per epoch. ``--quick`` uses the first 30k events and writes
``loop_quick.json``. Command: ``python bench/loop.py`` (``--quick``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402

ARMS = ("never", "retrain", "retrain_new_items")


def _settings(topic: str, tmp: Path, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from diam.settings import load_settings

    s = load_settings()
    return s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"clicks_topic": topic, "items_topic": f"{topic}.items",
                                            "models_topic": f"{topic}.models"}),
        "snapshot": s.snapshot.model_copy(update={"dir": str(tmp / "retrain" / "snaps")}),
        "online": s.online.model_copy(update={"dim": args.dim}),
        "retrain": s.retrain.model_copy(update={
            "candidates_dir": str(tmp / "candidates"), "epochs": args.first_epochs,
            "max_per_user": args.max_per_user,
            "warm_start": not args.cold_retrain,
            "window_events": 10_000_000}),
        "data_dir": str(tmp / "data"),
    })


def _arm_settings(s, arm: str, tmp: Path):  # type: ignore[no-untyped-def]
    """The arm's own snapshot store; the arms without new items follow an empty catalogue and
    do not take items first seen in clicks."""
    new_items = arm == "retrain_new_items"
    items = s.kafka.items_topic if new_items else f"{s.kafka.clicks_topic}.none"
    return s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"items_topic": items}),
        "snapshot": s.snapshot.model_copy(update={"dir": str(tmp / arm / "snaps")}),
        "flow": s.flow.model_copy(update={
            "click_first_min_clicks": s.flow.click_first_min_clicks if new_items else 0}),
    })


@dataclass
class Arm:
    """One arm's stack: settings, namespace, dataflow (thread) and recommender."""

    name: str
    s: Any
    ns: str
    store: Any = None
    holder: Any = None
    stats: Any = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    rec: Any = None
    watcher: Any = None
    errors: list[str] = field(default_factory=list)
    hits: list[list[int]] = field(default_factory=list)
    unknown: int = 0
    scored: int = 0

    def start(self, redis: Any) -> None:
        from diam.app import load_holder, online_job
        from serving_cache.recommend import Recommender
        from serving_cache.retrieval import SnapshotIndex
        from snapshotter.store import ActiveWatcher, SnapshotStore
        from streams.online import FlowStats
        from streams.runner import run_online

        self.store = SnapshotStore(self.s.snapshot)
        self.holder = load_holder(self.s, namespace=self.ns)
        self.stats = FlowStats()
        job = online_job(self.s, namespace=self.ns, no_recovery=True, stop=self.stop)

        def run() -> None:
            try:
                run_online(job, self.holder, self.stats)
            except Exception as exc:  # noqa: BLE001 - reported in the JSON, the run goes on
                self.errors.append(repr(exc))

        self.thread = threading.Thread(target=run, name=f"flow-{self.name}", daemon=True)
        self.thread.start()
        version = self.store.active_version()
        self.rec = Recommender(SnapshotIndex.load(self.store.path(version), version), redis,
                               self.ns)
        self.watcher = ActiveWatcher(self.store, redis, check_every_s=0.0, ns=self.ns,
                                     current=version)

    def refresh(self) -> str | None:
        """What the API's reload does: a new active version is loaded and swapped in."""
        from serving_cache.retrieval import SnapshotIndex

        found = self.watcher.poll()
        if found is None:
            return None
        self.rec.swap(SnapshotIndex.load(found[1], found[0]))
        return found[0]


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "ml-100k"))
    ap.add_argument("--quick", action="store_true", help="the first 30k events only")
    ap.add_argument("--events", type=int, default=None, help="the first N events (a smoke run)")
    ap.add_argument("--rate", type=float, default=200.0,
                    help="events/s produced in windows 4-10")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--first-epochs", type=int, default=2)
    ap.add_argument("--retrain-epochs", type=int, default=None,
                    help="epochs per retrain (default: the retrain service's warm or cold default)")
    ap.add_argument("--max-per-user", type=int, default=16)
    ap.add_argument("--click-first", type=int, default=10,
                    help="items first seen in clicks, timed after the stream")
    ap.add_argument("--cold-retrain", action="store_true",
                    help="retrain from a random initialisation instead of a warm start")
    ap.add_argument("--out", default=None, help=sized_out_help(
        "loop", ("rate", "dim", "first_epochs", "retrain_epochs", "max_per_user", "click_first"),
        quick="--quick or --events", beside="its .png", variants=("data", "cold_retrain")))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of these sizes writes (``provenance.sized_out``): only a
    run over every event at every default size writes the committed ``loop.json`` and
    ``loop.png`` (``--events`` plays the first N: a quick run). ``--retrain-epochs`` given is
    compared with the retrain service's default (``RetrainConfig.epochs``)."""
    if args.out:
        return Path(args.out)
    from diam.retrain import RetrainConfig

    full = {"retrain_epochs": RetrainConfig.model_fields["epochs"].default}
    return sized_out(ap, args, "loop", ("rate", "dim", "first_epochs", "retrain_epochs", "max_per_user", "click_first"),
                     quick=args.quick or args.events is not None, full=full,
                     variants=("data", "cold_retrain"))


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    prov = provenance()  # when and on which code this run starts
    args.out = str(results_path(ap, args))

    from confluent_kafka import Producer

    from diam.retrain import Retrainer
    from online_model.datasets import load_prepared, read_item_titles
    from serving_cache import redis_client
    from serving_cache.namespaces import drop_namespace
    from serving_cache.popularity import DecayedCounts
    from snapshotter.publish import publish
    from streams.catalog import CatalogFollower, encode_item, items_of_dataset, publish_items
    from streams.events import ClickEvent, encode_event
    from streams.kafka_io import delete_topics, ensure_topic
    from streams.new_items import ClickTail
    from streams.producer import produce_raw

    ds = load_prepared(args.data)
    n = args.events or (30_000 if args.quick else len(ds.ts_ms))
    users, items, ts = ds.user_ids[:n].tolist(), ds.item_ids[:n].tolist(), ds.ts_ms[:n].tolist()
    catalog = {it.item_id: it for it in items_of_dataset(ds, read_item_titles(args.data))}
    cuts = [int(round(k * n / 10)) for k in range(11)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    topic = f"bench.loop.{uuid.uuid4().hex[:10]}"
    s = _settings(topic, tmp, args)
    tag = uuid.uuid4().hex[:8]
    redis = redis_client(s.redis)
    arms: dict[str, Arm] = {}
    svc_ns = f"bench-loop-{tag}-retrain"
    try:
        ensure_topic(s.kafka, topic)
        ensure_topic(s.kafka, f"{topic}.none")  # the empty catalogue of the arms without new items
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731

        t_start = time.monotonic()
        first_items = list(dict.fromkeys(items[:cuts[3]]))
        assert publish_items(s.kafka, s.kafka.items_topic, [catalog[i] for i in first_items]).ok
        published_items = set(first_items)
        assert produce_raw(s.kafka, topic, [(u.encode(), encode_event(ClickEvent(u, i, t)))
                                            for u, i, t in zip(users[:cuts[3]], items[:cuts[3]],
                                                               ts[:cuts[3]], strict=True)]).ok
        svc = Retrainer(s, namespace=svc_ns, log_line=say)
        first = svc.run_once()
        assert first.published, first.reason
        retrain_epochs = args.retrain_epochs or (2 if args.cold_retrain else s.retrain.epochs)
        svc.cfg = svc.cfg.model_copy(update={"epochs": retrain_epochs})
        retrains = [{"window": 3, "seconds": first.seconds["total"], "published": True,
                     "reason": first.reason}]
        arms.update({x: Arm(x, _arm_settings(s, x, tmp), f"bench-loop-{tag}-{x}") for x in ARMS})
        for x in ("never", "retrain_new_items"):  # the retrain arm's store is the service's
            publish(first.candidate_path, _store(arms[x].s), redis, ns=arms[x].ns,
                    data_dir=s.data_dir)
        for arm in arms.values():
            arm.start(redis)
        new_arm = arms["retrain_new_items"]
        new_arm.rec.follow_catalog(CatalogFollower(s.kafka, s.kafka.items_topic), every_s=0.1)
        new_arm.rec.follow_clicks(ClickTail(s.kafka, topic), DecayedCounts(), every_s=0.1)
        for arm in arms.values():
            arm.rec.warm_up()
        _catch_up(arms, cuts[3])
        say(f"history: {cuts[3]} events in {time.monotonic() - t_start:.0f} s")

        prod = Producer({**s.kafka.client_config(), "linger.ms": "2"})
        ready = _Readiness(new_arm)
        rate_info = []
        for k in range(3, 10):
            a, b = cuts[k], cuts[k + 1]
            for arm in arms.values():
                arm.hits.append([])
            t0 = time.perf_counter()
            for j in range(a, b):
                wait = t0 + (j - a) / args.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                u, i = users[j], items[j]
                if i not in published_items:
                    prod.produce(s.kafka.items_topic, key=i.encode(), value=encode_item(catalog[i]))
                    prod.poll(0)
                    published_items.add(i)
                    ready.produced(i)
                for arm in arms.values():
                    r = arm.rec.recommend(u, 20)
                    arm.hits[-1].append(int(i in r.items))
                    arm.unknown += arm.rec.active.index_of(i) < 0
                    arm.scored += 1
                prod.produce(topic, key=u.encode(), value=encode_event(ClickEvent(u, i, ts[j])))
                prod.poll(0)
            prod.flush(30)
            rate_info.append(round((b - a) / (time.perf_counter() - t0), 1))
            _catch_up(arms, b)
            say(f"window {k + 1}: " + ", ".join(f"{x.name}={np.mean(x.hits[-1]):.4f}"
                                                for x in arms.values()) + f" ({rate_info[-1]} ev/s)")
            if k < 9:
                d = svc.run_once()
                retrains.append({"window": k + 1, "seconds": d.seconds["total"],
                                 "published": d.published, "reason": d.reason})
                if d.published:
                    publish(d.candidate_path, _store(new_arm.s), redis, ns=new_arm.ns,
                            data_dir=s.data_dir)
                for arm in arms.values():
                    arm.refresh()
        ready.finish(timeout_s=10.0)
        click_first = _click_first(s, prod, new_arm, args.click_first, items[0])
    finally:  # however it ends: the arms stopped, then nothing of theirs left in Redis or Kafka
        for arm in arms.values():
            arm.stop.set()
        for arm in arms.values():
            if arm.thread is not None:
                arm.thread.join(timeout=60)
            if arm.holder is not None:  # its click-first and catalogue followers (Kafka consumers)
                arm.holder.close()
        for ns in [*(arm.ns for arm in arms.values()), svc_ns]:
            drop_namespace(redis, ns)
        delete_topics(s.kafka, [topic, *(f"{topic}{x}" for x in (".none", ".items", ".models"))])
    half = 2  # windows 6-10 of 10: the last half of the stream
    out = {
        "provenance": prov,
        "dataset": f"ml-100k (first {n} events)" if n < len(ds.ts_ms) else "ml-100k",
        "arms": {x.name: {
            "recall@20_by_window": [round(float(np.mean(h)), 5) for h in x.hits],
            "recall@20_last_half": round(float(np.mean(np.concatenate(
                [np.asarray(h, dtype=float) for h in x.hits[half:]]))), 5),
            "unknown_item_click_share": round(x.unknown / max(1, x.scored), 5),
            "hot_reloads": x.holder.reloads,
            "longest_reload_ms": round(x.holder.longest_reload_s * 1000, 1),
            "dataflow_errors": x.errors} for x in arms.values()},
        "new_item_ready_s": _pcts(ready.api, ready.pending_api),
        "new_item_ready_dataflow_s": _pcts(ready.flow, ready.pending_flow),
        "click_first": click_first,
        "retrains": retrains,
        "max_stall_ms": round(max(x.holder.longest_reload_s for x in arms.values()) * 1000, 1),
        "windows": "recall@20_by_window[j] is window j+4 of 10 (10% of the events each, in "
                   "time order): the share of clicks whose item was in the 20 items the arm "
                   "served the user just before the click; recall@20_last_half is that share "
                   "over windows 6-10",
        "config": {"model": "diam", "dim": args.dim, "first_epochs": args.first_epochs,
                   "warm_start": not args.cold_retrain, "retrain_epochs": retrain_epochs,
                   "retrain_lr": svc.cfg.lr, "warm_lr": svc.cfg.warm_lr,
                   "max_per_user": args.max_per_user,
                   "holdout_fraction": s.retrain.holdout_fraction,
                   "gate": s.retrain.gate.model_dump(), "events": n, "rate": args.rate,
                   "achieved_rate_by_window": rate_info,
                   "push_every_events": s.flow.push_every_events,
                   "push_every_ms": s.flow.push_every_ms,
                   "wall_s": round(time.monotonic() - t_start, 1)},
        "command": "python bench/loop.py " + " ".join(sys.argv[1:]),
    }
    goal = out["arms"]["never"]["recall@20_last_half"]
    out["goals"] = {
        "retrain_new_items_vs_never_last_half_rel": round(
            out["arms"]["retrain_new_items"]["recall@20_last_half"] / goal - 1, 4) if goal else None,
        "target_rel": 0.10, "new_item_ready_p99_target_s": 10.0, "max_stall_target_ms": 1000.0}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    _plot(out, Path(args.out).with_suffix(".png"))
    print(json.dumps(out, indent=1))


def _store(s):  # type: ignore[no-untyped-def]
    from snapshotter.store import SnapshotStore

    return SnapshotStore(s.snapshot)


def _catch_up(arms: dict[str, Arm], records: int, timeout_s: float = 300.0) -> None:
    """Wait until every arm's dataflow read ``records`` records and pushed what they changed."""
    t_end = time.monotonic() + timeout_s
    for arm in arms.values():
        while arm.stats.total().records < records and time.monotonic() < t_end:
            if arm.errors:
                raise RuntimeError(f"dataflow of {arm.name} failed: {arm.errors}")
            time.sleep(0.05)
    time.sleep(2 * arms["never"].s.flow.push_every_ms / 1000 + 0.2)


class _Readiness:
    """Times new catalogue items from their record's produce to the API's index and to the
    dataflow's base, polled every 5 ms by a thread of its own (the retrain between windows
    holds the main thread)."""

    def __init__(self, arm: Arm) -> None:
        self.arm = arm
        self.api: list[float] = []
        self.flow: list[float] = []
        self.pending_api: dict[str, float] = {}
        self.pending_flow: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self._thread.start()

    def produced(self, item: str) -> None:
        with self._lock:
            self.pending_api[item] = self.pending_flow[item] = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            now = time.perf_counter()
            snap, base = self.arm.rec.active, self.arm.holder.learner.base
            with self._lock:
                for i in [i for i in self.pending_api if snap.index_of(i) >= 0]:
                    self.api.append(now - self.pending_api.pop(i))
                for i in [i for i in self.pending_flow if base.index_of(i) >= 0]:
                    self.flow.append(now - self.pending_flow.pop(i))

    def finish(self, timeout_s: float) -> None:
        t_end = time.monotonic() + timeout_s
        while (self.pending_api or self.pending_flow) and time.monotonic() < t_end:
            time.sleep(0.01)
        self._stop.set()
        self._thread.join()


def _pcts(waits: list[float], never_ready: dict[str, float]) -> dict[str, Any]:
    w = np.asarray(waits) if waits else np.zeros(1)
    return {"p50": round(float(np.percentile(w, 50)), 3), "p99": round(float(np.percentile(w, 99)), 3),
            "max": round(float(w.max()), 3), "items": len(waits), "not_ready": len(never_ready)}


def _click_first(s, prod, arm: Arm, count: int, filler: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Items with no catalogue record, clicked twice (two users) one after the other: time
    from the second click to the API's index and to the dataflow's base. A user clicks
    ``filler`` every 50 ms meanwhile: the dataflow checks for reloads when a batch arrives, as
    in a live stream, not on an idle topic."""
    from streams.events import ClickEvent, encode_event

    api, flow = [], []
    next_fill = 0.0
    for _ in range(count):
        item = f"click-first-{uuid.uuid4().hex[:8]}"
        for u in ("1", "2"):
            prod.produce(s.kafka.clicks_topic, key=u.encode(),
                         value=encode_event(ClickEvent(u, item, int(time.time() * 1000))))
        prod.flush(10)
        t0 = time.perf_counter()
        next_fill = 0.0
        got_api = got_flow = None
        while (got_api is None or got_flow is None) and time.perf_counter() - t0 < 30:
            now = time.perf_counter() - t0
            if got_api is None and arm.rec.active.index_of(item) >= 0:
                got_api = now
            if got_flow is None and arm.holder.learner.base.index_of(item) >= 0:
                got_flow = now
            if now >= next_fill:
                prod.produce(s.kafka.clicks_topic, key=b"bench-filler", value=encode_event(
                    ClickEvent("bench-filler", filler, int(time.time() * 1000))))
                prod.poll(0)
                next_fill = now + 0.05
            time.sleep(0.005)
        api.append(got_api)
        flow.append(got_flow)
    return {"api_s": _pcts([x for x in api if x is not None], {}),
            "dataflow_s": _pcts([x for x in flow if x is not None], {}),
            "items": count, "not_ready_api": sum(x is None for x in api),
            "not_ready_dataflow": sum(x is None for x in flow),
            "path": "two clicks of an item with no catalogue record -> Recommender.follow_clicks "
                    "/ the dataflow's reload hook (the no-metadata content embedding)"}


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, v in out["arms"].items():
        ax.plot(range(4, 4 + len(v["recall@20_by_window"])), v["recall@20_by_window"], marker="o",
                label=arm)
    ax.set_xlabel("window of the stream (10% of ml-100k's events each, time order)")
    ax.set_ylabel("served Recall@20 (prequential, from Redis + the API)")
    ax.set_title(f"continuous loop, {out['dataset']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
