"""The content tower: an item embedding from what is known of an item before anyone clicked it.

Features: the item's categories (one-hot, the primary one counted twice) and the tokens of its
title hashed into ``buckets`` slots (a stable hash, so the same title gives the same features
in every process), plus a bias. A ridge regression maps them onto the trained item embeddings,
fitted when a checkpoint or snapshot is written; a new item then gets ``features @ W`` at once,
in the same space as the learned rows. The next retrain replaces it with a learned row.

>>> import numpy as np
>>> emb = np.array([[1, 0], [1, 0.2], [0, 1], [0.1, 1]], dtype=np.float32)
>>> t = ContentTower.fit(["A", "B"], [["A"], ["A"], ["B"], ["B"]],
...                      ["red car", "red bus", "blue sky", "blue sea"], emb, l2=0.1)
>>> v = t.embed([["B"]], ["blue boat"])[0]
>>> bool(v[1] > 0.5 > v[0])
True
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["ContentTower", "FILE"]

FILE = "content_tower.safetensors"
_TOKEN = re.compile(r"[a-z0-9]+")


class ContentTower:
    """``embed(categories, titles) -> [n, d]``; ``W`` is ``[C + buckets + 1, d]``."""

    def __init__(self, category_names: Sequence[str], w: np.ndarray, buckets: int = 512) -> None:
        self.category_names = list(category_names)
        self._cat = {c: i for i, c in enumerate(self.category_names)}
        self.buckets = int(buckets)
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        if self.w.shape[0] != self.n_features:
            raise ValueError(f"W has {self.w.shape[0]} rows, the features are {self.n_features}")

    @property
    def n_features(self) -> int:
        return len(self.category_names) + self.buckets + 1

    @property
    def dim(self) -> int:
        return int(self.w.shape[1])

    def features(self, categories: Sequence[Sequence[str]], titles: Sequence[str]) -> np.ndarray:
        """``[n, F]`` float32: categories (primary twice), hashed title tokens, bias."""
        c = len(self.category_names)
        x = np.zeros((len(titles), self.n_features), dtype=np.float32)
        for r, (cats, title) in enumerate(zip(categories, titles, strict=True)):
            for j, name in enumerate(cats):
                k = self._cat.get(name)
                if k is not None:
                    x[r, k] += 2.0 if j == 0 else 1.0
            toks = _TOKEN.findall(title.lower())
            for tok in toks:
                x[r, c + zlib.crc32(tok.encode()) % self.buckets] += 1.0 / np.sqrt(len(toks))
            x[r, -1] = 1.0
        return x

    def embed(self, categories: Sequence[Sequence[str]], titles: Sequence[str]) -> np.ndarray:
        """Content embeddings ``[n, d]`` float32."""
        return self.features(categories, titles) @ self.w

    @classmethod
    def fit(cls, category_names: Sequence[str], categories: Sequence[Sequence[str]],
            titles: Sequence[str], item_emb: np.ndarray, buckets: int = 512,
            l2: float = 1.0, max_items: int = 50_000, seed: int = 0) -> ContentTower:
        """Ridge regression of ``item_emb`` [N, d] on the items' features (rows that are all
        zero, items never trained, are left out; at most ``max_items`` rows, a seeded sample,
        so a million-item catalogue costs what 50k items cost)."""
        t = cls(category_names, np.zeros((len(category_names) + buckets + 1, item_emb.shape[1]),
                                         dtype=np.float32), buckets)
        y = np.asarray(item_emb, dtype=np.float64)
        keep = np.flatnonzero(np.linalg.norm(y, axis=1) > 0)
        if len(keep) > max_items:
            keep = np.sort(np.random.default_rng(seed).choice(keep, max_items, replace=False))
        rows = keep.tolist()
        x = t.features([categories[i] for i in rows], [titles[i] for i in rows]).astype(np.float64)
        reg = l2 * np.eye(x.shape[1])
        reg[-1, -1] = 1e-6  # the bias (the mean item) is not shrunk
        t.w = np.linalg.solve(x.T @ x + reg, x.T @ y[keep]).astype(np.float32)
        return t

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors; the names and bucket count in its metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"content.w": self.w}, str(tmp),
                  metadata={"categories": json.dumps(self.category_names),
                            "buckets": str(self.buckets)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ContentTower:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            w = fh.get_tensor("content.w")
        return cls(json.loads(meta.get("categories", "[]")), w, int(meta.get("buckets", 512)))
