"""Recommendation latency and throughput, in process and over HTTP, exact vs IVF-SQ8.

Catalogues at d = 64: the ml-100k catalogue (its 1,682 item ids and genres when
``data/ml-100k`` is prepared), a synthetic clustered catalogue of 100k items (the size the
goals are stated at) and, without ``--quick``, one of 1M items. For each, the bench publishes a
snapshot with the real snapshotter (which picks the index: exact below
``snapshot.exact_max_items``, IVF + SQ8 above, nprobe tuned to recall@50 >= 0.95), writes users
with K_u uniform in 1..8 into a fresh namespace of the real Redis (plain SETs of the codec's
values: the write-if-newer writer is bench/stream.py's subject), and measures:

- ``inproc_*``: ``Recommender.recommend(user, n=20)`` in this process, one thread: one Redis GET,
  one batched FAISS search (FAISS and BLAS on one thread each), the diversity-aware aggregator,
  after the same warm-up and heap freeze the server does at startup; ``inproc_breakdown_ms``
  times its parts separately (p50, p99);
- ``http_*``: ``GET /users/{id}/recommendations?n=20`` against ``diam serve`` running as its own
  process, sequential requests on one keep-alive connection of the standard library's
  ``http.client`` (a thin client, so the figure is mostly the server's);
  ``httpx_p50_ms``/``httpx_p99_ms``: the same through ``httpx`` (about a millisecond more per
  request on this machine, spent in the client); ``requests_per_s``: 4 concurrent keep-alive
  clients; ``http_health_p50_ms``: ``GET /health`` (one PING, no compute), the HTTP stack's cost;
- ``ivf_recall_at_50``: recall@50 of the IVF index against exact search on the users' interest
  vectors, at the nprobe the snapshotter chose; for the synthetic catalogues exact search is
  timed too (in process only).

Top-level keys are the 100k catalogue with the index the snapshotter chose (the goals' setting);
``runs`` holds every (catalogue, index) row with the same keys. Vectors are synthetic
(clustered, uneven cluster sizes and norms); latency does not depend on what they mean. The
machine is shared: ``setup.load_avg`` records the load average before and after, and each run
its 1-minute load when it was measured.

Run: ``python bench/serve.py [--quick]`` with the local stack up (``diam stack up``). Writes
``bench/results/serve.json`` and prints the same JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diam.settings import load_settings  # noqa: E402
from serving_cache import UserVectors, encode_user, redis_client, user_key  # noqa: E402
from serving_cache.api import settle_heap  # noqa: E402
from serving_cache.codec import decode_user  # noqa: E402
from serving_cache.reader import fail_fast  # noqa: E402
from online_model.aggregate import MIN_CANDIDATES  # noqa: E402
from serving_cache.recommend import Recommender, aggregate_candidates  # noqa: E402
from serving_cache.retrieval import SnapshotIndex  # noqa: E402
from snapshotter import SnapshotConfig, SnapshotStore, publish  # noqa: E402
from snapshotter.index import exact_topk, recall_at  # noqa: E402
from snapshotter.testing import clustered_vectors, write_checkpoint  # noqa: E402

DIM, N_TOP = 64, 20


def ml100k_catalogue(data_dir: Path, rng: np.random.Generator):
    """Item ids and primary genres of ml-100k when prepared, else 1,682 synthetic items."""
    items = data_dir / "ml-100k" / "items.tsv"
    if items.is_file():
        rows = [line.rstrip("\n").split("\t") for line in items.read_text().splitlines()[1:]]
        ids = np.array([r[0] for r in rows])
        genres = [r[1].split("|")[0] if len(r) > 1 and r[1] else "unknown" for r in rows]
        names = sorted(set(genres))
        cats = np.array([names.index(g) for g in genres], dtype=np.int32)
        source = str(items.relative_to(data_dir.parent)) if data_dir.is_absolute() else str(items)
    else:
        ids, names, source = (
            np.array([str(i) for i in range(1, 1683)]),
            [f"g{c}" for c in range(19)],
            "synthetic",
        )
        cats = rng.integers(0, 19, len(ids)).astype(np.int32)
    return ids, cats, names, source


def make_users(vecs: np.ndarray, cluster: np.ndarray, n_users: int, rng: np.random.Generator):
    """K_u uniform in 1..8; each interest is the mean of 3 items of one cluster plus noise."""
    by_cluster = [np.flatnonzero(cluster == c) for c in np.unique(cluster)]
    users = []
    for _ in range(n_users):
        k = int(rng.integers(1, 9))
        rows = []
        for _ in range(k):
            members = by_cluster[int(rng.integers(len(by_cluster)))]
            rows.append(vecs[rng.choice(members, 3)].mean(axis=0))
        v = np.asarray(rows, dtype=np.float32)
        v += rng.normal(scale=0.05, size=v.shape).astype(np.float32)
        users.append((k, float(rng.uniform(0.02, 0.98)), v))
    return users


def pct(ts: list[float]) -> tuple[float, float]:
    a = np.asarray(ts) * 1000
    return round(float(np.percentile(a, 50)), 3), round(float(np.percentile(a, 99)), 3)


def time_inproc(rec: Recommender, user_ids: list[str], n_requests: int, rng: np.random.Generator):
    picks = rng.choice(len(user_ids), n_requests)
    rec.warm_up()
    for i in picks[:30]:  # warm-up
        rec.recommend(user_ids[i], n=N_TOP)
    settle_heap()  # as the server does once its state is loaded
    ts = []
    t0 = time.perf_counter()
    for i in picks:
        s = time.perf_counter()
        rec.recommend(user_ids[i], n=N_TOP)
        ts.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    return ts, n_requests / wall


def breakdown(
    rec: Recommender, user_ids: list[str], n: int, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """p50 and p99 of the parts of a request, timed separately."""
    snap = rec.active
    assert snap is not None
    parts: dict[str, list[float]] = {
        "redis_get": [],
        "decode": [],
        "faiss_search": [],
        "aggregate": [],
    }
    for i in rng.choice(len(user_ids), n):
        t = time.perf_counter()
        raw = rec.client.get(user_key(rec.reader.ns, user_ids[i]))
        t1 = time.perf_counter()
        uv = decode_user(raw)
        t2 = time.perf_counter()
        scores, items = snap.search(uv.vecs, max(2 * N_TOP, MIN_CANDIDATES))
        t3 = time.perf_counter()
        aggregate_candidates(snap, scores, items, uv.d, N_TOP)
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[key].append(dt)
    return {k: {"p50": pct(v)[0], "p99": pct(v)[1]} for k, v in parts.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status


def time_http(
    store_dir: Path,
    redis_url: str,
    ns: str,
    user_ids: list[str],
    n_seq: int,
    n_conc: int,
    rng: np.random.Generator,
    log: Path,
) -> dict[str, float]:
    """Start ``diam serve`` on the store, time sequential and 4-way concurrent requests."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "DIAM_SNAPSHOT_DIR": str(store_dir),
        "DIAM_REDIS_URL": redis_url,
        "DIAM_REDIS_NAMESPACE": ns,
    }
    with open(log, "w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "diam", "serve", "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    path = f"/users/{{}}/recommendations?n={N_TOP}"
    try:
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=base, timeout=30) as c:
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"diam serve did not become healthy; see {log}")
                time.sleep(0.2)
            picks = rng.choice(len(user_ids), n_seq)
            for i in picks[:30]:
                c.get(path.format(user_ids[i])).raise_for_status()
            tx = []
            for i in picks:
                s = time.perf_counter()
                c.get(path.format(user_ids[i])).raise_for_status()
                tx.append(time.perf_counter() - s)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in picks[:30]:
            _get(conn, path.format(user_ids[i]))
        ts = []
        for i in picks:
            s = time.perf_counter()
            if _get(conn, path.format(user_ids[i])) != 200:
                raise RuntimeError(f"non-200 answer; see {log}")
            ts.append(time.perf_counter() - s)
        hs = []  # the framework's own cost: /health is one Redis PING and no compute
        for _ in range(100):
            s = time.perf_counter()
            _get(conn, "/health")
            hs.append(time.perf_counter() - s)
        conn.close()
        p50, p99 = pct(ts)

        per_thread = n_conc // 4
        errors: list[str] = []

        def worker(seed: int) -> None:
            r = np.random.default_rng(seed)
            cc = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for i in r.choice(len(user_ids), per_thread):
                if _get(cc, path.format(user_ids[i])) != 200:
                    errors.append("non-200")
            cc.close()

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rps = 4 * per_thread / (time.perf_counter() - t0)
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests under load")
        return {
            "http_p50_ms": p50,
            "http_p99_ms": p99,
            "httpx_p50_ms": pct(tx)[0],
            "httpx_p99_ms": pct(tx)[1],
            "requests_per_s": round(rps, 1),
            "http_health_p50_ms": pct(hs)[0],
            "http_load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def run_catalogue(
    name: str,
    vecs,
    cluster,
    ids,
    cats,
    cat_names,
    args,
    client,
    redis_url,
    tmp: Path,
    rng: np.random.Generator,
    timing_exact: bool,
) -> list[dict]:
    t = time.perf_counter()
    ck = write_checkpoint(
        tmp / f"ck-{name}",
        item_emb=vecs,
        categories=cats,
        category_names=cat_names,
        item_ids=ids,
        item_pop=rng.zipf(1.5, len(ids)).clip(max=10**6),
        state_dict=False,
    )
    store = SnapshotStore(SnapshotConfig(dir=str(tmp / f"snaps-{name}"), seed=0))
    res = publish(ck, store)
    publish_s = time.perf_counter() - t
    info = res.manifest["index"]
    snap = SnapshotIndex.load(res.path)

    ns = f"bench-{uuid.uuid4().hex[:10]}"
    users = make_users(vecs, cluster, args.users, rng)
    user_ids = [f"u{i}" for i in range(len(users))]
    pipe = client.pipeline(transaction=False)
    for uid, (k, d, v) in zip(user_ids, users, strict=True):
        uv = UserVectors(seq=1, model=res.version, k=k, d=d, dim=DIM, vecs=v, ts=0, n=10)
        pipe.set(user_key(ns, uid), encode_user(uv))
    pipe.execute()
    try:
        rec = Recommender(snap, client, ns, threads=1)
        # Recall of the chosen index against exact search on the users' interest vectors.
        q = np.vstack([v for _, _, v in users[: min(len(users), 300)]]).astype(np.float32)
        if info["kind"] == "flat":
            recall = 1.0
        else:
            _, approx = snap.index.search(q, 50)
            recall = round(recall_at(approx, exact_topk(vecs, q, 50)), 4)

        rows = []
        ts, rps_in = time_inproc(rec, user_ids, args.requests, rng)
        p50, p99 = pct(ts)
        row = {
            "catalogue": name,
            "catalogue_items": int(len(ids)),
            "index": info["factory"],
            "inproc_p50_ms": p50,
            "inproc_p99_ms": p99,
            "inproc_requests_per_s": round(rps_in, 1),
            "inproc_load_avg_1m": round(os.getloadavg()[0], 2),
            "inproc_breakdown_ms": breakdown(rec, user_ids, min(args.requests, 500), rng),
            "ivf_recall_at_50": recall if info["kind"] != "flat" else None,
            "nprobe": info.get("nprobe"),
            "nlist": info.get("nlist"),
            "tuning_recall_at_50": info.get("recall_at_50"),
            "publish_s": round(publish_s, 1),
        }
        row.update(
            time_http(
                store.root,
                redis_url,
                ns,
                user_ids,
                args.requests,
                args.concurrent_requests,
                rng,
                tmp / f"serve-{name}.log",
            )
        )
        rows.append(row)
        if timing_exact and info["kind"] != "flat":
            import faiss

            flat = faiss.IndexFlatIP(DIM)
            flat.add(vecs)
            exact_rec = Recommender(
                replace(snap, index=flat, kind="flat", nprobe=None), client, ns, threads=1
            )
            n_exact = max(30, args.requests // (20 if len(ids) >= 10**6 else 5))
            ts, rps_ex = time_inproc(exact_rec, user_ids, n_exact, rng)
            p50, p99 = pct(ts)
            rows.append(
                {
                    "catalogue": name,
                    "catalogue_items": int(len(ids)),
                    "index": "Flat (exact)",
                    "inproc_p50_ms": p50,
                    "inproc_p99_ms": p99,
                    "inproc_requests_per_s": round(rps_ex, 1),
                    "inproc_load_avg_1m": round(os.getloadavg()[0], 2),
                    "ivf_recall_at_50": None,
                    "nprobe": None,
                    "http_p50_ms": None,
                    "http_p99_ms": None,
                    "httpx_p50_ms": None,
                    "httpx_p99_ms": None,
                    "requests_per_s": None,
                    "requests_timed": n_exact,
                }
            )
        return rows
    finally:
        keys = list(client.scan_iter(match=f"diam:{ns}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


GOAL_ITEMS = 100_000
"""The catalogue size the latency goals are stated at; its run gives the top-level keys."""


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="ml-100k and 100k items only, fewer requests (< 2 min)",
    )
    ap.add_argument(
        "--large-items",
        type=int,
        default=1_000_000,
        help="Items of the largest synthetic catalogue (default 1M; --quick leaves it out)",
    )
    ap.add_argument("--requests", type=int, default=None, help="Timed requests per measurement")
    ap.add_argument("--users", type=int, default=None, help="Users written to Redis per catalogue")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()
    args.requests = args.requests or (500 if args.quick else 2000)
    args.users = args.users or (500 if args.quick else 5000)
    args.concurrent_requests = args.requests
    synthetic = [GOAL_ITEMS] + ([] if args.quick or args.large_items <= GOAL_ITEMS else [
        args.large_items
    ])

    settings = load_settings()
    client = fail_fast(redis_client(settings.redis))
    try:
        client.ping()
    except Exception as exc:
        sys.exit(
            f"Redis at {settings.redis.url} does not answer ({exc}); start the stack: diam stack up"
        )
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    load_before = load_avg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        ids, cats, names, source = ml100k_catalogue(ROOT / settings.data_dir, rng)
        vecs, cluster = clustered_vectors(len(ids), DIM, n_clusters=50, seed=1)
        runs += run_catalogue(
            "ml-100k",
            vecs,
            cluster,
            ids,
            cats,
            names,
            args,
            client,
            settings.redis.url,
            tmp,
            rng,
            timing_exact=False,
        )
        for n in synthetic:
            vecs, cluster = clustered_vectors(n, DIM, n_clusters=max(50, n // 500), seed=2)
            large_ids = np.array([f"s{i}" for i in range(n)])
            cats = (cluster % 50).astype(np.int32)
            runs += run_catalogue(
                f"synthetic-{n // 1000}k",
                vecs,
                cluster,
                large_ids,
                cats,
                [f"c{c}" for c in range(50)],
                args,
                client,
                settings.redis.url,
                tmp,
                rng,
                timing_exact=True,
            )
            del vecs, cluster
    # the goals' catalogue with the index the snapshotter chose
    head = next(r for r in runs if r["catalogue_items"] == GOAL_ITEMS and r["http_p50_ms"])
    result = {
        k: head[k]
        for k in (
            "catalogue_items",
            "inproc_p50_ms",
            "inproc_p99_ms",
            "http_p50_ms",
            "http_p99_ms",
            "requests_per_s",
            "ivf_recall_at_50",
            "nprobe",
        )
    }
    result.update(
        {
            "runs": runs,
            "goals": {
                "at": f"{GOAL_ITEMS} items, K_u 1..8, d = {DIM}, n = {N_TOP}",
                "inproc_p99_below_5ms": head["inproc_p99_ms"] < 5.0,
                "http_p99_below_15ms": head["http_p99_ms"] < 15.0,
                "ivf_recall_at_50_at_least_0.95": (head["ivf_recall_at_50"] or 0) >= 0.95,
            },
            "setup": {
                "quick": args.quick,
                "dim": DIM,
                "n": N_TOP,
                "users": args.users,
                "requests": args.requests,
                "k_u": "uniform 1..8",
                "threads": "1 (FAISS OpenMP and numpy BLAS)",
                "http_client": "http.client, one keep-alive connection (httpx_* through httpx)",
                "ml100k_items_from": source,
                "redis": settings.redis.url,
                "cpus": os.cpu_count(),
                "load_avg": {"before": load_before, "after": load_avg()},
                "python": platform.python_version(),
                "command": "python bench/serve.py" + (" --quick" if args.quick else ""),
                "seconds": round(time.perf_counter() - started, 1),
            },
        }
    )
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
