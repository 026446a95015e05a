"""``diam train`` and ``diam evaluate``: the offline base model (DIAM or a baseline)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import click

from diam.commands import (
    DEFAULT_DATASET_HELP,
    default_dataset,
    finite,
    get_settings,
    json_text,
    progress_option,
    topic_name,
)
from diam.settings import Settings, env_names
from online_model.config import OnlineConfig
from serving_cache.recommend import MAX_DELTA

_MODELS = ["diam", "mind", "comirec-sa", "comirec-dr", "single"]

_DIM = click.IntRange(4)
"""``diam train --dim``'s range; the setting ``online.dim`` it defaults to must be in it too."""

_DIM_ENV = next(k for k, v in env_names(Settings).items() if v == ("online", "dim"))


def train_dim(given: int | None, online: OnlineConfig) -> int:
    """The embedding size ``diam train`` trains at: ``--dim`` when given, else the setting
    ``online.dim`` (one owner of the size the stream serves: a model trained at another one is
    refused by every ``diam run`` until the setting changes). A setting outside ``--dim``'s
    range is refused naming it.

    >>> train_dim(None, OnlineConfig(dim=32)), train_dim(16, OnlineConfig(dim=32))
    (32, 16)
    >>> train_dim(None, OnlineConfig(dim=2))
    Traceback (most recent call last):
    click.exceptions.ClickException: settings online.dim is 2 (DIAM_ONLINE_DIM), diam train needs >= 4: set it, or pass --dim
    """
    if given is not None:
        return given
    if _DIM.min is not None and online.dim < _DIM.min:
        raise click.ClickException(f"settings online.dim is {online.dim} ({_DIM_ENV}), "
                                   f"diam train needs >= {_DIM.min}: set it, or pass --dim")
    return online.dim


def _load_corpus(path: Path):
    from online_model.corpus import corpus_from_prepared
    from online_model.datasets import DatasetError, load_prepared, read_item_titles

    try:
        ds = load_prepared(path)
        titles = read_item_titles(path)  # the checkpoint keeps them for serving to show
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    corpus = corpus_from_prepared(ds, titles)
    if corpus.n_users < 10:
        raise click.ClickException(f"{path}: only {corpus.n_users} users; need at least 10 "
                                   "to split 80/10/10")
    corpus.info["path"] = str(path.resolve())  # evaluate finds it from any directory
    return corpus


def _corpus_from_topic(topic: str, since: str | None, until: str | None,
                       items_topic: str | None, partitions: set[int] | None = None,
                       recorded: dict[str, Any] | None = None):
    """The corpus of a range of the clicks topic over the ``diam.items`` catalogue (``diam
    train`` and ``diam evaluate``). ``partitions``: read only these (a checkpoint's recorded
    range: a partition added since has none of its events). ``recorded``: the checkpoint's
    config.json ``data`` when this is its recorded range read again: a range the topic no
    longer holds (offsets clamped), that reads another number of records, or that leaves out
    another number of forgotten users' clicks (a user forgotten since: its held-out users are
    drawn over the users) is refused, rather than other data scored."""
    from confluent_kafka import KafkaException

    from streams.catalog import Catalog, read_catalog
    from streams.kafka_io import UnknownTopic
    from streams.replay import TIME_BOUNDS_HINT, ReplayError, parse_bound, resolve_range
    from streams.topic_corpus import corpus_from_topic, read_clicks

    s = get_settings(click.get_current_context())
    items_topic = items_topic if items_topic is not None else s.kafka.items_topic
    try:
        bounds = [parse_bound(b) if b else None for b in (since, until)]
        rng = resolve_range(s.kafka, topic, bounds[0], bounds[1],
                            options=("--since", "--until"))
        if partitions is not None:
            rng = dataclasses.replace(
                rng, start={p: o for p, o in rng.start.items() if p in partitions},
                end={p: o for p, o in rng.end.items() if p in partitions})
        if recorded is not None and rng.clamped:
            raise click.ClickException(
                f"{topic} no longer holds the events the checkpoint was trained on "
                f"(re-created, or retention deleted records): {'; '.join(rng.clamped)}")
        try:
            catalog = read_catalog(s.kafka, items_topic)
        except UnknownTopic:
            if recorded is None or recorded.get("items_topic") is not None:
                raise
            # the retrain service trains without a catalogue when there is none, and records
            # none: the items' categories come from the checkpoint (in_vocabulary)
            click.echo(f"no catalogue topic {items_topic!r}, and the checkpoint recorded none: "
                       "item categories from the checkpoint", err=True)
            catalog = Catalog()
        clicks = read_clicks(s.kafka, rng, s.flow)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    except (KafkaException, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(f"cannot read {topic!r} / {items_topic!r} at "
                                   f"{s.kafka.bootstrap}: {exc}") from None
    for line in rng.clamped:
        click.echo(f"warning: {line}", err=True)
    click.echo(f"{topic} {rng.describe()}: {clicks.records:,} records, {len(clicks):,} valid "
               f"clicks, {clicks.rejected:,} left out; catalogue {items_topic}: "
               f"{len(catalog):,} items ({catalog.rejected:,} bad records)", err=True)
    want = recorded.get("records") if recorded is not None else None
    if type(want) is int and clicks.records != want:
        raise _not_trained_on(f"{topic} {rng.describe()}",
                              f"{clicks.records:,} records read, {want:,} when it was trained",
                              "the topic was re-created, or retention deleted records",
                              "pass another range with --topic/--since/--until")
    was = recorded.get("forgotten") if recorded is not None else None
    if type(was) is int and clicks.forgotten != was:
        # the held-out users are drawn over the corpus's users: one forgotten since (diam
        # forget) is left out and reshuffles them, training users then scored as held out
        raise _not_trained_on(f"{topic} {rng.describe()}",
                              f"{clicks.forgotten:,} clicks of {clicks.forgotten_users:,} "
                              f"forgotten user(s) left out, {was:,} when it was trained",
                              "users were forgotten (diam forget) since; the held-out users "
                              "are drawn over the users, so it can no longer tell its own",
                              "evaluate a checkpoint trained after the forget, or another "
                              "range with --topic/--since/--until")
    for why in (clicks.reasons + catalog.reasons)[:5]:
        click.echo(f"  left out: {why}", err=True)
    corpus = corpus_from_topic(clicks, catalog, items_topic=items_topic)
    if corpus.n_users < 10:
        timed = any(b is not None and b.time_ms is not None for b in bounds)
        raise click.ClickException(f"{topic} {rng.describe()}: only {corpus.n_users} users; "
                                   "need at least 10 to split 80/10/10"
                                   + (f" ({TIME_BOUNDS_HINT})" if timed else ""))
    return corpus


def _not_trained_on(source: str, differs: str, why: str, remedy: str) -> click.ClickException:
    """The refusal of the data a checkpoint was trained on, read again, when it is not what
    training read (``differs``: what was read against what config.json recorded): the one
    message of ``diam evaluate``'s recorded topic range and of its recorded dataset folder,
    rather than another held-out split scored as the checkpoint's own."""
    return click.ClickException(f"{source} no longer holds the events the checkpoint was "
                                f"trained on: {differs} ({why}); {remedy}")


def _events_differ(corpus, info: Any) -> str | None:
    """How the events of ``corpus`` (a dataset folder rebuilt as the checkpoint's training
    corpus, after :func:`_training_corpus`) differ from those its config.json ``data``
    recorded: their number, first and last time (what ``corpus_from_prepared`` records); None
    when they agree. A value the config does not record (older checkpoints) is not compared."""
    if not isinstance(info, dict):
        return None
    got = corpus.info

    def recorded(key: str) -> int | None:
        value = info.get(key)
        return value if type(value) is int else None

    want = recorded("events")
    if want is not None and got["events"] != want:
        return f"{got['events']:,} events read, {want:,} when it was trained"
    if any(recorded(k) is not None and got[k] != recorded(k) for k in ("ts_min", "ts_max")):
        return (f"events from {got['ts_min']} to {got['ts_max']} (ms) read, from "
                f"{info.get('ts_min')} to {info.get('ts_max')} when it was trained")
    return None


def _check_recorded_events(corpus, info: Any, data: Path) -> None:
    """Refuse (:func:`_not_trained_on`) the dataset folder a checkpoint recorded as its
    training data when its events are not the ones recorded (:func:`_events_differ`): prepared
    again since training, it would otherwise give another 80/10/10 split, evaluated as the
    checkpoint's own."""
    differs = _events_differ(corpus, info)
    if differs is None:
        return
    raise _not_trained_on(
        str(data), differs, "it was prepared again since, from other data or with other options",
        "prepare it as it was, or evaluate on a copy of this folder under another path (then "
        "with its own 80/10/10 split, and a warning)")


@dataclasses.dataclass(frozen=True)
class _TopicRange:
    """A range of a clicks topic as ``diam train --topic`` takes it."""

    topic: str
    since: str | None
    until: str | None
    items_topic: str | None
    partitions: set[int] | None = None


def _recorded_range(info: Any, where: Path) -> _TopicRange | None:
    """The topic range a checkpoint was trained on (config.json's ``data``, written from
    ``corpus_from_topic``'s info), as ``--since``/``--until`` partition:offset pairs; None when
    it was trained on a dataset folder. A record that is not offsets is a ClickException."""
    if not isinstance(info, dict) or "topic" not in info:
        return None
    topic, items_topic = info["topic"], info.get("items_topic")
    bounds: list[Any] = [info.get("start"), info.get("end")]
    if not isinstance(topic, str) or not topic:
        raise click.ClickException(f"{where}: data.topic={topic!r} is not a topic name; pass "
                                   "the range with --topic/--since/--until")
    if items_topic is not None and (not isinstance(items_topic, str) or not items_topic):
        raise click.ClickException(f"{where}: data.items_topic={items_topic!r} is not a topic "
                                   "name; pass it with --topic ... --items-topic")
    for key, b in zip(("start", "end"), bounds, strict=True):
        if not (isinstance(b, dict) and b and all(
                isinstance(p, str) and p.isdigit() and type(o) is int and o >= 0
                for p, o in b.items())):
            raise click.ClickException(f"{where}: data.{key}={b!r} is not partition offsets; "
                                       "pass the range with --topic/--since/--until")
    start, end = ({int(p): int(o) for p, o in b.items()} for b in bounds)
    if set(start) != set(end):
        raise click.ClickException(f"{where}: data.start and data.end name other partitions "
                                   f"({sorted(start)} / {sorted(end)}); pass the range with "
                                   "--topic/--since/--until")

    def pairs(offsets: dict[int, int]) -> str:
        return ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))

    return _TopicRange(topic, pairs(start), pairs(end), items_topic, set(start))


def _recorded_range_or_none(info: Any, where: Path) -> _TopicRange | None:
    """:func:`_recorded_range`, or None where the record cannot be read as one (with --topic
    the range is the options', and a broken record is no reason to refuse it)."""
    try:
        return _recorded_range(info, where)
    except click.ClickException:
        return None


def _offsets(bound: str | None) -> dict[int, int] | None:
    """``partition:offset`` pairs as a dict, or None for any other form of a bound.

    >>> _offsets("1:40, 0:40"), _offsets("2026-01-01"), _offsets(None)
    ({1: 40, 0: 40}, None, None)
    """
    try:
        pairs = [part.split(":") for part in (bound or "").split(",")]
        got = {int(p): int(o) for p, o in pairs}
    except ValueError:
        return None
    return got if len(got) == len(pairs) else None


def _same_range(rng: _TopicRange, rec: _TopicRange) -> bool:
    """Whether the options' range is the checkpoint's recorded one: the same topic and the
    same partition:offset pairs, in any order (what ``diam evaluate`` prints for re-typing).

    >>> rec = _TopicRange("t", "0:0,1:0", "0:9,1:7", "t.items", {0, 1})
    >>> _same_range(_TopicRange("t", "1:0, 0:0", "0:9,1:7", None), rec)
    True
    >>> _same_range(_TopicRange("t", None, "0:9,1:7", None), rec)
    False
    """
    since = _offsets(rng.since)
    return (rng.topic == rec.topic and since is not None and since == _offsets(rec.since)
            and _offsets(rng.until) == _offsets(rec.until))


def _in_checkpoint_vocabulary(corpus, ck, source: str, names: str = "the range and its catalogue"):
    """``corpus`` over the checkpoint's item table (ids, order, categories): clicks on items
    it does not know are left out and counted on stderr (``names``: what names the corpus's
    items). Returns ``(corpus, left out)``; the one mapping of ``diam evaluate --topic`` and
    ``--data``."""
    from online_model.corpus import in_vocabulary

    total = len(corpus.items)
    got, left_out = in_vocabulary(corpus, ck.item_ids, ck.item_categories,
                                  ck.category_table())
    if total and left_out == total:
        raise click.ClickException(
            f"{source}: none of its {total:,} clicks is on an item the checkpoint knows (its "
            f"{len(ck.item_ids):,} items, e.g. {ck.item_ids[:3].tolist()}; {source}'s, e.g. "
            f"{corpus.item_ids[:3].tolist()}): it was trained on another catalogue; pass the "
            "clicks topic it was trained on (--topic) or its dataset (--data)")
    click.echo(f"{source}: {left_out:,} of {total:,} clicks left out, on items the checkpoint "
               f"does not know (it knows {len(ck.item_ids):,} items, {names} name "
               f"{corpus.n_items:,})", err=True)
    return got, left_out


def _device_of(name: str):
    """The torch device ``--device`` names; one torch cannot parse, or CUDA where there is
    none, is a usage error naming the option."""
    from online_model.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


@click.command("train")
@click.option("--model", "model_name", type=click.Choice(_MODELS), default="diam",
              show_default=True, help="Which model to train.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared dataset directory (diam data prepare / diam data synth) "
                   f"[default: {DEFAULT_DATASET_HELP}].")
@click.option("--topic", default=None, callback=topic_name,
              help="Train on a range of this clicks topic instead of --data, with item metadata "
                   "from the catalogue topic (--items-topic).")
@click.option("--since", default=None, metavar="BOUND",
              help="With --topic: start, as `diam replay --from` (ISO record time, an offset, or "
                   "partition:offset pairs) [default: the oldest record].")
@click.option("--until", default=None, metavar="BOUND",
              help="With --topic: end, exclusive, same forms [default: the end of the topic].")
@click.option("--items-topic", default=None, callback=topic_name,
              help="With --topic: the catalogue topic [default: settings kafka.items_topic].")
@click.option("--leave-newest", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              callback=finite, default=None, metavar="FRACTION",
              help="Leave out the newest FRACTION of the events by event time, as the retrain "
                   "service's promotion gate holds them out (retrain.holdout_fraction): a "
                   "retrained candidate is then compared with this model on events neither "
                   "trained on. The cut is recorded in config.json [default: train on all].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory [default: <snapshot.trainer_dir>/<model>, "
                   "checkpoints/<model>: where `diam snapshot watch` looks].")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the weights, the sampling and the 80/10/10 user split. The weights "
                   "are bit for bit the same for a given seed, device and --threads.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=click.IntRange(2), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), callback=finite, default=None,
              help="Adam peak learning rate [default: TrainConfig.lr, 1e-2: every model's best "
                   "of {3e-3, 1e-2} on ml-100k validation users (bench/model_quality.py "
                   "--lr-grid; bench/results/model_quality_round2.md)].")
@click.option("--max-per-user", type=click.IntRange(1), default=64, show_default=True,
              help="Training positions drawn per user per epoch.")
@click.option("--dim", type=_DIM, default=None,
              help="Embedding size: the stream's vectors have it, and `diam run` refuses a "
                   "base of another size [default: settings online.dim "
                   f"({OnlineConfig.model_fields['dim'].default}), {_DIM_ENV}].")
@click.option("--seq-len", type=click.IntRange(2), default=None,
              help="Items of history the network reads in training [default: the window it "
                   "is served on: DIAM_ONLINE_INFER_ITEMS (10) for diam, "
                   "DIAM_ONLINE_RECENT_LEN (50) for the others; OnlineConfig.train_seq_len]; "
                   "for diam a multiple of its window, 5. "
                   "A DIAM network trained on the stream's window serves a higher Recall@20 "
                   "than one trained on 50 items (bench/results/prequential.md).")
@click.option("--k-max", type=click.IntRange(1, 32), default=8, show_default=True,
              help="DIAM's K_max (the baselines use --interests).")
@click.option("--interests", type=click.IntRange(1, 32), default=4, show_default=True,
              help="K of MIND / ComiRec.")
@click.option("--threads", type=click.IntRange(0), default=1, show_default=True,
              help="CPU threads for torch (0: torch's default, which depends on the "
                   "machine). Another thread count sums in another order: other weights, "
                   "by about 1e-3.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="Mixed precision on CUDA (bf16 where supported, else fp16 with loss "
                   "scaling); no effect on CPU. On an H200, ml-100k trained slower with it "
                   "(6.0 against 4.2 s per epoch in fp32, same validation recall; "
                   "bench/results/train_device.md): --no-amp for corpora of that size.")
@progress_option("Show a progress bar per epoch.")
def train_cmd(model_name: str, data: Path | None, topic: str | None, since: str | None,
              until: str | None, items_topic: str | None, leave_newest: float | None,
              out: Path | None, epochs: int,
              seed: int, device: str,
              batch_size: int, lr: float | None, max_per_user: int, dim: int | None,
              seq_len: int | None,
              k_max: int, interests: int, threads: int, amp: bool, progress: bool) -> None:
    """Train a model on the training users of DATA and write a checkpoint.

    Users are split 80/10/10 by --seed; every epoch prints one log line (losses, seconds,
    validation Recall@20/50 and NDCG@50). The checkpoint holds weights.safetensors (state dict
    and the online head), config.json and the item vocabulary.

    With --topic, the corpus is a range of the clicks topic (valid clicks only, each user's in
    offset order) over the items of the compacted catalogue topic; the checkpoint's
    config.json records the topic and offsets under "data".
    """
    from diam.app import dim_problem, weights_problem
    from online_model.checkpoint import recover_checkpoint_dir, save_checkpoint
    from online_model.checkpoint_config import CheckpointError
    from online_model.models import ModelConfig
    from online_model.train import Features, TrainConfig, train

    _data_or_topic(data, topic, "train")
    if topic is None and (since or until or items_topic):
        raise click.UsageError("--since, --until and --items-topic need --topic")
    _device_of(device)  # refuse a bad --device before the corpus is read
    s = get_settings(click.get_current_context())
    dim = train_dim(dim, s.online)
    if topic is not None:  # a side topic's records are no clicks (streams.clicks_topic)
        from diam.commands.run import refuse_input

        refuse_input(s, topic)
    if out is None:  # where the snapshot watcher looks (one owner: snapshot.trainer_dir)
        out = Path(s.snapshot.trainer_dir) / model_name
    try:
        if recover_checkpoint_dir(out):  # a save into --out was killed between its renames
            click.echo(f"{out}: restored the previous checkpoint (.{out.name}.old) that an "
                       "interrupted save had moved aside", err=True)
    except OSError as exc:
        raise click.ClickException(f"{out}: cannot restore .{out.name}.old: {exc}") from None
    if os.path.lexists(out) and not out.is_dir():  # before training, not after
        raise click.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    if (why := _unwritable(out)) is not None:
        raise click.BadParameter(why, param_hint="--out")
    if seq_len is None:
        seq_len = s.online.train_seq_len(model_name)
    if (why := _shape_problem(model_name, dim, seq_len, k_max, interests)) is not None:
        raise click.BadParameter(why, param_hint="--seq-len")
    corpus = (_corpus_from_topic(topic, since, until, items_topic) if topic
              else _load_corpus(data or default_dataset(s)))
    extra: dict[str, Any] = {"split_seed": seed}
    if leave_newest is not None:
        from online_model.retrain import time_split

        n = len(corpus.items)
        corpus, cut = time_split(corpus, leave_newest)
        extra["left_out_from_ts"] = cut
        click.echo(f"left out the newest {n - len(corpus.items):,} of {n:,} events (event time "
                   f">= {cut})", err=True)
        if corpus.n_users == 0:
            raise click.BadParameter(f"{leave_newest} leaves no user to train on ("
                                     f"{len(corpus.items):,} of {n:,} events kept)",
                                     param_hint="--leave-newest")
    click.echo(f"{corpus.name}: {corpus.n_users} users, {corpus.n_items} items, "
               f"{len(corpus.items)} events; computing signals ...", err=True)
    feats = Features.of(corpus)
    if (problem := dim_problem(dim, s.online, str(out))) is not None:  # said before training
        click.echo(f"warning: {problem}", err=True)
    mcfg = ModelConfig(model=model_name, n_items=corpus.n_items,
                       n_categories=corpus.n_categories, dim=dim, seq_len=seq_len,
                       k_max=k_max, n_interests=interests)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                       max_per_user=max_per_user, threads=threads, amp=amp)
    if lr is not None:  # else TrainConfig's, the one default
        tcfg = dataclasses.replace(tcfg, lr=lr)
    try:
        res = train(corpus, mcfg, tcfg, feats=feats, progress=progress,
                    log=lambda line: click.echo(line, err=True))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if (problem := weights_problem(res.model)) is not None:  # before the save: --out stays
        raise click.ClickException(f"{problem}; nothing written, {out} left as it was "
                                   "(a smaller --lr?)")
    metrics = res.metrics()
    metrics["history"] = res.history
    try:
        save_checkpoint(out, res.model, corpus, seed=seed, train_metrics=metrics, extra=extra)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"cannot write the checkpoint: {exc}") from None
    click.echo(f"{model_name}: {res.seconds_per_epoch:.1f} s/epoch -> {out}")


def _unwritable(out: Path) -> str | None:
    """Why no checkpoint could be saved at ``out``, asked before training: its nearest
    existing folder takes no new entry (``save_checkpoint`` writes ``.<name>.XXXXXXXX`` beside
    ``out``, creating the missing folders), or None. Nothing is left behind."""
    import tempfile

    parent = out.absolute().parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory: {out} cannot be created"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        return f"{out} cannot be written ({exc.strerror or exc} in {parent})"
    return None


def _shape_problem(model: str, dim: int, seq_len: int, k_max: int, interests: int) -> str | None:
    """The network's own refusal of these sizes (e.g. DIAM's seq_len must be a multiple of
    its window), asked on a one-item model before any data is read, or None."""
    import numpy as np

    from online_model.models import ModelConfig, build_model

    try:
        build_model(ModelConfig(model=model, n_items=1, n_categories=1, dim=dim,
                                seq_len=seq_len, k_max=k_max, n_interests=interests),
                    np.zeros(1, dtype=np.int64))
    except ValueError as exc:
        return str(exc)
    return None


@click.command("evaluate")
@click.option("--checkpoint", type=click.Path(path_type=Path),  # the loader says what is wrong
              required=True, help="Checkpoint directory written by diam train.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared dataset directory [default: what the checkpoint was trained on: "
                   "its dataset, or its range of the clicks topic].")
@click.option("--topic", default=None, callback=topic_name,
              help="Evaluate on a range of this clicks topic instead (not with --data), with "
                   "the catalogue topic's items (--items-topic).")
@click.option("--since", default=None, metavar="BOUND",
              help="Start of a range of --topic, or of the checkpoint's recorded topic, as "
                   "`diam train --since` (ISO record time, an offset, or partition:offset "
                   "pairs) [default: the oldest record].")
@click.option("--until", default=None, metavar="BOUND",
              help="End, exclusive, same forms [default: the end of the topic].")
@click.option("--items-topic", default=None, callback=topic_name,
              help="The catalogue topic [default: on the recorded topic, the catalogue topic "
                   "it recorded; with --topic, settings kafka.items_topic].")
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--agg", type=click.Choice(["model", "merge"]), default="model", show_default=True,
              help="model: the model's own aggregation (DIAM: diversity-aware with d_u); "
                   "merge: ComiRec's merge by score.")
@click.option("--delta", type=click.FloatRange(-MAX_DELTA, MAX_DELTA), callback=finite, default=0.0,
              show_default=True,
              help="Manual diversity shift: d_u * (1 + delta).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_cmd(checkpoint: Path, data: Path | None, topic: str | None, since: str | None,
                 until: str | None, items_topic: str | None, split: str, agg: str,
                 delta: float, device: str, as_json: bool) -> None:
    """Evaluate a checkpoint with ComiRec's protocol on held-out users.

    On the data the checkpoint was trained on (its dataset, or its recorded range of the
    clicks topic, less the newest events `diam train --leave-newest` left out), the held-out
    users are those of the checkpoint's own 80/10/10 split. On other data (--data, --topic,
    --since/--until) they are that data's 80/10/10 split under the checkpoint's seed, and may
    include users the checkpoint trained on (a warning on stderr says so). For each, the first
    80% of the sequence is history and the rest ground truth. Prints Recall/NDCG/HR@20/50,
    Entropy@20, ILD@20 (reference embedding), coverage@20, the K_u distribution and the
    Spearman correlation of d_u with the realised diversity of the held-out items.

    A checkpoint trained with `diam train --topic` is evaluated on the range it recorded
    (config.json "data": the topic, its offsets and the catalogue topic), read again from the
    broker; a range whose offsets the topic no longer holds, or that reads another number of
    records than training did (the topic was re-created, or retention deleted records), is
    refused (a topic re-filled up to the same offsets cannot be told apart); so is its dataset
    folder prepared again since (another number of events, or first or last time, than
    config.json recorded). --topic/--since/--until name another range
    (--since/--until alone: of the recorded topic), unless they name the recorded one (the
    options printed on stderr, typed again): that is the checkpoint's own data. Read from a topic, or from a
    --data folder whose items.tsv is not the checkpoint's (a filtered `diam data prepare`), the
    clicks are expressed in the checkpoint's item vocabulary: clicks on items it does not know
    (the catalogue grew since training) are left out, and one line on stderr counts them.
    """
    from online_model.checkpoint import load_checkpoint
    from online_model.checkpoint_config import CheckpointError
    from online_model.corpus import prefix_signals
    from online_model.evaluate import evaluate, make_eval_set, reference_embedding, split_users

    _data_or_topic(data, topic, "evaluate")
    if data is not None and (since or until or items_topic):
        raise click.UsageError("--since, --until and --items-topic read a clicks topic: not "
                               "with --data")
    dev = _device_of(device)
    from diam.commands.run import refuse_input

    if topic is not None:  # the one rule of a topic read as clicks (streams.clicks_topic):
        refuse_input(get_settings(click.get_current_context()), topic)  # before the load
    try:
        ck = load_checkpoint(checkpoint, device=str(dev))
        seed = ck.split_seed()
    except (CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    info = ck.config.get("data")
    where = checkpoint / "config.json"
    rng: _TopicRange | None = None
    own = False  # the data the checkpoint was trained on, rebuilt: its own user split
    if topic is not None:
        rng = _TopicRange(topic, since, until, items_topic)
        rec = _recorded_range_or_none(info, where)
        if rec is not None and _same_range(rng, rec):  # the recorded range, typed again
            rng, own = dataclasses.replace(rec, items_topic=items_topic or rec.items_topic), True
    elif data is None:
        rec = _recorded_range(info, where)
        if rec is None and (since or until or items_topic):
            raise click.UsageError("--since, --until and --items-topic need --topic: the "
                                   "checkpoint records no clicks topic it was trained on")
        if rec is not None and (since or until) and not _same_range(
                _TopicRange(rec.topic, since, until, None), rec):  # another range of it
            rng = _TopicRange(rec.topic, since, until, items_topic or rec.items_topic)
        elif rec is not None:
            rng, own = dataclasses.replace(rec, items_topic=items_topic or rec.items_topic), True
    source: dict[str, Any] = {}
    if rng is not None:
        if topic is None:  # the recorded topic, under the one rule too
            refuse_input(get_settings(click.get_current_context()), rng.topic)
        if own:  # say what was read, in the options that read it again
            items = f" --items-topic {rng.items_topic}" if rng.items_topic else ""
            click.echo(f"the range the checkpoint was trained on: --topic {rng.topic} "
                       f"--since {rng.since} --until {rng.until}{items}", err=True)
        corpus = _corpus_from_topic(rng.topic, rng.since, rng.until, rng.items_topic,
                                    rng.partitions, recorded=info if own else None)
        if own:
            corpus = _training_corpus(corpus, ck, where)
        corpus, left_out = _in_checkpoint_vocabulary(corpus, ck, rng.topic)
        source = {k: corpus.info[k] for k in ("topic", "start", "end", "items_topic")}
        source["unknown_item_clicks"] = left_out
        what = f"{rng.topic} (--since {rng.since or 'oldest'} --until {rng.until or 'end'})"
    else:
        data = _dataset_of(checkpoint, info, data)
        corpus = _load_corpus(data)
        trained_on = info.get("path") if isinstance(info, dict) else None
        own = not (isinstance(info, dict) and "topic" in info) and (
            not isinstance(trained_on, str) or Path(trained_on).resolve() == data.resolve())
        if own:
            rebuilt = _training_corpus(corpus, ck, where)
            if isinstance(trained_on, str):  # this folder is the one it recorded: refused if changed
                _check_recorded_events(rebuilt, info, data)
                corpus = rebuilt
            elif _events_differ(rebuilt, info) is None:
                corpus = rebuilt
            else:  # no folder recorded, other events: other data, its own split (warned below)
                own = False
        if not _same_item_ids(corpus.item_ids, ck.item_ids):  # e.g. a filtered prepare
            corpus, left_out = _in_checkpoint_vocabulary(corpus, ck, str(data), "its items.tsv")
            source = {"path": str(data), "unknown_item_clicks": left_out}
        what = str(data)
    if not own:
        click.echo(f"warning: {what} is not the data the checkpoint was trained on: the held-out "
                   f"users are this range's own 80/10/10 split under the checkpoint's seed "
                   f"({seed}) and may include users the checkpoint trained on", err=True)
    split_ids = split_users(corpus.users, seed)
    es = make_eval_set(corpus, split_ids[split], prefix_signals(corpus))
    if len(es.users) == 0:
        raise click.ClickException(f"no {split} user has 2 clicks on items the checkpoint "
                                   "knows: nothing to evaluate")
    ref = reference_embedding(corpus, split_ids["train"])
    res = evaluate(ck.model, corpus, es, device=dev, agg=agg, delta=delta, ref=ref)
    res.update({"model": ck.config["model"], "checkpoint": str(checkpoint), "split": split,
                "agg": agg, "delta": delta})
    if source:
        res["data"] = source
    if as_json:  # NaN (a correlation over too few users) as null: every command's rule
        click.echo(json_text(res, indent=2, sort_keys=True))
        return
    click.echo(f"{'users':>20s}  {res['n_users']} ({split} users of {corpus.n_users})")
    for k in ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50", "entropy@20",
              "ild@20", "ild_cat@20", "coverage@20", "k_u_mean", "d_u_mean",
              "spearman_d_entropy"):
        if k in res:
            click.echo(f"{k:>20s}  {res[k]:.4f}{_why_nan(k, res)}")
    click.echo(f"{'K_u histogram':>20s}  {res['k_u_hist']}")


def _data_or_topic(data: Path | None, topic: str | None, verb: str) -> None:
    """The one rule of train's and evaluate's sources: a dataset folder or a range of a clicks
    topic, never both (one of them would be silently left unread)."""
    if data is not None and topic is not None:
        raise click.UsageError(f"--data and --topic are mutually exclusive: {verb} on a "
                               "dataset folder or on a range of a clicks topic")


def _same_item_ids(item_ids: Any, checkpoint_item_ids: Any) -> bool:
    """Whether two item tables name the same items in the same order (row i is item i)."""
    import numpy as np

    ours, theirs = np.asarray(item_ids), np.asarray(checkpoint_item_ids)
    return ours.shape == theirs.shape and bool((ours == theirs).all())


def same_items(data: Path, item_ids: Any, checkpoint_item_ids: Any) -> None:
    """Refuse a dataset whose item table is not the checkpoint's, for ``diam evaluate-stream
    --checkpoint``: its arms update the model online over the dataset's own item rows, so the
    checkpoint's rows would score items of another catalogue, and every metric would read 0
    rather than fail. (``diam evaluate --data`` maps the clicks into the checkpoint's table
    instead, ``_in_checkpoint_vocabulary``.)"""
    import numpy as np

    if _same_item_ids(item_ids, checkpoint_item_ids):
        return
    ours, theirs = np.asarray(item_ids).astype(str), np.asarray(checkpoint_item_ids).astype(str)
    unknown = int(np.isin(ours, theirs, invert=True).sum())
    raise click.ClickException(
        f"{data}: item vocabulary differs from the checkpoint's ({len(ours):,} items in the "
        f"data, {len(theirs):,} in the checkpoint, {unknown:,} of the data's unknown to it): "
        "the online arms need the checkpoint's own item table; pass the dataset it was "
        "trained on, or evaluate this one offline with `diam evaluate --data`")


def _why_nan(key: str, res: dict[str, Any]) -> str:
    """Why a metric printed as nan is nan (the Spearman correlation needs 2 users and d_u and
    the realised entropy not constant over them)."""
    if key != "spearman_d_entropy" or not math.isnan(res[key]):
        return ""
    n = res["n_users"]
    if n < 2:
        return f" (too few users: {n}; a rank correlation needs at least 2)"
    return (f" (d_u or the realised entropy is the same for all {n} users: too few users to "
            "rank)")


def _training_corpus(corpus, ck, where: Path):
    """``corpus`` as the checkpoint's training saw it (``corpus.training_corpus``), said on
    stderr; a recorded cut that is not a time is a ClickException."""
    from online_model.corpus import training_corpus

    try:
        got, cut = training_corpus(corpus, ck.config)
    except ValueError as exc:
        raise click.ClickException(f"{where}: {exc}; pass the range with "
                                   "--topic/--since/--until") from None
    if cut is not None:
        click.echo(f"left out the newest {len(corpus.items) - len(got.items):,} of "
                   f"{len(corpus.items):,} events (event time >= {cut}), as training did: "
                   f"{got.n_users:,} users", err=True)
    return got


def _dataset_of(checkpoint: Path, info: Any, data: Path | None) -> Path:
    """The dataset folder to evaluate on: ``--data``, else the one the checkpoint recorded,
    else the default dataset."""
    trained_on = info.get("path") if isinstance(info, dict) else None
    if trained_on is not None and not isinstance(trained_on, str):
        raise click.ClickException(f"{checkpoint / 'config.json'}: data.path={trained_on!r} is "
                                   "not a path; pass the dataset with --data")
    if data is None and trained_on and not Path(trained_on).is_dir():
        # checkpoints written before the path was stored absolute hold it relative to the
        # directory training ran in
        raise click.ClickException(
            f"the checkpoint's recorded data path {trained_on!r} was not found (from "
            f"{Path.cwd()}); pass the dataset with --data")
    return data or (Path(trained_on) if trained_on
                    else default_dataset(get_settings(click.get_current_context())))


COMMANDS = [train_cmd, evaluate_cmd]
