"""``diam evaluate-stream``: prequential (test-then-train) evaluation of the online learner."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from diam.commands import (
    DEFAULT_DATASET_HELP,
    default_dataset,
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
    default=0.5,
    show_default=True,
    help="Share of the stream (time order) replayed before evaluation starts; the "
    "base is built on it and every user is anchored at the cut.",
)
@click.option(
    "--user-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
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
    before the range was recorded) is evaluated with a warning. JSON writes an undefined value
    (an interval over no users) as null, and the warnings under "warnings".
    """
    from diam.commands.model import same_items
    from online_model.base import BaseLoadError
    from online_model.datasets import DatasetError
    from online_model.prequential import NoUsersSelected, evaluate_path

    settings = get_settings(click.get_current_context())
    if data is None:
        data = default_dataset(settings)
    if not data.is_dir():
        raise click.ClickException(
            f"{data}: no such dataset directory (run `diam data prepare ml-100k` first)"
        )
    warnings: list[str] = []

    def check_base(ds: Any, base: Any) -> None:
        same_items(data, ds.items.ids, base.item_ids)
        warning = _trained_before_cut(data, checkpoint, base.meta.get("config") or {},
                                      ds.ts_ms, warm_frac, allow_leak)
        if warning:
            warnings.append(warning)

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


def _trained_before_cut(data: Path, checkpoint: Path | None, config: dict[str, Any],
                        ts_ms: Any, warm_frac: float, allow_leak: bool) -> str | None:
    """Refuse (ClickException) a checkpoint whose training read events at or after the cut
    (``online_model.prequential.trained_before``): DESIGN.md 5 scores a base trained only on
    the events before the evaluated period, and one that saw them scores what it learnt. With
    ``allow_leak`` return that as a warning instead; a checkpoint that records no data range
    is a warning too (it cannot be checked). None: nothing to say."""
    from online_model.prequential import trained_before

    got = trained_before(config, ts_ms, warm_frac)
    if got.verdict == "before":
        return None
    if got.verdict == "unknown":
        return (f"{checkpoint}: cannot check that it was trained only on events before the "
                f"cut ({got.why}): if it saw them, its rows score what it learnt")
    trained = (f"trained on events from {_when(got.trained_from_ms)} to "
               f"{_when(got.trained_until_ms)}"
               + (f" ({got.trained_events:,} events)" if got.trained_events is not None else ""))
    evaluated = (f"this run evaluates the last {got.n_events - got.cut:,} of {data}'s "
                 f"{got.n_events:,} events (--warm-frac {warm_frac:g}), from {_when(got.cut_ms)} "
                 f"to {_when(got.last_ms)}")
    if allow_leak:
        return (f"{checkpoint} was {trained} and {evaluated} (--allow-leak): it has seen the "
                "period it is scored on, its rows are not a prequential result")
    leave = (got.n_events - got.cut) / got.n_events
    fraction = f"{leave:.{len(str(got.n_events)) + 1}g}"  # time_split rounds back to got.cut
    raise click.ClickException(
        f"{checkpoint} was {trained}, but {evaluated}: it has seen the period it would be "
        f"scored on. Train one on the events before the cut: `diam train --data {data} "
        f"--leave-newest {fraction} --out DIR` (with the options it was trained with), or pass "
        "--allow-leak to evaluate this one anyway, marked")


COMMANDS = [evaluate_stream]
