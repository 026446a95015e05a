"""``corpus.in_vocabulary``: a corpus re-expressed over a checkpoint's item table equals the
per-user filter of its click sequences (the oracle), keeps every user so that the seeded split is
unchanged, and counts the clicks it left out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.corpus import in_vocabulary, tiny_corpus
from online_model.evaluate import split_users


def _sequences(c) -> dict[str, list[tuple[str, int]]]:  # type: ignore[no-untyped-def]
    """user -> [(item id, ts)] in the corpus's order."""
    return {str(u): [(str(c.item_ids[c.items[p]]), int(c.ts[p]))
                     for p in range(c.offsets[k], c.offsets[k + 1])]
            for k, u in enumerate(c.users)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_items=st.integers(3, 30),
       known=st.sets(st.integers(0, 40), max_size=40), extra=st.integers(0, 5))
def test_equals_the_per_user_filter_and_keeps_the_split(seed, n_items, known, extra) -> None:
    c = tiny_corpus(n_users=12, n_items=n_items, n_categories=3, length=6, seed=seed)
    rng = np.random.default_rng(seed)
    # the checkpoint's table: some of the corpus's items and some it never had, in its own order
    ids = np.array([f"i{j}" for j in sorted(known)] + [f"x{j}" for j in range(extra)])
    ids = ids[rng.permutation(len(ids))]
    cats = rng.integers(-1, 2, size=len(ids)).astype(np.int32)
    got, left_out = in_vocabulary(c, ids, cats, ["a", "b"])

    known_ids = set(ids.tolist())
    want = {u: [x for x in seq if x[0] in known_ids] for u, seq in _sequences(c).items()}
    assert _sequences(got) == want
    assert left_out == len(c.items) - sum(map(len, want.values()))
    assert got.item_ids.tolist() == ids.tolist() and got.item_cat.tolist() == cats.tolist()
    assert got.category_names == ["a", "b"] and got.n_items == len(ids)
    assert got.users.tolist() == c.users.tolist()  # every user, even with no events left
    for a, b in zip(split_users(got.users, 3).values(), split_users(c.users, 3).values(),
                    strict=True):
        assert a.tolist() == b.tolist()
    assert got.info["events"] == len(got.items) and got.info["name"] == c.info["name"]


def test_a_grown_table_in_another_order_loses_nothing() -> None:
    c = tiny_corpus(n_users=5, n_items=8, n_categories=2, length=4, seed=1)
    grown = np.array(["new-a"] + c.item_ids[::-1].tolist() + ["new-b"])
    got, left_out = in_vocabulary(c, grown, np.zeros(len(grown)), ["c0"])
    assert left_out == 0 and _sequences(got) == _sequences(c)
    assert got.offsets.tolist() == c.offsets.tolist()
    assert grown[got.items].tolist() == c.item_ids[c.items].tolist()


def test_no_known_item_leaves_every_user_empty() -> None:
    c = tiny_corpus(n_users=4, n_items=5, length=3)
    got, left_out = in_vocabulary(c, np.array(["zz"]), np.zeros(1), [])
    assert left_out == len(c.items) and len(got.items) == 0
    assert got.offsets.tolist() == [0] * 5 and got.n_users == 4


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.9])
def test_events_before_the_recorded_cut_is_a_per_user_filter_of_time(fraction) -> None:
    """``diam evaluate`` rebuilds ``diam train --leave-newest``'s corpus from the cut it
    recorded (``time_split`` calls ``events_before`` with it): each user's events before the
    cut in their order, users left with none dropped (so the seeded split is training's), the
    item table kept. Checked against a plain per-user loop."""
    from online_model.corpus import events_before
    from online_model.retrain import time_split

    c = tiny_corpus(n_users=25, n_items=30, length=12, seed=4)
    c.ts[c.offsets[3]:c.offsets[5]] += 10**9  # two users with only the newest events
    got, cut = time_split(c, fraction)
    users, seqs = [], []
    for u in range(c.n_users):
        a, b = int(c.offsets[u]), int(c.offsets[u + 1])
        keep = [(int(i), int(t)) for i, t in zip(c.items[a:b], c.ts[a:b], strict=True) if t < cut]
        if keep:
            users.append(str(c.users[u]))
            seqs.append(keep)
    assert got.users.tolist() == users and c.users[3] not in users and c.users[4] not in users
    assert [list(zip(got.items[a:b].tolist(), got.ts[a:b].tolist(), strict=True))
            for a, b in zip(got.offsets[:-1], got.offsets[1:], strict=True)] == seqs
    for k in ("item_ids", "item_cat"):
        assert np.array_equal(getattr(got, k), getattr(c, k)), k
    assert got.info["holdout_from_ts"] == cut and got.info["events"] == sum(map(len, seqs))
    assert events_before(c, cut).users.tolist() == users
