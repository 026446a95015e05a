"""Publish a trainer checkpoint as a versioned snapshot, and watch a trainer directory.

``publish`` verifies the checkpoint (files present, safetensors readable, shapes agree with
``item_ids.npy`` and ``config.json``), builds the FAISS item index, stages the snapshot, renames
it into place, switches the active pointer and sets ``diam:{ns}:model:active`` in Redis. Any
failure before the pointer switch leaves the previous version active and no partial directory.
Nothing is unpickled: safetensors, JSON, ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from snapshotter.config import SnapshotConfig
from snapshotter.store import MANIFEST, SnapshotError, SnapshotStore, sha256_file

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "PublishResult",
    "load_checkpoint",
    "publish",
    "set_active_in_redis",
    "find_checkpoints",
    "Watcher",
]

log = logging.getLogger(__name__)

REQUIRED = ("weights.safetensors", "config.json", "item_ids.npy")
OPTIONAL = ("item_categories.npy", "categories.json", "item_pop.npy", "content_tower.safetensors")
MANIFEST_FORMAT = 1


class CheckpointError(SnapshotError):
    """A checkpoint directory is incomplete or inconsistent."""


@dataclass
class Checkpoint:
    """A verified checkpoint, loaded into numpy."""

    path: Path
    config: dict[str, Any]
    item_ids: np.ndarray  # [N]
    item_emb: np.ndarray  # [N, d] float32
    weights_sha256: str
    files: list[str] = field(default_factory=list)


def _np_load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated, pickled object arrays, not .npy at all
        raise CheckpointError(f"{path.name}: cannot be read without pickle: {exc}") from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check a checkpoint directory (the trainer's contract); raise CheckpointError
    naming the file at fault."""
    from safetensors import safe_open

    ck = Path(path)
    if not ck.is_dir():
        raise CheckpointError(f"{ck}: not a directory")
    missing = [f for f in REQUIRED if not (ck / f).is_file()]
    if missing:
        raise CheckpointError(f"{ck}: missing {', '.join(missing)}")
    try:
        config = json.loads((ck / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config.json: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError("config.json: expected a JSON object")

    item_ids = _np_load(ck / "item_ids.npy")
    if item_ids.ndim != 1 or item_ids.dtype.kind not in "UiS":
        raise CheckpointError(
            f"item_ids.npy: expected a 1-D str/int array, got {item_ids.dtype} {item_ids.shape}"
        )
    n = item_ids.shape[0]
    if len(np.unique(item_ids)) != n:
        raise CheckpointError("item_ids.npy: item ids are not unique")

    try:
        with safe_open(str(ck / "weights.safetensors"), framework="numpy") as st:
            keys = set(st.keys())
            if "online.item_emb" not in keys:
                raise CheckpointError("weights.safetensors: no 'online.item_emb' tensor")
            emb = st.get_tensor("online.item_emb")
            head = {k: st.get_slice(k).get_shape() for k in keys if k.startswith("online.")}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated header, bad offsets: safetensors refuses cleanly
        raise CheckpointError(f"weights.safetensors: cannot be read: {exc}") from exc

    if emb.ndim != 2 or emb.shape[0] != n:
        raise CheckpointError(
            f"weights.safetensors: online.item_emb is {emb.shape}, item_ids.npy has {n} rows"
        )
    dim = emb.shape[1]
    for key, want in (("n_items", n), ("dim", dim)):
        if key in config and int(config[key]) != want:
            raise CheckpointError(f"config.json: {key}={config[key]} but the weights say {want}")
    if not np.isfinite(emb).all():
        raise CheckpointError("weights.safetensors: online.item_emb holds NaN or inf")
    shapes = {
        "online.gate_b1": None,
        "online.gate_w2": None,
        "online.gate_b2": [1],
        "online.fusion_w": [4],
        "online.fusion_b": [1],
    }
    if "online.gate_w1" in head:
        hidden = head["online.gate_w1"][0]
        if list(head["online.gate_w1"]) != [hidden, dim + 4]:
            raise CheckpointError(
                f"weights.safetensors: online.gate_w1 is {head['online.gate_w1']}, "
                f"expected [H, {dim + 4}]"
            )
        shapes.update({"online.gate_b1": [hidden], "online.gate_w2": [1, hidden]})
    for key, want in shapes.items():
        if key in head and want is not None and list(head[key]) != want:
            raise CheckpointError(f"weights.safetensors: {key} is {head[key]}, expected {want}")

    files = list(REQUIRED)
    n_cat = None
    if (ck / "categories.json").is_file():
        try:
            names = json.loads((ck / "categories.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"categories.json: not valid JSON ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise CheckpointError("categories.json: expected a list of names")
        n_cat = len(names)
        files.append("categories.json")
    if (ck / "item_categories.npy").is_file():
        cats = _np_load(ck / "item_categories.npy")
        if cats.shape != (n,) or cats.dtype.kind not in "iu":
            raise CheckpointError(
                f"item_categories.npy: expected int [{n}], got {cats.dtype} {cats.shape}"
            )
        if n_cat is not None and n and (cats.max() >= n_cat or cats.min() < -1):
            raise CheckpointError(f"item_categories.npy: categories outside [-1, {n_cat})")
        files.append("item_categories.npy")
    if (ck / "item_pop.npy").is_file():
        pop = _np_load(ck / "item_pop.npy")
        if pop.shape != (n,) or pop.dtype.kind not in "iuf" or (n and pop.min() < 0):
            raise CheckpointError(
                f"item_pop.npy: expected non-negative [{n}], got {pop.dtype} {pop.shape}"
            )
        files.append("item_pop.npy")
    if (ck / "content_tower.safetensors").is_file():
        from online_model.models.content import ContentTower

        try:
            tower = ContentTower.load(ck / "content_tower.safetensors")
        except Exception as exc:  # noqa: BLE001 - a broken tower refuses the checkpoint
            raise CheckpointError(f"content_tower.safetensors: cannot be read: {exc}") from exc
        if tower.dim != dim:
            raise CheckpointError(f"content_tower.safetensors: dim {tower.dim}, items have {dim}")
        files.append("content_tower.safetensors")
    return Checkpoint(
        ck,
        config,
        item_ids,
        np.ascontiguousarray(emb, dtype=np.float32),
        sha256_file(ck / "weights.safetensors"),
        files,
    )


def _popularity_from_data(ck: Checkpoint, data_dir: Path | None) -> np.ndarray | None:
    """Click counts per item from the prepared dataset the checkpoint was trained on, when it is
    on disk; cold users get these. None when not found (serving then falls back to uniform)."""
    name = (ck.config.get("data") or {}).get("name")
    if data_dir is None or not name:
        return None
    ds_dir = Path(data_dir) / str(name)
    if not (ds_dir / "events.tsv").is_file():
        return None
    try:
        from online_model.datasets import load_prepared

        item_col = load_prepared(ds_dir).item_ids
    except Exception as exc:  # popularity is a nicety for cold users: never block a publish on it
        log.warning("no popularity from %s (%s); cold users get catalogue order", ds_dir, exc)
        return None
    uniq, counts = np.unique(np.asarray(item_col).astype(str), return_counts=True)
    index = {str(i): k for k, i in enumerate(ck.item_ids.astype(str))}
    pop = np.zeros(len(ck.item_ids), dtype=np.int64)
    for item, c in zip(uniq, counts, strict=True):
        k = index.get(str(item))
        if k is not None:
            pop[k] = c
    return pop


def _content_tower(ck: Checkpoint, staging: Path) -> dict[str, Any]:
    """The snapshot's content tower (new items get their first embedding from it): the
    checkpoint's own (fitted with titles by the retrain service), else one fitted here on the
    categories alone. Manifest info says which."""
    from online_model.models.content import FILE, ContentTower

    if FILE in ck.files:
        return {"source": "checkpoint"}
    cat_file, names_file = ck.path / "item_categories.npy", ck.path / "categories.json"
    if not (cat_file.is_file() and names_file.is_file()):
        return {"source": None, "why": "no item categories in the checkpoint"}
    names = json.loads(names_file.read_text())
    cats = np.load(cat_file, allow_pickle=False)
    tower = ContentTower.fit(names, [[names[c]] if 0 <= c < len(names) else [] for c in cats],
                             [""] * len(cats), ck.item_emb)
    tower.save(staging / FILE)
    return {"source": "publish", "features": "categories"}


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: Path
    manifest: dict[str, Any]
    previous: str | None
    pruned: list[str]
    redis_set: bool


def set_active_in_redis(client: Any, ns: str, version: str) -> None:
    """Broadcast the active version to the workers and the API (``diam:{ns}:model:active``)."""
    from serving_cache.keys import model_active_key, validate_namespace

    client.set(model_active_key(validate_namespace(ns)), version)


def publish(
    checkpoint: str | Path,
    store: SnapshotStore,
    redis_client: Any | None = None,
    ns: str = "live",
    data_dir: str | Path | None = None,
    now: datetime | None = None,
) -> PublishResult:
    """Verify ``checkpoint``, write it as a new version of ``store``, make it active.

    Redis is updated last; if it fails the disk pointer has switched already and the error says
    so (``watch`` and ``rollback`` re-sync Redis from the pointer)."""
    import faiss

    from snapshotter.index import build_index

    ck = load_checkpoint(checkpoint)
    cfg: SnapshotConfig = store.cfg
    index, index_info = build_index(ck.item_emb, cfg)
    created = now or datetime.now(UTC)
    version = f"{created:%Y%m%dT%H%M%S}-{ck.weights_sha256[:8]}"
    suffix = 1
    while store.path(version).exists():
        suffix += 1
        version = f"{created:%Y%m%dT%H%M%S}-{ck.weights_sha256[:8]}-{suffix}"

    staging = store.staging_dir()
    try:
        for name in ck.files:
            shutil.copyfile(ck.path / name, staging / name)
        if "item_pop.npy" not in ck.files:
            pop = _popularity_from_data(ck, Path(data_dir) if data_dir else None)
            if pop is not None:
                np.save(staging / "item_pop.npy", pop, allow_pickle=False)
        tower_info = _content_tower(ck, staging)
        faiss.write_index(index, str(staging / "items.faiss"))
        files = {
            f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(staging.iterdir())
        }
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "created_at": created.isoformat(timespec="microseconds"),
            "source": {"path": str(ck.path.resolve()), "weights_sha256": ck.weights_sha256},
            "model": ck.config.get("model"),
            "config": ck.config,
            "train_metrics": ck.config.get("train_metrics", {}),
            "data": ck.config.get("data", {}),
            "index": index_info,
            "content_tower": tower_info,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        path = store.commit(staging, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = store.active_version()
    store.activate(version)  # re-verifies what landed on disk before switching
    pruned = store.prune()
    redis_set = False
    if redis_client is not None:
        try:
            set_active_in_redis(redis_client, ns, version)
            redis_set = True
        except Exception as exc:
            raise SnapshotError(
                f"published {version} on disk, but setting it in Redis failed ({exc}); "
                f"run `diam snapshot rollback {version}` once Redis answers"
            ) from exc
    return PublishResult(version, path, manifest, previous, pruned, redis_set)


def find_checkpoints(trainer_dir: str | Path) -> list[Path]:
    """Checkpoint directories under ``trainer_dir`` (itself, or its immediate sub-directories),
    newest first by the modification time of their weights."""
    root = Path(trainer_dir)
    if not root.is_dir():
        return []
    cands = [root] if (root / "weights.safetensors").is_file() else []
    cands += [p for p in root.iterdir() if p.is_dir() and (p / "weights.safetensors").is_file()]
    return sorted(cands, key=lambda p: (p / "weights.safetensors").stat().st_mtime, reverse=True)


class Watcher:
    """One tick of ``diam snapshot watch``: publish the newest settled checkpoint whose weights
    are not already in the store, and re-sync the active version into Redis.

    A checkpoint is identified by the sha256 of its weights, so a rolled-back version is not
    published again on the next tick; a checkpoint that fails verification is retried only
    when its files change."""

    def __init__(
        self,
        store: SnapshotStore,
        trainer_dir: str | Path,
        redis_client: Any | None = None,
        ns: str = "live",
        data_dir: str | Path | None = None,
    ) -> None:
        self.store, self.trainer_dir, self.client, self.ns = (
            store,
            Path(trainer_dir),
            redis_client,
            ns,
        )
        self.data_dir = data_dir
        self._seen: dict[Path, tuple[float, int]] = {}  # checkpoint -> (mtime, size) last tried

    def _published_shas(self) -> set[str]:
        return {
            str((s.manifest or {}).get("source", {}).get("weights_sha256"))
            for s in self.store.versions()
        }

    def tick(self, now_epoch: float) -> PublishResult | None:
        result = None
        for ck in find_checkpoints(self.trainer_dir):
            newest = max(f.stat().st_mtime for f in ck.iterdir() if f.is_file())
            if now_epoch - newest < self.store.cfg.settle_s:
                continue  # still being written; look again next tick
            weights = ck / "weights.safetensors"
            stamp = (weights.stat().st_mtime, weights.stat().st_size)
            if self._seen.get(ck) == stamp:
                break  # newest settled checkpoint unchanged since we handled it
            self._seen[ck] = stamp
            if sha256_file(weights) in self._published_shas():
                break
            try:
                result = publish(ck, self.store, self.client, self.ns, self.data_dir)
            except Exception as exc:  # a bad checkpoint must not stop the watch loop
                log.error("not publishing %s: %s", ck, exc)
            break
        self._sync_redis()
        return result

    def _sync_redis(self) -> None:
        active = self.store.active_version()
        if self.client is None or active is None:
            return
        from serving_cache.keys import model_active_key

        try:
            raw = self.client.get(model_active_key(self.ns))
            if (raw.decode() if isinstance(raw, bytes) else raw) != active:
                set_active_in_redis(self.client, self.ns, active)
        except Exception as exc:
            log.warning("could not sync the active version into Redis: %s", exc)
