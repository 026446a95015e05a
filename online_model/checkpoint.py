"""Checkpoint directories: the one module that writes and reads them.

Written by the trainer (:func:`save_checkpoint`) and by the test and benchmark fixtures
(:func:`write_checkpoint_dir`); read by the stream's base (``online_model.base.BaseView``), the
snapshotter (``snapshotter.publish``), retrieval (``serving_cache.retrieval``) with
:func:`read_checkpoint` (numpy, no torch, nothing unpickled), and by ``diam evaluate`` and the
retrain gate with :func:`load_checkpoint` (the torch model). A snapshot directory is a
checkpoint directory plus the snapshotter's files, and reads the same way.

What the files are called, :class:`CheckpointError` and the check of config.json against
the weights that every read runs are ``online_model.checkpoint_config``'s (torch-free, no I/O).

Files: ``weights.safetensors`` (the torch state dict and the numpy "online head":
``online.item_emb`` [N, d], optionally ``online.gate_w1`` [H, d+4], ``online.gate_b1`` [H],
``online.gate_w2`` [1, H], ``online.gate_b2`` [1], ``online.fusion_w`` [4], ``online.fusion_b``
[1], ``online.div_quantiles`` [101]: d_u's scale, the realised diversity at each training
percentile; for DIAM ``online.routing_init`` [seq_len, k_max], the capsule routing logits torch
draws and leaves out of the state dict, ``checkpoint_config.ROUTING_INIT_KEY``),
``config.json`` (model, dim, k_max, n_items, ..., and ``weights_sha256``),
``item_ids.npy`` [N] str; optional ``item_categories.npy`` [N] int (-1 unknown),
``categories.json`` (list of names), ``item_pop.npy`` [N] non-negative,
``item_titles.json`` (list of [N] titles, "" unknown), ``content_tower.safetensors``. The directory is written under a temporary name and renamed
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

import ctypes
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from online_model.checkpoint_config import (
    CATEGORIES,
    CONFIG,
    CONTENT_TOWER,
    ITEM_CATS,
    ITEM_IDS,
    ITEM_POP,
    ITEM_TITLES,
    REQUIRED,
    WEIGHTS,
    CheckpointError,
    _check_head,
    _error,
    _not_an_int,
    check_config,
)

__all__ = ["CheckpointFiles", "Checkpoint", "read_checkpoint", "write_checkpoint_dir",
           "save_checkpoint", "load_checkpoint", "recover_checkpoint_dir"]


def _path_problem(path: Path, *, want_dir: bool) -> str | None:
    """Why ``path`` is not a usable directory (``want_dir``) or regular file, or None: the
    cases a bare ``is_dir()``/``is_file()`` folds into one ("missing") told apart."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symlink to {os.readlink(path)!r}, which does not exist"
        return "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a parent is not a directory)"
        return f"cannot be opened ({exc.strerror})"
    if want_dir:
        return None if stat.S_ISDIR(st.st_mode) else "not a directory"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    return None if stat.S_ISREG(st.st_mode) else "not a regular file"


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
    item_titles: list[str] | None = None  # [N], "" unknown
    files: list[str] = field(default_factory=list)  # the contract's files present, in order
    shape_config: dict[str, Any] = field(default_factory=dict)
    """config.json's shape fields as checked against the weights (:func:`check_config`), with
    their defaults filled in and ``dim``/``n_items`` the weights': what builders of the
    network (the stream's compiled head) must read instead of ``config.get(key, default)``."""

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
    except OSError as exc:
        raise _error(path, f"cannot be read ({exc.strerror})") from exc


_NPY_MAGIC = b"\x93NUMPY"


def _npy(path: Path) -> np.ndarray:
    """An .npy file's array; never unpickles (DESIGN §3), and says so in its own words rather
    than numpy's, whose message for a file that is not .npy at all advises unpickling it."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                raise _error(path, f"not a valid .npy file ({len(magic)} bytes, no .npy header)"
                             if len(magic) < len(_NPY_MAGIC) else
                             "not a valid .npy file (no .npy header)")
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
    except CheckpointError:
        raise
    except OSError as exc:
        raise _error(path, f"cannot be read ({exc.strerror})") from exc
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # an object array: pickled bytes, refused unread
            raise _error(path, "holds Python objects (pickle), which loading never "
                               "unpickles") from exc
        raise _error(path, f"not a valid .npy file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - truncated data: EOFError, struct errors
        raise _error(path, f"not a valid .npy file ({type(exc).__name__}: {exc})") from exc


def read_checkpoint(path: str | Path, *, verify: bool = True) -> CheckpointFiles:
    """Read a checkpoint or snapshot directory; raise :class:`CheckpointError` naming the file.

    Shapes always agree or the read fails (ids, item table, config.json against the weights'
    header by :func:`check_config`, the online head, categories, popularity); a path that is
    not a directory, or a file that is a directory, a dangling link or a symlink loop, is
    named as such. ``verify`` adds the checks that read every byte:
    the weights' sha256 against ``config.json``'s ``weights_sha256`` (when recorded), unique
    item ids, a finite item table, a content tower that loads. Readers of a snapshot the store
    has verified may skip them."""
    from safetensors import safe_open

    d = Path(path)
    why = _path_problem(d, want_dir=True)
    if why is not None:
        hint = ""
        if why == "does not exist" and (d.parent / f".{d.name}.old").is_dir():
            hint = (f" (a save into it was interrupted; .{d.name}.old holds the previous "
                    "checkpoint, which the next `diam train --out` restores)")
        raise CheckpointError(f"{d}: {why}{hint}")
    for name in REQUIRED:
        why = _path_problem(d / name, want_dir=False)
        if why == "does not exist":
            raise _error(d / name, "missing (not a checkpoint directory?)")
        if why is not None:
            raise _error(d / name, why)
    for name in (CATEGORIES, ITEM_CATS, ITEM_POP, ITEM_TITLES, CONTENT_TOWER):  # optional, not broken
        if os.path.lexists(d / name) and (why := _path_problem(d / name, want_dir=False)):
            raise _error(d / name, why)
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
    ck.shape_config = shape_cfg = check_config(d, config, shapes, n)
    n_cat = shape_cfg["n_categories"]
    if ck.item_categories is not None and n_cat is not None and n \
            and ck.item_categories.max() >= n_cat:
        raise _error(d / CONFIG, f"n_categories={n_cat} but {ITEM_CATS} holds category "
                                 f"{int(ck.item_categories.max())}")
    if (d / ITEM_POP).is_file():
        pop = _npy(d / ITEM_POP)
        if pop.shape != (n,) or pop.dtype.kind not in "iuf" or (n and pop.min() < 0):
            raise _error(d / ITEM_POP, f"expected non-negative [{n}], got {pop.dtype} {pop.shape}")
        ck.item_pop = pop
        ck.files.append(ITEM_POP)
    if (d / ITEM_TITLES).is_file():
        titles = _json(d / ITEM_TITLES)
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            raise _error(d / ITEM_TITLES, "expected a JSON list of str, one title per item")
        if len(titles) != n:
            raise _error(d / ITEM_TITLES, f"{len(titles)} titles, {ITEM_IDS} has {n} items")
        ck.item_titles = titles
        ck.files.append(ITEM_TITLES)
    if (d / CONTENT_TOWER).is_file():
        ck.files.append(CONTENT_TOWER)
    if verify:
        _verify(ck)
    return ck


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
                         item_titles: Any = None,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write a checkpoint directory at ``out`` and return it. ``tensors`` (numpy) must hold
    ``online.item_emb`` [N, d]; ``item_titles``, when given, one str per item; ``config`` gets ``n_items`` and ``dim`` when it lacks them, and
    always ``weights_sha256``.

    Written under a hidden temporary name ``.<name>.XXXXXXXX`` (what a killed save leaves;
    such leftovers older than an hour go at the next save of the same name), then put in
    place. An existing directory is replaced by one atomic exchange of the two names (Linux
    ``renameat2(RENAME_EXCHANGE)``), so ``out`` is a complete checkpoint at every instant,
    even under SIGKILL. Where the system cannot exchange, the old directory is renamed to
    ``.<name>.old`` and the new one renamed in: a kill between those two renames leaves no
    ``out``, and :func:`recover_checkpoint_dir` (called here first, and by ``diam train``
    when it starts) puts ``.<name>.old`` back."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_checkpoint_dir(out)
    if os.path.lexists(out) and not out.is_dir():
        raise CheckpointError(f"{out}: {_path_problem(out, want_dir=True)}; not replaced by a "
                              "checkpoint")
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
        if item_titles is not None:
            titles = [str(t) for t in item_titles]
            if len(titles) != emb.shape[0]:
                raise ValueError(f"{len(titles)} item titles for {emb.shape[0]} items")
            (tmp / ITEM_TITLES).write_text(json.dumps(titles, ensure_ascii=False),
                                           encoding="utf-8")
        full = dict(config)
        full.setdefault("n_items", int(emb.shape[0]))
        full.setdefault("dim", int(emb.shape[1]))
        with open(tmp / WEIGHTS, "rb") as fh:
            full["weights_sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        (tmp / CONFIG).write_text(json.dumps(full, indent=2, default=_json_default),
                                  encoding="utf-8")
        if out.is_dir() and not out.is_symlink() and _exchange(tmp, out):
            pass  # out is the new checkpoint; tmp holds the old one, removed below
        elif os.path.lexists(out):  # a directory, or a symlink to one (replaced by the new)
            old = _old_name(out)
            _remove(old)
            os.replace(out, old)
            os.replace(tmp, out)  # the window: killed before this, only .<name>.old is left
            _remove(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_leftovers(out)
    return out


def _remove(path: Path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _old_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def recover_checkpoint_dir(out: str | Path) -> bool:
    """Put back ``.<name>.old`` when ``out`` is missing: what a save killed between its two
    renames leaves (systems without an atomic exchange, :func:`write_checkpoint_dir`). That
    directory was ``out``, complete, until the first rename. Returns whether it restored."""
    out = Path(out)
    old = _old_name(out)
    if os.path.lexists(out) or not old.is_dir() or old.is_symlink():
        return False
    os.replace(old, out)
    return True


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (both must exist); False where the system
    or the file system cannot, and nothing was changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl < 1.2.?)
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), str(b))


def _prune_leftovers(out: Path, age_s: float = 3600.0) -> None:
    """Remove what killed saves of ``out`` left: ``.<name>.XXXXXXXX`` (``mkdtemp``'s eight
    characters) older than ``age_s`` (a save in progress touches its directory every file)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}")
    now = time.time()
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return
    for e in entries:
        try:
            if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False) \
                    and now - e.stat(follow_symlinks=False).st_mtime > age_s:
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            continue


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
    path: Path | None = None

    def category_table(self) -> list[str]:
        """The category names, one per index of ``item_categories``: ``categories.json``'s,
        or for a checkpoint without it (the file is optional) ``"category <i>"`` for each index
        up to config.json's ``n_categories`` and the largest one the items use, so a corpus put
        in its vocabulary (``corpus.in_vocabulary``) counts as many categories as it has."""
        if self.categories:
            return list(self.categories)
        used = int(self.item_categories.max()) + 1 if len(self.item_categories) else 0
        n = self.config.get("n_categories")
        n = max(used, n if type(n) is int else 0, 1)
        return [f"category {i}" for i in range(n)]

    def split_seed(self) -> int:
        """The seed of the 80/10/10 user split (``split_seed``, else ``seed``): without it the
        held-out users cannot be rebuilt, which is a :class:`CheckpointError`."""
        where = Path(self.path or ".") / CONFIG
        for key in ("split_seed", "seed"):
            if key in self.config:
                v = self.config[key]
                if _not_an_int(v):
                    raise _error(where, f"{key}={v!r} is not an integer")
                return int(v)
        raise _error(where, "no split_seed/seed, the held-out users cannot be rebuilt")


def save_checkpoint(out: str | Path, model: Any, corpus: Any, *, seed: int,
                    train_metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (a MultiInterestModel) trained on ``corpus`` to the directory ``out``,
    with each item's click count in ``corpus`` (``item_pop.npy``) for cold users' lists, and
    the corpus's item titles (``item_titles.json``) when it has them."""
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
    # cold users' lists serve the training corpus's most clicked items (publish copies the
    # file); without it a snapshot of a topic-trained checkpoint had catalogue order
    pop = np.bincount(np.asarray(corpus.items, dtype=np.int64), minlength=int(corpus.n_items))
    return write_checkpoint_dir(out, tensors, corpus.item_ids, config,
                                item_categories=corpus.item_cat,
                                category_names=list(corpus.category_names),
                                item_pop=pop, item_titles=getattr(corpus, "item_titles", None),
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
    try:
        model = build_model(ModelConfig.from_dict(ck.config), ck.item_categories).to(device)
    except (TypeError, ValueError) as exc:  # a field the model cannot be built with
        raise _error(ck.path / CONFIG, f"cannot build the model: {exc}") from exc
    try:  # read_checkpoint compared the shapes already; this guards what it does not know
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches raise even with strict=False
        first = next((ln.strip() for ln in str(exc).splitlines() if "mismatch" in ln.lower()
                      and ln.strip().startswith("size")), str(exc).splitlines()[0])
        raise _error(ck.path / WEIGHTS, f"shapes differ from config.json ({first})") from None
    if missing or unexpected:
        raise _error(ck.path / WEIGHTS, f"state dict mismatch (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.eval()
    return Checkpoint(model, ck.config, ck.item_ids, ck.item_categories,
                      ck.category_names or [], online, path=ck.path)
