"""The fault matrix of DESIGN §7: a tailing ``diam run`` under faults, against an uninterrupted run.

Prints one JSON object and writes ``bench/results/faults.json`` (and ``faults.md``)::

    {"faults": {NAME: {"survived": bool, "identical_users": int, "differing_users": int,
                       "lost_events": int, "duplicates_visible": int, "recovery_s": float}},
     "details": {NAME: {...}}, "setup": {...}}

Every fault runs on a *private* stack that this script starts and stops by process id: a Kafka
broker (the local stack's launcher, ``diam.stack``, with its own home and ports) and a
``redis-server`` without persistence, so that no other user of the shared stack sees a fault.

Per fault: a fresh 4-partition topic; a tailing ``diam run`` (recovery store on, as in service)
started; clicks produced at ``--rate`` events/s from a seeded stream (300 users, the tiny
16-d base of the tests); the fault injected at a seeded moment; a probe click produced when
the fault ends; the rest of the stream; then an uninterrupted ``diam run --bounded`` over the
same topic into a reference namespace; the tailing run is given time to match it and is
stopped with SIGTERM. Measured:

- ``survived``: the tailing process (for ``kill9``, the one resumed after the last kill, which
  is the documented restart) was alive at the end and stopped with exit code 0;
- ``identical_users`` / ``differing_users``: users whose Redis value is byte for byte the
  reference's / is not (or exists on one side only);
- ``lost_events``: events the reference counted in a user's value (``n``) that the faulted
  run's value lacks, summed over users (a missing user loses all of its events);
- ``duplicates_visible``: dead letters listed by ``diam deadletters`` plus drift records the
  drift monitor accounts, beyond the reference run's (``details`` also gives the raw repeats
  the topics hold, which our consumers drop);
- ``recovery_s``: from the end of the fault (service back, process restarted) until the probe
  click's user is in Redis with the probe's offset: the time until the dataflow serves fresh
  vectors again, including ``push_every_ms``.

Faults: ``kill9`` (SIGKILL at three seeded moments, each followed by the restart from the same
recovery store), ``broker_restart`` (the private broker stopped for 10 s, then started again),
``redis_sigstop`` (SIGSTOP 10 s), ``redis_pause`` (``CLIENT PAUSE 10000 ALL``),
``redis_data_loss`` (``SHUTDOWN NOSAVE`` and an empty server started on the same port),
``poison_pill`` (a 10 KB JSON of 5,000 nested brackets, keyed like a click).

``--workers N`` runs the faulted, tailing dataflow with N worker threads (the reference keeps
one). ``--base diam`` replaces the tiny centroid base by a small DIAM checkpoint over the same
60 items (d = 16, K_max 4, ``online_model.testing.tiny_diam_checkpoint``): users are anchored
on the network and re-run by the served triggers, through the compiled network kernels (with
several workers, their GIL-releasing twins).

Run: ``python bench/faults.py [--quick] [--only kill9,redis_pause] [--workers 2] [--base diam]`` (needs java, the Kafka jars
of ``diam stack fetch``, and redis-server). ``--quick`` produces 12 s of clicks instead of 30.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import provenance, sized_out, sized_out_help  # noqa: E402

from diam.commands.run import SUMMARY_ENDS  # noqa: E402
from diam.settings import Settings, StackConfig  # noqa: E402
from diam.stack_proc import free_port, terminate  # noqa: E402
from serving_cache.codec import decode_user  # noqa: E402
from streams.config import KafkaConfig  # noqa: E402
from streams.drift import DriftMonitor, parse_drift_record  # noqa: E402
from streams.events import ClickEvent, encode_event  # noqa: E402
from streams.kafka_io import consume_all, ensure_topic, read_deadletters  # noqa: E402
from tests.flowkit import DIM, T0, click_stream  # noqa: E402

FAULTS = ("kill9", "broker_restart", "redis_sigstop", "redis_pause", "redis_data_loss", "poison_pill")
# the load generator's own clients retry quietly through the broker fault
_QUIET = logging.getLogger("bench.faults.rdkafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())
# the log lines worth showing: the sink's outage messages, a stop, a run's summary, a crash
LOG_EVENTS = re.compile("|".join(["unreachable", "reachable again", "re-pushing", "stopping",
                                  *(f"{e}:" for e in SUMMARY_ENDS), "Traceback", "panicked"]))


# -- the private stack --------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this script alone, without persistence."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        self.exe, self.port, self.dir = exe, free_port(), workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _pings(self.client()), 30, "the private Redis")

    def lose_data(self) -> None:
        """SHUTDOWN NOSAVE, then an empty server on the same port."""
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        assert self.proc is not None
        self.proc.wait(30)
        self.start()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc.pid, 10.0)
            self.proc.wait(10)


class PrivateKafka:
    """A single-node broker started by the local stack's launcher from a home of its own."""

    def __init__(self, workdir: Path, redis_port: int) -> None:
        from diam.stack import StackPaths

        base = Settings()
        # The launcher's readiness check also probes Redis: point it at the private one.
        stack = base.stack.model_copy(update={
            "home": str(workdir / "stack"), "kafka_port": free_port(), "controller_port": free_port(),
            "redis_port": redis_port, "kafka_heap": "384m"})
        self.settings = base.model_copy(update={"stack": stack})
        self.cfg: StackConfig = stack
        self.paths = StackPaths.of(stack)
        self.pid: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.cfg.kafka_port}"

    def start(self) -> float:
        from diam.stack import _start_kafka, _wait_ready

        t0 = time.monotonic()
        self.paths.home.mkdir(parents=True, exist_ok=True)
        self.pid = _start_kafka(self.settings, self.paths, lambda _m: None)
        _wait_ready(self.cfg, self.pid, self.paths, lambda _m: None)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.pid is not None:
            terminate(self.pid, 30.0)
            self.pid = None
            self.paths.kafka_pid.unlink(missing_ok=True)


# -- one scenario -------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a fault function may touch."""

    bench: Bench
    name: str
    ns: str
    topic: str
    log_path: Path
    recovery: Path
    proc: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)
    t0: float = 0.0

    def start_run(self) -> None:
        out = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here
        self.proc = subprocess.Popen(
            self.bench.run_cmd(self.topic) + ["--namespace", self.ns, "--recovery-dir", str(self.recovery),
                                              "--workers", str(self.bench.workers)],
            env=self.bench.run_env(self.topic, ""), stdout=out, stderr=subprocess.STDOUT)

    def note(self, text: str) -> None:
        self.notes.append(f"t={time.monotonic() - self.t0:6.2f}s {text}")


class Bench:
    def __init__(self, workdir: Path, rate: int, seconds: float, seed: int, workers: int = 1,
                 base: str = "tiny") -> None:
        self.workdir, self.rate, self.seconds, self.seed = workdir, rate, seconds, seed
        self.workers = workers  # the tailing run's worker threads (the reference runs one)
        self.redis = PrivateRedis(workdir)
        self.redis.start()
        self.kafka = PrivateKafka(workdir, self.redis.port)
        self.kafka_start_s = self.kafka.start()
        self.kcfg = KafkaConfig(bootstrap=self.kafka.bootstrap)
        self.ckpt = workdir / "ckpt"
        _write_checkpoint(self.ckpt, base)

    def close(self) -> None:
        self.kafka.stop()
        self.redis.stop()

    def run_cmd(self, topic: str) -> list[str]:
        return [sys.executable, "-m", "diam", "run", "--topic", topic, "--checkpoint", str(self.ckpt)]

    def run_env(self, topic: str, suffix: str) -> dict[str, str]:
        return {**os.environ, "DIAM_KAFKA_BOOTSTRAP": self.kafka.bootstrap, "DIAM_REDIS_URL": self.redis.url,
                "DIAM_ONLINE_DIM": str(DIM), "DIAM_ONLINE_K_MAX": "4",
                "DIAM_FLOW_EPOCH_INTERVAL_S": "2", "DIAM_FLOW_PUSH_EVERY_MS": "100",
                "DIAM_KAFKA_DRIFT_TOPIC": f"{topic}.drift{suffix}",
                "DIAM_KAFKA_DEADLETTER_TOPIC": f"{topic}.dlq{suffix}"}

    def scenario(self, name: str, fault: Callable[[Ctx, random.Random], tuple[float, float]]) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}-{name}")
        topic = f"faults.{name}.{uuid.uuid4().hex[:8]}"
        ensure_topic(self.kcfg, topic, partitions=4)
        n_events = int(self.rate * self.seconds)
        events = click_stream(n_users=300, n_events=n_events, seed=rng.randrange(1 << 30))
        ctx = Ctx(self, name, f"live-{name}", topic, self.workdir / f"{name}.log",
                  self.workdir / f"recovery-{name}")
        ctx.start_run()
        # (minutes on a loaded box: the process imports torch and compiles the learner)
        _wait(lambda: b"online dataflow:" in ctx.log_path.read_bytes(), 600, "diam run to start")
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap, "linger.ms": 5,
                             "message.timeout.ms": 600_000, "logger": _QUIET})
        done = threading.Event()
        feeder = threading.Thread(target=_feed, args=(producer, topic, events, self.rate, done), daemon=True)
        ctx.t0 = time.monotonic()
        feeder.start()
        fault_at = rng.uniform(0.3, 0.45) * self.seconds
        time.sleep(fault_at)
        ctx.note(f"fault {name} begins")
        start, end = fault(ctx, rng)
        ctx.note(f"fault {name} ends ({end - start:.1f} s)")
        probe_user = f"probe-{name}"
        probe_off = _produce_one(self.kafka.bootstrap, topic, probe_user)
        client = self.redis.client()
        recovery = _wait_for(lambda: _seq(client, ctx.ns, probe_user) >= probe_off, 180)
        ctx.note(f"probe visible after {recovery:.2f} s" if recovery is not None else "probe never visible")
        feeder.join()
        # the input itself can be lost to the fault (a client stuck after a broker restart):
        # then the reference is smaller than planned, and the detail says so
        input_undelivered = producer.flush(120)
        if input_undelivered:
            ctx.note(f"{input_undelivered} input click(s) not delivered by the feeder")
        # the reference: an uninterrupted bounded run over the same records
        ref_ns = f"ref-{name}"
        subprocess.run(self.run_cmd(topic) + ["--namespace", ref_ns, "--bounded"],
                       env=self.run_env(topic, "-ref"), check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        want = _state(client, ref_ns)
        settled = _wait_for(lambda: _state(client, ctx.ns) == want, 120)
        proc = ctx.proc
        assert proc is not None
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(30)
        got = _state(client, ctx.ns)
        identical = sum(1 for u, v in want.items() if got.get(u) == v)
        # (diagnosis: equal after decoding, e.g. when the value layout changed between runs)
        same_decoded = sum(1 for u, v in want.items() if u in got and decode_user(got[u]) == decode_user(v))
        differing = len(set(want) | set(got)) - identical
        lost = 0
        for u, v in want.items():
            n_want = decode_user(v).n
            n_got = decode_user(got[u]).n if u in got else 0
            lost += max(0, n_want - n_got)
        side = self._side_records(topic)
        log_lines = [ln for ln in ctx.log_path.read_text(errors="replace").splitlines() if LOG_EVENTS.search(ln)]
        entry = {"survived": bool(alive and rc == 0), "identical_users": identical,
                 "differing_users": differing, "lost_events": lost,
                 "duplicates_visible": side["visible_extra"],
                 "recovery_s": round(recovery, 2) if recovery is not None else None}
        detail = {"events": n_events + 1, "input_undelivered": input_undelivered,
                  "users": len(want), "identical_decoded_users": same_decoded, "fault_at_s": round(fault_at, 2),
                  "fault_s": round(end - start, 2), "exit_code": rc, "settled_s": settled,
                  "timeline": ctx.notes, "log": log_lines[:40], **side["detail"]}
        return {"entry": entry, "detail": detail}

    def _side_records(self, topic: str) -> dict[str, Any]:
        dl = read_deadletters(self.kcfg, f"{topic}.dlq")
        dl_ref = read_deadletters(self.kcfg, f"{topic}.dlq-ref")
        raw = [parse_drift_record(r.value) for r in consume_all(self.kcfg, f"{topic}.drift")]
        ref = [parse_drift_record(r.value) for r in consume_all(self.kcfg, f"{topic}.drift-ref")]
        mon = DriftMonitor()
        for r in raw:
            if r is not None:
                mon.add(r)
        visible_drift = mon.seen
        return {"visible_extra": max(0, len(dl) - len(dl_ref)) + max(0, visible_drift - len(ref)),
                "detail": {"deadletters_visible": len(dl), "deadletters_reference": len(dl_ref),
                           "deadletter_copies_in_topic": sum(int(d["copies"]) for d in dl),  # type: ignore[call-overload]
                           "deadletter_reasons": sorted({str(d["reason"]) for d in dl}),
                           "drift_visible": visible_drift, "drift_reference": len(ref),
                           "drift_records_in_topic": len(raw), "drift_repeats_dropped": mon.duplicates,
                           "drift_missing": max(0, len(ref) - visible_drift)}}


# -- faults -------------------------------------------------------------------------------------
def kill9(ctx: Ctx, rng: random.Random) -> tuple[float, float]:
    """SIGKILL at three seeded moments, each followed by the documented restart."""
    start = end = time.monotonic()
    drift_topic = f"{ctx.topic}.drift"
    for i in range(3):
        assert ctx.proc is not None
        _wait(lambda: b"online dataflow:" in ctx.log_path.read_bytes().rsplit(b"--- restart", 1)[-1],
              600, "the run to be up")
        # kill a process that is working, not one still starting (on a loaded box start-up
        # takes seconds after the start line): wait until it has produced drift events
        before = _count(ctx.bench.kcfg, drift_topic)
        _wait(lambda b=before: _count(ctx.bench.kcfg, drift_topic) >= b + 30, 600, "the run to produce")
        time.sleep(rng.uniform(0.2, 2.5))
        start = time.monotonic()
        ctx.proc.send_signal(signal.SIGKILL)
        ctx.proc.wait(30)
        ctx.note(f"kill -9 #{i + 1}")
        with open(ctx.log_path, "ab") as f:
            f.write(b"--- restart\n")
        ctx.start_run()
        end = time.monotonic()
    return start, end


def broker_restart(ctx: Ctx, _rng: random.Random) -> tuple[float, float]:
    start = time.monotonic()
    ctx.bench.kafka.stop()
    ctx.note("broker stopped")
    time.sleep(max(0.0, 10.0 - (time.monotonic() - start)))
    ctx.bench.kafka.start()
    ctx.note("broker answers again")
    return start, time.monotonic()


def redis_sigstop(ctx: Ctx, _rng: random.Random) -> tuple[float, float]:
    start = time.monotonic()
    ctx.bench.redis.signal(signal.SIGSTOP)
    time.sleep(10.0)
    ctx.bench.redis.signal(signal.SIGCONT)
    return start, time.monotonic()


def redis_pause(ctx: Ctx, _rng: random.Random) -> tuple[float, float]:
    start = time.monotonic()
    ctx.bench.redis.client().execute_command("CLIENT", "PAUSE", "10000", "ALL")
    time.sleep(10.0)
    return start, time.monotonic()


def redis_data_loss(ctx: Ctx, _rng: random.Random) -> tuple[float, float]:
    start = time.monotonic()
    ctx.bench.redis.lose_data()
    return start, time.monotonic()


def poison_pill(ctx: Ctx, _rng: random.Random) -> tuple[float, float]:
    payload = b"[" * 5000 + b"]" * 5000  # 10 KB, under the 16 KB limit; json.loads recursion
    p = Producer({"bootstrap.servers": ctx.bench.kafka.bootstrap, "logger": _QUIET})
    p.produce(ctx.topic, key=b"user7", value=payload)
    p.flush(30)
    now = time.monotonic()
    return now, now


FAULT_FNS: dict[str, Callable[[Ctx, random.Random], tuple[float, float]]] = {
    "kill9": kill9, "broker_restart": broker_restart, "redis_sigstop": redis_sigstop,
    "redis_pause": redis_pause, "redis_data_loss": redis_data_loss, "poison_pill": poison_pill}


# -- helpers ------------------------------------------------------------------------------------
def _feed(producer: Producer, topic: str, events: list[ClickEvent], rate: int, done: threading.Event) -> None:
    t0 = time.monotonic()
    step = max(1, rate // 20)  # 20 bursts a second
    for i in range(0, len(events), step):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for ev in events[i:i + step]:
            while True:
                try:
                    producer.produce(topic, key=ev.user_id.encode(), value=encode_event(ev))
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
    done.set()


def _count(kcfg: KafkaConfig, topic: str) -> int:
    from confluent_kafka import KafkaException

    from streams.kafka_io import watermarks

    try:
        return sum(hi - lo for lo, hi in watermarks(kcfg, topic, timeout=5).values())
    except (RuntimeError, KafkaException):  # not created yet
        return 0


def _produce_one(bootstrap: str, topic: str, user: str) -> int:
    got: list[int] = []
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 600_000, "logger": _QUIET})
    ev = ClickEvent(user_id=user, item_id="i0", ts=T0)
    p.produce(topic, key=user.encode(), value=encode_event(ev),
              on_delivery=lambda err, m: got.append(-1 if err else m.offset()))
    p.flush(600)
    if not got or got[0] < 0:
        raise RuntimeError("the probe click was not delivered")
    return got[0]


def _seq(client: redis.Redis, ns: str, user: str) -> int:
    try:
        raw = client.get(f"diam:{ns}:u:{user}")
    except redis.RedisError:
        return -1
    return -1 if raw is None else decode_user(raw).seq


def _state(client: redis.Redis, ns: str) -> dict[str, bytes]:
    out = {}
    try:
        for key in client.scan_iter(match=f"diam:{ns}:u:*", count=1000):
            out[key.decode().rsplit(":", 1)[1]] = client.get(key)
    except redis.RedisError:
        return {}
    return out


def _pings(c: redis.Redis) -> bool:
    try:
        return bool(c.ping())
    except redis.RedisError:
        return False


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    if _wait_for(cond, timeout) is None:
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _wait_for(cond: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def _write_checkpoint(path: Path, base: str = "tiny") -> None:
    """The base of every run: the tests' tiny centroid base (``tiny``), or a DIAM network over
    the same 60 items in 6 categories at the same d and K_max (``diam``)."""
    from tests.integration.helpers import write_tiny_checkpoint

    if path.exists():
        return
    if base == "diam":
        from online_model.testing import tiny_diam_checkpoint
        from tests.flowkit import N_ITEMS

        tiny_diam_checkpoint(path, seed=3, n_items=N_ITEMS, n_categories=6, dim=DIM)
    else:
        write_tiny_checkpoint(path)


def _anchor_kind(ckpt: Path) -> str:
    """What anchors the runs' users ("diam": the network; "kmeans": centroids), as the Redis
    values say it."""
    from online_model.base import BaseView

    return BaseView.from_checkpoint(ckpt).anchor_kind


def _markdown(result: dict[str, Any]) -> str:
    rows = ["| fault | survived | identical users | differing | lost events | duplicates visible | recovery s |",
            "|---|---|---|---|---|---|---|"]
    for name, e in result["faults"].items():
        rows.append(f"| {name} | {e['survived']} | {e['identical_users']} | {e['differing_users']} | "
                    f"{e['lost_events']} | {e['duplicates_visible']} | {e['recovery_s']} |")
    s = result["setup"]
    lines = ["# Fault matrix (bench/faults.py)", "",
             f"Private broker and redis-server; {s['rate']} clicks/s for {s['seconds']} s over 300 users "
             f"per fault, seed {s['seed']}; measured {s['date']} on {s.get('commit', '?')}; the faulted "
             f"run with {s.get('workers', 1)} worker thread(s), the reference with one; base "
             f"{s.get('base', 'tiny')}.", ""]
    for key, r in s.items():  # a run with --only into an existing file: what it re-ran, when
        if key.startswith("rerun_") and isinstance(r, dict):
            lines += [f"Re-run ({', '.join(r.get('faults', [key[len('rerun_'):]]))}): "
                      f"measured {r.get('date', '?')} on {r.get('commit', '?')}, "
                      f"{r.get('workers', 1)} worker thread(s), base {r.get('base', 'tiny')}.", ""]
    lines += [*rows, ""]
    for name, d in result["details"].items():
        lines += [f"## {name}", "", "```", *d.get("timeline", []), *d.get("log", []), "```", ""]
    return "\n".join(lines)


VARIANTS = ("workers", "base", "seed")
"""Options that change what the matrix measures: a run with one off its default names its
output (``provenance.refuse_variant``)."""


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 s of clicks per fault instead of 30")
    ap.add_argument("--rate", type=int, default=1000, help="clicks per second offered")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--only", default=None, help="comma-separated fault names")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker threads of the faulted, tailing run (the uninterrupted reference "
                         "always runs one, so the comparison also checks that the worker count "
                         "changes no byte)")
    ap.add_argument("--base", choices=("tiny", "diam"), default="tiny",
                    help="tiny: the tests' centroid base (users anchored by k-means); diam: a "
                         "small DIAM network over the same items (users anchored and re-run on "
                         "the network, as on a served snapshot)")
    ap.add_argument("--out", default=None, help=sized_out_help(
        "faults", ("rate",), quick="--quick or --only", beside="its .md", variants=VARIANTS))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of this size writes (``provenance.sized_out``): only a
    full run of every fault at the default rate writes the committed ``faults.json`` and
    ``faults.md`` (``--only`` runs a subset: a quick run)."""
    if args.out:
        return Path(args.out)
    return sized_out(ap, args, "faults", ("rate",), quick=args.quick or args.only is not None,
                     variants=VARIANTS)


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    args.out = str(results_path(ap, args))
    names = [n for n in (args.only.split(",") if args.only else FAULTS)]
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    seconds = 12.0 if args.quick else 30.0
    workdir = Path(tempfile.mkdtemp(prefix="diam-faults-"))
    bench = Bench(workdir, args.rate, seconds, args.seed, args.workers, args.base)
    result: dict[str, Any] = {"faults": {}, "details": {},
                              "setup": {"rate": args.rate, "seconds": seconds, "seed": args.seed,
                                        "workers": args.workers, "base": args.base,
                                        "anchor_kind": _anchor_kind(bench.ckpt),
                                        "quick": args.quick, "kafka_start_s": round(bench.kafka_start_s, 1),
                                        **provenance()}}
    try:
        for name in names:
            print(f"--- {name}", file=sys.stderr, flush=True)
            try:
                out = bench.scenario(name, FAULT_FNS[name])
            except Exception as exc:  # a fault that breaks the harness is a result too
                out = {"entry": {"survived": False, "identical_users": 0, "differing_users": -1,
                                 "lost_events": -1, "duplicates_visible": -1, "recovery_s": None},
                       "detail": {"error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc(limit=4).splitlines()}}
            result["faults"][name] = out["entry"]
            result["details"][name] = out["detail"]
            print(json.dumps({name: out["entry"]}), file=sys.stderr, flush=True)
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    out_path = Path(args.out)
    if args.only and out_path.exists():
        # a partial run (--only) updates those faults in an existing result, keeping the rest
        old = json.loads(out_path.read_text())
        for key in ("faults", "details"):
            result[key] = {**old.get(key, {}), **result[key]}
        result["setup"] = {**old.get("setup", {}),
                           f"rerun_{'_'.join(names)}": {**result["setup"], "faults": names}}
    print(json.dumps(result, indent=2))
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    out_path.with_suffix(".md").write_text(_markdown(result))


if __name__ == "__main__":
    main()
