"""Shared helpers of the dataflow tests: a tiny deterministic base model and event builders, and
a prepared dataset written from click lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.datasets import ItemRows, PreparedDataset, load_prepared, write_prepared
from online_model.online import OnlineLearner
from streams.events import ClickEvent, encode_event
from streams.kafka_io import RawRecord

T0 = 880_000_000_000
N_ITEMS = 60
DIM = 16


def tiny_base() -> BaseView:
    """60 items in 6 categories, 16-d embeddings clustered by category, fixed seed."""
    rng = np.random.default_rng(7)
    cats = np.arange(N_ITEMS, dtype=np.int32) % 6
    centres = rng.normal(size=(6, DIM)).astype(np.float32)
    emb = centres[cats] + 0.3 * rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    ids = np.array([f"i{j}" for j in range(N_ITEMS)])
    return BaseView(ids, emb.astype(np.float32), cats, k_max=4, version="tiny-1")


def tiny_config() -> OnlineConfig:
    return OnlineConfig(dim=DIM, k_max=4)


def tiny_learner() -> OnlineLearner:
    return OnlineLearner(tiny_base(), tiny_config())


def prepared_clicks(path: Path, name: str, users: list[str], items: list[str], ts_ms: list[int],
                    rows: ItemRows) -> PreparedDataset:
    """Clicks given as parallel lists (user, item id, time in ms) written as the prepared dataset
    ``name`` at ``path`` with the items ``rows``, loaded back."""
    write_prepared(path, name=name, users=np.array(users), items_of_events=np.array(items),
                   ts_ms=np.array(ts_ms), items=rows, meta={"source": "test"})
    return load_prepared(path)


def click_stream(n_users: int, n_events: int, seed: int = 0) -> list[ClickEvent]:
    """Time-ordered clicks: each user favours two categories."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_events):
        u = int(rng.integers(n_users))
        cat = (u * 2 + int(rng.integers(2))) % 6
        item = cat + 6 * int(rng.integers(N_ITEMS // 6))
        out.append(ClickEvent(user_id=f"user{u}", item_id=f"i{item}", ts=T0 + 1000 * e))
    return out


def as_records(events: list[ClickEvent], topic: str = "t", partition: int = 0) -> list[RawRecord]:
    return [
        RawRecord(topic, partition, off, ev.user_id.encode(), encode_event(ev), ev.ts)
        for off, ev in enumerate(events)
    ]


def expected_states(events: list[ClickEvent], learner: OnlineLearner,
                    offsets: list[int] | None = None) -> dict[str, object]:
    """Apply the learner per user in order, exactly as the dataflow must."""
    states: dict[str, object] = {}
    for i, ev in enumerate(events):
        off = offsets[i] if offsets is not None else i
        st = states.get(ev.user_id)
        if st is None:
            st = states[ev.user_id] = learner.new_state(ev.user_id)
        learner.apply(st, ev.item_id, ev.ts, off, ev.session_id)
    return states


def failing_kernel(real, poison_offset: int):
    """A stand-in for :func:`online_model.kernels.learn_events_diam` that fails on the click
    at ``poison_offset`` as the compiled kernel would: the clicks before it applied (by the
    real kernel, which counts their runs in ``prog[2]``), its ``seq`` and ``n_events``
    advanced, ``prog[0]`` pointing at it, then an exception."""

    def failing(*args):
        ev, prog = args[12], args[-1]
        hit = np.flatnonzero(ev[:, 3] == poison_offset)
        if not len(hit):
            return real(*args)
        if hit[0]:
            done = real(*args[:12], ev[:hit[0]], *args[13:])
            if done[0] < hit[0] or done[1] != 0 or done[4] != -2:
                return done  # a click before the poison was handed back first
        prog[0] = hit[0]
        args[0]["seq"] = poison_offset
        args[0]["n_events"] += 1
        raise ZeroDivisionError("a bug nobody foresaw")

    return failing


def failing_step(real, poison_offset: int):
    """The same failure for :func:`online_model.kernels.learn_event_diam`, the one-click
    kernel ``apply`` calls: on the click at ``poison_offset`` its ``seq`` and ``n_events``
    advance, then an exception (a reference for the batched call's failures)."""

    def failing(*args):
        if args[15] != poison_offset:
            return real(*args)
        args[0]["seq"] = poison_offset
        args[0]["n_events"] += 1
        raise ZeroDivisionError("a bug nobody foresaw")

    return failing
