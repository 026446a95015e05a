"""The ``diam.items`` contract and the in-memory prepared dataset a topic corpus is built on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.corpus import corpus_from_prepared
from online_model.datasets import ItemRows, dataset_from_events, load_prepared, write_prepared
from streams.catalog import CatalogItem, decode_item, encode_item
from streams.events import Rejection

_ids = st.text("abc0123456789", min_size=1, max_size=4)
#: what a title may hold: printable characters and spaces (streams.events.unprintable)
_printable = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


@given(st.builds(CatalogItem, _ids, st.lists(st.sampled_from(["Drama", "Comedy", "War"]),
                                              max_size=3).map(tuple),
                 st.text(_printable, max_size=20), st.integers(0, 2**50)))
def test_item_round_trip(item: CatalogItem) -> None:
    assert decode_item(item.item_id.encode(), encode_item(item)) == item


def test_bad_items_have_reasons() -> None:
    ok = {"item_id": "1", "categories": ["Drama"], "title": "t", "first_seen": 5}
    import json

    for patch, field in [({"first_seen": -1}, "first_seen"), ({"title": 3}, "title"),
                         ({"item_id": "a b"}, "item_id"), ({"item_id": "a\u202e"}, "item_id"),
                         ({"item_id": "x" * 129}, "item_id"), ({"extra": 1}, "payload"),
                         ({"categories": [1]}, "categories")]:
        got = decode_item(None, json.dumps({**ok, **patch}).encode())
        assert isinstance(got, Rejection) and got.reason.startswith(field), (patch, got)
    assert isinstance(decode_item(b"1", b"\xc1"), Rejection)


@pytest.mark.parametrize("bad", ["\n", "\r", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e"])
def test_a_title_or_category_that_could_forge_a_row_is_refused(bad: str) -> None:
    """A line break or terminal escape in a title printed a forged row in `diam recommend`."""
    forged = f"Scream{bad}    2. 50 ... 9.9999  Star Wars (injected)"
    for item, field in [(CatalogItem("5", ("Horror",), forged, 1), "title"),
                        (CatalogItem("5", ("Horror", f"War{bad}"), "Scream", 1), "categories")]:
        got = decode_item(b"5", encode_item(item))
        assert isinstance(got, Rejection), (bad, field)
        assert got.reason.startswith(f"{field}: contains {bad!r}"), got.reason


def test_spaces_that_break_no_line_are_kept_in_titles() -> None:
    item = CatalogItem("5", ("Film-Noir", "Children's Film"), "Am\u00e9lie\u00a0(2001)  x", 1)
    assert decode_item(b"5", encode_item(item)) == item


@given(st.text(max_size=30))
def test_an_accepted_title_holds_no_line_break(title: str) -> None:
    got = decode_item(b"5", encode_item(CatalogItem("5", (), title, 1)))
    assert isinstance(got, Rejection) or len(f"a{got.title}b".splitlines()) == 1


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_dataset_from_events_equals_written_and_loaded(tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    n_items = data.draw(st.integers(1, 12))
    ids = [str(i * 7) for i in range(n_items)]
    cats = [data.draw(st.lists(st.sampled_from(["A", "B", "C"]), max_size=2)) for _ in ids]
    n = data.draw(st.integers(1, 40))
    users = np.array([f"u{data.draw(st.integers(0, 5))}" for _ in range(n)])
    extra = ["999"] if data.draw(st.booleans()) else []  # an item only the clicks name
    items = np.array([data.draw(st.sampled_from(ids + extra)) for _ in range(n)])
    ts = np.sort(np.array([data.draw(st.integers(0, 10)) for _ in range(n)], dtype=np.int64))
    rows = ItemRows(ids, [""] * n_items, cats)
    d = write_prepared(tmp_path_factory.mktemp("ds"), name="x", users=users,
                       items_of_events=items, ts_ms=ts, items=rows, meta={})
    loaded = load_prepared(d)
    # the stream delivers a user's events in time order; the folder sorts ties by item
    order = np.lexsort((loaded.item_index, loaded.ts_ms))
    mem = dataset_from_events("x", loaded.user_ids[order], loaded.item_ids[order],
                              loaded.ts_ms[order], rows)
    a, b = corpus_from_prepared(mem), corpus_from_prepared(loaded)
    for f in ("users", "offsets", "items", "ts", "item_ids", "item_cat"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.category_names == b.category_names


def test_refusal_log_names_the_first_records_then_counts_the_rest(caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    from streams.catalog import RefusalLog
    from streams.kafka_io import RawRecord

    refused = RefusalLog(cap=2)
    recs = [RawRecord("items", 0, off, b"k", b"v", 0) for off in range(5)]
    with caplog.at_level(logging.WARNING, logger="streams.catalog"):
        for rec in recs[:4]:
            refused.refuse(rec, f"bad {rec.offset}")
        refused.refuse(recs[0], "bad 0")  # read again (a follower's first poll): told once
        refused.done()
        refused.refuse(recs[4], "bad 4")
        refused.done()
        refused.done()  # nothing new: nothing said
    said = [r.getMessage() for r in caplog.records]
    assert said == ["catalogue record items[0]@0 refused: bad 0",
                    "catalogue record items[0]@1 refused: bad 1",
                    "2 more catalogue record(s) refused (4 in all; the first 2 named above)",
                    "1 more catalogue record(s) refused (5 in all; the first 2 named above)"]
    assert refused.count == 5
