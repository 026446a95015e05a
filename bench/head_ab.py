"""Interleaved A/B of the compiled DIAM head (``online_model/infer.py``) between two revisions.

Why: the head is the largest part of the stream's learning cost (``bench/results/stream.md``),
and this shared box's speed drifts within the hour, so two timings taken at different times
cannot show what a change to the head did. Here both revisions' ``infer.py`` are loaded side
by side in one process (each from ``git show REV:online_model/infer.py``, compiled by numba
into a temporary directory, each packing the checkpoint's weights in its own layout), and
``head_outputs`` of each runs in turns on the same random histories of the checkpoint's items.

For each history length the JSON has both sides' best-of-``--repeats`` µs per history, their
ratio, whether the two revisions give the same bytes (interests and encoder summary) on every
history, and the largest absolute difference between them. Writes ``bench/results/head_ab.json``.

Run: ``OPENBLAS_NUM_THREADS=1 python bench/head_ab.py --base REV [--head REV]
[--checkpoint DIR] [--lengths 5,10,20,50]``. The default checkpoint is the prequential
evaluation's (``bench/prequential.py`` trains it when missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provenance import provenance, sized_out, sized_out_help  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def load_revision(rev: str, where: Path):
    """``online_model/infer.py`` as it is at ``rev``, imported as its own module."""
    src = subprocess.run(["git", "show", f"{rev}:online_model/infer.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    name = f"infer_{rev.replace('/', '_').replace('~', '_')}"
    path = where / f"{name}.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


VARIANTS = ("checkpoint", "lengths")
"""Options that change what is compared (another network, other history lengths): off their
defaults the run needs ``--out`` (``provenance.refuse_variant``)."""


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`results_path` reads its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="revision A (before)")
    ap.add_argument("--head", default="HEAD", help="revision B (after) [HEAD]")
    ap.add_argument("--checkpoint", type=Path,
                    default=ROOT / "checkpoints" / "prequential-diam-half-e4-L50",
                    help="a network whose window covers --lengths (python bench/prequential.py "
                         "--seq-len 50 trains it)")
    ap.add_argument("--lengths", default="5,10,20,50")
    ap.add_argument("--histories", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None,
                    help=sized_out_help("head_ab", ("histories", "repeats"), variants=VARIANTS))
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--out``, else where a run of these sizes writes (``provenance.sized_out``); a
    variant (:data:`VARIANTS`) without ``--out`` is refused (exit 2)."""
    if args.out:
        return Path(args.out)
    return sized_out(ap, args, "head_ab", ("histories", "repeats"), variants=VARIANTS)


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    args.out = results_path(ap, args)
    prov = provenance()  # when and on which code this run starts
    if not (args.checkpoint / "weights.safetensors").is_file():
        sys.exit(f"{args.checkpoint}: no checkpoint (python bench/prequential.py --seq-len 50 "
                 "trains it)")
    revs = {side: subprocess.run(["git", "rev-parse", "--short", r], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
            for side, r in (("base", args.base), ("head", args.head))}
    rng = np.random.default_rng(0)
    sig = np.full(4, 0.5, np.float32)
    rows_out = {}
    with tempfile.TemporaryDirectory() as tmp:
        mods = {side: load_revision(rev, Path(tmp)) for side, rev in revs.items()}
        # each revision packs the weights in its own layout (its offset table may differ)
        heads = {side: mod.DiamHead.from_checkpoint(args.checkpoint)
                 for side, mod in mods.items()}

        head = heads["head"]

        def call(side, rows):
            mod, hd = mods[side], heads[side]
            vecs = np.empty((hd.k_max, hd.dim), np.float32)
            h = np.empty(hd.dim, np.float32)
            mod.head_outputs(rows, hd.item_emb, hd.item_cat, hd._buf, hd._off,
                             hd._dims, hd.fusion_w, hd.fusion_b, sig, vecs, h)
            return vecs, h

        lengths = [int(x) for x in args.lengths.split(",")]
        if max(lengths) > head.seq_len:  # the head reads at most its window: longer would wrap
            sys.exit(f"--lengths up to {max(lengths)} but {args.checkpoint} reads windows of "
                     f"{head.seq_len} items")
        for n in lengths:
            hists = [rng.integers(0, head.item_emb.shape[0], n).astype(np.int64)
                     for _ in range(args.histories)]
            same, diff = True, 0.0
            for r in hists:
                (va, ha), (vb, hb) = call("base", r), call("head", r)
                same &= va.tobytes() == vb.tobytes() and ha.tobytes() == hb.tobytes()
                diff = max(diff, float(np.abs(va - vb).max()), float(np.abs(ha - hb).max()))
            best = {side: float("inf") for side in mods}
            for _ in range(args.repeats):
                for side in mods:
                    t0 = time.perf_counter()
                    for r in hists:
                        call(side, r)
                    best[side] = min(best[side], (time.perf_counter() - t0) / len(hists) * 1e6)
            rows_out[str(n)] = {"base_us": round(best["base"], 2), "head_us": round(best["head"], 2),
                                "speedup": round(best["base"] / best["head"], 3),
                                "same_bytes": bool(same), "max_abs_diff": diff}
            print(n, rows_out[str(n)], file=sys.stderr)
    out = {"base": revs["base"], "head": revs["head"], "checkpoint": str(args.checkpoint),
           "histories": args.histories, "repeats": args.repeats,
           "timing": "best of the repeats, µs per history, head_outputs alone (one call per "
                     "history), the two revisions in turns",
           "by_length": rows_out}
    out = {"provenance": prov, **out}
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
