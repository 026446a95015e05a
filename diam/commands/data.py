"""``diam data``: prepare MovieLens datasets and generate synthetic ones."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from diam.commands import finite, get_settings, progress_option, write_failed


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """An OSError on the output directory (a path through a file, no permission, a full disk)
    is one ``Error: cannot write OUT: ...`` line, not a traceback. One on another path (the
    source being read) is not a write error and passes on."""
    try:
        yield
    except OSError as exc:
        failed = Path(exc.filename).resolve() if exc.filename is not None else None
        target = out.resolve()
        if failed is not None and not (failed == target or failed in target.parents
                                       or target in failed.parents):
            raise
        raise write_failed(out, exc) from None


def _summary(out: Path, seconds: float) -> str:
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    return (
        f"{meta['name']}: {meta['events']:,} events, {meta['users']:,} users, {meta['items']:,} items, "
        f"{len(meta['categories'])} categories -> {out} ({seconds:.1f} s)"
    )


@click.group("data")
def data() -> None:
    """Prepare datasets into data/<name>/ (events.tsv, items.tsv, meta.json).

    Every reader of the project (training, producer, evaluation) loads this one format with
    online_model.datasets.load_prepared. Data files are never committed (data/ is gitignored).
    """


@data.command("prepare")
@click.argument("source")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: <data_dir>/<name>, e.g. data/ml-100k].",
)
@click.option(
    "--min-rating",
    type=float,
    default=None,
    callback=finite,
    help="Keep only ratings >= this value as clicks (one that keeps none is refused) "
    "[default: keep every rating].",
)
@progress_option("Show progress bars.")
def prepare(source: str, out: Path | None, min_rating: float | None, progress: bool) -> None:
    """Prepare MovieLens data from SOURCE.

    SOURCE is `ml-100k` for the MovieLens-100K copy shipped in the recbole==1.2.1 wheel
    (install it with `pip install --no-deps recbole==1.2.1`; it is read, never imported), or a
    directory holding u.data + u.item (100K), ratings.dat + movies.dat (1M/10M) or
    ratings.csv + movies.csv (latest). Every rating becomes a click; times become epoch ms;
    events are sorted by (ts, user, item).
    """
    from online_model.datasets import DatasetError
    from online_model.movielens import prepare_movielens

    settings = get_settings(click.get_current_context())
    name = (
        "ml-100k"
        if source == "ml-100k" and not Path(source).is_dir()
        else Path(source).resolve().name
    )
    target = out if out is not None else Path(settings.data_dir) / name
    t0 = time.perf_counter()
    try:
        with _writing(target):
            done = prepare_movielens(source, target, min_rating=min_rating, progress=progress)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_summary(done, time.perf_counter() - t0))


@data.command("synth")
@click.option("--users", type=click.IntRange(min=1), default=2_000, show_default=True)
@click.option("--items", type=click.IntRange(min=1), default=5_000, show_default=True)
@click.option("--categories", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--events-per-user",
    type=click.FloatRange(min=1),
    callback=finite,
    default=50.0,
    show_default=True,
    help="Mean clicks per user (log-normal spread, at least 2).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--max-interests",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Planted interests per user are uniform in 1..this.",
)
@click.option(
    "--zipf",
    type=click.FloatRange(min=0),
    callback=finite,
    default=1.0,
    show_default=True,
    help="Exponent of item popularity.",
)
@click.option(
    "--noise",
    type=click.FloatRange(0, 1, max_open=True),
    callback=finite,
    default=0.03,
    show_default=True,
    help="Share of clicks that ignore the user's interests.",
)
@click.option(
    "--session-len",
    type=click.FloatRange(min=1),
    callback=finite,
    default=8.0,
    show_default=True,
    help="Mean clicks per session.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: <data_dir>/synth].",
)
@progress_option("Show progress bars.")
def synth(
    users: int,
    items: int,
    categories: int,
    events_per_user: float,
    seed: int,
    max_interests: int,
    zipf: float,
    noise: float,
    session_len: float,
    out: Path | None,
    progress: bool,
) -> None:
    """Generate a synthetic click stream with planted truth.

    Each user has a planted number of interests (1..max-interests) and a diversity preference
    in (0,1), written to truth.tsv; an interest is a category whose items are clicked by Zipf
    popularity; high-diversity users spread clicks evenly over their interests and switch
    category within sessions more often. Same parameters and seed give identical files.
    A million events over 100k items take a few seconds.
    """
    from online_model.synth import SynthParams, write_synth

    settings = get_settings(click.get_current_context())
    params = SynthParams(
        users=users,
        items=items,
        categories=categories,
        events_per_user=events_per_user,
        seed=seed,
        max_interests=max_interests,
        zipf=zipf,
        noise=noise,
        session_len=session_len,
    )
    try:
        params.check(name=lambda field: "--" + field.replace("_", "-"))  # worded as options
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    target = out if out is not None else Path(settings.data_dir) / "synth"
    t0 = time.perf_counter()
    with _writing(target):
        done = write_synth(params, target, progress=progress)
    click.echo(_summary(done, time.perf_counter() - t0))


COMMANDS = [data]
