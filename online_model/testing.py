"""A tiny DIAM checkpoint for tests and benchmarks: the one construction that the online-model
tests, their pins (``tests/unit/online_model/test_state_pin.py``) and ``bench/state_ab.py``'s
child processes (which cannot import ``tests``) share; and :data:`BEFORE`, the settings the
pinned streams (the learner's and the dataflow's) were taken with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["BEFORE", "tiny_diam_checkpoint"]

BEFORE: dict[str, Any] = {"d_lr": 0.1, "k_hysteresis_up": None}
"""The ``OnlineConfig`` defaults served until 2026-12-04 23:35 UTC (d_u's step and K_u's one
count both ways): the pins taken before then keep them, so that their bytes still check the
arithmetic; the pins of the served defaults were re-taken then."""


def tiny_diam_checkpoint(path: str | Path, seed: int = 0, model: str = "diam", n_items: int = 40,
                         n_categories: int = 4, dim: int = 8) -> tuple[Path, Any]:
    """A small trained-looking checkpoint of ``model`` (DIAM by default: the stream anchors on
    its network) over ``tiny_corpus`` (12 users, by default 40 items ``i0``.. in 4 categories,
    item ``i<j>`` of category ``j % n_categories``): d = 8 by default, seq_len 10, K_max 4,
    every weight moved off its initialisation so that all of them matter. Returns the
    checkpoint directory and the corpus."""
    import torch

    from online_model.checkpoint import save_checkpoint
    from online_model.corpus import tiny_corpus
    from online_model.models import ModelConfig, build_model

    c = tiny_corpus(n_users=12, n_items=n_items, n_categories=n_categories, length=8, seed=0)
    torch.manual_seed(seed)
    cfg = ModelConfig(model=model, n_items=c.n_items, n_categories=c.n_categories, dim=dim,
                      seq_len=10, window=5, k_max=4, n_interests=2)
    m = build_model(cfg, c.item_cat).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return save_checkpoint(Path(path), m, c, seed=seed), c


def edited_checkpoint(src: str | Path, dst: str | Path, **changes: Any) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` whose config.json has ``changes`` (None deletes
    a key): the bad configs the checkpoint checks and the CLI must refuse."""
    import json
    import shutil

    dst = Path(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst
