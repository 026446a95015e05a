"""``diam evaluate-stream``: prequential (test-then-train) evaluation of the online learner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from diam.commands import (
    DEFAULT_DATASET_HELP,
    default_dataset,
    finite,
    get_settings,
    json_text,
    output_file,
    progress_option,
    write_failed,
)


@click.command("evaluate-stream")
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepared dataset directory (diam data prepare ml-100k / diam data synth) "
    f"[default: {DEFAULT_DATASET_HELP}].",
)
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Base model: a `diam train` output or snapshot directory "
    "[default: PPMI+SVD embeddings built from the events before the cut].",
)
@click.option(
    "--warm-frac",
    type=click.FloatRange(0.05, 0.95),
    callback=finite,
    default=0.5,
    show_default=True,
    help="Share of the stream (time order) replayed before evaluation starts; the "
    "base is built on it and every user is anchored at the cut.",
)
@click.option(
    "--user-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    callback=finite,
    default=1.0,
    show_default=True,
    help="Evaluate this share of users (a stable hash of the id).",
)
@click.option("--quick", is_flag=True, help="Shortcut for --user-fraction 0.1.")
@click.option(
    "--merge",
    type=click.Choice(["score", "aggregate"]),
    default="score",
    show_default=True,
    help="How interests' lists are merged: best score (fast) or the diversity-aware "
    "aggregator with the user's d_u (serving's merge, slower).",
)
@click.option(
    "--allow-leak",
    is_flag=True,
    help="Evaluate a --checkpoint trained on events at or after the cut anyway (it is refused "
    "otherwise: it has seen the period it is scored on); the result then carries a warning.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=output_file,
    help="Also write the JSON result to this file (its directory must exist).",
)
@progress_option()
def evaluate_stream(
    data: Path | None,
    checkpoint: Path | None,
    warm_frac: float,
    user_fraction: float,
    quick: bool,
    merge: str,
    allow_leak: bool,
    as_json: bool,
    out: Path | None,
    progress: bool,
) -> None:
    """Replay a dataset in time order; for each event recommend top-20 from the user's current
    vectors, score the clicked item, then apply the online update (the dataflow's own call).

    Arms: a popularity reference (decayed click counts), frozen anchors, online with guards,
    online without guards; with --checkpoint (a base with DIAM's head) also reinfer (the
    network re-run on the current history, no steps) and nosteps (the served re-anchoring
    without gradient steps): six arms. Reports Recall@20 (with a bootstrap interval, and each arm's
    difference to the guarded one), NDCG@20, Entropy@20, K_u changes per 1000 events and mean
    drift from anchors. Thresholds come from the online settings (DIAM_ONLINE_*).

    A checkpoint must have the dataset's item vocabulary, and have been trained only on events
    before the cut (`diam train --leave-newest`, as the refusal says): one whose config.json
    says it read later events is refused unless --allow-leak, one that does not say (written
    before the range was recorded) is evaluated with a warning. A retrained checkpoint
    warm-started from snapshots (config.json retrain.warm_start.lineage) is checked with each
    ancestor's config.json under DIAM_SNAPSHOT_DIR: the weights learnt from every one of them;
    an ancestor that is not there is refused unless --allow-leak. Its size is the checkpoint's:
    a DIAM_ONLINE_DIM set to another is said in a warning. JSON writes an undefined value (an
    interval over no users; every metric when no event is scored: every event after the cut a
    re-click) as null, and the warnings under "warnings".
    """
    from diam.commands.model import same_items
    from online_model.base import BaseLoadError
    from online_model.datasets import DatasetError
    from online_model.prequential import NoUsersSelected, evaluate_path

    ctx = click.get_current_context()
    settings = get_settings(ctx)
    if quick and ctx.get_parameter_source("user_fraction") is not ParameterSource.DEFAULT:
        raise click.UsageError("--quick is --user-fraction 0.1: not with --user-fraction")
    if data is None:
        data = default_dataset(settings)
    if not data.is_dir():
        raise click.ClickException(
            f"{data}: no such dataset directory (run `diam data prepare ml-100k` first)"
        )
    warnings: list[str] = []

    def check_base(ds: Any, base: Any) -> None:
        same_items(data, ds.items.ids, base.item_ids)
        config = base.meta.get("config") or {}
        warnings.extend(_trained_before_cut(
            data, checkpoint, _with_ancestors(config, Path(settings.snapshot.dir)), ds.ts_ms,
            warm_frac, allow_leak))
        if base.dim != settings.online.dim and "dim" in settings.online.model_fields_set:
            warnings.append(f"{checkpoint} has d={base.dim}, DIAM_ONLINE_DIM is "
                            f"{settings.online.dim}: evaluated at d={base.dim}, the checkpoint's "
                            f"(`diam run` refuses it until DIAM_ONLINE_DIM={base.dim})")

    try:
        result = evaluate_path(
            data,
            settings.online,
            checkpoint,
            warm_frac=warm_frac,
            user_fraction=0.1 if quick else user_fraction,
            merge=merge,
            progress=progress,
            check_base=check_base,
        )
    except (DatasetError, BaseLoadError) as exc:
        raise click.ClickException(str(exc)) from None
    except NoUsersSelected as exc:
        if exc.candidates == 0:  # --warm-frac <= 0.95 leaves an event after the cut, if any
            raise click.ClickException(
                f"{data}: the dataset has no events, nothing to evaluate (prepare it again: "
                "`diam data prepare` / `diam data synth`)") from None
        option = "--quick (10% of users)" if quick else f"--user-fraction {user_fraction:g}"
        raise click.ClickException(f"no users selected ({exc}); {option} is too small for "
                                   "this dataset: raise --user-fraction") from None
    details = result.get("details", {}).values()
    if details and not any(d["events_evaluated"] for d in details):
        stream = result["protocol"]["stream_events"]
        warnings.append(f"no event was scored: each of the {stream:,} events after the cut "
                        f"(--warm-frac {warm_frac:g}) of the users evaluated re-clicks an item "
                        "its user clicked before, which is not a recommendation task; the "
                        "metrics are undefined (null)")
    if warnings:
        result["warnings"] = warnings
        if as_json:
            for warning in warnings:
                click.echo(f"Warning: {warning}", err=True)
    text = json_text(result, indent=2)
    if out is not None:
        try:
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise write_failed(out, exc) from None
    if as_json:
        click.echo(text)
    else:
        click.echo(format_result(result))


def format_result(result: dict[str, Any]) -> str:
    """The text form of an ``evaluate_path`` result: a header line, the arms' table
    (``online_model.prequential.format_table``, which ``bench/prequential.py`` prints too) and
    the popularity arm's Recall@20 as the reference line."""
    from online_model.prequential import format_table

    lines = [f"{result['dataset']}: base = {result['base']}; merge = {result['aggregation']}",
             format_table(result)]
    popularity = result["arms"].get("popularity", {}).get("recall@20")
    if popularity is not None:
        lines.append(f"popularity reference recall@20: {popularity:.4f}")
    lines.extend(f"Warning: {w}" for w in result.get("warnings", ()))
    return "\n".join(lines)


def _when(ms: int | None) -> str:
    """An event time (epoch ms) as an ISO UTC time to the second, with the ms beside it."""
    if ms is None:
        return "?"
    return f"{datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec='seconds')} ({ms})"


@dataclass(frozen=True)
class _Source:
    """One model whose training the checkpoint's weights carry: the checkpoint itself
    (``version`` None) or a snapshot it descends from by warm starts; ``config`` None when that
    snapshot's config.json cannot be read (``missing`` says why)."""

    version: str | None
    config: dict[str, Any] | None
    missing: str = ""


def _with_ancestors(config: dict[str, Any], root: Path) -> list[_Source]:
    """The checkpoint's config and those of the snapshots its weights were warm-started from
    (``online_model.checkpoint_config.warm_lineage``, each ancestor's own lineage followed
    too), read from ``root/<version>/config.json`` (DIAM_SNAPSHOT_DIR): a warm start keeps
    what the ancestor learnt, so its training range is the checkpoint's too."""
    from online_model.checkpoint_config import warm_lineage
    from snapshotter.store import SnapshotError, validate_version

    out = [_Source(None, config)]
    todo, seen = list(warm_lineage(config)), set()
    while todo:
        version = todo.pop(0)
        if version in seen:
            continue
        seen.add(version)
        try:
            path = root / validate_version(version) / "config.json"
            got = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(got, dict):
                raise ValueError("not a JSON object")
        except SnapshotError as exc:
            out.append(_Source(version, None, str(exc)))
            continue
        except FileNotFoundError:
            out.append(_Source(version, None, f"no {root / version}/config.json"))
            continue
        except (OSError, ValueError) as exc:  # unreadable, not JSON
            out.append(_Source(version, None, f"{root / version}/config.json: {exc}"))
            continue
        out.append(_Source(version, got))
        todo.extend(warm_lineage(got))
    return out


def _trained_before_cut(data: Path, checkpoint: Path | None, sources: list[_Source],
                        ts_ms: Any, warm_frac: float, allow_leak: bool) -> list[str]:
    """Refuse (ClickException) a checkpoint whose training read events at or after the cut
    (``online_model.prequential.trained_before``), its own or that of a snapshot it was
    warm-started from (``sources``: :func:`_with_ancestors`; the latest training range
    decides): DESIGN.md 5 scores a base trained only on the events before the evaluated
    period, and one that saw them scores what it learnt. An ancestor that cannot be read is
    refused too, since it cannot be checked. With ``allow_leak`` return these as warnings
    instead; a checkpoint or ancestor that records no data range is a warning (it cannot be
    checked). Returns the warnings (none: nothing to say)."""
    from online_model.prequential import trained_before

    warnings: list[str] = []

    def name(src: _Source) -> str:
        return (f"{checkpoint}" if src.version is None else
                f"{checkpoint}'s warm-start ancestor, snapshot {src.version},")

    checked = [(src, trained_before(src.config, ts_ms, warm_frac))
               for src in sources if src.config is not None]
    overlaps = [(src, got) for src, got in checked if got.verdict == "overlap"]
    if overlaps:
        src, got = max(overlaps, key=lambda sg: sg[1].trained_until_ms or 0)
        trained = (f"trained on events from {_when(got.trained_from_ms)} to "
                   f"{_when(got.trained_until_ms)}"
                   + (f" ({got.trained_events:,} events)" if got.trained_events is not None
                      else ""))
        evaluated = (f"this run evaluates the last {got.n_events - got.cut:,} of {data}'s "
                     f"{got.n_events:,} events (--warm-frac {warm_frac:g}), from "
                     f"{_when(got.cut_ms)} to {_when(got.last_ms)}")
        if not allow_leak:
            leave = (got.n_events - got.cut) / got.n_events
            fraction = f"{leave:.{len(str(got.n_events)) + 1}g}"  # time_split rounds to got.cut
            raise click.ClickException(
                f"{name(src)} was {trained}, but {evaluated}: it has seen the period it would "
                f"be scored on. Train one on the events before the cut: `diam train --data "
                f"{data} --leave-newest {fraction} --out DIR` (with the options it was trained "
                "with), or pass --allow-leak to evaluate this one anyway, marked")
        warnings.append(f"{name(src)} was {trained} and {evaluated} (--allow-leak): it has "
                        "seen the period it is scored on, its rows are not a prequential "
                        "result")
    missing = [src for src in sources if src.config is None]
    if missing:
        gone = "; ".join(f"snapshot {src.version} ({src.missing})" for src in missing)
        what = (f"{checkpoint} was warm-started from weights that cannot be checked: its "
                f"ancestor {gone} cannot be read, so it cannot be told whether they learnt "
                "from the period it is scored on")
        if not allow_leak:
            raise click.ClickException(
                f"{what}. Restore the ancestor to DIAM_SNAPSHOT_DIR, or pass --allow-leak to "
                "evaluate it anyway, marked")
        warnings.append(f"{what} (--allow-leak): its rows may not be a prequential result")
    for src, got in checked:
        if got.verdict == "unknown":
            warnings.append(f"{name(src).rstrip(',')}: cannot check that it was trained only "
                            f"on events before the cut ({got.why}): if it saw them, its rows "
                            "score what it learnt")
    return warnings


COMMANDS = [evaluate_stream]
