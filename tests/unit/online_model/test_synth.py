"""The synthetic generator: determinism, the planted truth, and the realised behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from online_model.datasets import load_prepared, user_sequences
from online_model.synth import SynthParams, generate, write_synth

SMALL = SynthParams(users=300, items=2_000, categories=20, events_per_user=40, seed=7)


def _entropy(cats: np.ndarray) -> float:
    p = np.bincount(cats) / cats.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_same_seed_identical_files_other_seed_differs(tmp_path: Path) -> None:
    a = write_synth(SMALL, tmp_path / "a")
    b = write_synth(SMALL, tmp_path / "b")
    c = write_synth(SynthParams(**{**SMALL.__dict__, "seed": 8}), tmp_path / "c")
    for name in ("events.tsv", "items.tsv", "truth.tsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "meta.json").read_text().replace('"a"', '"b"') == (b / "meta.json").read_text()
    assert (a / "events.tsv").read_bytes() != (c / "events.tsv").read_bytes()


def test_planted_truth_is_valid_and_loaded(tmp_path: Path) -> None:
    ds = load_prepared(write_synth(SMALL, tmp_path / "s"))
    assert ds.truth is not None and len(ds.truth) == SMALL.users
    ks = np.array([k for k, _ in ds.truth.values()])
    ds_ = np.array([d for _, d in ds.truth.values()])
    assert ks.min() >= 1 and ks.max() <= 8 and set(ks.tolist()) == set(range(1, 9))
    assert (ds_ > 0).all() and (ds_ < 1).all()
    assert bool((np.diff(ds.ts_ms) >= 0).all()) and ds.items.ids.size == SMALL.items
    assert ds.items.category_names == [f"c{i:02d}" for i in range(20)]


def test_realised_behaviour_follows_the_truth() -> None:
    data = generate(
        SynthParams(users=1_500, items=3_000, categories=20, events_per_user=60, seed=3)
    )
    cats = data.item_primary[data.item]
    order = np.argsort(data.user, kind="stable")
    per_user = np.split(cats[order], np.cumsum(np.bincount(data.user, minlength=1_500))[:-1])
    ent = np.array([_entropy(c) for c in per_user])
    k, d = data.n_interests, data.diversity
    # more planted interests -> more categories; within a k, high diversity -> higher entropy
    assert ent[k == 1].mean() < ent[k == 4].mean() < ent[k == 8].mean()
    many = k >= 3
    assert ent[many & (d > 0.6)].mean() > ent[many & (d < 0.4)].mean() + 0.2
    # clicks stay inside the planted interests except for the noise share
    own = np.array(
        [np.isin(c, data.interest_categories[u, : k[u]]).mean() for u, c in enumerate(per_user)]
    )
    assert own.mean() > 0.9


def test_high_diversity_users_switch_category_more_within_sessions() -> None:
    data = generate(
        SynthParams(users=1_000, items=3_000, categories=20, events_per_user=60, seed=5)
    )
    cats = data.item_primary[data.item]
    order = np.lexsort((data.ts_ms, data.user))
    u, c, t = data.user[order], cats[order], data.ts_ms[order]
    same_session = (u[1:] == u[:-1]) & (np.diff(t) < 30 * 60_000)
    switched = (c[1:] != c[:-1]) & same_session
    rate = np.bincount(u[1:], weights=switched, minlength=1_000) / np.maximum(
        np.bincount(u[1:], weights=same_session, minlength=1_000), 1
    )
    many = data.n_interests >= 3
    assert (
        rate[many & (data.diversity > 0.6)].mean()
        > rate[many & (data.diversity < 0.4)].mean() + 0.1
    )


def test_bad_parameters_rejected() -> None:
    with pytest.raises(ValueError):
        generate(SynthParams(categories=4, max_interests=8))


def test_cli_synth(tmp_path: Path) -> None:
    from diam.cli import main

    res = CliRunner().invoke(
        main,
        [
            "data",
            "synth",
            "--users",
            "20",
            "--items",
            "100",
            "--categories",
            "10",
            "--events-per-user",
            "5",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "20 users, 100 items, 10 categories" in res.output
    assert len(user_sequences(load_prepared(tmp_path / "s"))) == 20
