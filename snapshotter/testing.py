"""Tiny checkpoints for tests and benchmarks (no torch needed), written by the trainer's writer
(``online_model.checkpoint``) with vectors drawn around a few cluster centres.

>>> import tempfile, pathlib
>>> out = write_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "ck", n_items=50, dim=8)
>>> sorted(p.name for p in out.iterdir())[:3]
['categories.json', 'config.json', 'item_categories.npy']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["clustered_vectors", "write_checkpoint"]


def clustered_vectors(
    n_items: int, dim: int, n_clusters: int = 16, seed: int = 0, spread: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors around ``n_clusters`` centres, cluster sizes uneven (Zipf-like) as in real
    catalogues. Returns (vectors [N, dim] float32, cluster id [N] int32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    cluster = rng.choice(n_clusters, size=n_items, p=weights / weights.sum()).astype(np.int32)
    noise = rng.standard_normal((n_items, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    vecs = centres[cluster] + noise  # [N, dim]
    # Uneven norms, as trained embeddings of popular items tend to have.
    vecs *= rng.uniform(0.6, 1.4, size=(n_items, 1)).astype(np.float32)
    return vecs.astype(np.float32), cluster


def write_checkpoint(
    out: str | Path,
    n_items: int = 200,
    dim: int = 16,
    n_categories: int = 5,
    k_max: int = 8,
    seed: int = 0,
    item_emb: np.ndarray | None = None,
    item_pop: np.ndarray | None = None,
    model: str = "diam",
    categories: np.ndarray | None = None,
    category_names: list[str] | None = None,
    item_ids: np.ndarray | None = None,
    state_dict: bool = True,
    lineage: list[str] | None = None,
    item_titles: list[str] | None = None,
) -> Path:
    """Write a checkpoint directory with the trainer's writer and return its path.

    ``state_dict=False`` leaves out the stand-in for the torch weights (halves a 1M-item file);
    ``lineage``: the versions it was warm-started from, newest first, as the retrain service
    records them (``online_model.checkpoint_config.warm_lineage``); ``item_titles``: one per
    item (``item_titles.json``), none by default."""
    from online_model.checkpoint import write_checkpoint_dir

    rng = np.random.default_rng(seed + 1)
    if item_emb is None:
        item_emb, cluster = clustered_vectors(
            n_items, dim, n_clusters=max(n_categories, 2), seed=seed
        )
        primary = (cluster % n_categories).astype(np.int32)
    else:
        n_items, dim = item_emb.shape
        primary = rng.integers(0, n_categories, size=n_items).astype(np.int32)
    hidden = 16
    tensors = {
        "online.item_emb": np.ascontiguousarray(item_emb, dtype=np.float32),
        "online.gate_w1": rng.standard_normal((hidden, dim + 4)).astype(np.float32) * 0.1,
        "online.gate_b1": np.zeros(hidden, dtype=np.float32),
        "online.gate_w2": rng.standard_normal((1, hidden)).astype(np.float32) * 0.1,
        "online.gate_b2": np.zeros(1, dtype=np.float32),
        "online.fusion_w": rng.standard_normal(4).astype(np.float32),
        "online.fusion_b": np.zeros(1, dtype=np.float32),
    }
    if state_dict:  # stands in for the torch state dict the trainer also stores
        tensors["model.item_embedding.weight"] = tensors["online.item_emb"]
    if categories is not None:
        primary = np.asarray(categories, dtype=np.int32)
    if category_names is not None:
        n_categories = len(category_names)
    config = {
        "model": model,
        "dim": dim,
        "k_max": k_max,
        "seq_len": 50,
        "n_items": n_items,
        "n_categories": n_categories,
        "seed": seed,
        "created_at": "2024-01-01T00:00:00+00:00",
        "train_metrics": {"recall@50": 0.5},
        "data": {"name": "synthetic-test", "events": 0, "ts_min": 0, "ts_max": 0},
    }
    if lineage:
        config["retrain"] = {"warm_start": {"from": lineage[0], "lineage": list(lineage)}}
    return write_checkpoint_dir(
        out, tensors, np.array([f"i{i}" for i in range(n_items)]) if item_ids is None else item_ids,
        config, item_categories=primary,
        category_names=category_names or [f"cat{c}" for c in range(n_categories)],
        item_pop=item_pop, item_titles=item_titles)
