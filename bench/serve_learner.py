"""The users ``bench/serve.py`` queries with: a run of the online learner over a real click
stream, and catalogues of 100k and 1M items built around that stream's real item table.

The learner is the served one (``settings.online``, guarded, DIAM anchors) on the DIAM
checkpoint that ``bench/prequential.py`` trains on the first half of ml-100k (trained here and
cached under ``checkpoints/`` when missing). It replays the whole stream in time order, every
event through :meth:`OnlineLearner.apply`, the dataflow's call, so each user ends with the K_u,
d_u, interest vectors and last seen items the stream would have pushed to Redis
(``streams.online``'s push: the vectors, d_u, and the last ``FlowConfig.seen_items`` item rows).

Larger catalogues keep the real items as their first rows (so the users' seen rows stay valid)
and add items around them: each added item is a real item's embedding, rescaled by a factor in
[0.8, 1.2] and moved by isotropic noise of ``spread`` times its norm, with that item's category.
The users' vectors therefore query an item space shaped like the trained one, only denser.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["LearnedUser", "LearnerRun", "learner_run", "grow_catalogue"]


@dataclass(frozen=True)
class LearnedUser:
    """One user's state at the end of the stream, as the dataflow pushes it."""

    user_id: str
    k: int
    d: float
    vecs: np.ndarray  # [k, dim] float32
    seen: np.ndarray  # int32 rows of the base's item table, oldest first
    seq: int
    ts: int
    n: int


@dataclass
class LearnerRun:
    base: Any  # online_model.BaseView
    users: list[LearnedUser]
    info: dict[str, Any] = field(default_factory=dict)


def _checkpoint(data: Path, epochs: int) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from prequential import cached_first_half

    return cached_first_half(data, epochs)


def learner_run(settings: Any, data: Path, events: int | None = None,
                epochs: int = 4) -> LearnerRun:
    """Replay the first ``events`` (all when None) of the prepared stream at ``data`` through
    the served online learner; returns every anchored user's final state."""
    from online_model.base import BaseView
    from online_model.datasets import load_prepared
    from online_model.online import OnlineLearner

    if not (data / "events.npz").is_file() and not (data / "events.tsv").is_file():
        from online_model.movielens import prepare_movielens

        prepare_movielens("ml-100k", data)
    ckpt = _checkpoint(data, epochs)
    base = BaseView.from_checkpoint(ckpt)
    cfg = settings.online.model_copy(update={"dim": base.dim})
    learner = OnlineLearner(base, cfg)
    ds = load_prepared(data)
    users = np.asarray(ds.user_ids).astype(str).tolist()
    items = np.asarray(ds.item_ids).astype(str).tolist()
    ts = np.asarray(ds.ts_ms, dtype=np.int64).tolist()
    n_events = len(users) if events is None else min(events, len(users))
    states: dict[str, Any] = {}
    t0 = time.perf_counter()
    for off in range(n_events):
        st = states.get(users[off])
        if st is None:
            st = states[users[off]] = learner.new_state(users[off])
        learner.apply(st, items[off], ts[off], off)
    learn_s = time.perf_counter() - t0
    keep = settings.flow.seen_items
    out = []
    for uid, st in states.items():
        if not st.anchored or st.V.shape[0] == 0:
            continue
        seen = st.recent[-keep:] if keep else np.zeros(0, dtype=np.int32)
        out.append(LearnedUser(uid, int(st.V.shape[0]), float(st.d),
                               np.ascontiguousarray(st.V, dtype=np.float32),
                               np.asarray(seen, dtype=np.int32), int(st.seq), int(st.last_ts),
                               int(st.n_events)))
    ks = np.array([u.k for u in out])
    ds_ = np.array([u.d for u in out])
    info = {
        "checkpoint": str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT) else str(ckpt),
        "dataset": str(getattr(ds, "name", data.name)),
        "events": n_events,
        "users": len(out),
        "anchors": base.anchor_kind,
        "learn_s": round(learn_s, 1),
        "k_u_counts": {str(k): int((ks == k).sum()) for k in range(1, int(ks.max()) + 1)},
        "d_u_p10_p50_p90": [round(float(x), 3) for x in np.percentile(ds_, [10, 50, 90])],
        "seen_items_mean": round(float(np.mean([len(u.seen) for u in out])), 1),
        "seen_items_kept": keep,
    }
    return LearnerRun(base, out, info)


def grow_catalogue(base: Any, n_items: int, seed: int = 0, spread: float = 0.3
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The base's items as the first rows, then items around random real ones up to
    ``n_items``. Returns (item ids [N] str, embeddings [N, dim] float32, categories [N] int32)."""
    emb0 = np.asarray(base.item_emb, dtype=np.float32)
    n0, dim = emb0.shape
    usable = np.flatnonzero(np.linalg.norm(emb0, axis=1) > 0)
    cats0 = (np.asarray(base.item_categories, dtype=np.int32) if base.item_categories is not None
             else np.zeros(n0, dtype=np.int32))
    ids0 = np.asarray(base.item_ids).astype(str)
    extra = max(n_items - n0, 0)
    if extra == 0:
        return ids0, emb0, cats0
    rng = np.random.default_rng(seed)
    parent = usable[rng.integers(len(usable), size=extra)]
    norms = np.linalg.norm(emb0[parent], axis=1, keepdims=True)
    new = emb0[parent] * rng.uniform(0.8, 1.2, size=(extra, 1)).astype(np.float32)
    new += rng.standard_normal((extra, dim)).astype(np.float32) * (spread * norms / np.sqrt(dim))
    ids = np.concatenate([ids0, np.array([f"x{i}" for i in range(extra)])])
    return ids, np.vstack([emb0, new.astype(np.float32)]), np.concatenate([cats0, cats0[parent]])


if __name__ == "__main__":
    sys.exit("bench/serve_learner.py is a helper module imported by bench/serve.py; nothing to run "
             "(python bench/serve.py runs it)")
