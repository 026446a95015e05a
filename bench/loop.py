"""The continuous loop measured on ml-100k in time order (issue 16), in a reduced configuration.

Writes ``bench/results/loop.json`` (and ``loop.png``) shaped as the issue asks. What runs:

- the stream is cut into ten windows of 10% of the events, in time order; catalogue records
  (``diam.items``) are produced when an item is first clicked, clicks to a fresh topic of the
  real broker, window by window;
- ``never``: one DIAM model trained by the retrain service on the first 30% (published
  first, no gate to pass); ``retrain``: the retrain service (:class:`diam.retrain.Retrainer`,
  the code ``diam retrain`` runs: warm start, newest 10% held out, promotion gate, publish)
  after every later window; ``retrain_new_items``: the same snapshots, plus every catalogue
  item first seen before the window starts and unknown to the active snapshot, embedded by
  the snapshot's content tower (what ``diam serve --follow-items`` does);
- Recall@20 per window: every user with clicks before and in the window; history = their
  clicks before it, truth = their clicks in it; the active model of the arm at the window's
  start recommends 20 items with its own aggregation (``online_model.retrain.evaluate_slice``),
  never an item it cannot serve. This is the model behind the API scored offline, without the
  online learner's steps between snapshots (``bench/prequential.py`` measures those);
- ``unknown_item_click_share``: clicks (windows 4-10) on items the arm's model cannot serve at
  the window's start (``retrain_new_items``: an item is servable once its catalogue record
  exists, i.e. from its first click on, so only first clicks count as unknown);
- ``new_item_ready_s``: produce → in the serving index (``Recommender.follow_catalog``, the
  path ``diam serve`` runs, polled in-process), for ``--new-items`` items produced one by one;
- ``max_stall_ms``: the longest single call of the dataflow's hot reload
  (``LearnerHolder.maybe_reload`` from ``diam.app.load_holder``, as ``diam run``): a new snapshot loaded,
  or new catalogue items appended; the dataflow thread does nothing else meanwhile.

Reduced configuration (two shared CPU cores): DIAM at dim 32, 2 epochs for the first model and
1 warm-started epoch per retrain, 16 training positions per user per epoch. ``--quick`` uses the
first 30k events. Command: ``python bench/loop.py`` (``--quick``).
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


def _settings(topic: str, tmp: Path, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from diam.settings import load_settings

    s = load_settings()
    return s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"clicks_topic": topic, "items_topic": f"{topic}.items",
                                            "models_topic": f"{topic}.models"}),
        "snapshot": s.snapshot.model_copy(update={"dir": str(tmp / "snaps")}),
        "online": s.online.model_copy(update={"dim": args.dim}),
        "retrain": s.retrain.model_copy(update={
            "candidates_dir": str(tmp / "candidates"), "epochs": args.first_epochs,
            "dim": args.dim, "max_per_user": args.max_per_user,
            "warm_start": not args.cold_retrain,
            "window_events": 10_000_000}),
        "data_dir": str(tmp / "data"),
    })


def _view(snapshot_dir: Path, corpus, tower_items=None):  # type: ignore[no-untyped-def]
    """The snapshot's model on ``corpus``'s vocabulary; rows it cannot serve; content rows
    for ``tower_items`` ({row: CatalogItem}) when given."""
    import torch

    from online_model.checkpoint import load_checkpoint
    from online_model.models import ModelConfig, build_model
    from online_model.models.content import ContentTower
    from online_model.retrain import remap_state

    ck = load_checkpoint(snapshot_dir)
    cfg = ModelConfig.from_dict({**ck.config, "n_items": corpus.n_items,
                                 "n_categories": corpus.n_categories})
    torch.manual_seed(0)
    view = build_model(cfg, corpus.item_cat)
    state, _ = remap_state(ck.model, ck.item_ids, view, corpus.item_ids)
    view.load_state_dict(state)
    known = np.isin(corpus.item_ids.astype(str), ck.item_ids.astype(str))
    if tower_items:
        tower = ContentTower.load(snapshot_dir / "content_tower.safetensors")
        rows = [r for r in tower_items if not known[r]]
        if rows:
            emb = tower.embed([list(tower_items[r].categories) for r in rows],
                              [tower_items[r].title for r in rows])
            with torch.no_grad():
                view.item_emb.weight[torch.as_tensor(rows) + 1] = torch.from_numpy(emb)
            known[rows] = True
    return view.eval(), np.flatnonzero(~known)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "ml-100k"))
    ap.add_argument("--quick", action="store_true", help="the first 30k events only")
    ap.add_argument("--events", type=int, default=None, help="the first N events (a smoke run)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--first-epochs", type=int, default=2)
    ap.add_argument("--retrain-epochs", type=int, default=1)
    ap.add_argument("--max-per-user", type=int, default=16)
    ap.add_argument("--new-items", type=int, default=40)
    ap.add_argument("--cold-retrain", action="store_true",
                    help="retrain from a random initialisation instead of a warm start")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    args = ap.parse_args()

    from diam.retrain import Retrainer
    from online_model.corpus import corpus_from_prepared, prefix_signals
    from online_model.datasets import (
        ItemRows,
        dataset_from_events,
        load_prepared,
        read_item_titles,
    )
    from online_model.retrain import evaluate_slice, slice_eval_set
    from streams.catalog import items_of_dataset, publish_items
    from streams.events import ClickEvent, encode_event
    from streams.producer import produce_raw

    ds = load_prepared(args.data)
    n = args.events or (30_000 if args.quick else len(ds.ts_ms))
    users, items, ts = ds.user_ids[:n], ds.item_ids[:n], ds.ts_ms[:n]
    catalog = {it.item_id: it for it in items_of_dataset(ds, read_item_titles(args.data))}
    first_seen = {i: it.first_seen for i, it in catalog.items()}
    ids = ds.items.ids.tolist()  # the full item table: one vocabulary for every evaluation
    item_rows = ItemRows(ids, [catalog[i].title for i in ids],
                         [list(catalog[i].categories) for i in ids])
    cuts = [int(round(k * n / 10)) for k in range(11)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    topic = f"bench.loop.{uuid.uuid4().hex[:10]}"
    s = _settings(topic, tmp, args)
    ns = f"bench-loop-{uuid.uuid4().hex[:8]}"
    published_items: set[str] = set()

    def produce_window(a: int, b: int) -> None:
        new = [catalog[i] for i in dict.fromkeys(items[a:b].tolist()) if i not in published_items]
        if new:
            assert publish_items(s.kafka, s.kafka.items_topic, new).ok
            published_items.update(it.item_id for it in new)
        recs = [(u.encode(), encode_event(ClickEvent(u, i, int(t))))
                for u, i, t in zip(users[a:b].tolist(), items[a:b].tolist(), ts[a:b].tolist(),
                                   strict=True)]
        assert produce_raw(s.kafka, topic, recs).ok

    t_start = time.monotonic()
    produce_window(0, cuts[3])
    svc = Retrainer(s, namespace=ns, log_line=lambda line: print(line, file=sys.stderr))
    first = svc.run_once()
    assert first.published, first.reason
    never_dir = svc.store.path(first.version)
    s_retrain = s.model_copy(update={"retrain": s.retrain.model_copy(
        update={"epochs": args.retrain_epochs})})
    svc = Retrainer(s_retrain, namespace=ns, log_line=lambda line: print(line, file=sys.stderr))
    arms: dict[str, list[float]] = {"never": [], "retrain": [], "retrain_new_items": []}
    unknown = {k: [0, 0] for k in arms}
    retrains = [{"window": 3, "seconds": first.seconds["total"], "published": True,
                 "reason": first.reason}]
    for k in range(3, 10):
        a, b = cuts[k], cuts[k + 1]
        corpus = corpus_from_prepared(dataset_from_events("ml-100k", users[:b], items[:b], ts[:b],
                                                          item_rows))
        es = slice_eval_set(corpus, int(ts[a]), prefix_signals(corpus))
        active_dir = svc.store.path(svc.store.active_version())
        in_catalog = {int(r): catalog[str(corpus.item_ids[r])] for r in range(corpus.n_items)
                      if first_seen[str(corpus.item_ids[r])] < int(ts[a])}
        win_items = items[a:b]
        for arm, (path, content) in {"never": (never_dir, None),
                                     "retrain": (active_dir, None),
                                     "retrain_new_items": (active_dir, in_catalog)}.items():
            view, excl = _view(path, corpus, content)
            m = evaluate_slice(view, corpus, es, exclude=excl)
            arms[arm].append(round(float(m["recall@20"]), 5))
            servable = set(corpus.item_ids[np.setdiff1d(np.arange(corpus.n_items), excl)]
                           .astype(str).tolist())
            if arm == "retrain_new_items":  # servable from its first click on
                bad = sum(1 for i, t in zip(win_items.tolist(), ts[a:b].tolist(), strict=True)
                          if i not in servable and t <= first_seen[i])
            else:
                bad = sum(1 for i in win_items.tolist() if i not in servable)
            unknown[arm][0] += bad
            unknown[arm][1] += len(win_items)
        print(f"window {k + 1}: " + ", ".join(f"{a_}={v[-1]:.4f}" for a_, v in arms.items()),
              file=sys.stderr)
        produce_window(a, b)
        if k < 9:
            d = svc.run_once()
            retrains.append({"window": k + 1, "seconds": d.seconds["total"],
                             "published": d.published, "reason": d.reason})

    ready = _new_item_ready(s, svc, args.new_items)
    stall = _reload_stalls(s, svc, ns)
    half = 2  # windows 6-10 of 10: the last half of the stream
    out = {
        "dataset": f"ml-100k (first {n} events)" if n < len(ds.ts_ms) else "ml-100k",
        "arms": {k: {"recall@20_by_window": v,
                     "recall@20_last_half": round(float(np.mean(v[half:])), 5),
                     "unknown_item_click_share": round(unknown[k][0] / max(1, unknown[k][1]), 5)}
                 for k, v in arms.items()},
        "new_item_ready_s": ready,
        "retrains": retrains,
        "max_stall_ms": stall["max_ms"],
        "stalls_ms": stall,
        "windows": "recall@20_by_window[j] is window j+4 of 10 (10% of the events each, in "
                   "time order); recall@20_last_half is the mean over windows 6-10",
        "config": {"model": "diam", "dim": args.dim, "first_epochs": args.first_epochs,
                   "warm_start": not args.cold_retrain,
                   "retrain_epochs": args.retrain_epochs, "max_per_user": args.max_per_user,
                   "holdout_fraction": s.retrain.holdout_fraction,
                   "gate": s.retrain.gate.model_dump(), "events": n,
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


def _new_item_ready(s, svc, count: int) -> dict:  # type: ignore[no-untyped-def]
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from streams.catalog import CatalogFollower, CatalogItem, publish_items

    version = svc.store.active_version()
    rec = Recommender(SnapshotIndex.load(svc.store.path(version), version), svc.redis, "bench")
    rec.follow_catalog(CatalogFollower(s.kafka, s.kafka.items_topic), every_s=0.1)
    time.sleep(2.0)  # the follower reads the existing catalogue first
    waits = []
    for j in range(count):
        name = f"bench-new-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        assert publish_items(s.kafka, s.kafka.items_topic,
                             [CatalogItem(name, ("Drama",), f"new film {j}", 0)]).ok
        while (rec.active is None or rec.active.index_of(name) < 0) and time.monotonic() - t0 < 30:
            time.sleep(0.005)
        waits.append(time.monotonic() - t0)
    w = np.asarray(waits)
    return {"p50": round(float(np.percentile(w, 50)), 3), "p99": round(float(np.percentile(w, 99)), 3),
            "max": round(float(w.max()), 3), "items": count,
            "path": "produce to diam.items -> Recommender.follow_catalog -> FAISS add; polled in-process"}


def _reload_stalls(s, svc, ns: str) -> dict:  # type: ignore[no-untyped-def]
    from diam.app import load_holder
    from snapshotter.publish import publish
    from streams.catalog import CatalogItem, publish_items

    holder = load_holder(s, namespace=ns)
    holder._check_every_s = 0.0
    t0 = time.perf_counter()
    holder.maybe_reload()  # the first poll reads the whole catalogue
    first = time.perf_counter() - t0
    snaps, items = [], []
    last = Path(svc.store.path(svc.store.active_version())).resolve()
    cand = Path(json.loads((last / "manifest.json").read_text())["source"]["path"])
    for _ in range(3):
        publish(cand, svc.store, svc.redis, ns=ns)
        t0 = time.perf_counter()
        holder.maybe_reload()
        snaps.append((time.perf_counter() - t0) * 1000)
    for j in range(3):
        assert publish_items(s.kafka, s.kafka.items_topic,
                             [CatalogItem(f"stall-{j}-{uuid.uuid4().hex[:6]}", ("Drama",), "x", 0)]).ok
        time.sleep(0.5)
        t0 = time.perf_counter()
        holder.maybe_reload()
        items.append((time.perf_counter() - t0) * 1000)
    return {"max_ms": round(max(snaps + items), 1), "new_snapshot_ms": [round(x, 1) for x in snaps],
            "new_items_ms": [round(x, 1) for x in items], "first_catalogue_read_ms": round(first * 1000, 1),
            "what": "one LearnerHolder.maybe_reload call of diam run's hot reload, timed directly"}


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, v in out["arms"].items():
        ax.plot(range(4, 4 + len(v["recall@20_by_window"])), v["recall@20_by_window"], marker="o",
                label=arm)
    ax.set_xlabel("window of the stream (10% of ml-100k's events each, time order)")
    ax.set_ylabel("Recall@20 of the active model")
    ax.set_title(f"continuous loop, {out['dataset']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
