"""Checkpoint directories: the one module that writes, reads and validates them.

Written by the trainer (:func:`save_checkpoint`) and by the test and benchmark fixtures
(:func:`write_checkpoint_dir`); read by the stream's base (``online_model.base.BaseView``), the
snapshotter (``snapshotter.publish``), retrieval (``serving_cache.retrieval``) with
:func:`read_checkpoint` (numpy, no torch, nothing unpickled), and by ``diam evaluate`` and the
retrain gate with :func:`load_checkpoint` (the torch model). A snapshot directory is a
checkpoint directory plus the snapshotter's files, and reads the same way.

Files: ``weights.safetensors`` (the torch state dict and the numpy "online head":
``online.item_emb`` [N, d], optionally ``online.gate_w1`` [H, d+4], ``online.gate_b1`` [H],
``online.gate_w2`` [1, H], ``online.gate_b2`` [1], ``online.fusion_w`` [4], ``online.fusion_b``
[1], ``online.div_quantiles`` [101]: d_u's scale, the realised diversity at each training
percentile), ``config.json`` (model, dim, k_max, n_items, ..., and ``weights_sha256``),
``item_ids.npy`` [N] str; optional ``item_categories.npy`` [N] int (-1 unknown),
``categories.json`` (list of names), ``item_pop.npy`` [N] non-negative,
``content_tower.safetensors``. The directory is written under a temporary name and renamed
into place, so readers never see half a checkpoint.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "ck"
>>> emb = np.eye(3, 2, dtype=np.float32)
>>> _ = write_checkpoint_dir(out, {"online.item_emb": emb}, np.array(["a", "b", "c"]),
...                          {"model": "diam"}, item_categories=np.array([0, 1, -1]))
>>> ck = read_checkpoint(out)
>>> ck.item_ids.tolist(), ck.item_emb.shape, ck.config["n_items"], ck.files[-1]
(['a', 'b', 'c'], (3, 2), 3, 'item_categories.npy')
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "CheckpointFiles", "Checkpoint", "read_checkpoint",
           "write_checkpoint_dir", "save_checkpoint", "load_checkpoint", "check_div_quantiles",
           "WEIGHTS", "CONFIG", "ITEM_IDS", "ITEM_CATS", "CATEGORIES", "ITEM_POP", "CONTENT_TOWER"]

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
ITEM_IDS = "item_ids.npy"
ITEM_CATS = "item_categories.npy"
CATEGORIES = "categories.json"
ITEM_POP = "item_pop.npy"
CONTENT_TOWER = "content_tower.safetensors"
DIV_QUANTILES_KEY = "online.div_quantiles"
REQUIRED = (WEIGHTS, CONFIG, ITEM_IDS)


class CheckpointError(ValueError):
    """A checkpoint is missing a file, has a bad hash or inconsistent contents; the message
    starts with the file at fault and ends with the directory."""


def _error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path.name}: {what} (in {path.parent})")




@dataclass
class CheckpointFiles:
    """A checkpoint directory read into numpy: what every reader needs, checked for consistency.
    The other tensors of the weights are read on demand (:meth:`tensors`)."""

    path: Path
    config: dict[str, Any]
    item_ids: np.ndarray  # [N]
    item_emb: np.ndarray  # [N, d] float32, read-only
    shapes: dict[str, list[int]]  # every tensor of the weights
    item_categories: np.ndarray | None = None  # [N] int32, -1 unknown
    category_names: list[str] | None = None
    item_pop: np.ndarray | None = None  # [N]
    files: list[str] = field(default_factory=list)  # the contract's files present, in order

    @cached_property
    def weights_sha256(self) -> str:
        with open(self.path / WEIGHTS, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    def tensors(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Tensors of the weights as numpy arrays: ``keys``, or all of them."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path / WEIGHTS), framework="numpy") as st:
                return {k: st.get_tensor(k) for k in (self.shapes if keys is None else keys)}
        except Exception as exc:  # safetensors raises its own error types
            raise _error(self.path / WEIGHTS, f"cannot be read: {exc}") from exc


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _error(path, f"not valid JSON ({exc})") from exc


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated, pickled object arrays, not .npy at all
        raise _error(path, f"cannot be read without pickle: {exc}") from exc


def read_checkpoint(path: str | Path, *, verify: bool = True) -> CheckpointFiles:
    """Read a checkpoint or snapshot directory; raise :class:`CheckpointError` naming the file.

    Shapes always agree or the read fails (ids, item table, config's ``n_items`` and ``dim``,
    the online head, categories, popularity). ``verify`` adds the checks that read every byte:
    the weights' sha256 against ``config.json``'s ``weights_sha256`` (when recorded), unique
    item ids, a finite item table, a content tower that loads. Readers of a snapshot the store
    has verified may skip them."""
    from safetensors import safe_open

    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    for name in REQUIRED:
        if not (d / name).is_file():
            raise _error(d / name, "missing (not a checkpoint directory?)")
    config = _json(d / CONFIG)
    if not isinstance(config, dict):
        raise _error(d / CONFIG, "expected a JSON object")
    item_ids = _npy(d / ITEM_IDS)
    if item_ids.ndim != 1 or item_ids.dtype.kind not in "UiS":
        raise _error(d / ITEM_IDS,
                     f"expected a 1-D str/int array, got {item_ids.dtype} {item_ids.shape}")
    n = item_ids.shape[0]
    if verify and len(np.unique(item_ids)) != n:
        raise _error(d / ITEM_IDS, "item ids are not unique")
    try:
        with safe_open(str(d / WEIGHTS), framework="numpy") as st:
            shapes = {k: list(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118
            if "online.item_emb" not in shapes:
                raise _error(d / WEIGHTS, "no 'online.item_emb' tensor "
                                      "(not a diam checkpoint?)")
            emb = np.ascontiguousarray(st.get_tensor("online.item_emb"), dtype=np.float32)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated header, bad offsets: safetensors refuses cleanly
        raise _error(d / WEIGHTS, f"cannot be read: {exc}") from exc
    if emb.ndim != 2 or emb.shape[0] != n:
        raise _error(d / WEIGHTS, f"online.item_emb is {emb.shape}, item_ids.npy has {n} rows")
    dim = emb.shape[1]
    for key, want in (("n_items", n), ("dim", dim)):
        if key in config and int(config[key]) != want:
            raise _error(d / CONFIG, f"{key}={config[key]} but the weights say {want}")
    _check_head(d, shapes, dim)
    emb.setflags(write=False)
    ck = CheckpointFiles(d, config, item_ids, emb, shapes, files=list(REQUIRED))
    if (d / CATEGORIES).is_file():
        names = _json(d / CATEGORIES)
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise _error(d / CATEGORIES, "expected a list of names")
        ck.category_names = names
        ck.files.append(CATEGORIES)
    if (d / ITEM_CATS).is_file():
        cats = _npy(d / ITEM_CATS)
        if cats.shape != (n,) or cats.dtype.kind not in "iu":
            raise _error(d / ITEM_CATS, f"expected int [{n}], got {cats.dtype} {cats.shape}")
        n_cat = len(ck.category_names) if ck.category_names is not None else None
        if n_cat is not None and n and (cats.max() >= n_cat or cats.min() < -1):
            raise _error(d / ITEM_CATS, f"categories outside [-1, {n_cat})")
        ck.item_categories = cats.astype(np.int32)
        ck.files.append(ITEM_CATS)
    if (d / ITEM_POP).is_file():
        pop = _npy(d / ITEM_POP)
        if pop.shape != (n,) or pop.dtype.kind not in "iuf" or (n and pop.min() < 0):
            raise _error(d / ITEM_POP, f"expected non-negative [{n}], got {pop.dtype} {pop.shape}")
        ck.item_pop = pop
        ck.files.append(ITEM_POP)
    if (d / CONTENT_TOWER).is_file():
        ck.files.append(CONTENT_TOWER)
    if verify:
        _verify(ck)
    return ck


def _check_head(d: Path, shapes: dict[str, list[int]], dim: int) -> None:
    """The light gate and the fusion layer have the shapes the stream's numpy code assumes."""
    want: dict[str, list[int] | None] = {"online.gate_b1": None, "online.gate_w2": None,
                                         "online.gate_b2": [1], "online.fusion_w": [4],
                                         "online.fusion_b": [1]}
    if "online.gate_w1" in shapes:
        hidden = shapes["online.gate_w1"][0]
        if shapes["online.gate_w1"] != [hidden, dim + 4]:
            raise _error(d / WEIGHTS, f"online.gate_w1 is {shapes['online.gate_w1']}, "
                                  f"expected [H, {dim + 4}]")
        want.update({"online.gate_b1": [hidden], "online.gate_w2": [1, hidden]})
    for key, shape in want.items():
        if key in shapes and shape is not None and shapes[key] != shape:
            raise _error(d / WEIGHTS, f"{key} is {shapes[key]}, expected {shape}")
    q = shapes.get(DIV_QUANTILES_KEY)
    if q is not None and (len(q) != 1 or q[0] < 2):
        raise _error(d / WEIGHTS, f"{DIV_QUANTILES_KEY} is {q}, expected [n] with n >= 2")


def check_div_quantiles(path: str | Path, table: np.ndarray) -> np.ndarray:
    """``online.div_quantiles`` as the stream reads it (float64), refused unless finite,
    within [0, 1] and non-decreasing (a quantile table of normalised entropy)."""
    t = np.asarray(table, dtype=np.float64).reshape(-1)
    if not (np.isfinite(t).all() and t.min(initial=0.0) >= 0.0 and t.max(initial=0.0) <= 1.0
            and (np.diff(t) >= 0).all()):
        raise _error(Path(path) / WEIGHTS, f"{DIV_QUANTILES_KEY} must be finite, within [0, 1] "
                                           "and non-decreasing")
    return t


def _verify(ck: CheckpointFiles) -> None:
    d = ck.path
    want = ck.config.get("weights_sha256")
    if want and ck.weights_sha256 != want:
        raise _error(d / WEIGHTS, "sha256 differs from config.json's weights_sha256")
    if not np.isfinite(ck.item_emb).all():
        raise _error(d / WEIGHTS, "online.item_emb holds NaN or inf")
    if CONTENT_TOWER in ck.files:
        from online_model.models.content import ContentTower

        try:
            tower = ContentTower.load(d / CONTENT_TOWER)
        except Exception as exc:  # noqa: BLE001 - a broken tower refuses the checkpoint
            raise _error(d / CONTENT_TOWER, f"cannot be read: {exc}") from exc
        if tower.dim != ck.item_emb.shape[1]:
            raise _error(d / CONTENT_TOWER, f"dim {tower.dim}, items have "
                                  f"{ck.item_emb.shape[1]}")


def write_checkpoint_dir(out: str | Path, tensors: Mapping[str, np.ndarray], item_ids: Any,
                         config: Mapping[str, Any], *, item_categories: Any = None,
                         category_names: list[str] | None = None, item_pop: Any = None,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write a checkpoint directory at ``out`` and return it. ``tensors`` (numpy) must hold
    ``online.item_emb`` [N, d]; ``config`` gets ``n_items`` and ``dim`` when it lacks them, and
    always ``weights_sha256``. Written under a temporary name, then renamed into place (an
    existing directory stays complete until the swap)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        emb = arrays["online.item_emb"]
        save_file(arrays, str(tmp / WEIGHTS), metadata=metadata)
        np.save(tmp / ITEM_IDS, np.asarray(item_ids).astype(str), allow_pickle=False)
        if item_categories is not None:
            np.save(tmp / ITEM_CATS, np.asarray(item_categories, dtype=np.int32),
                    allow_pickle=False)
        if category_names is not None:
            (tmp / CATEGORIES).write_text(json.dumps(list(category_names)), encoding="utf-8")
        if item_pop is not None:
            np.save(tmp / ITEM_POP, np.asarray(item_pop, dtype=np.int64), allow_pickle=False)
        full = dict(config)
        full.setdefault("n_items", int(emb.shape[0]))
        full.setdefault("dim", int(emb.shape[1]))
        with open(tmp / WEIGHTS, "rb") as fh:
            full["weights_sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        (tmp / CONFIG).write_text(json.dumps(full, indent=2, default=_json_default),
                                  encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# -- the trainer's torch model ---------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: the torch model (eval mode), its config and vocabulary."""

    model: Any  # MultiInterestModel
    config: dict
    item_ids: np.ndarray
    item_categories: np.ndarray
    categories: list[str]
    online: dict[str, np.ndarray]


def save_checkpoint(out: str | Path, model: Any, corpus: Any, *, seed: int,
                    train_metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (a MultiInterestModel) trained on ``corpus`` to the directory ``out``."""
    tensors = {k: v.detach().cpu().contiguous().numpy()
               for k, v in model.state_dict().items()}
    for k, v in model.export_online().items():
        tensors[k] = np.ascontiguousarray(v, dtype=np.float32)
    cfg = model.cfg.to_dict()
    config = {
        **cfg,
        "k_max": cfg["k_max"] if cfg["model"] == "diam" else cfg["n_interests"],
        "n_items": int(corpus.n_items),
        "n_categories": int(corpus.n_categories),
        "seed": int(seed),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "train_metrics": train_metrics or {},
        "data": dict(corpus.info),
        **(extra or {}),
    }
    return write_checkpoint_dir(out, tensors, corpus.item_ids, config,
                                item_categories=corpus.item_cat,
                                category_names=list(corpus.category_names),
                                metadata={"model": model.cfg.model})


def load_checkpoint(path: str | Path, device: str = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint (or snapshot) directory with its torch model; raises
    :class:`CheckpointError` when broken."""
    import torch

    from online_model.models import MODELS, ModelConfig, build_model

    ck = read_checkpoint(path, verify=verify)
    if ck.item_categories is None:
        raise _error(ck.path / ITEM_CATS, "missing (the torch model needs it)")
    if ck.config.get("model") not in MODELS:
        raise _error(ck.path / CONFIG, f"unknown model {ck.config.get('model')!r}")
    tensors = ck.tensors()
    online = {k: v for k, v in tensors.items() if k.startswith("online.")}
    state = {k: torch.from_numpy(v).to(device) for k, v in tensors.items()
             if not k.startswith("online.")}
    model = build_model(ModelConfig.from_dict(ck.config), ck.item_categories).to(device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise _error(ck.path / WEIGHTS, f"state dict mismatch (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.eval()
    return Checkpoint(model, ck.config, ck.item_ids, ck.item_categories,
                      ck.category_names or [], online)
