"""Read-side summaries of a namespace: how many users, K_u distribution, d_u spread."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import redis

from serving_cache.base_record import BaseRecordError, read_base
from serving_cache.codec import CodecError, UserVectors, decode_user
from serving_cache.connection import get_values
from serving_cache.holders import holders_of
from serving_cache.keys import model_active_key, user_id_of_key, user_pattern

__all__ = ["NamespaceSummary", "summarize_namespace", "iter_users"]


@dataclass
class NamespaceSummary:
    """What a namespace holds."""

    namespace: str
    users: int = 0
    undecodable: int = 0
    k_hist: dict[int, int] = field(default_factory=dict)
    d_mean: float = float("nan")
    d_p10: float = float("nan")
    d_p90: float = float("nan")
    events: int = 0
    bytes_mean: float = float("nan")
    models: dict[str, int] = field(default_factory=dict)
    active_model: str | None = None
    base: dict[str, str] | None = None
    """The base record (``serving_cache.base_record``) of the newest writer: version, item
    table, items taken after its start; None when none is recorded."""
    base_problem: str | None = None
    """Why the base record cannot be read, when it cannot."""
    claim: str | None = None
    """Who holds the namespace's claim (``serving_cache.holders``: a ``diam replay`` or ``diam
    drop``); None when nobody does."""
    claim_stale: bool = False
    """Whether the claim's process is gone on this host (taken over by the next holder)."""
    runs: list[str] = field(default_factory=list)
    """The live ``diam run`` processes announced in the namespace."""


def iter_users(client: redis.Redis, ns: str, batch: int = 500):
    """Yield ``(user_id, UserVectors | None, raw_size)`` for every user key (SCAN + MGET; one
    MGET per hash slot on a Redis Cluster: :func:`serving_cache.connection.get_values`)."""
    keys: list[bytes] = []
    for key in client.scan_iter(match=user_pattern(ns), count=batch):
        keys.append(key)
        if len(keys) >= batch:
            yield from _decode_many(client, keys)
            keys = []
    if keys:
        yield from _decode_many(client, keys)


def _decode_many(client: redis.Redis, keys: list[bytes]):
    for key, raw in zip(keys, get_values(client, keys), strict=True):
        if not isinstance(raw, bytes):  # deleted since the SCAN
            continue
        uid = user_id_of_key(key)
        try:
            yield uid, decode_user(raw), len(raw)
        except CodecError:
            yield uid, None, len(raw)


def summarize_namespace(client: redis.Redis, ns: str) -> NamespaceSummary:
    """Scan ``ns`` and summarise its users."""
    out = NamespaceSummary(ns)
    ks: Counter[int] = Counter()
    models: Counter[str] = Counter()
    ds: list[float] = []
    sizes: list[int] = []
    for _, uv, size in iter_users(client, ns):
        out.users += 1
        if uv is None:
            out.undecodable += 1
            continue
        _add(uv, ks, models, ds)
        out.events += uv.n
        sizes.append(size)
    out.k_hist = dict(sorted(ks.items()))
    out.models = dict(models)
    if ds:
        arr = np.array(ds)
        out.d_mean, out.d_p10, out.d_p90 = float(arr.mean()), float(np.percentile(arr, 10)), float(np.percentile(arr, 90))
        out.bytes_mean = float(np.mean(sizes))
    active = client.get(model_active_key(ns))
    out.active_model = active.decode() if isinstance(active, bytes) else None
    try:
        record = read_base(client, ns)
        out.base = None if record is None else record.fields()
    except BaseRecordError as exc:
        out.base_problem = str(exc)
    out.claim, out.claim_stale, out.runs = holders_of(client, ns)
    return out


def _add(uv: UserVectors, ks: Counter[int], models: Counter[str], ds: list[float]) -> None:
    ks[uv.k] += 1
    models[uv.model] += 1
    ds.append(uv.d)
