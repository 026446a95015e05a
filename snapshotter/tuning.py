"""The queries IVF ``nprobe`` is tuned on: the served users' interest vectors, read from the
namespace's Redis, when it holds enough of them.

Recall@50 of an IVF index depends on where its queries fall. The learner's interest vectors sit
elsewhere in the item space than single items and two-item mixtures
(:func:`snapshotter.index.build_index`'s fallback), and tuning on those picks an ``nprobe`` the
served queries do not need: a slower search for recall no user sees. The users are those of the
namespace the snapshot is published for, as the running learner left them on the previous
snapshot: the nearest sample of what the new index will serve.

The sample is deterministic: the namespace's keys sorted, ``SnapshotConfig.tune_users`` of them
chosen with ``SnapshotConfig.seed``, every interest vector of each chosen user. Reading is
SCAN (every user key once) plus one pipelined GET per chosen user, both of which Redis Cluster
accepts. Anything that keeps the served users from being used (no Redis, the setting at 0, too
few vectors, another dimension, Redis failing) is logged with its reason and returned as
``why``; the publish then tunes on item mixtures and never fails for it.

>>> served_queries(None, "live", 8, SnapshotConfig()).why
'no Redis client'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from snapshotter.config import SnapshotConfig

__all__ = ["ServedQueries", "served_queries", "MIN_SERVED_QUERIES"]

log = logging.getLogger(__name__)

MIN_SERVED_QUERIES = 200
"""Fewer interest vectors than this tune on item mixtures instead: a mean recall over fewer
queries is too coarse to choose between neighbouring candidates, whose recalls on learner queries
differ by about 0.01."""


@dataclass(frozen=True)
class ServedQueries:
    """Interest vectors of sampled served users, or why there are none to tune on."""

    vecs: np.ndarray | None
    """float32 [Q, dim], every interest vector of the sampled users; None when not usable."""
    users: int = 0
    """Users whose vectors are in ``vecs`` (or were read, when ``vecs`` is None)."""
    why: str | None = None
    """Why the served users are not used (None when they are)."""


def _refuse(why: str, users: int = 0, level: int = logging.INFO) -> ServedQueries:
    log.log(level, "nprobe tuned on item mixtures, not served users: %s", why)
    return ServedQueries(None, users, why)


def served_queries(client: Any | None, ns: str, dim: int, cfg: SnapshotConfig,
                   min_vectors: int = MIN_SERVED_QUERIES) -> ServedQueries:
    """Sample up to ``cfg.tune_users`` users of namespace ``ns`` and return their interest
    vectors of dimension ``dim`` (the catalogue's), or why they cannot be used."""
    from serving_cache.keys import user_id_of_key, user_pattern, validate_namespace
    from serving_cache.reader import UserReader, valid_user_id

    if cfg.tune_users == 0:
        return _refuse("snapshot.tune_users is 0")
    if client is None:
        return _refuse("no Redis client")
    validate_namespace(ns)
    try:
        keys = sorted(client.scan_iter(match=user_pattern(ns), count=1000))
        uids = [u for k in keys if valid_user_id(u := user_id_of_key(k))]
        if not uids:
            return _refuse(f"namespace {ns!r} holds no users")
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(len(uids), size=min(cfg.tune_users, len(uids)),
                                  replace=False))
        values = UserReader(client, ns).get_many([uids[i] for i in pick])
    except Exception as exc:  # tuning on served users is a refinement: never fail a publish on it
        return _refuse(f"reading users of {ns!r} from Redis failed ({exc!r})",
                       level=logging.WARNING)
    read = [uv for uv in values if uv is not None]
    fitting = [uv.vecs for uv in read if uv.dim == dim and uv.k > 0]
    if read and not fitting:
        return _refuse(f"the {len(read)} users read hold vectors of dim {read[0].dim}, "
                       f"the catalogue {dim}", len(read), logging.WARNING)
    vecs = np.vstack(fitting) if fitting else np.zeros((0, dim), np.float32)
    vecs = vecs[np.isfinite(vecs).all(axis=1) & (np.abs(vecs).sum(axis=1) > 0)]
    if len(vecs) < min_vectors:
        return _refuse(f"{len(vecs)} interest vectors from {len(fitting)} users of {ns!r}, "
                       f"fewer than {min_vectors}", len(fitting))
    skipped = len(values) - len(fitting)
    if skipped:
        log.info("nprobe tuning: %d of %d sampled users of %r skipped (gone, undecodable or "
                 "of another dimension)", skipped, len(values), ns)
    return ServedQueries(np.ascontiguousarray(vecs, dtype=np.float32), len(fitting))

