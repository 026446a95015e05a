"""bench/model_quality.py: its caches are keyed by the data and the row's configuration, not by
the dataset's name, and a table without the diam row is written without the comparison."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from online_model.synth import SynthParams, write_synth
from tests.benchload import load_bench

MQ = load_bench("model_quality")


def _bench(data: Path):
    return MQ.Bench(SimpleNamespace(data=data, lr_seeds=None, seeds=[10], epochs=4,
                                    max_per_user=16))


def test_cache_names_differ_by_data_under_one_name_and_by_row_definition(tmp_path: Path) -> None:
    """Before, ``diam data prepare ml-100k --min-rating 4`` and ``--min-rating 5`` (both named
    ml-100k) shared every cached checkpoint and evaluation."""
    a, b = (write_synth(SynthParams(users=40, items=120, categories=10, events_per_user=20,
                                    seed=s), tmp_path / str(s) / "same") for s in (1, 2))
    ba, bb, ba2 = _bench(a), _bench(b), _bench(a)
    assert ba.corpus.name == bb.corpus.name
    assert ba.stem("diam", 10, 0.01) != bb.stem("diam", 10, 0.01)
    assert ba.stem("diam", 10, 0.01) == ba2.stem("diam", 10, 0.01)
    rows = ["diam", "diam K=1 (global slot only)",
            "diam, global slot alone at inference (same weights)"]
    assert len({ba.stem(r, 10, 0.01).split("_s10_")[0] for r in rows}) == 3


def test_markdown_without_the_diam_row_has_no_comparison() -> None:
    """Before, ``--models single`` wrote the JSON and then died on KeyError 'matched_entropy'."""
    cells = {c: {"mean": 0.1, "std": 0.0} for c in
             ("recall@20", "recall@50", "ndcg@20", "hr@50", "entropy@20", "ild@20", "coverage@20")}
    res = {"dataset": "x", "final": True, "command": "c", "seeds": [10], "design_seeds": [0],
           "epochs": 4, "max_per_user": 16,
           "models": {"single": {**cells, "merge_by_score": cells, "lr": 0.01, "epoch": [1],
                                 "front": [[1.0, 0.1]],
                                 "lr_selection_valid_recall@20": {"0.01": 0.1}}}}
    text = MQ.markdown(res, "p.png")
    assert "| single |" in text and "No comparison at matched Entropy@20" in text
