"""Recommendation latency in process and over HTTP under open-loop load, with the users of a
real learner run, exact vs IVF-SQ8.

Users (``bench/serve_learner.py``): the served online learner replays the ml-100k click stream
on the DIAM checkpoint trained on its first half; every anchored user's final K_u, d_u,
interest vectors and last seen items (``FlowConfig.seen_items``) are written to a fresh
namespace of the real Redis as the stream pushes them (the codec's value with ``s``, the seen
rows, and ``model`` = the published snapshot, so the server excludes them). Requests also carry
``seen``: the 20 items of the user's previous answer (what a feed showed), so both exclusion
paths run on every request.

Catalogues at d = 64: the ml-100k items themselves, 100k items (the goals' size) and, without
``--quick``, 1M items, the larger ones grown around the real items (the real ones first, so the
seen rows stay valid). Each is published with the real snapshotter as the product publishes
(exact below ``snapshot.exact_max_items``, IVF + SQ8 above, nprobe tuned to recall@50 >= 0.95 on
the namespace's users in Redis, :mod:`snapshotter.tuning`), on half of the learner's users: those
whose id's crc32 is even are written to a namespace of their own for the publish to tune on, and
the other half is the held-out set the recall is reported on. Then it is measured:

- ``warmup_*``: the first requests after the recommender's warm-up and heap freeze (what the
  server does at startup): one pass over every user (it also records each answer, the next
  requests' ``seen``); the stated warm-up, left out of every other figure;
- ``inproc_*``: ``Recommender.recommend(user, n=20, seen=...)`` in this process, one thread
  (FAISS and BLAS on one thread each): p50, p99, p99.9, the p99's 95% bootstrap interval (how
  much a sample of this size can say about a p99), by the users' K_u (one search per
  interest), and the collector's pauses during the timed requests (``gc.callbacks``);
- ``inproc_breakdown_ms``: the parts of a request timed separately (Redis GET, decode, FAISS
  search, the serving list), and ``tail_attribution``: for the slowest 1% of those requests, the
  time this thread waited for a CPU (``/proc/thread-self/schedstat`` run delay), the time the
  Redis server's main thread waited for one (its ``/proc/<pid>/schedstat``), collector pauses,
  the part that took longest, and Redis forks (``INFO stats`` total_forks: AOF rewrites) during
  the pass;
- ``ivf_recall_at_50``: recall@50 of the chosen index against exact search on the interest
  vectors of the held-out learner users (``recall_users``), not the tuning half
  (``ivf_recall_at_50_tuning_users``: the same on the tuning half; ``tuning_recall_at_50``: the
  snapshotter's own figure on its sample, ``tuning_queries_source`` says what it tuned on);
  ``served_overlap_at_20``: the served lists through the index vs through exact search;
- ``http_*``: ``GET /users/{id}/recommendations?n=20&seen=...`` against ``diam serve`` in its
  own process: sequential on one keep-alive connection (after the same warm-up), and for the
  100k catalogue ``load``: an open-loop sweep at fixed rates (100, 300, 1000 requests/s), each
  from ``CLIENTS`` client processes (``bench/loadgen.py``) with interleaved timetables; latency
  from the scheduled time (p50, p99, p99.9), errors by kind, the throughput achieved, and the
  server's own view of the same requests (its ``diam_api_request_seconds`` histogram, scraped
  before and after from every server process: p50/p99 interpolated within buckets). A step's
  clients stop ``DRAIN_S`` after its last due time: at a rate above what the server answers,
  the backlog not sent by then is counted as ``unsent`` (an error) instead of drained;
- ``*_cpu_ms_per_request``: CPU time per request, of this thread in process and of the server
  process (all threads) over HTTP: what a request costs whatever else runs on the machine. The
  GIL lets one thread of the server run Python at a time, so about ``1000 /
  server_cpu_ms_per_request`` requests/s is one server process's ceiling;
- ``load_live_clicks``: the 300/s step again while clicks arrive at ``--click-rate`` (200/s)
  on the topic the server tails for live popularity (``diam serve``'s default; every server of
  the bench tails a fresh topic of its own, so nobody else's clicks reach it): the server then
  counts clicks and rebuilds its cold lists every few seconds in a thread of its own;
- ``load_switch_interval_5ms``: the 300/s step again against a server whose threads hand the
  GIL over every 5 ms, Python's default, instead of ``diam serve``'s 0.5 ms
  (``DIAM_SERVE_GIL_SWITCH_INTERVAL_MS``, ``sys.setswitchinterval``): the event loop, which
  computes the requests, waits for the GIL while a background thread (the followers, the
  reload) holds it, and this is the measurement of what the longer wait adds.

Top-level keys are the 100k catalogue (the goals' setting); ``runs`` holds every row. The box
is shared: ``setup.load_avg`` records the load before and after, each row its 1-minute load.

Run: ``python bench/serve.py [--quick]`` with the local stack up (``diam stack up``). Writes
``bench/results/serve.json`` (and ``serve.md``: the tables and the command) and prints the JSON.
"""

from __future__ import annotations

import argparse
import gc
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
import urllib.parse
import uuid
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402
from serve_learner import LearnedUser, LearnerRun, grow_catalogue, learner_run  # noqa: E402

from diam.settings import load_settings  # noqa: E402
from online_model.aggregate import MIN_CANDIDATES, serve_list  # noqa: E402
from serving_cache import UserVectors, encode_user, redis_client, user_key  # noqa: E402
from serving_cache.api import settle_heap  # noqa: E402
from serving_cache.codec import decode_user  # noqa: E402
from serving_cache.namespaces import drop_namespace  # noqa: E402
from serving_cache.reader import fail_fast  # noqa: E402
from serving_cache.recommend import Recommender  # noqa: E402
from serving_cache.retrieval import SnapshotIndex  # noqa: E402
from snapshotter import SnapshotConfig, SnapshotStore, publish  # noqa: E402
from snapshotter.index import exact_topk, recall_at  # noqa: E402
from snapshotter.testing import write_checkpoint  # noqa: E402
from streams.kafka_io import delete_topics, ensure_topic  # noqa: E402

N_TOP = 20
GOAL_ITEMS = 100_000
"""The catalogue size the goals are stated at; its run gives the top-level keys."""
RATES = (100, 300, 1000)
CLIENTS = 4
GIL_PROBE_RATE = 300
DRAIN_S = 60.0
"""A load step's clients stop this long after its last scheduled request; what they have not
sent by then is reported as ``unsent`` (an overloaded step's backlog)."""
WARMUP_MIN = 200
"""At least this many warm-up requests (one pass over every user, repeated if needed)."""


# -- small measuring tools -------------------------------------------------------------------
def pcts(ts: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 99, 99.9)
         ) -> list[float]:
    """Percentiles in ms of durations in seconds (NaN for an empty sample)."""
    a = np.asarray(ts, dtype=np.float64) * 1000
    if not len(a):
        return [float("nan")] * len(qs)
    return [round(float(x), 3) for x in np.percentile(a, qs)]


def p99_ci(ts: list[float], reps: int = 1000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the p99 (ms): what a sample of this size can tell."""
    a = np.asarray(ts) * 1000
    rng = np.random.default_rng(seed)
    boots = np.percentile(a[rng.integers(0, len(a), size=(reps, len(a)))], 99, axis=1)
    return [round(float(x), 3) for x in np.percentile(boots, [2.5, 97.5])]


class GcWatch:
    """Collector pauses, from ``gc.callbacks``: total seconds and count per generation."""

    def __init__(self) -> None:
        self.total = 0.0
        self.by_gen = [0, 0, 0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t
            self.by_gen[info["generation"]] += 1

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def run_delay(path: str) -> float:
    """Seconds the thread (or process main thread) of ``path`` (a schedstat file) has waited on
    a run queue, or NaN when it cannot be read."""
    try:
        with open(path) as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def redis_forks(client: Any) -> int:
    try:
        return int(client.info("stats").get("total_forks", 0))
    except Exception:  # noqa: BLE001 - a cluster or restricted ACL: not reported
        return -1


# -- the catalogue and its users -------------------------------------------------------------
def write_users(client: Any, ns: str, version: str, run: LearnerRun,
                users: list[LearnedUser] | None = None) -> list[str]:
    """Write ``users`` (default: every user of ``run``) to ``ns`` as the dataflow pushes them."""
    users = run.users if users is None else users
    pipe = client.pipeline(transaction=False)
    for u in users:
        uv = UserVectors(seq=u.seq, model=version, k=u.k, d=u.d, dim=u.vecs.shape[1],
                         vecs=u.vecs, ts=u.ts, n=u.n, anchor=run.base.anchor_kind, seen=u.seen)
        pipe.set(user_key(ns, u.user_id), encode_user(uv))
    pipe.execute()
    return [u.user_id for u in users]


def split_users(users: list[LearnedUser]) -> tuple[list[LearnedUser], list[LearnedUser]]:
    """(tuning half, held-out half) by the parity of the crc32 of the user id: the same split in
    every run and process (Python's ``hash`` of a str is salted per process)."""
    tune = [u for u in users if zlib.crc32(u.user_id.encode()) % 2 == 0]
    held = [u for u in users if zlib.crc32(u.user_id.encode()) % 2 == 1]
    return tune, held


def publish_tuned(ck: Path, store: SnapshotStore, client: Any, run: LearnerRun,
                  tune: list[LearnedUser]) -> Any:
    """Publish ``ck`` as the product does (``publish`` with Redis and a namespace), the
    namespace holding the tuning half of the users only. Returns the PublishResult."""
    ns = f"bench-tune-{uuid.uuid4().hex[:10]}"
    try:
        write_users(client, ns, "previous", run, tune)  # vectors of the snapshot before
        return publish(ck, store, client, ns)
    finally:
        drop_namespace(client, ns)


def warm_pass(rec: Recommender, run: LearnerRun, snap: SnapshotIndex
              ) -> tuple[dict[str, list[str]], list[float], int]:
    """The stated warm-up: every user once (at least ``WARMUP_MIN`` requests). Returns each
    user's answer (the next requests' ``seen``), the warm-up latencies, and how many answers
    were checked to leave out the user's pushed seen items."""
    rec.warm_up()
    settle_heap()  # as the server does once its state is loaded
    shown: dict[str, list[str]] = {}
    ts: list[float] = []
    checked = 0
    while len(ts) < WARMUP_MIN:
        for u in run.users:
            s = time.perf_counter()
            r = rec.recommend(u.user_id, n=N_TOP)
            ts.append(time.perf_counter() - s)
            if r.cold:
                raise RuntimeError(f"user {u.user_id} answered cold: {r.reason}")
            if u.user_id not in shown:
                pushed = set(snap.item_ids[u.seen].tolist())
                if pushed & set(r.items):
                    raise RuntimeError(f"user {u.user_id} was served an item they have seen")
                checked += bool(pushed)
            shown[u.user_id] = r.items
    return shown, ts, checked


K_GROUPS = (("1", 1, 1), ("2-4", 2, 4), ("5-8", 5, 8))


def time_inproc(rec: Recommender, ids: list[str], shown: dict[str, list[str]], n: int,
                rng: np.random.Generator, k_of: dict[str, int]) -> dict[str, Any]:
    """Sequential requests in this thread: wall latency, and CPU time of the thread (what the
    request costs, whatever else runs on the machine)."""
    picks = rng.choice(len(ids), n)
    ts = []
    with GcWatch() as g:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for i in picks:
            uid = ids[i]
            s = time.perf_counter()
            rec.recommend(uid, n=N_TOP, seen=shown[uid])
            ts.append(time.perf_counter() - s)
        cpu = time.thread_time() - c0
        wall = time.perf_counter() - t0
    p50, p99, p999 = pcts(ts)
    ks = np.array([k_of[ids[i]] for i in picks])
    by_k = {}
    for name, lo, hi in K_GROUPS:
        sel = [t for t, k in zip(ts, ks, strict=True) if lo <= k <= hi]
        if sel:
            by_k[name] = {"requests": len(sel), "p50_p99_ms": pcts(sel, (50, 99))}
    return {"inproc_p50_ms": p50, "inproc_p99_ms": p99, "inproc_p999_ms": p999,
            "inproc_p99_ci95_ms": p99_ci(ts), "inproc_requests": n,
            "inproc_mean_ms": round(wall / n * 1000, 3),
            "inproc_cpu_ms_per_request": round(cpu / n * 1000, 3),
            "inproc_by_k_u": by_k,
            "inproc_gc": {"pauses_ms": round(g.total * 1000, 3), "by_generation": g.by_gen},
            "inproc_load_avg_1m": round(os.getloadavg()[0], 2)}


def breakdown(rec: Recommender, ids: list[str], shown: dict[str, list[str]], n: int,
              rng: np.random.Generator, client: Any, redis_pid: int | None) -> dict[str, Any]:
    """The parts of a request timed separately, and what the slowest 1% waited on."""
    snap = rec.active
    assert snap is not None
    names = ("redis_get", "decode", "faiss_search", "serve_list")
    parts = np.zeros((n, 4))
    wait_self = np.zeros(n)
    wait_redis = np.zeros(n)
    gc_s = np.zeros(n)
    me = "/proc/thread-self/schedstat"
    theirs = f"/proc/{redis_pid}/schedstat" if redis_pid else "/nonexistent"
    forks0 = redis_forks(client)
    with GcWatch() as g:
        for j, i in enumerate(rng.choice(len(ids), n)):
            uid = ids[i]
            w0, r0, g0 = run_delay(me), run_delay(theirs), g.total
            t = time.perf_counter()
            raw = client.get(user_key(rec.reader.ns, uid))
            t1 = time.perf_counter()
            uv = decode_user(raw)
            t2 = time.perf_counter()
            banned = np.union1d(uv.seen.astype(np.int64),
                                np.array([snap.index_of(x) for x in shown[uid]], dtype=np.int64))
            snap.search(uv.vecs, max(2 * N_TOP, MIN_CANDIDATES) + len(banned))
            t3 = time.perf_counter()
            serve_list(snap.search, uv.vecs, uv.d, N_TOP, banned, snap.item_vecs,
                       snap.item_categories)
            t4 = time.perf_counter()
            # serve_list searches again itself: its part is t4 - t3 minus nothing else
            parts[j] = (t1 - t, t2 - t1, t3 - t2, t4 - t3)
            wait_self[j] = run_delay(me) - w0
            wait_redis[j] = run_delay(theirs) - r0
            gc_s[j] = g.total - g0
    total = parts[:, [0, 1, 3]].sum(axis=1)  # a request: GET, decode, the serving list
    slow = np.argsort(total)[-max(1, n // 100):]
    out: dict[str, Any] = {
        "inproc_breakdown_ms": {k: dict(zip(("p50", "p99"), pcts(parts[:, c], (50, 99)),
                                            strict=True)) for c, k in enumerate(names)},
    }
    out["inproc_breakdown_ms"]["faiss_search"]["note"] = (
        "one search of the interests for max(2n, 50) + seen candidates, timed alone; "
        "serve_list includes its own search")

    def ms(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return round(float(x.mean()) * 1000, 3) if len(x) else None

    out["tail_attribution"] = {
        "requests": n,
        "slowest": len(slow),
        "request_p50_p99_ms": pcts(total, (50, 99)),
        "slowest_mean_ms": ms(total[slow]),
        "slowest_own_cpu_wait_mean_ms": ms(wait_self[slow]),
        "all_own_cpu_wait_mean_ms": ms(wait_self),
        "slowest_redis_cpu_wait_mean_ms": ms(wait_redis[slow]),
        "all_redis_cpu_wait_mean_ms": ms(wait_redis),
        "slowest_with_gc_pause": int((gc_s[slow] > 0).sum()),
        "gc_pauses_ms": round(g.total * 1000, 3),
        "slowest_by_longest_part": {k: int((parts[slow][:, [0, 1, 3]].argmax(axis=1) == c).sum())
                                    for c, k in enumerate(("redis_get", "decode", "serve_list"))},
        "redis_forks_during": (redis_forks(client) - forks0) if forks0 >= 0 else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    return out


# -- HTTP ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def rec_path(uid: str, seen: list[str]) -> str:
    q = urllib.parse.urlencode([("n", N_TOP)] + [("seen", s) for s in seen])
    return f"/users/{urllib.parse.quote(uid)}/recommendations?{q}"


def server_hist(port: int, processes: int = 1) -> dict[float, float]:
    """The server's cumulative bucket counts of the recommendation route, summed over its
    ``processes``: each has its own /metrics, and a new connection reaches one of them (the
    kernel's choice), so connections are opened until each process (its /health ``pid``) has
    been read once."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    read: set[int] = set()
    for _ in range(200 * processes):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        pid = json.loads(_get(conn, "/health")[1])["pid"] if processes > 1 else 0
        if pid not in read:
            read.add(pid)
            _, body = _get(conn, "/metrics")
            for fam in text_string_to_metric_families(body.decode()):
                if fam.name != "diam_api_request_seconds":
                    continue
                for s in fam.samples:
                    if s.name.endswith("_bucket") and "recommendations" in s.labels.get("route",
                                                                                         ""):
                        le = float(s.labels["le"])
                        out[le] = out.get(le, 0.0) + s.value
        conn.close()
        if len(read) == processes:
            return out
    raise RuntimeError(f"/metrics read from {len(read)} of {processes} server processes")


def hist_quantiles(before: dict[float, float], after: dict[float, float],
                   qs: tuple[float, ...] = (0.5, 0.99)) -> list[float | None]:
    """Quantiles (ms) of the observations between two scrapes, linear within a bucket."""
    les = sorted(after)
    cum = np.array([after[le] - before.get(le, 0.0) for le in les])
    if not len(cum) or cum[-1] <= 0:
        return [None] * len(qs)
    out: list[float | None] = []
    for q in qs:
        rank = q * cum[-1]
        i = int(np.searchsorted(cum, rank))
        lo_le = les[i - 1] if i > 0 else 0.0
        hi_le = les[i]
        if not np.isfinite(hi_le):
            out.append(round(lo_le * 1000, 3))  # beyond the last finite bound
            continue
        lo_c = cum[i - 1] if i > 0 else 0.0
        frac = (rank - lo_c) / max(cum[i] - lo_c, 1e-9)
        out.append(round((lo_le + frac * (hi_le - lo_le)) * 1000, 3))
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its live children
    (the server processes of ``diam serve --processes``)."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    own = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return own + sum(process_cpu_s(int(c)) for c in fh.read().split())


def open_loop(port: int, paths: list[str], rate: float, seconds: float, clients: int,
              rng: np.random.Generator, server_pid: int, processes: int = 1,
              timeout_s: float = 10.0) -> dict[str, Any]:
    """``rate`` requests/s for ``seconds`` from ``clients`` processes: request ``i`` is due at
    ``i / rate`` and goes to client ``i % clients``. The clients stop :data:`DRAIN_S` after the
    last due time; requests not sent by then count as ``unsent``, and the percentiles are of
    the requests sent."""
    n = int(rate * seconds)
    picks = rng.integers(len(paths), size=n).tolist()
    offsets = (np.arange(n) / rate).tolist()
    procs = []
    for c in range(clients):
        p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loadgen.py")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(json.dumps({"port": port, "paths": paths, "picks": picks[c::clients],
                                  "offsets": offsets[c::clients], "timeout_s": timeout_s,
                                  "deadline_s": seconds + DRAIN_S}) + "\n")
        p.stdin.flush()
        procs.append(p)
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a load client did not start")
    before = server_hist(port, processes)
    cpu0 = process_cpu_s(server_pid)
    t0 = time.monotonic() + 0.2
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{t0}\n")
        p.stdin.flush()
    lat: list[float] = []
    svc: list[float] = []
    errors: dict[str, int] = {}
    unsent = 0
    end = t0
    for p in procs:
        # a request in flight at the deadline still has its timeout to end
        out, _ = p.communicate(timeout=seconds + DRAIN_S + timeout_s + 30)
        res = json.loads(out.strip().splitlines()[-1])
        lat += res["latency"]
        svc += res["service"]
        unsent += res["unsent"]
        end = max(end, res["end"])
        for k, v in res["errors"].items():
            errors[k] = errors.get(k, 0) + v
    server_cpu = process_cpu_s(server_pid) - cpu0
    after = server_hist(port, processes)
    sent = n - unsent
    if unsent:
        errors["unsent"] = unsent
    p50, p99, p999 = pcts(lat)
    s50, s99 = pcts(svc, (50, 99))
    server = hist_quantiles(before, after)
    return {"rate": rate, "clients": clients, "seconds": seconds, "requests": n,
            "unsent": unsent, "achieved_per_s": round(sent / max(end - t0, 1e-9), 1),
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
            "p99_ci95_ms": p99_ci(lat),
            "service_p50_ms": s50, "service_p99_ms": s99,
            "server_p50_ms": server[0], "server_p99_ms": server[1],
            "server_cpu_ms_per_request": round(server_cpu / max(sent, 1) * 1000, 3),
            "errors": sum(errors.values()), "errors_by_kind": errors,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


class ClickFeed:
    """Clicks produced at a fixed rate to the topic the server tails for live popularity, in a
    thread of this process, from :meth:`start` to :meth:`stop`. Known items only: an unknown
    item's clicks would grow the index instead (its own subject)."""

    def __init__(self, kafka: Any, topic: str, users: list[str], items: list[str],
                 rate: float) -> None:
        self.kafka, self.topic, self.users, self.items, self.rate = kafka, topic, users, items, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def start(self) -> None:
        from confluent_kafka import Producer

        from streams.events import ClickEvent, encode_event

        prod = Producer({**self.kafka.client_config(), "linger.ms": 5})
        rng = np.random.default_rng(7)

        def loop() -> None:
            t0 = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                due = int((now - t0) * self.rate)
                while self.sent < due:
                    ev = ClickEvent(self.users[int(rng.integers(len(self.users)))],
                                    self.items[int(rng.integers(len(self.items)))],
                                    int(time.time() * 1000))
                    prod.produce(self.topic, key=ev.user_id.encode(), value=encode_event(ev))
                    self.sent += 1
                prod.poll(0)
                time.sleep(0.005)
            prod.flush(10)

        self._thread = threading.Thread(target=loop, name="click-feed", daemon=True)
        self._thread.start()


def time_http(store_dir: Path, redis_url: str, ns: str, ids: list[str],
              shown: dict[str, list[str]], pushed: dict[str, set[str]],
              args: argparse.Namespace, rng: np.random.Generator, log: Path,
              rates: tuple[int, ...] = (), switch_interval: float | None = None,
              clicks_topic: str = "", feed: ClickFeed | None = None) -> dict[str, Any]:
    """Start ``diam serve`` on the store; sequential requests, then the open-loop sweep at
    ``rates``. The warm-up answers are checked to leave out both the user's ``pushed`` seen
    items and the request's ``seen``. The server tails ``clicks_topic`` for live popularity
    (``diam serve``'s default); with ``feed``, one more step at ``GIL_PROBE_RATE`` runs while
    clicks arrive there. ``switch_interval``: the server's ``sys.setswitchinterval`` (how long
    a thread holding the GIL runs before another thread that asks for it gets it), through
    ``DIAM_SERVE_GIL_SWITCH_INTERVAL_MS``; None: ``diam serve``'s default (0.5 ms)."""
    port = free_port()
    env = {**os.environ, "DIAM_SNAPSHOT_DIR": str(store_dir), "DIAM_REDIS_URL": redis_url,
           "DIAM_REDIS_NAMESPACE": ns}
    if clicks_topic:
        env["DIAM_KAFKA_CLICKS_TOPIC"] = clicks_topic
    if switch_interval is not None:
        env["DIAM_SERVE_GIL_SWITCH_INTERVAL_MS"] = str(switch_interval * 1000)
    env["DIAM_SERVE_PROCESSES"] = str(args.processes)
    cmd = [sys.executable, "-m", "diam", "serve", "--port", str(port)]
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    paths = [rec_path(uid, shown[uid]) for uid in ids]
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if _get(conn, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"diam serve did not become healthy; see {log}")
            time.sleep(0.2)
        warm = []
        for i in list(range(len(paths))) * max(1, -(-WARMUP_MIN // len(paths))):
            s = time.perf_counter()
            status, body = _get(conn, paths[i])
            warm.append(time.perf_counter() - s)
            if status != 200:
                raise RuntimeError(f"non-200 answer {status}; see {log}")
            got = {x["item_id"] for x in json.loads(body)["items"]}
            if got & (pushed[ids[i]] | set(shown[ids[i]])):
                raise RuntimeError(f"user {ids[i]} was served an item they have seen")
        ts = []
        cpu0 = process_cpu_s(server.pid)
        for i in rng.choice(len(paths), args.requests):
            s = time.perf_counter()
            if _get(conn, paths[i])[0] != 200:
                raise RuntimeError(f"non-200 answer; see {log}")
            ts.append(time.perf_counter() - s)
        server_cpu = process_cpu_s(server.pid) - cpu0
        hs = []  # the framework's own cost: /health is one Redis PING and no compute
        for _ in range(100):
            s = time.perf_counter()
            _get(conn, "/health")
            hs.append(time.perf_counter() - s)
        conn.close()
        p50, p99, p999 = pcts(ts)
        out: dict[str, Any] = {
            "http_warmup_requests": len(warm), "http_seen_checked": len(warm),
            "http_warmup_p50_p99_ms": pcts(warm, (50, 99)),
            "http_p50_ms": p50, "http_p99_ms": p99, "http_p999_ms": p999,
            "http_p99_ci95_ms": p99_ci(ts), "http_requests": len(ts),
            "http_server_cpu_ms_per_request": round(server_cpu / len(ts) * 1000, 3),
            "http_health_p50_ms": pcts(hs, (50,))[0],
            "http_request_bytes_mean": round(float(np.mean([len(p) for p in paths])), 1),
            "http_load_avg_1m": round(os.getloadavg()[0], 2),
        }
        if rates:
            out["load"] = [open_loop(port, paths, r, args.load_seconds, CLIENTS, rng, server.pid,
                                     args.processes) for r in rates]
        if feed is not None:
            feed.start()
            time.sleep(2.0)  # the server's first refresh of the cold lists comes with the clicks
            try:
                step = open_loop(port, paths, GIL_PROBE_RATE, args.load_seconds, CLIENTS, rng,
                                 server.pid, args.processes)
            finally:
                feed.stop()
            step["clicks_per_s"] = feed.rate
            step["clicks_sent"] = feed.sent
            out["load_live_clicks"] = step
        return out
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def ivf_recall(snap: SnapshotIndex, emb: np.ndarray, q: np.ndarray) -> float:
    """Recall@50 of the snapshot's index against exact search, on queries ``q`` [Q, d]."""
    _, approx = snap.index.search(q, 50)
    return round(recall_at(approx, exact_topk(emb, q, 50)), 4)


# -- one catalogue ---------------------------------------------------------------------------
def run_catalogue(name: str, n_items: int, run: LearnerRun, args: argparse.Namespace,
                  client: Any, kafka: Any, redis_url: str, redis_pid: int | None, tmp: Path,
                  rng: np.random.Generator, exact: bool, load: bool) -> list[dict[str, Any]]:
    t = time.perf_counter()
    ids, emb, cats = grow_catalogue(run.base, n_items, seed=1)
    pop = np.ones(len(ids), dtype=np.int64)
    ck = write_checkpoint(tmp / f"ck-{name}", item_emb=emb, categories=cats,
                          category_names=run.base.category_names, item_ids=ids,
                          item_pop=pop, state_dict=False)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp / f"snaps-{name}"), seed=0))
    tune, held = split_users(run.users)
    res = publish_tuned(ck, store, client, run, tune)
    publish_s = time.perf_counter() - t
    info = res.manifest["index"]
    snap = SnapshotIndex.load(res.path)
    ns = f"bench-{uuid.uuid4().hex[:10]}"
    topic = f"bench.serve.clicks.{uuid.uuid4().hex[:8]}"  # no one else's clicks
    user_ids = write_users(client, ns, res.version, run)
    try:
        rec = Recommender(snap, client, ns, threads=1)
        shown, warm, checked = warm_pass(rec, run, snap)
        q = np.vstack([u.vecs for u in held])[: args.recall_queries]
        q_tune = np.vstack([u.vecs for u in tune])[: args.recall_queries]
        ivf = info["kind"] != "flat"
        recall = ivf_recall(snap, emb, q) if ivf else None
        recall_tune = ivf_recall(snap, emb, q_tune) if ivf else None
        row: dict[str, Any] = {
            "catalogue": name, "catalogue_items": int(len(ids)), "index": info["factory"],
            "users": len(user_ids), "seen_checked_users": checked,
            "warmup_requests": len(warm), "warmup_p50_p99_ms": pcts(warm, (50, 99)),
            "warmup_first_10_ms": [round(x * 1000, 3) for x in warm[:10]],
        }
        k_of = {u.user_id: u.k for u in run.users}
        row.update(time_inproc(rec, user_ids, shown, args.requests, rng, k_of))
        row.update(breakdown(rec, user_ids, shown, min(args.requests, 2000), rng, client,
                             redis_pid))
        row.update({"ivf_recall_at_50": recall, "recall_queries": int(len(q)),
                    "recall_users": len(held), "ivf_recall_at_50_tuning_users": recall_tune,
                    "recall_split": "crc32(user id) even: tuning namespace; odd: recall",
                    "tuning_queries_source": info.get("tuning_queries_source"),
                    "tuning_queries": info.get("tuning_queries"),
                    "tuning_users": info.get("tuning_users"),
                    "nprobe": info.get("nprobe"), "nlist": info.get("nlist"),
                    "tuning_recall_at_50": info.get("recall_at_50"),
                    "tuning_recall_by_nprobe": info.get("recall_by_nprobe"),
                    "publish_s": round(publish_s, 1)})
        rows = [row]
        if exact and info["kind"] != "flat":
            import faiss

            flat = faiss.IndexFlatIP(emb.shape[1])
            flat.add(emb)
            exact_rec = Recommender(replace(snap, index=flat, kind="flat", nprobe=None), client,
                                    ns, threads=1)
            sample = user_ids[: 300 if len(ids) < 10**6 else 100]  # exact search at 1M is slow
            overlap = [len(set(rec.recommend(u, n=N_TOP, seen=shown[u]).items)
                           & set(exact_rec.recommend(u, n=N_TOP, seen=shown[u]).items)) / N_TOP
                       for u in sample]
            row["served_overlap_at_20"] = round(float(np.mean(overlap)), 4)
            n_exact = max(30, args.requests // (50 if len(ids) >= 10**6 else 10))
            ex = time_inproc(exact_rec, user_ids, shown, n_exact, rng, k_of)
            rows.append({"catalogue": name, "catalogue_items": int(len(ids)),
                         "index": "Flat (exact)", **ex})
        pushed = {u.user_id: set(snap.item_ids[u.seen].tolist()) for u in run.users}
        ensure_topic(kafka, topic, partitions=1)
        feed = (ClickFeed(kafka, topic, user_ids, snap.item_ids[: len(run.base.item_ids)].tolist(),
                          args.click_rate) if load and args.click_rate > 0 else None)
        row.update(time_http(store.root, redis_url, ns, user_ids, shown, pushed, args, rng,
                             tmp / f"serve-{name}.log", RATES if load else (),
                             clicks_topic=topic, feed=feed))
        if load:  # the GIL: the same server at Python's default switch interval (5 ms)
            probe = time_http(store.root, redis_url, ns, user_ids, shown, pushed, args, rng,
                              tmp / f"serve-{name}-si.log", (GIL_PROBE_RATE,), 0.005,
                              clicks_topic=topic)
            row["load_switch_interval_5ms"] = probe["load"][0]
        return rows
    finally:  # nothing left behind: the users, the clicks topic (made only in some runs)
        drop_namespace(client, ns)
        delete_topics(kafka, [topic])


# -- report ----------------------------------------------------------------------------------
def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        "# Serving latency under load (`bench/serve.py`)",
        "",
        f"Command: `{s['command']}` ({s['seconds']} s, load average before/after "
        f"{s['load_avg']['before']} / {s['load_avg']['after']}, {s['cpus']} CPUs, "
        f"Python {s['python']}). Users: {s['learner']['users']} from the online learner over "
        f"{s['learner']['events']} events of {s['learner']['dataset']} "
        f"(`{s['learner']['checkpoint']}`, anchors {s['learner']['anchors']}); "
        f"K_u counts {s['learner']['k_u_counts']}, d_u p10/p50/p90 "
        f"{s['learner']['d_u_p10_p50_p90']}, {s['learner']['seen_items_mean']} pushed seen "
        f"items per user on average, plus 20 `seen` ids per request. Warm-up: {s['warmup']}.",
        "",
        "| catalogue | index | nprobe | in-process p50 / p99 / p99.9 ms (p99 95% CI) | CPU ms per "
        "request | p50 / p99 by K_u 1, 2-4, 5-8 | warm-up p50 / p99 | IVF recall@50 (held-out learner) "
        "| served overlap@20 | HTTP seq. p50 / p99 ms | server CPU ms per request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        by_k = ", ".join(f"{v['p50_p99_ms'][0]} / {v['p50_p99_ms'][1]}"
                         for v in r["inproc_by_k_u"].values())
        lines.append(
            f"| {r['catalogue']} | {r['index']} | {r.get('nprobe', '')} | {r['inproc_p50_ms']} / "
            f"{r['inproc_p99_ms']} / {r['inproc_p999_ms']} ({r['inproc_p99_ci95_ms']}) | "
            f"{r['inproc_cpu_ms_per_request']} | {by_k} | "
            f"{r.get('warmup_p50_p99_ms', '')} | {r.get('ivf_recall_at_50', '')} | "
            f"{r.get('served_overlap_at_20', '')} | "
            f"{r.get('http_p50_ms', '')} / {r.get('http_p99_ms', '')} | "
            f"{r.get('http_server_cpu_ms_per_request', '')} |")
    head = next(r for r in result["runs"] if r.get("load"))
    lines += ["", f"Open-loop load on the {head['catalogue']} catalogue, {CLIENTS} client "
              "processes, latency from the scheduled time:", "",
              "| offered req/s | achieved | requests | p50 ms | p99 ms (95% CI) | p99.9 ms | "
              "service p50 / p99 | server p50 / p99 | server CPU ms per request | errors |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ld in head["load"]:
        lines.append(
            f"| {ld['rate']} | {ld['achieved_per_s']} | {ld['requests']} | {ld['p50_ms']} | "
            f"{ld['p99_ms']} ({ld['p99_ci95_ms']}) | {ld['p999_ms']} | {ld['service_p50_ms']} / "
            f"{ld['service_p99_ms']} | {ld['server_p50_ms']} / {ld['server_p99_ms']} | "
            f"{ld['server_cpu_ms_per_request']} | {ld['errors']} {ld['errors_by_kind'] or ''} |")
    for label, key in (("live clicks at {clicks_per_s}/s", "load_live_clicks"),
                       ("server switch interval 5 ms (Python's default)",
                        "load_switch_interval_5ms")):
        pr = head.get(key)
        if not pr:
            continue
        lines.append(
            f"| {pr['rate']}, {label.format(**pr)} | {pr['achieved_per_s']} | "
            f"{pr['requests']} | {pr['p50_ms']} | {pr['p99_ms']} ({pr['p99_ci95_ms']}) | "
            f"{pr['p999_ms']} | {pr['service_p50_ms']} / {pr['service_p99_ms']} | "
            f"{pr['server_p50_ms']} / {pr['server_p99_ms']} | {pr['server_cpu_ms_per_request']} "
            f"| {pr['errors']} {pr['errors_by_kind'] or ''} |")
    lines += ["", "Tail attribution (the slowest 1% of the breakdown pass):", "",
              "| catalogue | slowest mean ms | own CPU wait ms (all) | Redis CPU wait ms (all) "
              "| with a GC pause | longest part | Redis forks |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        a = r.get("tail_attribution")
        if a:
            lines.append(
                f"| {r['catalogue']} | {a['slowest_mean_ms']} | {a['slowest_own_cpu_wait_mean_ms']}"
                f" ({a['all_own_cpu_wait_mean_ms']}) | {a['slowest_redis_cpu_wait_mean_ms']} "
                f"({a['all_redis_cpu_wait_mean_ms']}) | {a['slowest_with_gc_pause']}/"
                f"{a['slowest']} | {a['slowest_by_longest_part']} | {a['redis_forks_during']} |")
    g = result["goals"]
    lines += ["", f"Goals at {g['at']}: " + ", ".join(f"{k} {v}" for k, v in g.items()
                                                      if k != "at") + ".", ""]
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
## How the quick-mode tail was examined

Each suspicion has a measurement in the JSON, per catalogue:

- **Warm-up**: `warmup_*` are the first requests after the recommender's warm-up and heap
  freeze (one pass over every user, at least 200 requests); they are excluded from every other
  figure, in `--quick` and in the full run alike. `warmup_first_10_ms` shows the very first.
- **Sample size**: `*_p99_ci95_ms` is the p99's bootstrap interval. The old `--quick` timed 500
  requests, so its p99 was the 5th slowest: one descheduling on a shared box moves it by
  milliseconds. `--quick` now times 2,000 in-process requests (the full run 3,000).
- **Who is asked**: a request searches once per interest, so its cost grows with K_u
  (`inproc_by_k_u`; the learner's users' K_u are counted in `setup.learner.k_u_counts`, and
  the table's by-K_u column shows the buckets they fill). The search is most of a request's cost at 100k items,
  and it grows with nprobe: the snapshotter tunes nprobe on the served users' vectors in Redis
  (here the tuning half of the learner's users; `tuning_recall_by_nprobe`), which need fewer
  lists than mixtures of item vectors (the fallback) for the same recall.
- **GC**: `inproc_gc` counts the collector's pauses during the timed requests, and the
  attribution counts slow requests that contained one.
- **Redis client**: redis-py's pool keeps one connection per thread; no health check is
  configured (`health_check_interval` 0: no PING before commands); `http_health_p50_ms` is the
  HTTP stack plus one PING. The Redis server's own CPU wait during each GET is read from its
  schedstat, and `redis_forks_during` counts forks (the stack's Redis has AOF on; a rewrite
  forks).
- **CPU contention**: `*_own_cpu_wait_*` is the time the measuring thread was runnable but not
  running (the kernel's run delay). When it is close to a slow request's excess over the
  median, the machine, not the code, made that request slow; it is the figure to read first on
  a shared box.
- **The GIL in the server**: the recommendation route runs in the event loop's thread (until
  1ea1874 each request went to a worker thread and back, which cost CPU on every request), and
  one thread runs Python at a time. `server_cpu_ms_per_request` (the server process's CPU per
  request, independent of the load) bounds one process at about `1000 /
  server_cpu_ms_per_request` requests/s; rates near that bound queue whatever the switch
  interval. Below it, the loop waits for the GIL while a background thread holds it, up to the
  switch interval: `diam serve` sets 0.5 ms (`DIAM_SERVE_GIL_SWITCH_INTERVAL_MS`), and
  `load_switch_interval_5ms` repeats the 300/s step at Python's default 5 ms, so the
  difference is that wait. `service_*` (from the send) against the latency from the schedule
  shows queueing in front of the server; `server_*` (its own histogram, taken inside the app)
  against `service_*` shows the time in the event loop and the HTTP parser.
- **Background threads**: with live popularity on (the default), the server's click thread
  rebuilds the active snapshot's cold lists from the click counts every 5 s
  (`SnapshotIndex.set_live_popularity`: per category, a partition to its most popular items;
  until 9eb92aa it ordered the whole catalogue with a Python loop over its items, holding the
  GIL for a large part of a second on the larger catalogues). `load_live_clicks` measures what the rebuilds do to requests; without clicks (the other
  steps) the thread only polls.
"""


FULL = {"requests": 3000, "load_seconds": 30.0}
"""The full run's sizes of the options that default to None (``--quick`` fills in QUICK's)."""
QUICK = {"requests": 2000, "load_seconds": 8.0}


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="ml-100k and 100k items only, shorter load steps")
    ap.add_argument("--large-items", type=int, default=1_000_000,
                    help="Items of the largest catalogue (default 1M; --quick leaves it out)")
    ap.add_argument("--requests", type=int, default=None,
                    help="Timed requests per in-process and sequential HTTP measurement "
                         "(default 3000, --quick 2000)")
    ap.add_argument("--load-seconds", type=float, default=None,
                    help="Seconds per rate of the open-loop sweep (default 30, --quick 8)")
    ap.add_argument("--events", type=int, default=None,
                    help="Events of the learner's stream (default: all of ml-100k)")
    ap.add_argument("--click-rate", type=float, default=200.0,
                    help="Clicks/s on the server's clicks topic in the live-clicks step "
                         "(0: no such step)")
    ap.add_argument("--recall-queries", type=int, default=2000,
                    help="Learner interest vectors the recall is measured on")
    ap.add_argument("--processes", type=int, default=1,
                    help="diam serve --processes for the HTTP steps (each load client keeps one "
                    "connection, which the kernel gives to one process)")
    ap.add_argument("--out", type=Path, default=None, help=sized_out_help(
        "serve", ("large_items", "requests", "load_seconds", "click_rate", "recall_queries"),
        quick="--quick or --events", beside="its .md", variants=("processes",)))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of these sizes writes (``provenance.sized_out``): only a
    full run at every default size writes the committed ``serve.json`` and ``serve.md``
    (``--events`` plays part of ml-100k: a quick run)."""
    if args.out:
        return Path(args.out)
    return sized_out(ap, args, "serve", ("large_items", "requests", "load_seconds", "click_rate", "recall_queries"),
                     quick=args.quick or args.events is not None, full=FULL,
                     variants=("processes",))


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    args.out = results_path(ap, args)
    prov = provenance()  # when and on which code this run starts
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    args.requests = args.requests or (QUICK if args.quick else FULL)["requests"]
    args.load_seconds = args.load_seconds or (QUICK if args.quick else FULL)["load_seconds"]
    sizes = [GOAL_ITEMS] + ([] if args.quick or args.large_items <= GOAL_ITEMS
                            else [args.large_items])

    settings = load_settings()
    client = fail_fast(redis_client(settings.redis))
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"Redis at {settings.redis.url} does not answer ({exc}); "
                 "start the stack: diam stack up")
    try:
        redis_pid: int | None = int(client.info("server")["process_id"])
    except Exception:  # noqa: BLE001 - a cluster or a restricted ACL
        redis_pid = None
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    load_before = load_avg()
    run = learner_run(settings, ROOT / settings.data_dir / "ml-100k", events=args.events)
    print(f"learner: {run.info}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        n0 = len(run.base.item_ids)
        runs += run_catalogue("ml-100k", n0, run, args, client, settings.kafka,
                              settings.redis.url, redis_pid, tmp, rng, exact=False, load=False)
        for n in sizes:
            runs += run_catalogue(f"grown-{n // 1000}k", n, run, args, client, settings.kafka,
                                  settings.redis.url, redis_pid, tmp, rng, exact=True,
                                  load=n == GOAL_ITEMS)
    head = next(r for r in runs if r["catalogue_items"] == GOAL_ITEMS and "http_p50_ms" in r)
    at300 = next(ld for ld in head["load"] if ld["rate"] == 300)
    result: dict[str, Any] = {k: head[k] for k in (
        "catalogue_items", "inproc_p50_ms", "inproc_p99_ms", "inproc_p999_ms", "http_p50_ms",
        "http_p99_ms", "ivf_recall_at_50", "nprobe")}
    result["load"] = head["load"]
    result["runs"] = runs
    result["goals"] = {
        "at": f"{GOAL_ITEMS} items, learner users, n = {N_TOP}, seen excluded",
        "inproc_p99_below_2ms": head["inproc_p99_ms"] < 2.0,
        "http_p99_at_300_per_s_4_clients_below_10ms": (at300["p99_ms"] < 10.0
                                                       and at300["errors"] == 0),
        "ivf_recall_at_50_learner_at_least_0.95": (head["ivf_recall_at_50"] or 0) >= 0.95,
    }
    result["provenance"] = prov
    result["setup"] = {
        "quick": args.quick, "n": N_TOP, "requests": args.requests,
        "load_seconds_per_rate": args.load_seconds, "rates": list(RATES), "clients": CLIENTS,
        "live_clicks_per_s": args.click_rate, "server_processes": args.processes,
        "learner": run.info,
        "warmup": (f"the recommender's warm-up and heap freeze, then every user once (at least "
                   f"{WARMUP_MIN} requests), in process and over HTTP; the load sweep follows "
                   "the sequential HTTP requests on the same server"),
        "threads": "1 (FAISS OpenMP and numpy BLAS)",
        "http_client": "http.client keep-alive; load: bench/loadgen.py processes",
        "redis": settings.redis.url, "cpus": os.cpu_count(),
        "load_avg": {"before": load_before, "after": load_avg()},
        "python": platform.python_version(),
        "command": "python bench/serve.py" + (" --quick" if args.quick else "")
                   + (f" --processes {args.processes}" if args.processes > 1 else ""),
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
