"""Which code, command and machine produced a benchmark result.

Every headline benchmark writes :func:`provenance` into its JSON (``"provenance"``; the fault
matrix into its ``setup``), so a figure quoted in ``bench/results/*.md`` can be checked against
the code that lands: results are re-run on that code, and a JSON that says which commit it ran
on, and whether the measured code had uncommitted changes, shows it without a commit message.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("streams", "online_model", "snapshotter", "serving_cache", "diam", "bench")
"""The directories whose code a benchmark measures: uncommitted changes there are listed."""


def _git(*args: str) -> str:
    """git's output without its last newline ('' without git); a porcelain line's leading
    space is part of the line."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):  # no git here: the record says so
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _env() -> list[str]:
    """The environment settings a run depends on, as ``NAME=value`` words: BLAS threads and
    the project's own ``DIAM_*`` overrides."""
    return [f"{k}={v}" for k, v in sorted(os.environ.items())
            if k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            or k.startswith("DIAM_")]


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """``commit`` (short hash of HEAD, '' outside git), ``dirty_paths`` (``git status
    --porcelain`` lines under :data:`MEASURED`, empty when the measured code is committed),
    ``date`` (UTC, to the minute, when this is called: call it when the run starts),
    ``command`` (how to run it again, with the environment settings :func:`_env` names) and ``machine`` (CPUs, their model, Python)."""
    status = _git("status", "--porcelain", "--", *MEASURED)
    args = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(args[0]), ROOT) if args else "?"
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty_paths": [line for line in status.split("\n") if line.strip()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join([*_env(), "python", script, *args[1:]]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(),
                    "python": platform.python_version()},
    }
