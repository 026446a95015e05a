"""Throughput, freshness and footprint of the online dataflow against the real stack, in the
served configuration: a DIAM checkpoint (K_max = 8; users anchored on the network, re-run every
``reanchor_every`` events and at once on a click below ``reanchor_cos``), a recovery store,
bursty sessions with a trickle of new users. The checkpoint's weights are untrained but its
item table: the cost of one run of the network does not depend on the weights, but how often
the trigger fires does (``network_runs_per_event`` in the JSON, against
``details.guarded.inferences_per_event`` for the trained network on ml-100k in
``prequential.json``). It is not a pessimistic bound on this stream: a network trained on its
users re-runs more often, because its gate gives them fewer interests than the untrained one's
(``python bench/trigger_cost.py --base trained``, ``bench/results/trigger_cost_trained.json``).
``real_clicks`` measures the same one-process run on real clicks and the real network:
ml-100k's second half in time, each user played 8 times under distinct ids, on the network
``bench/prequential.py`` trains on the first half (``replay_events``), where the trigger fires
at the rate it does in ``prequential.json``.

Prints one JSON object and writes ``bench/results/stream.json``:

- ``base`` ("diam"), ``recovery`` (true), ``reanchor_every``, ``reanchor_cos``, ``arrivals``;
  ``network_runs_per_event``: the network's runs per event in the in-process pass over the run's
  events (``logic_us_per_event``'s);
  ``anchor_ms_p50`` / ``anchor_ms_p99``: the compiled inference head (numba) on a 50-item history
  (the served network reads its window, ``anchor_network_window`` items), one user at a time as
  the stream runs it; ``anchor_ms_per_user_torch_batched_64`` for reference; the same three
  with ``_50_item_network`` for a network trained on, and reading, all 50;

- ``events_per_s``: events through the full dataflow (decode, validate, learn, push to Redis) in
  one process with one worker, over a bounded topic; ``bare_consumer_events_per_s``: a bare
  confluent-kafka consume loop over the same topic in the same run; ``ratio_to_bare``. Both are
  medians of ``--repeats`` runs (5), listed in ``events_per_s_runs`` and
  ``bare_consumer_events_per_s_runs``: on two cores shared with the broker and Redis, single
  runs of the same code differ widely (``events_per_s_runs`` shows by how much), the bare loop
  by more. The bare loop consumes
  ``consume_batch`` messages per call, the dataflow source's batch size;
  ``events_per_s_no_learning`` (runs in ``events_per_s_no_learning_runs``, ratio in
  ``ratio_to_bare_no_learning``): the same dataflow with the learner's update removed
  (``bench/stream_floor.py``: decoding, Bytewax's per-user step, pushes and Redis writes as in
  ``diam run``), the ceiling any learner could reach in this dataflow on this machine;
  ``events_per_cpu_s``: the same run's events per CPU second of the dataflow process (all its
  threads), roughly what it would sustain on a core of its own; the machine's two cores are
  shared with the broker and Redis.
- ``events_per_s_two_workers`` (runs in ``events_per_s_two_workers_runs``,
  ``events_per_cpu_s_two_workers``): the same process with two worker threads (``diam run
  --workers 2``, recovery on), run in turns with the one-worker and no-learning runs. The
  learner's compiled kernels release the GIL, so the two workers' learning overlaps; their
  Python (decoding, Bytewax's step, pushes) still takes turns on the GIL.
- ``freshness_p50_ms`` / ``freshness_p99_ms`` (medians over ``--fresh-repeats`` runs, each
  in ``freshness_runs``) and ``freshness_p999_ms_worst``: produce time → the user's vector
  (with a seq at least the event's offset) visible in Redis, for a sample of events offered at ``offered_rate``
  events/s to a tailing dataflow in its own process (recovery on, its default when tailing);
  also at ``low_rate``, and at ``offered_rate`` with two processes over disjoint partitions;
  ``freshness_*_two_workers`` (runs in ``freshness_runs_two_workers``): the same repeats with
  two worker threads in the tailing process (``diam run --tail --workers 2``), each run in
  turn with the one-worker run of the same arrivals, the order alternating by repeat.
  Arrivals (``freshness_arrivals``) are the throughput runs' bursty sessions; once more at
  ``offered_rate`` in lock-step (``freshness_*_ms_lockstep``: the 2000 users click in turn,
  so they all re-run the network within the same 0.4 s every ``reanchor_every`` clicks), a
  stress pattern for synchronised users.
  Each window (``freshness_window_s``: 30 s, 12 s with ``--quick``) spans epoch ends
  (``epoch_interval_s``), where the recovery snapshots pause the dataflow. It follows a
  warm-up at the same rate (``freshness_warmup_s``: 10 s, 6 s with ``--quick``) whose events are
  not sampled: the 2000 users' first events (new state, anchoring) and the process's first
  batches are start-up, not the steady state a running stream serves from. The producer
  lingers ``freshness_producer_linger_ms`` (5 ms, librdkafka's default and ``diam produce
  --rate``'s); the dataflow fetches with ``dataflow_fetch`` (``KafkaConfig.fetch_wait_max_ms`` and ``fetch_min_bytes``).
- ``redis_bytes_per_user``: Redis ``MEMORY USAGE`` of users at K_u = 4, d = 64;
  ``state_bytes_per_user``: the per-user snapshot Bytewax stores (``_UserLogic.snapshot`` pickled);
  ``snapshot_us_per_user``: its cost at each epoch end, per touched user.
- ``logic_us_per_event``: the dataflow's per-user step (``_UserLogic.on_batch``: the learner and
  the push bookkeeping) over every event of the run in this process, each user's clicks of a
  source batch in one call as Bytewax hands them (``logic_pass``), without Kafka, Bytewax or
  Redis; ``decode_us_per_event``: decoding and validating one payload. What is left of
  ``1e6 / events_per_s`` is Kafka, Bytewax's routing and state handling, and the Redis writes.
- ``real_clicks``: ``events_per_s`` (median of ``--repeats`` runs, each in
  ``events_per_s_runs``; every record checked valid), ``events_per_cpu_s``,
  ``events_per_s_two_workers`` (runs and CPU as at the top level, in turns with the others),
  ``events_per_s_no_learning`` (``bench/stream_floor.py`` on the same topic),
  ``network_runs_per_event`` and ``logic_us_per_event`` of the in-process pass (run right
  after the synthetic stream's), ``mean_distinct_ids_per_batch``, on the replay of real clicks
  described above (``--replay-data``, ``--replay-copies``; null when the prepared dataset is
  not there). ``mean_distinct_ids_per_batch`` at the top level is the synthetic stream's.
- ``mean_clicks_per_learn_call`` (top level: the synthetic stream; in ``real_clicks``: the
  replay): valid clicks over the learner's batched calls in the timed dataflow runs (``diam
  run``'s summary counts them), i.e. how many clicks a user's step gets per source batch in
  the real dataflow, whose batches are per partition and sized by what a fetch holds;
  ``logic_pass`` feeds full ``consume_batch`` batches of the whole stream, so its clicks per
  call (``mean_distinct_ids_per_batch`` gives them) differ.
- ``events_per_s_two_processes``: the same bounded topic through two independent dataflow
  processes over disjoint partitions (``diam run --partitions``); also reported: two processes
  as one Bytewax cluster (``-a/-i``), where every event is exchanged to its user's worker.

Run: ``python bench/stream.py [--quick]`` with the local stack up (``diam stack up``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.commands.run import parse_summary, summary_lines  # noqa: E402
from diam.settings import load_settings  # noqa: E402
from online_model.base import BaseView  # noqa: E402
from online_model.config import OnlineConfig  # noqa: E402
from online_model.online import OnlineLearner  # noqa: E402
from serving_cache import UserVectors, decode_user, redis_client, user_key, user_pattern  # noqa: E402
from streams.config import FlowConfig  # noqa: E402
from streams.events import ClickEvent, decode_click, encode_event  # noqa: E402
from streams.kafka_io import (  # noqa: E402
    RawRecord,  # noqa: E402
    ensure_topic,
    watermarks,
)

DIM, N_ITEMS, N_CATS = 64, 20_000, 20
ITEM_CATS = (np.arange(N_ITEMS) % N_CATS).astype(np.int32)
"""Item ``it{j}``'s category: j mod N_CATS (the benchmark's item table, and its clicks')."""


def make_checkpoint(path: Path, seed: int = 0, seq_len: int | None = None) -> BaseView:
    """A DIAM checkpoint at d = 64, K_max = 8 over a clustered item table, written by the one
    checkpoint writer (``online_model.checkpoint.save_checkpoint``): the stream then anchors
    users on the network (``BaseView.head``), as it does on a trained snapshot. Weights are
    untrained (the cost of inference does not depend on them) except the item table; the
    network's window is the served one (``OnlineConfig.train_seq_len``, as ``diam train``)."""
    from types import SimpleNamespace

    import torch

    from online_model.checkpoint import save_checkpoint
    from online_model.models import ModelConfig, build_model

    rng = np.random.default_rng(seed)
    cats = ITEM_CATS
    centres = rng.normal(size=(N_CATS, DIM)).astype(np.float32)
    emb = (centres[cats] + 0.5 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)
    ids = np.array([f"it{j}" for j in range(N_ITEMS)])
    torch.manual_seed(seed)
    if seq_len is None:
        seq_len = OnlineConfig().train_seq_len("diam")
    model = build_model(ModelConfig(model="diam", n_items=N_ITEMS, n_categories=N_CATS, dim=DIM,
                                    k_max=8, seq_len=seq_len), cats).eval()
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(emb)
    # no clicks trained on: the checkpoint's item_pop (save_checkpoint counts the corpus's
    # clicks for cold users' lists) is all zeros
    corpus = SimpleNamespace(item_ids=ids, item_cat=cats, n_items=N_ITEMS, n_categories=N_CATS,
                             category_names=[f"c{i}" for i in range(N_CATS)],
                             items=np.zeros(0, dtype=np.int64), info={"name": "bench-synthetic"})
    save_checkpoint(path, model, corpus, seed=seed)
    return BaseView.from_checkpoint(path)


def synth_events(n: int, users: int, seed: int, t0: int, new_user_share: float = 0.05,
                 concurrent: int = 300, mean_session: float = 8.0) -> list[ClickEvent]:
    """Bursty arrivals: ``concurrent`` sessions are open at any time, each a burst of clicks
    of one user (geometric length, mean ``mean_session``) on the user's 4 categories; a
    finished session is replaced by one of a returning user, or, with ``new_user_share``,
    of a user never seen before (a steady trickle of new users)."""
    rng = np.random.default_rng(seed)
    next_new = users
    def start() -> list[int]:
        nonlocal next_new
        if rng.random() < new_user_share:
            next_new += 1
            u = next_new
        else:
            u = int(rng.integers(users))
        return [u, int(rng.geometric(1.0 / mean_session))]
    open_ = [start() for _ in range(concurrent)]
    out = []
    picks = rng.integers(concurrent, size=n)
    offs = rng.integers(4, size=n)
    cols = rng.integers(N_ITEMS // N_CATS, size=n)
    for i in range(n):
        s = open_[picks[i]]
        u = s[0]
        cat = (u * 4 + int(offs[i])) % N_CATS
        out.append(ClickEvent(f"u{u}", f"it{cat + N_CATS * int(cols[i])}", t0 + i))
        s[1] -= 1
        if s[1] <= 0:
            open_[picks[i]] = start()
    return out


def anchor_cost(base: BaseView, n_users: int = 300, seed: int = 2,
                served_items: int = 0) -> dict[str, float]:
    """What anchoring one user on the network costs: the compiled head on a 50-item history
    (it reads the network's window, its last ``seq_len`` items), one user at a time as the
    stream runs it, and the torch model batched on the same window (64 users per call, one
    thread) for reference; plus the head on the served window (``served_items``, the last
    items ``OnlineConfig.infer_items`` reads) when that is shorter than the network's."""
    import torch

    from online_model.checkpoint import load_checkpoint
    from online_model.models.base import Batch

    rng = np.random.default_rng(seed)
    hist = rng.integers(0, N_ITEMS, size=(n_users, 50))
    sig = rng.random((n_users, 4)).astype(np.float32)
    L = min(base.head.seq_len, hist.shape[1])
    for i in range(20):
        base.head.infer(hist[i], sig[i])
    t = []
    for i in range(n_users):
        t0 = time.perf_counter()
        base.head.infer(hist[i], sig[i])
        t.append(time.perf_counter() - t0)
    t_ms = np.array(t) * 1e3
    torch.set_num_threads(1)
    model = load_checkpoint(base.meta["path"]).model
    b = Batch(torch.as_tensor(hist[:64, -L:] + 1), torch.full((64,), L), torch.as_tensor(sig[:64]))
    with torch.inference_mode():
        model.interests(b)
        t0 = time.perf_counter()
        for _ in range(3):
            model.interests(b)
        per = (time.perf_counter() - t0) / 3 / 64 * 1e3
    out = {"anchor_ms_p50": round(float(np.percentile(t_ms, 50)), 3),
           "anchor_ms_p99": round(float(np.percentile(t_ms, 99)), 3),
           "anchor_ms_per_user_torch_batched_64": round(per, 3),
           "anchor_history_len": 50, "anchor_network_window": L}
    if 0 < served_items < L:
        t = []
        for i in range(n_users):
            t0 = time.perf_counter()
            base.head.infer(hist[i, -served_items:], sig[i])
            t.append(time.perf_counter() - t0)
        t_ms = np.array(t) * 1e3
        out.update({"anchor_ms_p50_served_window": round(float(np.percentile(t_ms, 50)), 3),
                    "anchor_ms_p99_served_window": round(float(np.percentile(t_ms, 99)), 3),
                    "served_window_items": served_items})
    return out


def produce(kafka, topic: str, events: list[ClickEvent]) -> None:
    p = Producer({**kafka.client_config(), "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000})
    for ev in events:
        while True:
            try:
                p.produce(topic, key=ev.user_id.encode(), value=encode_event(ev))
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60):
        raise RuntimeError("not every event was delivered")


def bare_consume(kafka, topic: str, n: int, batch: int) -> float:
    """A bare confluent-kafka loop over ``topic`` (counting records), consuming ``batch``
    messages per call, as the dataflow's source does."""
    marks = watermarks(kafka, topic)
    c = Consumer({**kafka.client_config(), "group.id": f"bare-{uuid.uuid4()}", "enable.auto.commit": "false"})
    c.assign([TopicPartition(topic, p, lo) for p, (lo, _) in marks.items()])
    seen, t = 0, time.perf_counter()
    while seen < n:
        for m in c.consume(batch, 0.1):
            if m.error() is None:
                seen += 1
    dt = time.perf_counter() - t
    c.close()
    return n / dt


#: the Redis namespaces this process's runs wrote (:func:`dataflow_cmd`, :func:`floor_cmd`)
#: and the topics it made (:func:`made_topic`): :func:`leaves_nothing` deletes them when the
#: benchmark ends
NAMESPACES: set[str] = set()
TOPICS: set[str] = set()


def made_topic(kafka, topic: str, partitions: int = 4, derived: tuple[str, ...] = ()) -> str:
    """Create ``topic`` for this run (``ensure_topic``) and remember it, and the topics the
    run derives from it (``derived`` suffixes such as ``.dlq``), for :func:`leaves_nothing`."""
    ensure_topic(kafka, topic, partitions=partitions)
    TOPICS.update([topic, *(f"{topic}{x}" for x in derived)])
    return topic


@contextlib.contextmanager
def leaves_nothing(settings):
    """On leaving, however it is left: delete every key of the namespaces this process's runs
    wrote (``serving_cache.namespaces.drop_namespace``) and the topics it made
    (``streams.kafka_io.delete_topics``), and forget them. Benchmarks leave nothing behind:
    millions of users left in Redis make every SCAN of the keyspace (``diam replay``'s
    check, ``diam forget``) walk them all, and thousands of topics slow the broker's start."""
    from serving_cache.namespaces import drop_namespace
    from streams.kafka_io import delete_topics

    try:
        yield
    finally:
        rc = redis_client(settings.redis)
        for ns in sorted(NAMESPACES):
            drop_namespace(rc, ns)
        NAMESPACES.clear()
        delete_topics(settings.kafka, sorted(TOPICS))
        TOPICS.clear()


def dataflow_cmd(topic: str, ns: str, ckpt: Path, extra: list[str]) -> list[str]:
    NAMESPACES.add(ns)
    return [sys.executable, "-m", "diam", "run", "--topic", topic, "--namespace", ns,
            "--checkpoint", str(ckpt), *extra]


def floor_cmd(topic: str, ns: str, ckpt: Path) -> list[str]:
    """The same dataflow with the learner's update removed (``bench/stream_floor.py``)."""
    NAMESPACES.add(ns)
    return [sys.executable, str(ROOT / "bench" / "stream_floor.py"), topic, ns, str(ckpt)]


def env_for(settings) -> dict[str, str]:
    return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
            "DIAM_REDIS_URL": settings.redis.url, "DIAM_ONLINE_DIM": str(DIM),
            "DIAM_FLOW_PUSH_EVERY_MS": "100"}


def timed_run(cmds: list[list[str]], env: dict[str, str],
              cwd: Path | None = None, expect_valid: int | None = None,
              calls: list[int] | None = None,
              summaries: list[str] | None = None) -> tuple[float, float]:
    """Wall time of bounded dataflow processes, measured from their own start-up line so that
    Python and torch import time is not counted as processing time, and the CPU seconds they
    report for their dataflow (all threads, start-up excluded), summed. ``cwd``: where they run
    (``bench/stream_ab.py`` runs another revision's tree). ``expect_valid``: the valid records
    the processes must report together, none dead-lettered (a run that rejected its input
    would time the rejection path). ``calls``: gets the learner's batched calls the processes
    report together (``diam run``'s summary: a user's clicks of a source batch per call).
    ``summaries``: gets each process's summary line (``done: ...``)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd) for c in cmds]
    starts = []
    for p in procs:
        assert p.stdout is not None
        p.stdout.readline()  # "online dataflow: ..." printed once the base is loaded
        starts.append(time.perf_counter())
    cpu = 0.0
    valid = rejected = 0
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"dataflow failed: {err[-2000:]}")
        try:
            got = parse_summary(out)
        except ValueError:
            raise RuntimeError(f"no summary line from the dataflow: {out[-500:]!r}") from None
        if "valid" in got and "rejected" in got:
            valid, rejected = valid + int(got["valid"]), rejected + int(got["rejected"])
        elif expect_valid is not None:
            raise RuntimeError(f"no record counts in the dataflow's summary: {out[-500:]!r}")
        if "cpu_s" not in got:
            raise RuntimeError(f"no CPU time in the dataflow's summary: {out[-500:]!r}")
        cpu += got["cpu_s"]
        if summaries is not None:
            summaries += summary_lines(out)
        if calls is not None:
            if "learn_calls" not in got:
                raise RuntimeError(f"no learn calls in the dataflow's summary: {out[-500:]!r}")
            calls.append(int(got["learn_calls"]))
    end = time.perf_counter()
    if expect_valid is not None and (valid != expect_valid or rejected):
        raise RuntimeError(f"the dataflow took {valid} valid records and dead-lettered {rejected}, "
                           f"expected {expect_valid} valid: it would be timing the wrong path")
    return end - (max(starts) if starts else t0), cpu


FRESH_LINGER_MS = 5


def freshness(settings, topic: str, ns: str, ckpt: Path, rate: int, seconds: float, env,
              splits: tuple[str, ...] = (), warmup_s: float = 0.0,
              arrivals: str = "sessions", seed: int = 5,
              workers: int = 1, extra: tuple[str, ...] = ()) -> tuple[float, float, float]:
    """p50/p99/p99.9 of produce → visible in Redis at ``rate`` events/s, with one tailing process, or
    one per partition subset in ``splits`` (e.g. ``("0,1", "2,3")``), each with ``workers``
    worker threads (``diam run --workers``). Events of the first
    ``warmup_s`` seconds are offered at the same rate but not sampled: the steady state is
    measured, not the minute in which every one of the 2000 users is new.

    ``arrivals``: ``"sessions"``, the throughput runs' bursty sessions of 2000 users with a
    trickle of new ones (:func:`synth_events`, ``seed``), offered at ``rate``; or
    ``"lockstep"``, a stress pattern where the 2000 users click in turn (user ``i % 2000``), so
    every user reaches its n-th click in the same 0.4 s at 5k events/s and all of them re-run
    the network together every ``reanchor_every`` clicks. ``extra``: more ``diam run`` options
    for every process (``bench/fresh_workers.py`` adds ``--metrics-port``)."""
    rc = redis_client(settings.redis)
    # each tailing process keeps its recovery store (the default when tailing) in the bench's
    # temporary directory
    extras = ([["--tail", "--partitions", p] for p in splits] or [["--tail"]])
    if workers > 1:
        extras = [x + ["--workers", str(workers)] for x in extras]
    extras = [x + ["--recovery-dir", str(ckpt.parent / f"rec-{ns}-{i}"), *extra]
              for i, x in enumerate(extras)]
    procs = [subprocess.Popen(dataflow_cmd(topic, ns, ckpt, x), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for x in extras]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()
    time.sleep(3.0)  # partitions assigned and consumers caught up with the empty topic
    pending: dict[str, tuple[int, float]] = {}
    lat: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def on_delivery(err, msg) -> None:
        if err is None and msg.offset() % 10 == 0:
            with lock:
                pending.setdefault(msg.key().decode(), (msg.offset(), float(msg.timestamp()[1]) / 1000))

    def poll_redis() -> None:
        while not done.is_set() or pending:
            with lock:
                items = list(pending.items())
            if items:
                raws = rc.mget([user_key(ns, u) for u, _ in items])
                now = time.time()
                with lock:
                    for (u, (off, t_prod)), raw in zip(items, raws, strict=True):
                        # only the seq is needed: a full decode of every pending user each
                        # round would make the observer, not the dataflow, the slow part
                        if raw is not None and msgpack.unpackb(raw, raw=True)[b"seq"] >= off:
                            lat.append((now - t_prod) * 1000)
                            pending.pop(u, None)
            time.sleep(0.002)
            if done.is_set() and time.time() > stop_at + 10:
                break

    # librdkafka's default linger (5 ms), as `diam produce --rate` uses: with 1 ms, the
    # broker's share of the 2 cores while serving ~1000 tiny produce requests a second slowed
    # the dataflow being measured (KafkaConfig.fetch_min_bytes says why)
    p = Producer({**settings.kafka.client_config(), "linger.ms": FRESH_LINGER_MS})
    poller = threading.Thread(target=poll_redis, daemon=True)
    poller.start()
    n = int(rate * (warmup_s + seconds))
    n_warm = int(rate * warmup_s)
    sess = synth_events(n, 2000, seed=seed, t0=0) if arrivals == "sessions" else None
    t_start = time.perf_counter()
    i = 0
    while i < n:
        # produce what is due, then sleep a tick: a busy-waiting producer would take one of
        # the machine's two cores away from the dataflow it measures
        due = min(n, int((time.perf_counter() - t_start) * rate) + 1)
        while i < due:
            if sess is not None:
                uid, item = sess[i].user_id, sess[i].item_id
            else:
                uid, item = f"f{i % 2000}", f"it{(i * 7919) % N_ITEMS}"
            ev = ClickEvent(uid, item, int(time.time() * 1000))
            p.produce(topic, key=uid.encode(), value=encode_event(ev),
                      on_delivery=on_delivery if i >= n_warm else None)
            i += 1
        p.poll(0)
        time.sleep(0.001)
    p.flush(30)
    stop_at = time.time()
    done.set()
    poller.join(30)
    for proc in procs:
        proc.terminate()  # a clean stop finishes the batch in hand first
        proc.wait(180)
    arr = np.array(lat)
    return (float(np.percentile(arr, 50)), float(np.percentile(arr, 99)),
            float(np.percentile(arr, 99.9)))


def logic_pass(base: BaseView, cfg: OnlineConfig, flow_cfg: FlowConfig,
               events: list[ClickEvent]) -> tuple[float, float, dict]:
    """Every event through the dataflow's own per-user step (``_UserLogic.on_batch``) once,
    in batches of ``FlowConfig.batch_size`` consecutive records, each user's clicks of a batch
    in one call, as Bytewax gives them. The dataflow's own batches are per partition and sized
    by what each fetch holds, so its clicks per call differ (``mean_clicks_per_learn_call``
    reads them from the dataflow). Timed after an untimed warm-up,
    without building the records (decoding's share, ``decode_us_per_event``): µs per event of
    the learner and the push bookkeeping alone, without Kafka, Bytewax or Redis (where the
    rest of a run's time goes); the network's runs per event over the same events; and the
    per-user logics (their snapshots are what Bytewax stores)."""
    from streams.online import Learn, LearnerHolder, _UserLogic

    def batches(evs: list[ClickEvent]) -> list[dict[str, list[Learn]]]:
        out = []
        for b0 in range(0, len(evs), flow_cfg.batch_size):
            per_user: dict[str, list[Learn]] = {}
            for off in range(b0, min(b0 + flow_cfg.batch_size, len(evs))):
                ev = evs[off]
                per_user.setdefault(ev.user_id, []).append(Learn(
                    RawRecord("bench", 0, off, None, None, ev.ts),
                    (ev.user_id, ev.item_id, ev.ts, ev.session_id)))
            out.append(per_user)
        return out

    def play(bs: list[dict[str, list[Learn]]]) -> tuple[LearnerHolder, dict]:
        holder = LearnerHolder(OnlineLearner(base, cfg), base.version)
        logics: dict = {}
        for per_user in bs:
            for user, values in per_user.items():
                lg = logics.get(user)
                if lg is None:
                    lg = logics[user] = _UserLogic(holder, flow_cfg, None, None)
                lg.on_batch(values)
        return holder, logics

    play(batches(events[:2000]))  # warm-up outside the timer: the kernels load from numba's cache
    bs = batches(events)
    t0 = time.perf_counter()
    holder, logics = play(bs)
    logic_us = (time.perf_counter() - t0) / len(events) * 1e6
    return logic_us, round(holder.learner.inferences / len(events), 3), logics


def replay_events(data: Path, copies: int, seed: int = 3, concurrent: int = 300,
                  mean_session: float = 8.0, spacing_ms: int = 1000) -> tuple[list[ClickEvent], dict]:
    """Real clicks for the real network, in sessions like the synthetic run's: the second half
    in time of a prepared dataset (the half the benchmark's checkpoint, ``bench/prequential.py``'s
    first-half network, never trained on), each user played ``copies`` times under distinct
    ids (``<user>-<c>``, ids the event contract accepts), each id's items in the user's own
    time order. Users start cold (no state from the first half, unlike ``prequential.json``'s,
    which are anchored at the cut).

    Arrivals follow :func:`synth_events`'s sessions, not the dataset's clock (ml-100k's raters
    rate tens of films within a second, which would hand the dataflow one long batch per
    user): ``concurrent`` sessions open at a time, geometric lengths of mean ``mean_session``,
    each next session by an id that joins now or else by a returning id with clicks left.
    ``concurrent`` ids are there at the start (about ``concurrent / copies`` people) and the
    others join at a steady rate, in order of their user's first click, all within the first
    70% of the events; so the population active at a time is smaller than the synthetic
    stream's (its 20,000 users are all there from the first event), and each id has more
    clicks (``mean_distinct_ids_per_batch`` in the JSON says how many share a source batch).

    Event times are ``spacing_ms`` apart (1 s; with 300 sessions open, an id's clicks within a
    session come minutes apart, inside one session by the signals' 30-minute gap): ml-100k's
    heaviest raters have hundreds of clicks in the half, which at the synthetic run's 1 ms
    would come at bot speed and be frozen by the rate limit (``OnlineConfig.rate_per_s``), so
    the network would run less often than it does for people. At 1 s the in-process pass's
    ``network_runs_per_event`` is 0.408, against 0.407 for the served arm in
    ``prequential.json`` (whose users start warm); the dataflow's cost per event does not
    depend on event time otherwise."""
    from online_model.datasets import load_prepared

    ds = load_prepared(data)
    cut = len(ds.user_ids) // 2
    seqs: dict[str, list[str]] = {}
    for u, i in zip(ds.user_ids[cut:].tolist(), ds.item_ids[cut:].tolist(), strict=True):
        seqs.setdefault(u, []).append(i)
    rng = np.random.default_rng(seed)
    order = [(u, c) for u in seqs for c in range(copies)]  # first-click order, copies adjacent
    n = sum(len(v) for v in seqs.values()) * copies
    join_every = 0.7 * n / max(1, len(order) - concurrent)
    pos = {k: 0 for k in order}
    joined = 0
    pool: list[tuple[str, int]] = []  # returning users with clicks left

    def start(i: int) -> list:
        nonlocal joined
        if joined >= len(order) and not pool:  # nothing left: only after the last click
            return [None, 0]
        if joined < len(order) and (joined < concurrent + i / join_every or not pool):
            key = order[joined]
            joined += 1
            pool.append(key)
        else:
            key = pool[int(rng.integers(len(pool)))]
        return [key, int(rng.geometric(1.0 / mean_session))]

    open_ = [start(0) for _ in range(concurrent)]
    out: list[ClickEvent] = []
    for i in range(n):
        j = int(rng.integers(concurrent))
        (u, c), left = open_[j]
        if pos[(u, c)] >= len(seqs[u]):  # the user ran out in another session
            open_[j] = start(i)
            (u, c), left = open_[j]
        out.append(ClickEvent(f"{u}-{c}", seqs[u][pos[(u, c)]],
                              1_700_000_000_000 + spacing_ms * i))
        pos[(u, c)] += 1
        if pos[(u, c)] >= len(seqs[u]):
            pool.remove((u, c))
            left = 0
        open_[j][1] = left - 1
        if open_[j][1] <= 0:
            open_[j] = start(i + 1)
    return out, {"dataset": ds.name, "events": len(out), "users": len(order), "copies": copies,
                 "part": "second half in time (events the checkpoint was not trained on)",
                 "event_time_spacing_ms": spacing_ms,
                 "arrivals": f"bursty sessions ({concurrent} open, mean {mean_session:g} "
                             f"clicks), {concurrent} ids at the start and the others joining at a "
                             "steady rate over the first 70%"}


def footprint(settings, ns: str, base: BaseView, cfg: OnlineConfig,
              events: list[ClickEvent], flow_cfg: FlowConfig) -> dict:
    """Redis ``MEMORY USAGE`` per user at K_u = 4 and by K_u over the run's users, the
    size of the per-user snapshot Bytewax stores, and the µs per user of taking it at each
    epoch end (the dataflow's ``snapshot`` plus Bytewax's pickle of it, on the dataflow's thread). Users reach K_u = 4 only after a few tens of events (K_u
    changes need several consecutive proposals); when the run has none, K_u = 4 values are
    built from four real interest vectors of the run and written with the same writer."""
    from serving_cache import RedisWriter

    rc = redis_client(settings.redis)
    by_k: dict[int, list[int]] = {}
    vecs_pool: list[np.ndarray] = []
    for n_seen, key in enumerate(rc.scan_iter(match=user_pattern(ns), count=1000)):
        raw = rc.get(key)
        if raw is None:
            continue
        uv = decode_user(raw)
        by_k.setdefault(uv.k, []).append(rc.memory_usage(key, samples=0))
        vecs_pool.extend(uv.vecs)
        if n_seen >= 2000:
            break
    # K_u = 4 and K_u = 8 values as the stream pushes them (the network's anchors, 50 seen
    # items), from real interest vectors of the run, written with the same writer
    probes: dict[int, list[int]] = {}
    if len(vecs_pool) >= 8:
        writer = RedisWriter(rc, ns)
        pool = np.stack(vecs_pool)
        seen = np.arange(0, 50_000, 1000, dtype=np.int32)[:flow_cfg.seen_items]
        for kk in (4, 8):
            made = [(f"k{kk}probe{i}", UserVectors(seq=1, model=base.version, k=kk, d=0.5, dim=DIM,
                                                    vecs=pool[kk * i:kk * i + kk], ts=1, n=40,
                                                    anchor="diam", seen=seen))
                    for i in range(min(50, len(pool) // kk))]
            writer.write_batch(made)
            probes[kk] = [rc.memory_usage(user_key(ns, u), samples=0) for u, _ in made]
    k4 = probes.get(4) or by_k.get(4, [])
    # the dataflow's own per-user step, so that the sizes and costs are those of what Bytewax
    # stores: ``_UserLogic.snapshot`` and Bytewax's pickle of it
    logic_us, runs, logics = logic_pass(base, cfg, flow_cfg, events)
    raws = [encode_event(ev) for ev in events[:100_000]]
    t0 = time.perf_counter()
    for raw in raws:
        decode_click(raw, max_bytes=flow_cfg.max_event_bytes, ts_min_ms=flow_cfg.ts_min_ms, ts_max_ms=None)
    decode_us = (time.perf_counter() - t0) / len(raws) * 1e6
    state_sizes = [len(pickle.dumps(lg.snapshot(), protocol=pickle.HIGHEST_PROTOCOL))
                   for lg in logics.values()]
    snap_us = []
    for _ in range(3):
        t0 = time.perf_counter()
        for lg in logics.values():
            pickle.dumps(lg.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
        snap_us.append((time.perf_counter() - t0) / len(logics) * 1e6)
    return {"redis_bytes_per_user": float(np.mean(k4)) if k4 else None,  # null, not NaN: valid JSON
            "redis_bytes_per_user_k8": float(np.mean(probes[8])) if probes.get(8) else None,
            "redis_bytes_per_user_by_k": {k: round(float(np.mean(v)), 1) for k, v in sorted(by_k.items())},
            "state_bytes_per_user": round(float(np.mean(state_sizes)), 1),
            "snapshot_us_per_user": round(float(np.median(snap_us)), 2),
            "logic_us_per_event": round(logic_us, 2),
            # how often the network ran (cadence and trigger) over the same events
            "network_runs_per_event": runs,
            "decode_us_per_event": round(decode_us, 2)}


def distinct_per_batch(events: list[ClickEvent], batch: int) -> float:
    """Mean number of distinct user ids per ``batch`` consecutive events: how many per-user
    steps (and pushes) a source batch of that size costs, against its events."""
    return round(float(np.mean([len({e.user_id for e in events[i:i + batch]})
                                for i in range(0, len(events), batch)])), 1)


def real_clicks(args, settings, kafka, env, run_id: str, tmp: str,
                reps: int) -> tuple[dict, BaseView, list[ClickEvent]] | None:
    """The one-process throughput on real clicks and the real network (:func:`replay_events`
    on ``bench/prequential.py``'s first-half checkpoint): the same dataflow, recovery on,
    ``reps`` runs, median, every record checked valid (none dead-lettered); the same process
    with two worker threads; and the same dataflow without learning
    (``bench/stream_floor.py``) on the same topic; ``reps`` runs of each, in turns.
    Returns the figures, the base and the events (the in-process pass runs later, beside the
    synthetic stream's); None (and a line on stderr) when ``--replay-data`` is not there."""
    if not (args.replay_data / "events.tsv").is_file():
        print(f"{args.replay_data}: no prepared dataset, the real-clicks run is skipped "
              "(diam data prepare ml-100k)", file=sys.stderr)
        return None
    sys.path.insert(0, str(ROOT / "bench"))
    from prequential import cached_first_half

    ckpt = cached_first_half(args.replay_data, epochs=4)
    base = BaseView.from_checkpoint(ckpt)
    events, info = replay_events(args.replay_data, args.replay_copies)
    topic = made_topic(kafka, f"bench.replay.{run_id}", derived=(".dlq",))
    renv = {**env, "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq"}
    produce(kafka, topic, events)
    calls: list[int] = []
    runs, twos, floors = [], [], []
    for r in range(reps):  # in turns, as the synthetic stream's kinds of run
        runs.append(timed_run([dataflow_cmd(topic, f"br-{run_id}-{r}", ckpt, [
            "--bounded", "--recovery-dir", f"{tmp}/rec-br-{r}"])], renv,
            expect_valid=len(events), calls=calls))
        twos.append(timed_run([dataflow_cmd(topic, f"brw-{run_id}-{r}", ckpt, [
            "--bounded", "--recovery-dir", f"{tmp}/rec-brw-{r}", "--workers", "2"])], renv,
            expect_valid=len(events)))
        floors.append(timed_run([floor_cmd(topic, f"br0-{run_id}-{r}", ckpt)], renv))
    rates = [len(events) / wall for wall, _ in runs]
    two_rates = [len(events) / wall for wall, _ in twos]
    floor_rates = [len(events) / wall for wall, _ in floors]
    return ({**info, "checkpoint": str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT)
             else str(ckpt),
             "events_per_s": round(float(np.median(rates)), 1),
             "events_per_s_runs": [round(r, 1) for r in rates],
             "events_per_cpu_s": round(len(events) / float(np.median([c for _, c in runs])), 1),
             "events_per_s_two_workers": round(float(np.median(two_rates)), 1),
             "events_per_s_two_workers_runs": [round(r, 1) for r in two_rates],
             "events_per_cpu_s_two_workers": round(
                 len(events) / float(np.median([c for _, c in twos])), 1),
             "events_per_s_no_learning": round(float(np.median(floor_rates)), 1),
             "events_per_s_no_learning_runs": [round(r, 1) for r in floor_rates],
             "mean_distinct_ids_per_batch": distinct_per_batch(events, settings.flow.batch_size),
             "mean_clicks_per_learn_call": round(len(events) * len(calls) / sum(calls), 1)},
            base, events)


FULL = {"events": 400_000, "fresh_repeats": 5, "replay_copies": 8}
"""The full run's sizes of the options that default to None (``--quick`` fills in QUICK's)."""
QUICK = {"events": 60_000, "fresh_repeats": 2, "replay_copies": 1}


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (under two minutes)")
    ap.add_argument("--events", type=int, default=None, help="synthetic clicks [400,000; 60,000 quick]")
    ap.add_argument("--rate", type=int, default=5000, help="offered rate for the freshness run")
    ap.add_argument("--low-rate", type=int, default=1000,
                    help="a second freshness run at a rate the dataflow sustains on this machine")
    ap.add_argument("--repeats", type=int, default=5,
                    help="one-process runs and bare-consumer loops over the topic; the median is "
                         "reported, every run too (single runs on two shared cores vary by up "
                         "to ~30%%)")
    ap.add_argument("--fresh-repeats", type=int, default=None,
                    help="freshness runs at --rate (median p50/p99, worst p99.9) [5; 2 quick]")
    ap.add_argument("--replay-data", type=Path, default=ROOT / "data" / "ml-100k",
                    help="a prepared dataset whose second half is replayed through the dataflow on "
                         "a network trained on its first half (bench/prequential.py's checkpoint, "
                         "trained and cached the first time); skipped when it is not there "
                         "[data/ml-100k: diam data prepare ml-100k]")
    ap.add_argument("--replay-copies", type=int, default=None,
                    help="times each user of the replay is played, under distinct ids [8: "
                         "400,000 events from ml-100k; 1 with --quick]")
    ap.add_argument("--out", default=None, help=sized_out_help(
        "stream", ("events", "rate", "low_rate", "repeats", "fresh_repeats", "replay_copies"),
        quick="--quick", variants=("replay_data",)))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of these sizes writes (``provenance.sized_out``): only a
    full run at every default size writes the committed ``stream.json``."""
    if args.out:
        return Path(args.out)
    return sized_out(ap, args, "stream", ("events", "rate", "low_rate", "repeats", "fresh_repeats", "replay_copies"),
                     quick=args.quick, full=FULL, variants=("replay_data",))


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    args.out = str(results_path(ap, args))
    prov = provenance()  # when and on which code this run starts
    sizes = QUICK if args.quick else FULL
    n = args.events or sizes["events"]
    if args.replay_copies is None:
        args.replay_copies = sizes["replay_copies"]
    if args.fresh_repeats is None:
        args.fresh_repeats = sizes["fresh_repeats"]
    users = 2_000 if args.quick else 20_000
    settings = load_settings()
    kafka = settings.kafka
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp, leaves_nothing(settings):
        topic = made_topic(kafka, f"bench.clicks.{run_id}")
        ftopic = made_topic(kafka, f"bench.fresh.{run_id}")
        ltopic = made_topic(kafka, f"bench.fresh-low.{run_id}")
        ckpt = Path(tmp) / "ckpt"
        base = make_checkpoint(ckpt, seq_len=settings.online.train_seq_len("diam"))
        env = env_for(settings)
        events = synth_events(n, users, seed=1, t0=1_700_000_000_000)
        produce(kafka, topic, events)
        reps = max(1, args.repeats)
        bares = [bare_consume(kafka, topic, n, settings.flow.batch_size) for _ in range(reps)]
        # as diam run tails in production: a recovery store (fresh per run), bounded only so
        # that the run ends
        calls: list[int] = []
        ones, twos, floors = [], [], []
        for r in range(reps):  # in turns, so that each kind sees the box's slow and fast spells
            ones.append(timed_run([dataflow_cmd(topic, f"b1-{run_id}-{r}", ckpt, [
                "--bounded", "--recovery-dir", f"{tmp}/rec-b1-{r}"])], env, expect_valid=n,
                calls=calls))
            # the same process with two worker threads (the learner's kernels release the GIL)
            twos.append(timed_run([dataflow_cmd(topic, f"bw-{run_id}-{r}", ckpt, [
                "--bounded", "--recovery-dir", f"{tmp}/rec-bw-{r}", "--workers", "2"])], env,
                expect_valid=n))
            # the same dataflow with the learner's update removed (bench/stream_floor.py)
            floors.append(timed_run([floor_cmd(topic, f"b0-{run_id}-{r}", ckpt)], env))
        two_w_rates = [n / wall for wall, _ in twos]
        floor_rates = [n / wall for wall, _ in floors]
        floor = float(np.median(floor_rates))
        bare = float(np.median(bares))
        rates = [n / wall for wall, _ in ones]
        one = n / float(np.median(rates))
        one_cpu = n / float(np.median([n / cpu for _, cpu in ones]))
        replay = real_clicks(args, settings, kafka, env, run_id, tmp, reps)
        # two processes, two ways: independent processes over disjoint partitions (users
        # are keyed to partitions, so no state crosses processes), and a Bytewax cluster
        # (every event is exchanged to the worker that owns its user)
        two, _ = timed_run([dataflow_cmd(topic, f"b2-{run_id}", ckpt, ["--bounded", "--partitions", p])
                         for p in ("0,1", "2,3")], env)
        addrs = "127.0.0.1:47011;127.0.0.1:47012"
        two_cluster, _ = timed_run([dataflow_cmd(topic, f"b3-{run_id}", ckpt,
                                              ["--bounded", "-a", addrs, "-i", str(i)])
                                 for i in range(2)], env)
        # windows long enough to contain epoch ends (recovery snapshots), whose pause is the
        # freshness tail: at least one in a quick run, two or three in a full one
        fresh_s = 12 if args.quick else 30
        warm_s = 6 if args.quick else 10
        # the offered-rate run is repeated (a fresh topic each): median p50/p99, worst p99.9;
        # with one worker and with two worker threads, in turns, on the same arrivals, which
        # of the two goes first alternating from repeat to repeat (neither always runs on a
        # box the other just warmed or loaded)
        fresh, fresh_two = [], []
        fresh_topics = []
        for r in range(max(1, args.fresh_repeats)):
            pair = ((1, fresh), (2, fresh_two))
            for workers, into in (pair if r % 2 == 0 else pair[::-1]):
                ftopic_r = ftopic if not fresh_topics else f"{ftopic}.{len(fresh_topics)}"
                fresh_topics.append(ftopic_r)
                made_topic(kafka, ftopic_r)
                into.append(freshness(settings, ftopic_r, f"bf{workers}-{run_id}-{r}", ckpt,
                                      args.rate, fresh_s, env, warmup_s=warm_s, seed=5 + r,
                                      workers=workers))
        p50 = float(np.median([f[0] for f in fresh]))
        p99 = float(np.median([f[1] for f in fresh]))
        p999 = float(max(f[2] for f in fresh))
        lp50, lp99, _ = freshness(settings, ltopic, f"bl-{run_id}", ckpt, args.low_rate,
                                  fresh_s, env, warmup_s=warm_s)
        # the stress pattern: every user clicks in turn (lock-step), one run
        stopic = made_topic(kafka, f"bench.fresh-lockstep.{run_id}")
        sp50, sp99, sp999 = freshness(settings, stopic, f"bs-{run_id}", ckpt, args.rate,
                                      fresh_s, env, warmup_s=warm_s, arrivals="lockstep")
        ttopic = made_topic(kafka, f"bench.fresh-two.{run_id}")
        tp50, tp99, _ = freshness(settings, ttopic, f"bt-{run_id}", ckpt, args.rate,
                                  fresh_s, env, splits=("0,1", "2,3"), warmup_s=warm_s)
        foot = footprint(settings, f"b1-{run_id}-0", base, settings.online, events, settings.flow)
        real = None
        if replay is not None:
            # the real clicks' in-process pass right after the synthetic one (footprint's), so
            # that both see the box in the same state
            real, rbase, revents = replay
            r_us, r_runs, _ = logic_pass(rbase, settings.online, settings.flow, revents)
            real.update({"logic_us_per_event": round(r_us, 2), "network_runs_per_event": r_runs})
        anchor = anchor_cost(base, served_items=settings.online.infer_items)
        # for reference: a network trained on 50 items, run on all of them
        wide = anchor_cost(make_checkpoint(Path(tmp) / "ckpt50", seq_len=50))
        anchor.update({f"{k}_50_item_network": wide[k]
                       for k in ("anchor_ms_p50", "anchor_ms_p99",
                                 "anchor_ms_per_user_torch_batched_64")})
    result = {
        "provenance": prov,
        "base": "diam",
        "recovery": True,
        "reanchor_every": settings.online.reanchor_every,
        "reanchor_cos": settings.online.reanchor_cos,
        "infer_items": settings.online.infer_items,
        "reanchor_explore": settings.online.reanchor_explore,
        "arrivals": "bursty sessions (300 open, mean 8 clicks), 5% of sessions by new users",
        **anchor,
        "events": n,
        "users": users,
        "events_per_s": round(n / one, 1),
        "events_per_cpu_s": round(n / one_cpu, 1),
        "bare_consumer_events_per_s": round(bare, 1),
        "ratio_to_bare": round((n / one) / bare, 4),
        "events_per_s_runs": [round(r, 1) for r in rates],
        "events_per_s_two_workers": round(float(np.median(two_w_rates)), 1),
        "events_per_s_two_workers_runs": [round(r, 1) for r in two_w_rates],
        "events_per_cpu_s_two_workers": round(
            n / float(np.median([cpu for _, cpu in twos])), 1),
        "events_per_s_no_learning": round(floor, 1),
        "ratio_to_bare_no_learning": round(floor / bare, 4),
        "events_per_s_no_learning_runs": [round(r, 1) for r in floor_rates],
        "bare_consumer_events_per_s_runs": [round(b, 1) for b in bares],
        "freshness_p50_ms": round(p50, 2),
        "freshness_p99_ms": round(p99, 2),
        "freshness_p999_ms_worst": round(p999, 2),
        "freshness_runs": [[round(x, 2) for x in f] for f in fresh],
        "freshness_p50_ms_two_workers": round(float(np.median([f[0] for f in fresh_two])), 2),
        "freshness_p99_ms_two_workers": round(float(np.median([f[1] for f in fresh_two])), 2),
        "freshness_p999_ms_worst_two_workers": round(float(max(f[2] for f in fresh_two)), 2),
        "freshness_runs_two_workers": [[round(x, 2) for x in f] for f in fresh_two],
        "offered_rate": args.rate,
        "freshness_p50_ms_at_low_rate": round(lp50, 2),
        "freshness_p99_ms_at_low_rate": round(lp99, 2),
        "low_rate": args.low_rate,
        "freshness_arrivals": "bursty sessions of 2000 users and a trickle of new ones "
                              "(synth_events), offered at the fixed rate",
        "freshness_p50_ms_lockstep": round(sp50, 2),
        "freshness_p99_ms_lockstep": round(sp99, 2),
        "freshness_p999_ms_lockstep": round(sp999, 2),
        "freshness_p50_ms_two_processes": round(tp50, 2),
        "freshness_p99_ms_two_processes": round(tp99, 2),
        **foot,
        "freshness_window_s": fresh_s,
        "freshness_warmup_s": warm_s,
        "epoch_interval_s": settings.flow.epoch_interval_s,
        "freshness_producer_linger_ms": FRESH_LINGER_MS,
        "dataflow_fetch": {"fetch.wait.max.ms": settings.kafka.fetch_wait_max_ms,
                           "fetch.min.bytes": settings.kafka.fetch_min_bytes},
        "consume_batch": settings.flow.batch_size,
        "real_clicks": real,
        "mean_distinct_ids_per_batch": distinct_per_batch(events, settings.flow.batch_size),
        # what the dataflow's own batches gave the learner (its summary's learn calls), against
        # logic_pass's full source batches
        "mean_clicks_per_learn_call": round(n * len(calls) / sum(calls), 1),
        "events_per_s_two_processes": round(n / two, 1),
        "two_processes_mode": "independent processes over partitions 0,1 and 2,3",
        "events_per_s_two_processes_bytewax_cluster": round(n / two_cluster, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "machine": f"{os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
