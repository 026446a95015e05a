"""bench/prequential.py's cached first-half checkpoint is reused only for the events it was
trained on, and a checkpoint that has seen the evaluated period is refused before a run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from online_model.synth import SynthParams, write_synth
from tests.benchload import load_bench

P = load_bench("prequential")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(SynthParams(users=40, items=120, categories=10, events_per_user=20, seed=3),
                       tmp_path_factory.mktemp("synth") / "s")


def _fake_cache(out: Path, data: dict, record: dict | None = None) -> Path:
    out.mkdir(parents=True)
    (out / "weights.safetensors").write_bytes(b"")
    (out / "config.json").write_text(json.dumps({"model": "diam", "data": data}))
    if record is not None:
        (out / P.DATA_RECORD).write_text(json.dumps(record))
    return out


def test_a_cache_trained_on_other_events_is_refused_not_reused(synth: Path,
                                                                tmp_path: Path) -> None:
    """Before, a cache directory named by epochs and window only was reused for any --data
    (``--data mlh``, the first 50,000 events of ml-100k, read the ml-100k network)."""
    half = P.first_half(P.load_prepared(synth))
    fp = P.half_fingerprint(half)
    same = _fake_cache(tmp_path / "same", {k: fp[k] for k in ("events", "ts_min", "ts_max")})
    assert P.train_first_half(synth, 1, same, 10) == same  # a legacy cache, same events
    other = _fake_cache(tmp_path / "other", {"events": fp["events"] * 2, "ts_min": fp["ts_min"],
                                             "ts_max": fp["ts_max"] + 1})
    with pytest.raises(SystemExit, match="other events.*events .* != "):
        P.train_first_half(synth, 1, other, 10)
    recorded = _fake_cache(tmp_path / "rec", {k: fp[k] for k in ("events", "ts_min", "ts_max")},
                           {**fp, "sha256": "0" * 64})
    with pytest.raises(SystemExit, match="records events sha256 000000000000"):
        P.train_first_half(synth, 1, recorded, 10)
    assert (other / "weights.safetensors").read_bytes() == b""  # not overwritten


def test_only_the_default_dataset_keeps_the_plain_cache_name(synth: Path, monkeypatch) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(P, "_cached_train", lambda half, data, e, out, L, early: seen.append(out))
    P.cached_first_half(synth, 4, 10)
    fp = P.half_fingerprint(P.first_half(P.load_prepared(synth)))["sha256"][:10]
    assert seen[-1].name == f"prequential-diam-half-e4-L10-{fp}"


def test_a_checkpoint_that_saw_the_evaluated_period_is_refused() -> None:
    ds = SimpleNamespace(name="s", ts_ms=np.arange(10, dtype=np.int64) * 1000)

    def base(data: dict) -> SimpleNamespace:
        return SimpleNamespace(meta={"config": {"data": data}})

    P.refuse_leak(Path("ck"), base({"ts_max": 4000, "events": 5}), ds)  # the first half: clean
    with pytest.raises(SystemExit, match="has seen the events it would be scored on"):
        P.refuse_leak(Path("ck"), base({"ts_max": 9000, "events": 10}), ds)
    with pytest.raises(SystemExit, match="cannot check"):
        P.refuse_leak(Path("ck"), SimpleNamespace(meta={"config": {}}), ds)
