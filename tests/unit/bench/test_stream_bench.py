"""bench/stream.py's real-clicks replay: it plays only the second half, every user's clicks in
their own order under each copy's id, all of them once, in interleaved sessions, with ids the
event contract accepts and event times far enough apart that no id runs dry in the rate limit."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from online_model import kernels
from online_model.config import OnlineConfig
from online_model.datasets import ItemRows, write_prepared
from streams.config import FlowConfig
from streams.events import Rejection, decode_click, encode_event
from tests.benchload import load_bench

stream = load_bench("stream")


def _dataset(tmp: Path) -> tuple[Path, dict[str, list[str]]]:
    """40 users, 30 clicks each, in time order; returns the directory and each user's
    second-half clicks."""
    rng = np.random.default_rng(0)
    n_users, per = 40, 30
    users = np.repeat([f"u{i}" for i in range(n_users)], per)
    items = np.array([f"i{j}" for j in rng.integers(0, 50, size=users.size)])
    order = np.argsort(rng.random(users.size), kind="stable")
    users, items = users[order], items[order]
    ts = np.arange(users.size, dtype=np.int64) * 1000
    ids = [f"i{j}" for j in range(50)]
    out = write_prepared(tmp / "d", name="d", users=users, items_of_events=items, ts_ms=ts,
                         items=ItemRows(ids=ids, titles=[""] * 50, categories=[["c"]] * 50),
                         meta={})
    second: dict[str, list[str]] = defaultdict(list)
    for u, i in zip(users[users.size // 2:], items[users.size // 2:], strict=True):
        second[str(u)].append(str(i))
    return out, second


def test_replay_plays_each_users_second_half_once_in_order(tmp_path: Path) -> None:
    data, second = _dataset(tmp_path)
    events, info = stream.replay_events(data, copies=3, concurrent=10, mean_session=4.0)
    got: dict[str, list[str]] = defaultdict(list)
    for ev in events:
        got[ev.user_id].append(ev.item_id)
    assert got == {f"{u}-{c}": items for u, items in second.items() for c in range(3)}
    assert info["events"] == len(events) == 3 * sum(len(v) for v in second.values())
    assert info["users"] == 3 * len(second)
    # sessions interleave: the stream is not one user after another
    switches = sum(a.user_id != b.user_id for a, b in zip(events, events[1:], strict=False))
    assert switches > len(events) // 2
    # event times rise by the spacing, 1 s by default
    ts = np.array([ev.ts for ev in events])
    assert (np.diff(ts) == 1000).all()
    # every event passes the dataflow's validation (a rejected replay would time the
    # dead-letter path)
    flow = FlowConfig()
    for ev in events:
        assert not isinstance(decode_click(encode_event(ev), max_bytes=flow.max_event_bytes,
                                           ts_min_ms=0, ts_max_ms=None), Rejection)
    # and no id runs dry in the rate limit's token bucket (it would be frozen as a bot): the
    # learner's own bucket, one record per id
    cfg = OnlineConfig()
    records: dict[str, np.ndarray] = {}
    for ev in events:
        rec = records.setdefault(ev.user_id, kernels.new_user(len(records), cfg.rate_burst))
        ok, _ = kernels.admit(rec, ev.ts, cfg.rate_burst, cfg.rate_per_s, cfg.freeze_ms)
        assert ok, ev


def test_the_no_learning_floor_does_not_learn_through_apply_many(tmp_path) -> None:
    """The per-user step calls ``apply_many``: the floor's learner must not learn through it
    (a floor that learnt was once measured as the floor)."""
    from online_model.base import BaseView
    from online_model.config import OnlineConfig
    from online_model.testing import tiny_diam_checkpoint

    floor = load_bench("stream_floor")
    ck, c = tiny_diam_checkpoint(tmp_path / "diam")
    learner = floor.NoLearning(BaseView.from_checkpoint(ck), OnlineConfig(dim=8, k_max=4))
    state = learner.new_state("u")
    clicks = [(str(x), 1_000 * i, i, None) for i, x in enumerate(c.item_ids[:6])]
    assert learner.apply_many(state, clicks) == [[]] * 6
    assert (state.seq, state.n_events, state.n_recent) == (5, 6, 1)
    assert learner.inferences == 0 and not state.anchored and not state.V.any()


def test_the_synthetic_checkpoint_is_a_diam_base_with_no_clicks_counted(tmp_path) -> None:
    """Every timed benchmark builds its base with ``make_checkpoint`` (stream, metrics_cost,
    fresh_workers, evict_cost, stream_ab): it writes through the trainer's save_checkpoint
    (which counts the corpus's clicks for cold lists) and loads as a DIAM base."""
    from online_model.checkpoint import read_checkpoint

    base = stream.make_checkpoint(tmp_path / "ck", seq_len=10)
    assert base.version.startswith("diam-") and base.head is not None
    pop = read_checkpoint(tmp_path / "ck").item_pop
    assert pop is not None and pop.shape == (stream.N_ITEMS,) and not pop.any()
