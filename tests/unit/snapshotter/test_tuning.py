"""Which queries nprobe is tuned on: the served users' vectors from Redis, or item mixtures with
the reason logged and kept in the manifest (no services: a dict stands in for Redis)."""

from __future__ import annotations

import fnmatch
import logging

import numpy as np
import pytest

from serving_cache import UserVectors, encode_user, user_key
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.index import build_index
from snapshotter.testing import clustered_vectors, write_checkpoint
from snapshotter.tuning import MIN_SERVED_QUERIES, ServedQueries, served_queries

DIM = 16


class DictRedis:
    """The calls publish makes: SCAN (unordered, as Redis's), pipelined GETs, SET."""

    def __init__(self, fail: bool = False) -> None:
        self.data: dict[bytes, bytes] = {}
        self.fail = fail
        self.gets = 0

    def scan_iter(self, match: str, count: int = 10):
        if self.fail:
            raise ConnectionError("Redis is down")
        keys = [k for k in self.data if fnmatch.fnmatchcase(k.decode(), match)]
        return iter(sorted(keys, key=hash))  # no order to rely on

    def set(self, key: str, value: str) -> None:
        self.data[key.encode()] = value.encode()

    def pipeline(self, transaction: bool = False) -> DictRedis._Pipe:
        return self._Pipe(self)

    class _Pipe:
        def __init__(self, r: DictRedis) -> None:
            self.r, self.keys = r, []

        def get(self, key: str) -> None:
            self.keys.append(key)

        def execute(self, raise_on_error: bool = True) -> list[bytes | None]:
            self.r.gets += len(self.keys)
            return [self.r.data.get(k.encode()) for k in self.keys]


def _users(r: DictRedis, ns: str, n: int, dim: int = DIM, k: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        vecs = rng.standard_normal((k, dim)).astype(np.float32)
        uv = UserVectors(seq=1, model="m", k=k, d=0.5, dim=dim, vecs=vecs, ts=0)
        r.data[user_key(ns, f"u{i}").encode()] = encode_user(uv)


def test_served_users_are_sampled_deterministically_up_to_the_setting():
    r = DictRedis()
    _users(r, "ns", 400)
    r.data[user_key("other", "u0").encode()] = r.data[user_key("ns", "u0").encode()]
    cfg = SnapshotConfig(tune_users=150)
    a = served_queries(r, "ns", DIM, cfg)
    assert a.why is None and a.users == 150 and a.vecs is not None
    assert a.vecs.shape == (300, DIM) and a.vecs.dtype == np.float32 and r.gets == 150
    b = served_queries(r, "ns", DIM, cfg)  # SCAN order differs run to run; the sample does not
    assert np.array_equal(a.vecs, b.vecs)
    c = served_queries(r, "ns", DIM, SnapshotConfig(tune_users=150, seed=1))
    assert not np.array_equal(a.vecs, c.vecs)
    r.data[user_key("ns", "bad").encode()] = b"not msgpack"
    every = served_queries(r, "ns", DIM, SnapshotConfig())
    assert every.users == 400 and every.vecs.shape == (800, DIM)  # "bad" skipped


@pytest.mark.parametrize(("make", "cfg", "why"), [
    (lambda: None, SnapshotConfig(), "no Redis client"),
    (lambda: DictRedis(), SnapshotConfig(tune_users=0), "snapshot.tune_users is 0"),
    (lambda: DictRedis(), SnapshotConfig(), "holds no users"),
    (lambda: DictRedis(fail=True), SnapshotConfig(), "Redis is down"),
])
def test_no_served_users_says_why(make, cfg, why, caplog):
    with caplog.at_level(logging.INFO, logger="snapshotter.tuning"):
        got = served_queries(make(), "ns", DIM, cfg)
    assert got.vecs is None and why in got.why and why in caplog.text


def test_too_few_vectors_or_another_dimension_fall_back(caplog):
    r = DictRedis()
    _users(r, "ns", MIN_SERVED_QUERIES // 2 - 1, k=2)
    with caplog.at_level(logging.INFO, logger="snapshotter.tuning"):
        few = served_queries(r, "ns", DIM, SnapshotConfig())
        wrong = served_queries(r, "ns", DIM * 2, SnapshotConfig())
    assert few.vecs is None and f"fewer than {MIN_SERVED_QUERIES}" in few.why
    assert wrong.vecs is None and f"dim {DIM}, the catalogue {DIM * 2}" in wrong.why
    assert "fewer than" in caplog.text and "the catalogue" in caplog.text
    _users(r, "ns", MIN_SERVED_QUERIES // 2, k=2, seed=1)
    assert served_queries(r, "ns", DIM, SnapshotConfig()).vecs is not None


def test_build_index_tunes_on_the_given_queries_and_records_them():
    x, _ = clustered_vectors(3000, DIM, n_clusters=20, seed=3)
    cfg = SnapshotConfig(exact_max_items=1000)
    rng = np.random.default_rng(5)
    q = (x[rng.integers(0, len(x), 250)] + 0.1 * rng.standard_normal((250, DIM))
         ).astype(np.float32)
    _, served = build_index(x, cfg, ServedQueries(q, users=125))
    assert served["tuning_queries_source"] == "served users"
    assert served["tuning_queries"] == 250 and served["tuning_users"] == 125
    _, plain = build_index(x, cfg)
    assert plain["tuning_queries_source"] == "item mixtures" and plain["tuning_queries"] == 256
    assert "tuning_queries_why" not in plain
    _, refused = build_index(x, cfg, ServedQueries(None, why="no Redis client"))
    assert refused["tuning_queries_why"] == "no Redis client"
    assert {k: v for k, v in refused.items() if k != "tuning_queries_why"} == plain
    assert list(plain["recall_by_nprobe"])[:1] == ["8"]
    with pytest.raises(ValueError, match="dim"):
        build_index(x, cfg, ServedQueries(q[:, :8], users=1))


def test_publish_tunes_on_the_namespace_users_and_says_so(tmp_path):
    x, _ = clustered_vectors(3000, DIM, n_clusters=20, seed=4)
    r = DictRedis()
    _users(r, "live", 300, k=1)
    cfg = SnapshotConfig(dir=str(tmp_path / "s"), exact_max_items=1000)
    ck = write_checkpoint(tmp_path / "ck", item_emb=x)
    info = publish(ck, SnapshotStore(cfg), r, "live").manifest["index"]
    assert info["tuning_queries_source"] == "served users" and info["tuning_users"] == 300
    assert r.data[b"diam:live:model:active"]  # published as before
    # another store: in this one the same weights would re-activate the version above
    cfg2 = cfg.model_copy(update={"dir": str(tmp_path / "s2")})
    other = publish(ck, SnapshotStore(cfg2), r, "empty").manifest["index"]
    assert other["tuning_queries_source"] == "item mixtures"
    assert "holds no users" in other["tuning_queries_why"]
    small = write_checkpoint(tmp_path / "small", n_items=200, dim=DIM)
    before = r.gets
    assert publish(small, SnapshotStore(cfg), r, "live").manifest["index"]["kind"] == "flat"
    assert r.gets == before  # an exact index has nothing to tune: Redis is not read
