"""Which code, command and machine produced a benchmark result.

Every benchmark that writes a JSON writes :func:`provenance` into it (``"provenance"``; the fault
matrix into its ``setup``), so a figure quoted in ``bench/results/*.md`` can be checked against
the code that lands: results are re-run on that code, and a JSON that says which commit it ran
on, and whether the measured code had uncommitted changes, shows it without a commit message.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("streams", "online_model", "snapshotter", "serving_cache", "diam", "bench",
            ":(exclude)bench/results")
"""The code a benchmark measures (git pathspecs): uncommitted changes there are listed. Not
``bench/results``: a run of several benchmarks rewrites it as it goes."""


def default_out(name: str, quick: bool = False, *, large: bool = False) -> Path:
    """Where a benchmark writes when ``--out`` is not given: ``bench/results/<name>.json``, or
    ``<name>_quick.json`` for a quick/small run and ``<name>_large.json`` for one sized above
    the defaults, so that only a default full run overwrites the committed result (whose
    ``.md`` sits beside it).

    >>> default_out("stream").relative_to(ROOT).as_posix()
    'bench/results/stream.json'
    >>> default_out("stream", quick=True).name
    'stream_quick.json'
    >>> default_out("stream", large=True).name
    'stream_large.json'
    """
    suffix = "_quick" if quick else "_large" if large else ""
    return ROOT / "bench" / "results" / f"{name}{suffix}.json"


def sized_out(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str,
              sizes: tuple[str, ...], *, quick: bool = False,
              full: Mapping[str, float] | None = None, variants: tuple[str, ...] = (),
              named_by: str = "--out") -> Path:
    """:func:`default_out` of a run sized by the options ``sizes`` (``dest`` names): quick when
    ``quick`` (a flag that cuts the whole run short, such as ``--quick`` or a subset like
    ``--only``) or any of them is below its default, large when none is below and any is
    above, the committed result only when every one is at its default (:func:`sized_out_help`
    says it in --help). An option left unset (None) is at its default; ``full`` gives the full
    run's value of an option whose argparse default is None (filled in later by the script,
    smaller with ``--quick``), which a value given on the command line is compared with.

    >>> ap = argparse.ArgumentParser()
    >>> _ = ap.add_argument("--quick", action="store_true")
    >>> _ = ap.add_argument("--events", type=int, default=None)
    >>> [sized_out(ap, ap.parse_args(a), "x", ("events",), quick="--quick" in a,
    ...            full={"events": 100}).name
    ...  for a in ([], ["--events", "100"], ["--events", "50"], ["--events", "500"],
    ...            ["--quick", "--events", "500"])]
    ['x.json', 'x.json', 'x_quick.json', 'x_large.json', 'x_quick.json']

    ``variants`` are options (``dest`` names) that change *what* is measured, not how much of
    it (another base, worker count, seed, setting): a run with any of them off its default has
    no default path, it is refused through ``ap.error`` (exit 2, nothing run) until ``--out``
    names its output, so that it never overwrites the default run's committed result
    (:func:`refuse_variant`; ``named_by`` is the option that names it).
    """
    refuse_variant(ap, args, name, variants, named_by)
    below = above = False
    for k in sizes:
        value = getattr(args, k)
        if value is None:
            continue
        ref = ap.get_default(k)
        if ref is None:
            if full is None or k not in full:
                raise ValueError(f"sized_out: {k!r} has no argparse default; give its full run's "
                                 "value in full")
            ref = full[k]
        below = below or value < ref
        above = above or value > ref
    short = quick or below
    return default_out(name, quick=short, large=above and not short)


def off_default(ap: argparse.ArgumentParser, args: argparse.Namespace,
                variants: tuple[str, ...]) -> list[str]:
    """The options among ``variants`` (``dest`` names) given a value other than their
    argparse default, as ``--flag`` names.

    >>> ap = argparse.ArgumentParser()
    >>> _ = ap.add_argument("--workers", type=int, default=1)
    >>> _ = ap.add_argument("--set", action="append", default=[])
    >>> off_default(ap, ap.parse_args(["--workers", "1"]), ("workers", "set"))
    []
    >>> off_default(ap, ap.parse_args(["--workers", "2", "--set", "a=1"]), ("workers", "set"))
    ['--workers', '--set']

    A path is compared resolved (``--data data/ml-100k`` from the root is the default
    ``<root>/data/ml-100k``).
    """
    def same(value: Any, default: Any) -> bool:
        if isinstance(default, Path) or (isinstance(default, str) and os.sep in default):
            return value is not None and Path(value).resolve() == Path(default).resolve()
        return bool(value == default)

    positional = {a.dest for a in ap._actions if not a.option_strings}
    return [k.upper() if k in positional else f"--{k.replace('_', '-')}" for k in variants
            if not same(getattr(args, k), ap.get_default(k))]


def refuse_variant(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str,
                   variants: tuple[str, ...], named_by: str = "--out") -> None:
    """``ap.error`` (usage, exit 2) when an option of ``variants`` is off its default: such a
    run measures something else than ``bench/results/<name>.json`` records and must name its
    own output with ``named_by``; a no-op otherwise (call it only when the output is not
    named)."""
    given = off_default(ap, args, variants)
    if given:
        ap.error(f"{'/'.join(given)} change{'s' if len(given) == 1 else ''} what is measured, "
                 f"so this run has no default output (bench/results/{name}.json is the default "
                 f"run's): name it with {named_by}")


def sized_out_help(name: str, sizes: tuple[str, ...], *, quick: str = "",
                   beside: str = "", variants: tuple[str, ...] = ()) -> str:
    """``--out``'s help for a script whose default path is :func:`sized_out`'s; ``quick``
    names the flags passed to it as ``quick``, ``beside`` what is written beside the JSON
    under the same name.

    >>> sized_out_help("head_ab", ("histories", "repeats"))
    'JSON written [default: bench/results/head_ab.json with --histories/--repeats at their defaults; head_ab_quick.json with any below its default, else head_ab_large.json]'
    >>> sized_out_help("faults", ("rate",), quick="--quick or --only", beside="its .md")
    'JSON written, and its .md beside it [default: bench/results/faults.json with --rate at its default; faults_quick.json with --quick or --only or --rate below it, faults_large.json above it]'
    >>> sized_out_help("x", ("rate",), variants=("workers", "base"))[-60:]
    'above it; required with --workers/--base off their defaults]'
    >>> sized_out_help("x", (), quick="--only")
    'JSON written [default: bench/results/x.json; x_quick.json with --only]'
    """
    if variants:
        vs = "/".join(f"--{k.replace('_', '-')}" for k in variants)
        text = sized_out_help(name, sizes, quick=quick, beside=beside)
        return (f"{text[:-1]}; required with {vs} off "
                f"{'its default' if len(variants) == 1 else 'their defaults'}]")
    opts = "/".join(f"--{k.replace('_', '-')}" for k in sizes)
    what = f"JSON written, and {beside} beside it" if beside else "JSON written"
    if not sizes:
        short = f"; {name}_quick.json with {quick}" if quick else ""
        return f"{what} [default: bench/results/{name}.json{short}]"
    if len(sizes) == 1:
        below = f"with {quick} or {opts} below it" if quick else "below it"
        return (f"{what} [default: bench/results/{name}.json with {opts} at its default; "
                f"{name}_quick.json {below}, {name}_large.json above it]")
    below = f"with {quick} or any below its default" if quick else "with any below its default"
    return (f"{what} [default: bench/results/{name}.json with {opts} at their defaults; "
            f"{name}_quick.json {below}, else {name}_large.json]")


class GitFailed(RuntimeError):
    pass


def _git(root: Path, *args: str) -> str:
    """git's output without its last newline (a porcelain line's leading space is part of the
    line); :class:`GitFailed` when git is missing or fails (a record that read as clean
    would be wrong)."""
    try:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GitFailed(str(exc)) from None
    if r.returncode != 0:
        raise GitFailed(r.stderr.strip() or f"git {args[0]} exited {r.returncode}")
    return r.stdout.rstrip("\n")


def _settings_file() -> dict[str, Any] | None:
    """The settings file every benchmark's settings read (``diam.settings.config_path``), with
    its sha256; None when there is none (the defaults and ``DIAM_*`` variables apply)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from diam.settings import config_path

    path = config_path()
    if not path.is_file():
        return None
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


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


def provenance(argv: list[str] | None = None, root: Path = ROOT) -> dict[str, Any]:
    """``commit`` (short hash of HEAD), ``dirty_paths`` (``git status --porcelain`` lines
    under :data:`MEASURED`, empty when the measured code is committed; both "git failed: ..."
    when git cannot say), ``settings_file`` (:func:`_settings_file`), ``date`` (UTC, to the
    minute, when this is called: call it when the run starts; the subprocesses a benchmark
    starts later run the working tree as it is then), ``command`` (how to run it again, with
    the environment settings :func:`_env` names) and ``machine`` (CPUs, their model,
    Python)."""
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        status = _git(root, "status", "--porcelain", "--", *MEASURED)
        dirty: list[str] | str = [line for line in status.split("\n") if line.strip()]
    except GitFailed as exc:
        commit = dirty = f"git failed: {exc}"
    args = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(args[0]), root) if args else "?"
    return {
        "commit": commit,
        "dirty_paths": dirty,
        "settings_file": _settings_file(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join([*_env(), "python", script, *args[1:]]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(),
                    "python": platform.python_version()},
    }


if __name__ == "__main__":
    sys.exit("bench/provenance.py is a helper module imported by the bench scripts; nothing to run")
