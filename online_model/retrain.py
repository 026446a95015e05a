"""What a retrain needs from the model room: the newest-slice split, its evaluation, and a warm
start across item vocabularies.

- :func:`time_split` holds out the newest ``fraction`` of a window's events (by event time):
  the candidate trains on the rest, and candidate and active are both measured on that slice.
- :func:`slice_eval_set` makes every user with events on both sides of the cut a held-out user:
  history = their events before the cut, truth = their events after it.
- :func:`remap_state` moves a trained model onto another vocabulary (the catalogue grew, items
  left): item rows are matched by item id, other tensors are copied when their shape agrees;
  the rest keeps the fresh initialisation and is reported.

>>> from online_model.corpus import tiny_corpus
>>> c = tiny_corpus(n_users=4, n_items=6, length=5)
>>> train_c, cut = time_split(c, 0.4)
>>> int((c.ts >= cut).sum()), len(train_c.items)
(8, 12)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from online_model.corpus import Corpus, events_before
from online_model.evaluate import EvalSet

__all__ = ["CATEGORY_INPUTS", "time_split", "slice_eval_set", "remap_state", "evaluate_slice",
           "unknown_rows"]


def time_split(corpus: Corpus, fraction: float) -> tuple[Corpus, int]:
    """``(training corpus, cut time)``: events at or after the cut (the newest ``fraction`` of
    events by time) are left out of the training corpus, which keeps the item table."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    ts = np.sort(corpus.ts)
    cut = int(ts[min(len(ts) - 1, int(round((1 - fraction) * len(ts))))])
    return events_before(corpus, cut), cut


def slice_eval_set(corpus: Corpus, cut: int, signals: np.ndarray) -> EvalSet:
    """Users with events before and at/after ``cut``: history before, truth from the cut on.
    ``signals`` are ``prefix_signals(corpus)`` (the signals before each event)."""
    keep, cuts, truth, hist = [], [], [], []
    for u in range(corpus.n_users):
        a, b = int(corpus.offsets[u]), int(corpus.offsets[u + 1])
        after = np.flatnonzero(corpus.ts[a:b] >= cut)
        if len(after) == 0 or after[0] == 0:
            continue
        c = a + int(after[0])
        keep.append(u)
        cuts.append(c)
        truth.append(corpus.items[c:b])
        hist.append(corpus.items[a:c])
    cut_pos = np.asarray(cuts, dtype=np.int64)
    sig = signals[cut_pos] if len(cut_pos) else np.zeros((0, 4), dtype=np.float32)
    return EvalSet(np.asarray(keep, dtype=np.int64), cut_pos, sig, truth, hist)


def unknown_rows(corpus: Corpus, known_ids: np.ndarray) -> np.ndarray:
    """Rows of ``corpus``'s items that are not in ``known_ids`` (a model cannot serve them)."""
    return np.flatnonzero(~np.isin(corpus.item_ids.astype(str), np.asarray(known_ids).astype(str)))


def evaluate_slice(model: Any, corpus: Corpus, es: EvalSet, exclude: np.ndarray | None = None,
                   device: str = "cpu", per_user: bool = False) -> dict[str, Any]:
    """Recall@20, Entropy@20 (and the rest of ``evaluate``'s metrics) of ``model`` on ``es``,
    with the model's own aggregation; rows in ``exclude`` are never recommended (items the
    model does not know: they are masked like history items). ``per_user``: also
    ``"per_user"``, each metric's values per held-out user in ``es``'s order (the gate's paired
    interval, ``snapshotter.gate.paired_interval``)."""
    from online_model.evaluate import evaluate

    if exclude is not None and len(exclude):
        es = replace(es, history=[np.union1d(h, exclude) for h in es.history])
    if len(es.users) == 0:
        out: dict[str, Any] = {"recall@20": float("nan"), "entropy@20": float("nan"),
                               "n_users": 0}
        if per_user:
            out["per_user"] = {"recall@20": np.zeros(0), "entropy@20": np.zeros(0)}
        return out
    res = evaluate(model, corpus, es, device=device, ns=(20,), agg="model", per_user=per_user)
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
            for k, v in res.items() if k != "k_u_hist"}


CATEGORY_INPUTS = ("extractor.gate.0.weight", "towers.cat.0.weight")
"""DIAM's tensors whose input is ``[d features, one column per category]`` (the gate and the
category-aware tower read the user's category histogram): their category columns follow the
category names, not their positions."""


def remap_state(source: Any, source_ids: np.ndarray, target: Any, target_ids: np.ndarray,
                source_categories: list[str] | None = None,
                target_categories: list[str] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A full state dict for ``target`` (a freshly built model) that carries ``source``'s
    weights: ``item_emb`` rows matched by item id; with both category lists given, the
    category columns of :data:`CATEGORY_INPUTS` matched by category name (a category new to
    the target keeps its fresh column), so a category set that changed, even at the same size,
    is not read by position; every other tensor copied when the shapes agree. Returns
    ``(state, report)``; the report counts carried items and lists the tensors that kept their
    fresh initialisation."""
    import torch

    src, state = source.state_dict(), {k: v.clone() for k, v in target.state_dict().items()}
    cat_pos = None
    if source_categories is not None and target_categories is not None:
        have = {c: j for j, c in enumerate(source_categories)}
        cat_pos = [(t, have[c]) for t, c in enumerate(target_categories) if c in have]
    pos = {str(i): r for r, i in enumerate(np.asarray(source_ids).astype(str).tolist())}
    rows_t, rows_s = [], []
    for r, i in enumerate(np.asarray(target_ids).astype(str).tolist()):
        s = pos.get(i)
        if s is not None:
            rows_t.append(r + 1)  # row 0 is padding in the model
            rows_s.append(s + 1)
    fresh = []
    for k, v in state.items():
        if k == "item_emb.weight":
            w = src[k].to(v.dtype)
            if w.shape[1] != v.shape[1]:
                fresh.append(k)
                continue
            v[torch.as_tensor(rows_t, dtype=torch.long)] = w[torch.as_tensor(rows_s,
                                                                             dtype=torch.long)]
        elif (k in CATEGORY_INPUTS and cat_pos is not None and k in src
              and src[k].shape[0] == v.shape[0]
              and src[k].shape[1] - len(source_categories or ()) ==
              v.shape[1] - len(target_categories or ())):
            w, d = src[k].to(v.dtype), v.shape[1] - len(target_categories or ())
            v[:, :d] = w[:, :d]
            for t, j in cat_pos:
                v[:, d + t] = w[:, d + j]
        elif k in src and src[k].shape == v.shape:
            state[k] = src[k].detach().clone().to(v.dtype)
        else:
            fresh.append(k)
    return state, {"items_carried": len(rows_t), "items_new": len(target_ids) - len(rows_t),
                   "fresh_tensors": fresh}
