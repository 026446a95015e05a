"""Per-event cost of :meth:`OnlineLearner.apply`, two code versions side by side (interleaved A/B).

Each run is a fresh single-threaded process that imports ``online_model`` from the tree it is
given (``PYTHONPATH``), builds a seeded stream and a base, and times ``apply`` over the whole
stream (new users included, as in the dataflow) a few times after one untimed pass that loads the
compiled kernels; it reports wall time and the process's CPU time per event (on a shared
machine the CPU time is the steadier of the two: it leaves out the time the process waited for
a core). Runs alternate A, B, A, B, ... so that the load falls on both sides alike. Every run also hashes the final vectors, anchors and d_u logits: A and B must
agree bit for bit.

Workloads: ``kmeans`` (a gated toy base, d=64, K_u up to 8, the default online settings: the
compiled step and the Python around it) and ``diam`` (the DIAM head of the unit tests, d=8:
re-anchoring on the network every 10 events and the global slot's refresh in between).

Both sides run from copies taken once at the start: B is the working tree's ``online_model/``,
A the same with the learner's files (``--a-files``) as of ``--a-rev``, so that A and B differ
in exactly those files, and work in progress elsewhere in the tree (e.g. on the inference head)
lands on both sides alike, even when it changes during the run.

Usage (prints JSON)::

    OPENBLAS_NUM_THREADS=1 python bench/state_ab.py --a-rev 972334d --a-also 5a5f98f --repeats 7
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _stream(item_ids, n_events: int, n_users: int, seed: int = 3):
    import numpy as np

    rng = np.random.default_rng(seed)
    ts, out = 1_700_000_000_000, []
    users = rng.integers(n_users, size=n_events)
    items = rng.choice(item_ids, size=n_events)
    gaps = rng.choice([0, 2_000, 30_000, 600_000], size=n_events)
    for off in range(n_events):
        ts += int(gaps[off])
        out.append((f"u{users[off]}", str(items[off]), ts, off))
    return out


def _base(workload: str):
    if workload == "kmeans":
        from online_model.base import toy_base
        from online_model.config import OnlineConfig

        base = toy_base(n_items=5000, dim=64, n_categories=19, k_max=8, gate=True, version="ab")
        return base, OnlineConfig(dim=64, k_max=8)
    import torch

    from online_model.base import BaseView
    from online_model.config import OnlineConfig
    from online_model.testing import tiny_diam_checkpoint

    torch.set_num_threads(1)
    path, _ = tiny_diam_checkpoint(Path(tempfile.mkdtemp()) / "diam")
    return BaseView.from_checkpoint(path), OnlineConfig(dim=8, k_max=4)


def child(workload: str, n_events: int, n_users: int, passes: int) -> dict:
    """One process: ns per event of each timed pass, and the digest of the final states."""
    import numpy as np

    import online_model
    from online_model.online import OnlineLearner

    base, cfg = _base(workload)
    learner = OnlineLearner(base, cfg)
    learner.warm_up()
    events = _stream(list(base.item_ids), n_events, n_users)

    def one_pass() -> tuple[float, float, dict]:
        states: dict = {}
        apply, new_state = learner.apply, learner.new_state
        t0, c0 = time.perf_counter(), time.process_time()
        for u, item, ts, off in events:
            s = states.get(u)
            if s is None:
                s = states[u] = new_state(u)
            apply(s, item, ts, off)
        return time.perf_counter() - t0, time.process_time() - c0, states

    one_pass()  # loads the kernels, fills caches
    times, cpu = [], []
    for _ in range(passes):
        dt, dc, states = one_pass()
        times.append(dt / len(events) * 1e9)
        cpu.append(dc / len(events) * 1e9)
    h = hashlib.sha256()
    for u in sorted(states):
        s = states[u]
        h.update(np.ascontiguousarray(s.V).tobytes() + np.ascontiguousarray(s.A).tobytes())
        h.update(np.float64(s.d_logit).tobytes())
    return {"ns_per_event": times, "cpu_ns_per_event": cpu, "digest": h.hexdigest(),
            "tree": str(Path(online_model.__file__).parents[1])}


def _run(tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, str(HERE), "--child", args.workload, "--events", str(args.events),
           "--users", str(args.users), "--passes", str(args.passes)]
    out = subprocess.run(cmd, env=env, cwd=str(tree), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


LEARNER_FILES = ("online_model/kernels.py", "online_model/online.py", "online_model/config.py",
                 "online_model/signals.py", "online_model/guards.py", "online_model/routing.py")


def _copy_tree(src_root: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """``dest``: a copy of ``src_root``'s online_model/. Unchanged files keep their mtimes, so
    numba's on-disk cache of the copy survives between invocations."""
    for f in (src_root / "online_model").rglob("*.py"):
        rel = f.relative_to(src_root)
        if str(rel) in skip:
            continue
        to = dest / rel
        if not to.exists() or not filecmp.cmp(f, to, shallow=False):
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, to)
    return dest


def _a_tree(b_tree: Path, rev: str, files: list[str], dest: Path, repo: Path,
            also: list[str]) -> Path:
    """``dest``: the B copy's online_model/ with ``files`` as of ``rev`` (from git), then the
    changes that the commits ``also`` made to those files (others' work on the same files
    that landed after ``rev`` and belongs on both sides)."""
    _copy_tree(b_tree, dest, skip=tuple(files))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for rel in files:
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_bytes(subprocess.run(
                ["git", "show", f"{rev}:{rel}"], cwd=repo, check=True, capture_output=True
            ).stdout)
        for commit in also:
            diff = subprocess.run(["git", "show", "--format=", commit, "--", *files], cwd=repo,
                                  check=True, capture_output=True).stdout
            subprocess.run(["patch", "-s", "-p1", "-d", str(scratch)], input=diff, check=True)
        for rel in files:
            new, to = (scratch / rel).read_bytes(), dest / rel
            if not to.exists() or to.read_bytes() != new:
                to.write_bytes(new)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Writes no file: prints one JSON object to stdout.")
    ap.add_argument("--a-rev", help="git revision of the A version of the learner's files")
    ap.add_argument("--a-files", default=",".join(LEARNER_FILES),
                    help="comma-separated files taken from --a-rev (the rest from B)")
    ap.add_argument("--a-also", default="",
                    help="comma-separated commits whose changes to --a-files A also gets")
    ap.add_argument("--a-dir", type=Path, default=Path(tempfile.gettempdir()) / "state_ab_a",
                    help="where the A tree is assembled")
    ap.add_argument("--b", type=Path, default=HERE.parents[1], help="tree of the B version")
    ap.add_argument("--b-dir", type=Path, default=Path(tempfile.gettempdir()) / "state_ab_b",
                    help="where the copy of the B tree is taken")
    ap.add_argument("--workload", choices=["kmeans", "diam"], default="kmeans")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--passes", type=int, default=3, help="timed passes per process (median)")
    ap.add_argument("--repeats", type=int, default=5, help="A/B pairs")
    ap.add_argument("--child", metavar="WORKLOAD")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.events, args.users, args.passes)))
        return
    if args.a_rev is None:
        ap.error("--a-rev is required")
    b_tree = _copy_tree(args.b.resolve(), args.b_dir.resolve())
    # git reads the revision from the working tree's repository
    also = [c for c in args.a_also.split(",") if c]
    a_tree = _a_tree(b_tree, args.a_rev, args.a_files.split(","), args.a_dir.resolve(),
                     repo=args.b.resolve(), also=also)
    runs: dict[str, list[float]] = {"a": [], "b": []}
    cpu: dict[str, list[float]] = {"a": [], "b": []}
    digests: dict[str, set[str]] = {"a": set(), "b": set()}
    for _ in range(args.repeats):
        for side, tree in (("a", a_tree), ("b", b_tree)):
            r = _run(tree, args)
            if Path(r["tree"]).resolve() != tree:
                sys.exit(f"side {side} imported online_model from {r['tree']}, not {tree}")
            runs[side].append(statistics.median(r["ns_per_event"]))
            cpu[side].append(statistics.median(r["cpu_ns_per_event"]))
            digests[side].add(r["digest"])
    ratios = [b / a for a, b in zip(runs["a"], runs["b"], strict=True)]
    cpu_ratios = [b / a for a, b in zip(cpu["a"], cpu["b"], strict=True)]

    def summary(xs: list[float]) -> dict:
        return {"median": round(statistics.median(xs)), "min": round(min(xs)),
                "max": round(max(xs)), "runs": [round(x) for x in xs]}

    def ratio(xs: list[float]) -> dict:
        """Per-pair ratios B/A (each pair ran back to back)."""
        return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
                "max": round(max(xs), 3), "pairs": [round(x, 3) for x in xs]}

    print(json.dumps({
        "workload": args.workload, "events": args.events, "users": args.users,
        "passes": args.passes, "repeats": args.repeats,
        "b_source": str(args.b.resolve()),
        "a": {"tree": str(a_tree), "rev": args.a_rev, "also": also, "files": args.a_files.split(","),
              "ns_per_event": summary(runs["a"]), "cpu_ns_per_event": summary(cpu["a"])},
        "b": {"tree": str(b_tree), "ns_per_event": summary(runs["b"]),
              "cpu_ns_per_event": summary(cpu["b"])},
        "b_over_a": ratio(ratios),
        "b_over_a_cpu": ratio(cpu_ratios),
        "same_output": len(digests["a"]) == 1 and digests["a"] == digests["b"],
        "load_avg": os.getloadavg(),
    }, indent=1))


if __name__ == "__main__":
    main()
