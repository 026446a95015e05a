"""``diam recommend`` and ``diam inspect user`` against a real snapshot store and a dict in place
of Redis: the user served from their vectors' version while it is on disk (stale only once it
is gone, and then the text says so), every snapshot used verified first, a snapshot that cannot
be used or a value that does not decode ending in one ``Error:`` line, and ``-n`` bounded as the
API's ``n`` is."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import click
import numpy as np
import pytest
from click.testing import CliRunner

import serving_cache
from diam.cli import main
from diam.commands import inspect
from serving_cache import UserVectors, encode_user, user_key
from serving_cache.recommend import MAX_N
from serving_cache.retrieval import SnapshotIndex
from snapshotter import SnapshotConfig, SnapshotStore, publish
from snapshotter.testing import write_checkpoint

NS = "unit"
SEEN = [5, 60, 6, 61]


class _DictRedis:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, key: str):
        return self.values.get(key)

    def exists(self, key: str) -> int:
        return int(key in self.values)

    def scan_iter(self, match: str, count: int = 0):
        import fnmatch

        return iter([k for k in self.values if fnmatch.fnmatchcase(k, match)])


@pytest.fixture
def env(isolated_env, tmp_path, monkeypatch):
    redis = _DictRedis()
    monkeypatch.setattr(serving_cache, "redis_client", lambda cfg: redis)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps")))
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args))

    return store, redis, run


def _publish(store: SnapshotStore, tmp_path, seed: int, n_items: int = 100,
             lineage: list[str] | None = None) -> str:
    ck = write_checkpoint(tmp_path / f"ck{seed}", n_items=n_items, dim=8, seed=seed,
                          item_pop=np.arange(n_items)[::-1], lineage=lineage)
    return publish(ck, store).version


def _put_user(redis: _DictRedis, store: SnapshotStore, version: str, uid: str = "u1") -> None:
    snap = SnapshotIndex.load(store.path(version), version=version)
    uv = UserVectors(seq=1, model=version, k=2, d=0.5, dim=8,
                     vecs=snap.item_vecs[[5, 60]].copy(), ts=0, n=4, anchor="diam",
                     seen=np.array(SEEN, dtype=np.int32))
    redis.values[user_key(NS, uid)] = encode_user(uv)


def _clean_error(result, *words: str, code: int = 1) -> str:
    out = result.output
    assert result.exit_code == code, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert out.count("Error: ") == 1 and "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


def _rehash(store: SnapshotStore, version: str, name: str) -> None:
    """Record ``name``'s current bytes in the manifest, as a hand-assembled snapshot would."""
    path = store.path(version) / "manifest.json"
    man = json.loads(path.read_text())
    data = (store.path(version) / name).read_bytes()
    man["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(man))


# -- the user's own version -----------------------------------------------------------------

def test_vectors_of_a_checkpoint_are_served_from_a_snapshot_of_its_weights(env, tmp_path) -> None:
    """``diam run --checkpoint`` labels the vectors it writes by the checkpoint's weights
    (``diam-<sha256[:12]>``), not by a snapshot version: they are served from the newest
    snapshot published from those weights (its item table and space), seen items left out,
    not as stale from whatever version is active."""
    from online_model.checkpoint import read_checkpoint
    from online_model.checkpoint_config import checkpoint_label

    store, redis, run = env
    v1 = _publish(store, tmp_path, seed=1)
    _put_user(redis, store, v1)
    ck = read_checkpoint(tmp_path / "ck1")
    label = checkpoint_label(str(ck.config["model"]), ck.weights_sha256)
    uv = serving_cache.decode_user(redis.values[user_key(NS, "u1")])
    redis.values[user_key(NS, "u1")] = encode_user(dataclasses.replace(uv, model=label))
    _publish(store, tmp_path, seed=2)  # another model is active now
    got = run("recommend", "u1", "--namespace", NS, "-n", "20", "--json")
    assert got.exit_code == 0, got.output
    body = json.loads(got.output)
    assert (body["snapshot"], body["stale"], body["reason"]) == (v1, False, None)
    assert not {f"i{i}" for i in SEEN} & set(body["items"])
    # a label of weights no snapshot holds stays stale, from the active version
    redis.values[user_key(NS, "u1")] = encode_user(
        dataclasses.replace(uv, model="diam-0123456789ab"))
    body = json.loads(run("recommend", "u1", "--namespace", NS, "--json").output)
    assert body["stale"] and "diam-0123456789ab" in body["reason"]


def test_the_user_is_served_from_their_version_while_it_is_on_disk(env, tmp_path) -> None:
    store, redis, run = env
    v1 = _publish(store, tmp_path, seed=1)
    _put_user(redis, store, v1)
    v2 = _publish(store, tmp_path, seed=2, lineage=[v1])  # warm-started from v1
    assert store.active_version() == v2
    seen_ids = {f"i{i}" for i in SEEN}

    got = run("recommend", "u1", "--namespace", NS, "-n", "20", "--json")
    assert got.exit_code == 0, got.output
    body = json.loads(got.output)
    assert (body["snapshot"], body["stale"], body["reason"]) == (v1, False, None)
    assert not seen_ids & set(body["items"])
    text = run("recommend", "u1", "--namespace", NS, "-n", "5")
    assert text.exit_code == 0 and f"snapshot {v1}" in text.output and "stale" not in text.output

    shutil.rmtree(store.path(v1))  # pruned: now the answer is stale, and says so
    body = json.loads(run("recommend", "u1", "--namespace", NS, "-n", "20", "--json").output)
    assert (body["snapshot"], body["stale"]) == (v2, True)
    assert body["reason"] == ("the user's last seen items not left out: their vectors belong "
                              f"to snapshot {v1}, not loaded")
    text = run("recommend", "u1", "--namespace", NS, "-n", "5").output
    assert f"snapshot {v2}" in text
    assert f"stale: the user's last seen items not left out: their vectors belong to snapshot {v1}" in text
    kept = run("recommend", "u1", "--namespace", NS, "-n", "5", "--keep-seen").output
    assert "stale: the user's vectors belong to" in kept and "seen items" not in kept


def test_a_users_version_that_fails_its_hashes_is_not_used(env, tmp_path) -> None:
    store, redis, run = env
    v1 = _publish(store, tmp_path, seed=1)
    _put_user(redis, store, v1)
    v2 = _publish(store, tmp_path, seed=2, lineage=[v1])
    weights = store.path(v1) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    got = run("recommend", "u1", "--namespace", NS, "--json")
    assert got.exit_code == 0, got.output
    assert f"warning: not using snapshot {v1}" in got.stderr and "weights.safetensors" in got.stderr
    body = json.loads(got.stdout)
    assert body["snapshot"] == v2 and body["stale"] is True


@pytest.mark.parametrize(("flag", "excluded"), [((), True), (("--keep-seen",), False)])
def test_keep_seen_keeps_the_streams_seen_items(env, tmp_path, flag, excluded) -> None:
    store, redis, run = env
    v1 = _publish(store, tmp_path, seed=1)
    _put_user(redis, store, v1)
    got = run("recommend", "u1", "--namespace", NS, "-n", "50", "--json", *flag)
    assert got.exit_code == 0, got.output
    items = set(json.loads(got.output)["items"])
    assert bool({f"i{i}" for i in SEEN} & items) is not excluded


# -- snapshots that cannot be used ----------------------------------------------------------

def test_an_active_snapshot_without_manifest_is_one_error_line(env, tmp_path) -> None:
    store, _, run = env
    v1 = _publish(store, tmp_path, seed=1)
    (store.path(v1) / "manifest.json").unlink()
    _clean_error(run("recommend", "u1", "--namespace", NS), v1, "manifest.json")


def test_an_active_snapshot_whose_hash_fails_is_refused(env, tmp_path) -> None:
    store, _, run = env
    v1 = _publish(store, tmp_path, seed=1)
    weights = store.path(v1) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # same size, another hash
    _clean_error(run("recommend", "u1", "--namespace", NS), v1, "weights.safetensors", "sha256")


def test_an_index_that_does_not_match_the_items_is_one_error_line(env, tmp_path) -> None:
    store, _, run = env
    other = _publish(store, tmp_path, seed=2, n_items=40)
    v1 = _publish(store, tmp_path, seed=1)
    shutil.copy(store.path(other) / "items.faiss", store.path(v1) / "items.faiss")
    _rehash(store, v1, "items.faiss")  # hashes verify: only the load can tell
    _clean_error(run("recommend", "u1", "--namespace", NS), v1, "index holds 40x8")


# -- -n ---------------------------------------------------------------------------------------

def test_n_is_bounded_as_the_apis_n() -> None:
    from serving_cache import api

    n = next(p for p in inspect.recommend_cmd.params if p.name == "n")
    assert isinstance(n.type, click.IntRange)
    assert (n.type.min, n.type.max) == (1, MAX_N) and api.MAX_N is MAX_N


@pytest.mark.parametrize("n", ["0", "-3", str(MAX_N + 1)])
def test_n_out_of_range_is_a_usage_error(env, n) -> None:
    _, _, run = env
    _clean_error(run("recommend", "u1", "-n", n), "-n", code=2)


# -- values that do not decode ----------------------------------------------------------------

def _nan_value() -> bytes:
    uv = UserVectors(seq=1, model="v", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=0)
    return encode_user(uv).replace(np.ones(2, "<f2").tobytes(), b"\x00\x7e\x00\x3c")


@pytest.mark.parametrize(("value", "why"), [(b"garbage", "not a msgpack map"),
                                            (_nan_value(), "non-finite")])
def test_inspect_user_on_a_value_that_does_not_decode(env, value, why) -> None:
    _, redis, run = env
    redis.values[user_key(NS, "bad")] = value
    _clean_error(run("inspect", "user", "bad", "--namespace", NS),
                 f"value of user 'bad' in namespace '{NS}' does not decode", why)


def test_recommend_says_a_value_does_not_decode(env, tmp_path) -> None:
    store, redis, run = env
    _publish(store, tmp_path, seed=1)
    redis.values[user_key(NS, "bad")] = b"garbage"
    got = run("recommend", "bad", "--namespace", NS, "-n", "3")
    assert got.exit_code == 0, got.output
    assert "cold start (the stored value does not decode: not a msgpack map" in got.output


def test_an_unknown_user_of_an_empty_namespace_says_the_namespace_is_empty(env, tmp_path) -> None:
    """Every user of an empty namespace is cold, as with a typo'd --namespace: a note says
    so; in a namespace that holds users, an unknown user is only cold."""
    store, redis, run = env
    v = _publish(store, tmp_path, seed=1)
    got = run("recommend", "nobody", "--namespace", NS, "-n", "3")
    assert got.exit_code == 0 and "cold start (unknown user)" in got.output, got.output
    assert f"note: namespace '{NS}' holds no users" in got.output
    _put_user(redis, store, v)
    got = run("recommend", "nobody", "--namespace", NS, "-n", "3")
    assert got.exit_code == 0 and "cold start (unknown user)" in got.output, got.output
    assert "holds no users" not in got.output


def _d_used(got) -> float:  # type: ignore[no-untyped-def]
    assert got.exit_code == 0, got.output
    return float(json.loads(got.stdout)["d_used"])


def test_context_mode_takes_the_apis_hour_and_device(env, tmp_path) -> None:
    """--mode context shifts d_u by the API's context (hour, device): an evening on a tv
    browses wider than auto, a working hour on a desktop narrower; without them it is manual."""
    from online_model.aggregate import manual_d
    from serving_cache.recommend import context_delta

    store, redis, run = env
    _put_user(redis, store, _publish(store, tmp_path, seed=1))
    base = ("recommend", "u1", "--namespace", NS, "-n", "3", "--json")
    auto = _d_used(run(*base))
    wide = _d_used(run(*base, "--mode", "context", "--hour", "21", "--device", "tv"))
    narrow = _d_used(run(*base, "--mode", "context", "--hour", "10", "--device", "desktop"))
    assert wide == pytest.approx(manual_d(0.5, context_delta({"hour": 21, "device": "tv"})))
    assert narrow < auto < wide
    both = _d_used(run(*base, "--mode", "context", "--device", "tv", "--delta", "0.1"))
    assert both == pytest.approx(manual_d(0.5, 0.1 + context_delta({"device": "tv"})))


@pytest.mark.parametrize("args, name", [
    (("--delta", "0.5"), "--delta"),                       # auto ignores delta
    (("--mode", "auto", "--delta", "0"), "--delta"),
    (("--mode", "manual", "--hour", "21"), "--hour"),      # only context reads the context
    (("--device", "tv"), "--device"),
])
def test_an_option_the_mode_does_not_use_is_a_usage_error(env, tmp_path, args, name) -> None:
    store, redis, run = env
    _put_user(redis, store, _publish(store, tmp_path, seed=1))
    got = run("recommend", "u1", "--namespace", NS, *args)
    assert got.exit_code == 2, got.output
    assert name in got.output and "Traceback" not in got.output


@pytest.mark.parametrize("args", [("--hour", "24"), ("--hour", "-1"), ("--device", "alien")])
def test_context_has_the_apis_bounds(env, args) -> None:
    _store, _redis, run = env
    got = run("recommend", "u1", "--namespace", NS, "--mode", "context", *args)
    assert got.exit_code == 2 and args[0] in got.output, got.output


def test_the_list_prints_each_items_title(env, tmp_path) -> None:
    """A snapshot with titles: the text prints each item's title after its row, the JSON
    carries them; an item without one prints no title (and is null in the JSON)."""
    store, redis, run = env
    titles = ["" if i % 2 else f"Film {i}" for i in range(100)]
    ck = write_checkpoint(tmp_path / "ckt", n_items=100, dim=8, seed=3,
                          item_pop=np.arange(100)[::-1], item_titles=titles)
    v = publish(ck, store).version
    _put_user(redis, store, v)
    body = json.loads(run("recommend", "u1", "--namespace", NS, "-n", "10", "--json").output)
    assert body["titles"] == [titles[int(i[1:])] or None for i in body["items"]]
    got = run("recommend", "u1", "--namespace", NS, "-n", "10")
    assert got.exit_code == 0, got.output
    rows = got.output.splitlines()[1:]
    assert len(rows) == 10
    for row, item in zip(rows, body["items"], strict=True):
        want = titles[int(item[1:])]
        assert row.split()[1] == item and (row.endswith(f"  {want}") if want else
                                           "Film" not in row), row


def test_a_title_cannot_forge_a_row_of_the_list(env, tmp_path) -> None:
    """A checkpoint's title with a line break and a terminal escape printed a forged row 2 (and
    coloured the terminal): the text shows them escaped, one row per item; JSON keeps the title."""
    store, redis, run = env
    forged = "Scream\n    2. 50 ... 9.9999  Star Wars (injected)\x1b[31m red\u2028x"
    titles = [forged] * 100
    ck = write_checkpoint(tmp_path / "ckf", n_items=100, dim=8, seed=3,
                          item_pop=np.arange(100)[::-1], item_titles=titles)
    _put_user(redis, store, publish(ck, store).version)
    got = run("recommend", "u1", "--namespace", NS, "-n", "3")
    assert got.exit_code == 0, got.output
    rows = got.output.splitlines()[1:]
    assert len(rows) == 3 and "\x1b" not in got.output and "\u2028" not in got.output, rows
    for rank, row in enumerate(rows, 1):
        assert row.lstrip().startswith(f"{rank}. ")
        assert row.endswith("  Scream\\n    2. 50 ... 9.9999  Star Wars (injected)\\x1b[31m red"
                            "\\u2028x"), row
    body = json.loads(run("recommend", "u1", "--namespace", NS, "-n", "3", "--json").output)
    assert body["titles"] == [forged] * 3


def test_help_says_how_the_answer_differs_from_the_apis() -> None:
    """--help said "the same code path as `diam serve`": cold users are answered from the
    snapshot's training counts here, the API's live click count there, and --json has another
    shape than the API's; both are said."""
    out = " ".join(CliRunner().invoke(main, ["recommend", "--help"]).output.split())
    assert "the same code path" not in out
    assert "training click counts" in out and "--live-popularity" in out
    assert "parallel lists" in out and "items: [{item_id, score, category, title}]" in out
