"""The growth log (``streams.growth_log``): a version's table rebuilt from it has the new items at
the rows the run gave them, with the same embeddings; nothing is written before ``open``; a torn
last line is cut; a file that changed since it was read, or of another cluster shape, is
refused."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from online_model.base import toy_base
from online_model.models.content import ContentTower
from streams.catalog import CatalogItem
from streams.growth_log import GrowthLog, GrowthLogError
from streams.new_items import grow


def _tower(base):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    return ContentTower(base.category_names,
                        rng.normal(size=(len(base.category_names) + 8 + 1, base.dim))
                        .astype(np.float32), 8)


def _it(name: str, cats: tuple[str, ...] = ()) -> CatalogItem:
    return CatalogItem(name, cats, f"title {name}", 7)


def test_a_rebuilt_table_has_the_logged_items_at_their_rows_bit_for_bit(tmp_path) -> None:
    base = toy_base(n_items=8, dim=4)
    tower = _tower(base)
    log = GrowthLog.in_store(tmp_path, 0)
    live = base
    for batch in ([_it("c", ("c1",))], [_it("b"), _it("c"), _it("a", ("c2",))]):
        live, embedded = grow(live, batch, tower)
        log.record(base.version, embedded)
    assert not (tmp_path / "diam-growth-0.jsonl").exists()  # nothing before open
    log.open()
    log.record(base.version, grow(live, [_it("d")], tower)[1])
    live = grow(live, [_it("d")], tower)[0]
    log.close()

    again = GrowthLog.in_store(tmp_path, 0).replay(base, tower)
    assert list(again.item_ids[8:]) == ["c", "b", "a", "d"]  # not id order
    np.testing.assert_array_equal(again.item_emb, live.item_emb)
    np.testing.assert_array_equal(again.item_categories, live.item_categories)
    assert GrowthLog.in_store(tmp_path, 0).batches("other") == []
    assert GrowthLog.in_store(tmp_path, 1).batches(base.version) == []  # per process


def test_a_torn_last_line_is_cut_and_a_damaged_line_refused(tmp_path) -> None:
    log = GrowthLog.in_store(tmp_path)
    log.open()
    log.record("v1", [_it("x")])
    log.close()
    path = tmp_path / "diam-growth-0.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"version":"v1","ite')  # a crash within a write
    log = GrowthLog.in_store(tmp_path)
    assert [[i.item_id for i in b] for b in log.batches("v1")] == [["x"]]
    log.open()
    log.record("v1", [_it("y")])
    log.close()
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 3
    path.write_bytes(whole + b"not json\n")
    with pytest.raises(GrowthLogError, match="line 3, is not a growth record"):
        GrowthLog.in_store(tmp_path).batches("v1")


def test_a_file_written_after_it_was_read_is_refused_at_open(tmp_path) -> None:
    first = GrowthLog.in_store(tmp_path)
    first.open()
    second = GrowthLog.in_store(tmp_path)  # a run that starts while the first still runs
    second.record("v1", [_it("b")])
    first.record("v1", [_it("a")])
    with pytest.raises(GrowthLogError, match="changed while this run started"):
        second.open()
    first.close()
    assert [[i.item_id for i in b] for b in GrowthLog.in_store(tmp_path).batches("v1")] == [["a"]]


def test_another_cluster_shape_is_refused(tmp_path) -> None:
    log = GrowthLog.in_store(tmp_path, 0, (2, 1))
    log.open()
    log.close()
    with pytest.raises(GrowthLogError, match="2 process"):
        GrowthLog.in_store(tmp_path, 0, (2, 3)).batches("v1")
    assert GrowthLog.in_store(tmp_path, 0, (2, 1)).batches("v1") == []
    one = tmp_path / "one"
    log = GrowthLog.in_store(one, 0, (1, 1))
    log.open()
    log.close()
    assert GrowthLog.in_store(one, 0, (1, 4)).batches("v1") == []  # one process: workers share


def test_open_keeps_only_the_versions_still_needed_and_rebuilds_the_same_rows(tmp_path) -> None:
    base = toy_base(n_items=8, dim=4)
    tower = _tower(base)
    path = tmp_path / "diam-growth-0.jsonl"
    live = base
    for version in ["old1", "old2", "old3", base.version]:  # one start each
        log = GrowthLog.in_store(tmp_path)
        log.open()
        items = [_it(f"{version}-{k}", ("c1",)) for k in range(40)]
        if version == base.version:
            live, items = grow(live, items, tower)
        log.record(version, items)
        log.close()
    whole = path.stat().st_size
    log = GrowthLog.in_store(tmp_path)
    log.keep_only(lambda: {"old3", base.version})  # the store's versions and the one served
    log.open()  # a start compacts the file: old1 and old2 can no longer be rolled back to
    log.close()
    assert path.stat().st_size < whole * 0.6
    assert log.batches("old1") == [] and log.batches("old2") == []  # nor held in memory
    again = GrowthLog.in_store(tmp_path)
    assert again.batches("old1") == [] and len(again.batches("old3")) == 1
    rebuilt = again.replay(base, tower)  # a restart: the served version's rows bit for bit
    assert list(rebuilt.item_ids) == list(live.item_ids)
    np.testing.assert_array_equal(rebuilt.item_emb, live.item_emb)
    assert not list(tmp_path.glob(".diam-growth-0.jsonl.*"))  # no temp file left


def test_another_shape_is_accepted_and_rewritten_while_the_store_holds_no_state(tmp_path) -> None:
    from diam.app import online_job
    from diam.settings import load_settings
    from streams.runner import prepare_recovery

    s = load_settings(stack={"home": str(tmp_path)})
    store = tmp_path / "store"
    prepare_recovery(store)  # a cluster start that never read anything: Bytewax's empty files
    cluster = ["127.0.0.1:1", "127.0.0.1:2"]
    first = online_job(s, workers=2, process_id=0, addresses=cluster, recovery_dir=store)
    assert first.growth is not None
    first.growth.open()
    first.growth.close()
    again = online_job(s, workers=1, process_id=0, addresses=cluster, recovery_dir=store)
    assert again.growth is not None
    assert again.growth.batches("v1") == []  # not refused: no user's state is in a process
    again.growth.open()
    again.growth.close()
    assert b'"workers":1' in (store / "diam-growth-0.jsonl").read_bytes().splitlines()[0]
    con = sqlite3.connect(store / "part-0.sqlite3")  # now the store holds a user's position
    con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                "VALUES ('diam-online.clicks', '0-t', 1, NULL)")
    con.commit()
    con.close()
    third = online_job(s, workers=2, process_id=0, addresses=cluster, recovery_dir=store)
    assert third.growth is not None
    with pytest.raises(GrowthLogError, match="2 process"):
        third.growth.batches("v1")


def test_a_growth_that_cannot_be_written_is_not_kept_and_stops_the_run(tmp_path) -> None:
    import threading

    from diam.app import _logged

    log = GrowthLog.in_store(tmp_path)
    log.open()
    assert log._fd is not None
    os.close(log._fd)  # its file descriptor gone: the next write fails (EBADF)
    stop = threading.Event()
    assert not _logged(log, "v1", [_it("x")], stop)
    assert stop.is_set() and log.failed is not None
    assert "cannot write" in str(log.failed) and str(tmp_path) in str(log.failed)
    assert log.batches("v1") == []  # not swapped in, not replayed
    log._fd = None
