"""Prepared-dataset writer/loader and the MovieLens readers, on tiny hand-written files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from online_model.datasets import (
    DatasetError,
    ItemRows,
    load_prepared,
    user_sequences,
    write_prepared,
)
from online_model.movielens import prepare_movielens


def _flags(*on: int) -> str:
    f = ["0"] * 19
    for i in on:
        f[i] = "1"
    return "|".join(f)


def _u_data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml100k-raw"
    d.mkdir()
    # user item rating ts(seconds); users 10 and 9 tie at ts 100 -> numeric tie-break puts 9 first
    (d / "u.data").write_text("10\t2\t5\t100\n9\t1\t3\t100\n9\t2\t4\t50\n9\t7\t1\t100\n")
    (d / "u.item").write_bytes(
        (
            f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}\n"
            f"2|Caf\xe9 (1996)|01-Jan-1996||http://y|{_flags(8)}\n"
            f"3|Unrated (1997)|01-Jan-1997||http://z|{_flags(1)}\n"
        ).encode("latin-1")
    )
    return d


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_u_data_prepare_sorts_converts_and_completes_items(tmp_path: Path) -> None:
    out = prepare_movielens(_u_data_dir(tmp_path), tmp_path / "out")
    ev = _rows(out / "events.tsv")
    assert ev[0] == ["user_id", "item_id", "ts_ms"]
    # (ts, user, item) with users and items compared as numbers: 9 before 10, item 2 before 7
    assert ev[1:] == [
        ["9", "2", "50000"],
        ["9", "1", "100000"],
        ["9", "7", "100000"],
        ["10", "2", "100000"],
    ]
    items = _rows(out / "items.tsv")
    assert items[1] == ["1", "Animation|Children's|Comedy", "Toy Story (1995)"]
    assert items[2] == ["2", "Drama", "Café (1996)"]
    assert items[3] == ["7", "unknown", ""]  # rated but absent from u.item
    assert len(items) == 4  # item 3 has no rating: dropped

    ds = load_prepared(out)
    assert ds.name == "ml100k-raw" and ds.truth is None
    assert ds.ts_ms.dtype == np.int64 and ds.ts_ms.tolist() == [50000, 100000, 100000, 100000]
    assert ds.items.ids.tolist() == ["1", "2", "7"]
    names = ds.items.category_names
    assert [names[c] for c in ds.items.primary] == ["Animation", "Drama", "unknown"]
    assert [[names[c] for c in cs] for cs in ds.items.categories][0] == [
        "Animation",
        "Children's",
        "Comedy",
    ]
    assert {u: s.tolist() for u, s in user_sequences(ds).items()} == {"9": [1, 0, 2], "10": [1]}
    assert list(user_sequences(ds)) == ["9", "10"]


def test_min_rating_filters(tmp_path: Path) -> None:
    ds = load_prepared(prepare_movielens(_u_data_dir(tmp_path), tmp_path / "o", min_rating=4))
    assert ds.user_ids.tolist() == ["9", "10"] and ds.item_ids.tolist() == ["2", "2"]
    assert ds.items.ids.tolist() == ["2"]



def test_a_min_rating_that_keeps_no_rating_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"min_rating filter \(>= 6\) keeps none of the 4 "
                                           r"ratings \(they range 1 to 5\)"):
        prepare_movielens(_u_data_dir(tmp_path), tmp_path / "o", min_rating=6)
    assert not (tmp_path / "o").exists()


def test_ratings_dat_latin1_and_no_genres(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text(
        "1::20::5::978300760\n2::10::3::978300760\n1::10::4::978300700\n"
    )
    (d / "movies.dat").write_bytes(
        "10::Am\xe9lie (2001)::Comedy|Romance\n20::Nothing (2000)::(no genres listed)\n".encode(
            "latin-1"
        )
    )
    ds = load_prepared(prepare_movielens(d, tmp_path / "o"))
    assert list(
        zip(ds.user_ids.tolist(), ds.item_ids.tolist(), ds.ts_ms.tolist(), strict=True)
    ) == [("1", "10", 978300700000), ("1", "20", 978300760000), ("2", "10", 978300760000)]
    cats = [[ds.items.category_names[c] for c in cs] for cs in ds.items.categories]
    assert cats == [["Comedy", "Romance"], ["unknown"]]
    assert _rows(tmp_path / "o" / "items.tsv")[1][2] == "Amélie (2001)"


def test_ratings_csv_quoted_titles(tmp_path: Path) -> None:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,5,4.5,964982703\n1,6,3.0,964981247\n"
    )
    (d / "movies.csv").write_text(
        'movieId,title,genres\n5,"American President, The (1995)",Comedy|Drama|Romance\n6,Heat (1995),Action\n'
    )
    ds = load_prepared(prepare_movielens(d, tmp_path / "o"))
    assert ds.item_ids.tolist() == ["6", "5"] and ds.ts_ms.tolist() == [964981247000, 964982703000]
    assert _rows(tmp_path / "o" / "items.tsv")[1] == [
        "5",
        "Comedy|Drama|Romance",
        "American President, The (1995)",
    ]


def test_recbole_atomic_directory(tmp_path: Path) -> None:
    d = tmp_path / "atomic"
    d.mkdir()
    (d / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n3\t1\t4\t10\n"
    )
    (d / "x.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's\n"
    )
    ds = load_prepared(prepare_movielens(d, tmp_path / "o"))
    assert ds.ts_ms.tolist() == [10000]
    assert ds.items.category_names == ["Animation", "Children's"]


@pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="recbole wheel not installed"
)
def test_real_ml100k_from_recbole_wheel(tmp_path: Path) -> None:
    ds = load_prepared(prepare_movielens("ml-100k", tmp_path / "ml-100k"))
    assert (ds.ts_ms.size, np.unique(ds.user_ids).size, ds.items.ids.size) == (100_000, 943, 1682)
    assert len(ds.items.category_names) == 19 and bool((np.diff(ds.ts_ms) >= 0).all())


def test_bad_files_name_the_file_and_line(tmp_path: Path) -> None:
    d = _u_data_dir(tmp_path)
    (d / "u.data").write_text("1\t2\t3\t4\n1\tx\t3\t4\n")
    with pytest.raises(DatasetError, match=r"u\.data:2: expected 4 numbers"):
        prepare_movielens(d, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no MovieLens files found"):
        prepare_movielens(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DatasetError, match="no such dataset directory"):
        load_prepared(tmp_path / "nope")
    out = tmp_path / "bad"
    out.mkdir()
    (out / "items.tsv").write_text("id\tcats\n")
    (out / "events.tsv").write_text("user_id\titem_id\tts_ms\n")
    with pytest.raises(DatasetError, match=r"items\.tsv: expected header"):
        load_prepared(out)


def test_cache_is_rebuilt_when_the_tsv_changes(tmp_path: Path) -> None:
    rows = ItemRows(ids=["a", "b"], titles=["", ""], categories=[["x"], ["y", "x"]])
    out = write_prepared(
        tmp_path / "d",
        name="d",
        users=np.array(["u1", "u2"]),
        items_of_events=np.array(["a", "b"]),
        ts_ms=np.array([1, 2]),
        items=rows,
        meta={},
    )
    assert (out / "events.npz").is_file() and load_prepared(out).item_ids.tolist() == ["a", "b"]
    (out / "events.tsv").write_text("user_id\titem_id\tts_ms\nu3\tb\t7\n")
    ds = load_prepared(out)
    assert ds.user_ids.tolist() == ["u3"] and ds.item_index.tolist() == [1]
    (out / "events.npz").unlink()
    assert load_prepared(out).ts_ms.tolist() == [7]


def test_cli_prepare_and_clean_errors(tmp_path: Path) -> None:
    from diam.cli import main

    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "data",
            "prepare",
            str(_u_data_dir(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 events, 2 users, 3 items" in res.output
    res = runner.invoke(main, ["data", "prepare", str(tmp_path / "missing"), "--no-progress"])
    assert res.exit_code == 1 and "not a directory" in res.output and "Traceback" not in res.output


def test_missing_recbole_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import online_model.movielens as ml

    monkeypatch.setattr(ml.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"run `pip install --no-deps recbole==1\.2\.1`"):
        ml.find_recbole_ml100k()
