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

__all__ = ["CheckpointError", "CheckpointFiles", "Checkpoint", "read_checkpoint",
           "write_checkpoint_dir", "save_checkpoint", "load_checkpoint", "check_div_quantiles",
           "check_config", "model_config", "network_shapes", "recover_checkpoint_dir",
           "KNOWN_MODELS",
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


# -- config.json against the weights -----------------------------------------------------------
KNOWN_MODELS = ("adasr", "comirec-dr", "comirec-sa", "diam", "mind", "remi", "single")
"""``online_model.models.MODELS``' names, here so that reading a checkpoint needs no torch
(``tests/unit/online_model/test_checkpoint_config.py`` pins the two equal)."""

_INTS: dict[str, tuple[int | None, int]] = {
    "n_items": (None, 0), "n_categories": (None, 0), "dim": (64, 1), "k_max": (8, 1),
    "n_interests": (4, 1), "seq_len": (50, 1), "n_heads": (2, 1), "n_layers": (1, 1),
    "window": (5, 1), "routing_iters": (3, 1), "light_hidden": (32, 1), "fixed_k": (0, 0),
}
"""The integer fields the networks and the stream's head build shapes (or loops) from: the
default a config.json without them means (``ModelConfig``'s) and the least value allowed."""
_FLAGS = {"global_interest": False, "single_diam": False, "dr_per_position": False}
"""The flags that add or remove tensors; defaults as ``ModelConfig.from_dict`` reads a config
without them (``LEGACY``)."""


def _not_an_int(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int | np.integer)


def model_config(config: Mapping[str, Any], where: Path | None = None) -> dict[str, Any]:
    """The shape-building fields of ``config`` with their defaults, each checked to be an
    integer (flag) in range; raise :class:`CheckpointError` naming config.json and the key.
    ``n_items`` and ``n_categories`` are None when absent. ``where``: the checkpoint directory."""
    cfg = Path(where or ".") / CONFIG

    def bad(what: str) -> CheckpointError:
        return _error(cfg, what) if where is not None else CheckpointError(f"{CONFIG}: {what}")

    model = config.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"model={model!r} is not a name")
    out: dict[str, Any] = {"model": model}
    for key, (default, least) in _INTS.items():
        v = config.get(key, default)
        if v is None:
            out[key] = None
            continue
        if _not_an_int(v):
            raise bad(f"{key}={v!r} is not an integer")
        if v < least:
            raise bad(f"{key}={v} is below {least}")
        out[key] = int(v)
    for key, default in _FLAGS.items():
        v = config.get(key, default)
        if not isinstance(v, bool | np.bool_):
            raise bad(f"{key}={v!r} is not true or false")
        out[key] = bool(v)
    if model == "diam" or (model == "single" and out["single_diam"]):  # the dual-scale encoder
        if out["dim"] % out["n_heads"]:
            raise bad(f"n_heads={out['n_heads']} does not divide dim={out['dim']}")
        if out["seq_len"] % out["window"]:
            raise bad(f"window={out['window']} does not divide seq_len={out['seq_len']}")
    if model == "diam" and out["fixed_k"] > out["k_max"]:
        raise bad(f"fixed_k={out['fixed_k']} is above k_max={out['k_max']}")
    return out


_Dim = tuple[int, tuple[str, ...]]  # a dimension and the config.json keys it is built from


def _network(c: Mapping[str, Any]) -> dict[str, tuple[_Dim, ...]]:
    """The torch state dict of model ``c["model"]`` built from the resolved config ``c``: key
    -> shape, ordered so that each key is first met in a dimension of its own (the error then
    names the key that is wrong, not one built from it)."""
    net: dict[str, tuple[_Dim, ...]] = {}
    d: _Dim = (c["dim"], ("dim",))
    one: _Dim = (1, ())

    def times(n: int, x: _Dim) -> _Dim:
        return n * x[0], x[1]

    def plus(a: _Dim, b: _Dim) -> _Dim:
        return a[0] + b[0], a[1] + b[1]

    def lin(key: str, o: _Dim, i: _Dim, bias: bool = True) -> None:
        net[key + ".weight"] = (o, i)
        if bias:
            net[key + ".bias"] = (o,)

    def encoder() -> None:
        net["encoder.pos_fine"] = ((c["seq_len"], ("seq_len",)), d)
        net["encoder.pos_coarse"] = ((c["seq_len"] // c["window"], ("seq_len", "window")), d)
        for scale in ("fine", "coarse"):
            for i in range(c["n_layers"]):
                p = f"encoder.{scale}.layers.{i}."
                net[p + "self_attn.in_proj_weight"] = (times(3, d), d)
                net[p + "self_attn.in_proj_bias"] = (times(3, d),)
                lin(p + "self_attn.out_proj", d, d)
                lin(p + "linear1", times(2, d), d)
                lin(p + "linear2", d, times(2, d))
                for norm in ("norm1", "norm2"):
                    net[p + norm + ".weight"], net[p + norm + ".bias"] = (d,), (d,)
        net["encoder.norm.weight"], net["encoder.norm.bias"] = (d,), (d,)

    model = c["model"]
    net["item_emb.weight"] = ((c["n_items"] + 1, ("n_items",)), d)
    k_int: _Dim = (c["n_interests"], ("n_interests",))
    if model == "diam":
        k: _Dim = (c["k_max"], ("k_max",))
        cats: _Dim = (c["n_categories"], ("n_categories",))
        hidden: _Dim = (c["light_hidden"], ("light_hidden",))
        net["extractor.mix"] = (k,)
        encoder()
        lin("extractor.caps.proj", d, d, bias=False)
        lin("extractor.sa.w1", times(2, d), d)
        lin("extractor.sa.w2", k, times(2, d), bias=False)
        lin("extractor.out", d, d)
        lin("extractor.gate.0", d, plus(d, cats))
        lin("extractor.gate.2", one, d)
        lin("fusion.linear", one, (4, ()))
        net["fusion.norm.running_mean"] = net["fusion.norm.running_var"] = (one,)
        net["fusion.norm.num_batches_tracked"] = (one,)  # 0-d in torch, [1] once written
        lin("light.l1", hidden, plus(d, (4, ())))
        lin("light.l2", one, hidden)
        lin("towers.cat.0", d, plus(d, cats))
        lin("towers.cat.2", d, d)
        lin("towers.ind.0", d, d)
        lin("towers.ind.2", d, d)
        if c["global_interest"]:
            lin("global_mlp.0", d, times(2, d))
            lin("global_mlp.2", d, d)
    elif model in ("comirec-sa", "remi", "adasr"):
        net["pos"] = ((c["seq_len"], ("seq_len",)), d)
        lin("sa.w1", times(4, d), d)
        lin("sa.w2", k_int, times(4, d), bias=False)
        if model == "adasr":
            lin("gate.0", d, d)
            lin("gate.2", one, d)
    elif model == "mind":
        lin("routing.proj", d, d, bias=False)
        lin("hidden.0", d, d)
    elif model == "comirec-dr":
        if c["dr_per_position"]:
            net["routing.weight"] = ((c["seq_len"], ("seq_len",)),
                                     (c["dim"] * c["n_interests"], ("dim", "n_interests")), d)
        else:
            lin("routing.proj", (c["dim"] * c["n_interests"], ("dim", "n_interests")), d,
                bias=False)
    elif model == "single":
        extra: _Dim = (0, ())
        if c["single_diam"]:
            encoder()
            extra = plus(d, (c["n_categories"], ("n_categories",)))
        lin("mlp.0", d, plus(d, extra))
        lin("mlp.2", d, d)
    return net


def network_shapes(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """The shapes of the torch state dict that ``config`` builds (no torch needed): what
    :func:`check_config` compares with the weights. ``n_items`` and ``n_categories`` must be
    in ``config``."""
    c = model_config(config)
    if c["model"] not in KNOWN_MODELS:
        raise CheckpointError(f"{CONFIG}: unknown model {c['model']!r}")
    return {k: [x for x, _ in dims] for k, dims in _network(c).items()}


_STRUCTURE = {  # the flag of each model that adds tensors, and one tensor it adds
    "diam": ("global_interest", "global_mlp.0.weight"),
    "single": ("single_diam", "encoder.norm.weight"),
    "comirec-dr": ("dr_per_position", "routing.weight"),
}


def check_config(d: Path, config: Mapping[str, Any], shapes: Mapping[str, list[int]],
                 n_items: int, n_categories: int | None = None) -> dict[str, Any]:
    """Refuse (:class:`CheckpointError`, one line naming the file, the key and both values) a
    config.json that disagrees with the weights' shapes (``shapes``: the safetensors header),
    ``n_items`` (item_ids.npy's rows) or the items' categories; return :func:`model_config`.

    The network is checked when the weights hold one: every tensor that the model built from
    config.json would have, with that shape, and no other. Weights with only the ``online.*``
    item table (a base without a network) need no known model."""
    c = model_config(config, d)
    w, cf = d / WEIGHTS, d / CONFIG
    emb = shapes["online.item_emb"]
    if c["n_items"] is not None and c["n_items"] != n_items:
        raise _error(cf, f"n_items={c['n_items']} but {ITEM_IDS} has {n_items} rows")
    if "dim" in config and c["dim"] != emb[1]:
        raise _error(cf, f"dim={c['dim']} but online.item_emb in {WEIGHTS} is {emb}")
    c["n_items"], c["dim"] = n_items, emb[1]
    if c["n_categories"] is None:
        c["n_categories"] = n_categories
    present = {k for k in shapes if not k.startswith("online.")}
    model = c["model"]
    if model not in KNOWN_MODELS:
        if present:  # a network nothing here knows how to run: not an item-table base either
            raise _error(cf, f"model={model!r} is not one of {list(KNOWN_MODELS)}, and "
                             f"{WEIGHTS} holds a network ({sorted(present)[0]}, ...)")
        return c
    if not present & _network({**c, "n_categories": 0}).keys():
        return c  # no network (or a stand-in for one): the item table only
    if c["n_categories"] is None and model in ("diam", "single"):
        raise _error(cf, "n_categories missing (the network's shapes are built from it)")
    net = _network(c)
    layers = {int(m.group(1)) for k in present
              if (m := re.match(r"encoder\.fine\.layers\.(\d+)\.", k))}
    if layers and len(layers) != c["n_layers"]:
        raise _error(cf, f"n_layers={c['n_layers']} but {WEIGHTS} has {len(layers)} "
                         "encoder layer(s)")
    if model in _STRUCTURE:
        flag, probe = _STRUCTURE[model]
        if (probe in present) != (probe in net):
            has = "holds" if probe in present else "has no"
            raise _error(cf, f"{flag}={str(c[flag]).lower()} but {WEIGHTS} {has} {probe}")
    settled = {"n_items", "dim"}  # keys the weights confirmed: not blamed for a later shape
    for key, dims in net.items():
        got = shapes.get(key)
        want = [x for x, _ in dims]
        if got is None:  # reported with the other missing tensors below
            continue
        if (list(got) or [1]) == want:  # a scalar is written [1]
            settled.update(f[0] for _, f in dims if len(f) == 1)
            continue
        i = next((i for i in range(len(dims)) if len(got) == len(dims) and got[i] != want[i]),
                 None)
        names = dims[i][1] if i is not None else ()
        names = tuple(n for n in names if n not in settled) or names
        said = ", ".join(f"{n}={c[n]}" for n in names) or f"model={model!r}"
        raise _error(cf, f"{said} but {key} in {WEIGHTS} is {list(got)} "
                         f"(config.json makes it {want})")
    missing, unexpected = sorted(net.keys() - present), sorted(present - net.keys())
    if missing or unexpected:
        raise _error(w, f"tensors differ from config.json's model={model!r} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return c


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
    for name in (CATEGORIES, ITEM_CATS, ITEM_POP, CONTENT_TOWER):  # optional, but not broken
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
