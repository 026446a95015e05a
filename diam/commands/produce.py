"""``diam produce``: write a prepared dataset to the clicks topic."""

from __future__ import annotations

import threading
from pathlib import Path

import click

from diam.commands import (
    DEFAULT_DATASET_HELP,
    default_dataset,
    finite,
    get_settings,
    kafka_unusable,
    progress_option,
    stop_on_signals,
    topic_name,
)


@click.command("produce")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Prepared dataset directory [default: {DEFAULT_DATASET_HELP}].",
)
@click.option(
    "--topic",
    default=None,
    callback=topic_name,
    help="Target topic [default: the clicks topic, diam.clicks].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=None,
    help="Events per second (token bucket) [default: as fast as possible].",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="Produce only the first N events in time order.",
)
@click.option(
    "--catalog/--no-catalog",
    default=False,
    show_default=True,
    help="Also publish the dataset's item catalogue (categories, title, first-seen time) to the "
    "compacted items topic, before the clicks (--limit 0: the catalogue only).",
)
@click.option(
    "--items-topic", default=None, callback=topic_name, help="Catalogue topic [default: diam.items]."
)
@progress_option()
def produce(
    data_dir: Path | None,
    topic: str | None,
    rate: float | None,
    limit: int | None,
    catalog: bool,
    items_topic: str | None,
    progress: bool,
) -> None:
    """Produce a prepared dataset (see `diam data`) to Kafka as click events.

    Each event is a msgpack ClickEvent {user_id, item_id, ts} keyed by user id, in time order.
    The topic is created with DIAM_KAFKA_PARTITIONS partitions when missing; a topic that
    already holds records gets these appended, with a warning (a dataflow would learn them
    twice). Records carry the wall-clock time they were produced as their Kafka timestamp
    (what `diam replay --from/--to` times read); the event's own ts is in the value. Exits
    non-zero when any record was not acknowledged by the broker, and lists the delivery errors.

    The configured catalogue, dead-letter, drift, alerts and models topics, the --items-topic
    and any compacted topic are refused before anything is written: a click keyed by user 259
    on the compacted catalogue replaces item 259. The other way round, --catalog refuses an
    items topic that is a configured clicks or side topic, or an existing topic that is not
    compacted (a clicks topic); a missing one is created compacted. SIGTERM stops it as
    Ctrl-C does: the events queued so far are delivered and counted, and it exits non-zero.
    """
    from confluent_kafka import KafkaException

    from online_model.datasets import DatasetError, load_prepared
    from streams import catalogue_refusal, catalogue_role, clicks_refusal, side_topic_role
    from streams.kafka_io import describe_topics
    from streams.producer import produce_dataset

    settings = get_settings(click.get_current_context())
    path = data_dir if data_dir is not None else default_dataset(settings)
    target = topic if topic is not None else settings.kafka.clicks_topic
    try:
        ds = load_prepared(path)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    cat = items_topic if items_topic is not None else settings.kafka.items_topic
    cat_hint = "--items-topic" if items_topic is not None else (
        "DIAM_KAFKA_ITEMS_TOPIC (kafka.items_topic)")
    hint = "--topic" if topic is not None else "DIAM_KAFKA_CLICKS_TOPIC (kafka.clicks_topic)"
    # and the catalogue goes to a catalogue: by name first, before any broker is asked (the
    # catalogue as the clicks target is refused below, on --topic, as forget does)
    # (an --items-topic naming the configured clicks topic, no --topic: the mistake is the
    # --items-topic, not a setting the user never set)
    if (catalog and (cat != target or (items_topic is not None and topic is None))
            and (role := catalogue_role(settings.kafka, cat)) is not None):
        raise click.BadParameter(f"{cat} is {role}, not an item catalogue: nothing was "
                                 "written", param_hint=cat_hint)
    if side_topic_role(settings.kafka, target, items_topic) is not None:
        refused = clicks_refusal(settings.kafka, target, None, catalogue=items_topic)
        raise click.BadParameter(f"{refused}: nothing was written", param_hint=hint)
    # one round of broker requests serves every check below (and tells whether to create it)
    try:
        known = describe_topics(settings.kafka, [target, cat] if catalog else [target],
                                timeout=15.0)
    except (KafkaException, RuntimeError) as exc:
        raise kafka_unusable(settings, exc) from None
    refused = clicks_refusal(settings.kafka, target, known[target], catalogue=items_topic)
    if refused is not None:
        raise click.BadParameter(f"{refused}: nothing was written", param_hint=hint)
    if catalog:  # an existing topic that is not compacted (a clicks topic) is no catalogue
        refused = catalogue_refusal(settings.kafka, cat, known[cat])
        if refused is not None:
            raise click.BadParameter(f"{refused}: nothing was written", param_hint=cat_hint)
    state = known[target]
    held = state.held if state is not None else 0  # a missing target is created below
    if held and limit != 0:
        click.echo(f"warning: {target} already holds {held:,} records; these events are appended "
                   "(a dataflow reading the topic learns both; --topic names another)", err=True)
    if catalog:
        _produce_catalog(ds, path, settings, cat)
    stop = threading.Event()
    stop_on_signals(stop)  # SIGTERM as Ctrl-C: what is queued is delivered and counted
    try:
        report = produce_dataset(
            ds, settings.kafka, target, rate=rate, limit=limit, progress=progress, stop=stop,
            create=state is None,
        )
    except (KafkaException, TimeoutError) as exc:
        raise kafka_unusable(settings, exc) from None
    click.echo(
        f"{report.sent:,} events sent to {target} from {ds.name} in {report.seconds:.2f} s "
        f"({report.rate:,.0f} ev/s); failed: {report.failed:,}"
    )
    if report.interrupted:
        raise click.ClickException(
            "interrupted: the events queued so far were delivered (counted above)"
        )
    if report.failed:
        details = "\n  ".join(report.errors)
        raise click.ClickException(f"{report.failed:,} event(s) were not delivered:\n  {details}")


def _produce_catalog(ds, path: Path, settings, items_topic: str) -> None:
    from confluent_kafka import KafkaException

    from online_model.datasets import read_item_titles
    from streams.catalog import items_of_dataset, publish_items

    items = items_of_dataset(ds, read_item_titles(path))
    try:
        report = publish_items(settings.kafka, items_topic, items)
    except (KafkaException, TimeoutError) as exc:
        raise kafka_unusable(settings, exc) from None
    click.echo(f"{report.sent:,} catalogue items sent to {items_topic}; failed: {report.failed:,}")
    if not report.ok:
        details = "\n  ".join(report.errors)
        raise click.ClickException(f"the catalogue was not fully delivered:\n  {details}")


COMMANDS = [produce]
