"""bench/trigger_cost.py --base trained starts its network from the benchmark's clustered item
table: a corpus orders items by id string, so each corpus row must take the row of the same
item in ``stream.make_checkpoint``'s table, or the trained network would start from a shuffled
table."""

from __future__ import annotations

import numpy as np

from online_model.corpus import corpus_from_prepared
from online_model.datasets import ItemRows, dataset_from_events
from tests.benchload import load_bench

tc = load_bench("trigger_cost")


def test_each_corpus_row_takes_its_own_items_row_of_the_benchmarks_table() -> None:
    ids = [f"it{j}" for j in range(12)]
    rows = ItemRows(ids, ids, [[f"c{j % 3:02d}"] for j in range(12)])
    corpus = corpus_from_prepared(dataset_from_events(
        "t", np.array(["u1", "u1", "u2"]), np.array(["it10", "it2", "it11"]),
        np.array([1, 2, 3]), rows))
    order = tc.table_rows(corpus.item_ids)
    assert corpus.item_ids.tolist()[:4] == ["it0", "it1", "it10", "it11"]  # not numeric order
    assert order[0] == 0  # padding stays padding
    for row, item in enumerate(corpus.item_ids.tolist(), start=1):
        assert order[row] == int(item[2:]) + 1
    assert sorted(order) == list(range(13))
