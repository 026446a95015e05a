"""A checkpoint directory's contract, torch-free and without I/O: what its files are called,
:class:`CheckpointError`, and the checker of ``config.json`` against the weights.

:func:`check_config` compares config.json with the safetensors header's shapes (a table of the
torch state dict each model builds, :func:`network_shapes`, pinned to the real models by
``tests/unit/online_model/test_checkpoint_config.py``); :func:`_check_head` and
:func:`check_div_quantiles` check the numpy online head. ``online_model.checkpoint`` reads,
writes and loads checkpoint directories and runs these checks on every read.

>>> shapes = network_shapes({"model": "mind", "n_items": 5, "n_categories": 2, "dim": 4})
>>> shapes["item_emb.weight"], shapes["hidden.0.bias"]
([6, 4], [4])
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "check_config", "check_div_quantiles", "model_config",
           "checkpoint_label", "label_weights", "label_names", "warm_lineage", "LINEAGE_MAX",
           "network_shapes", "KNOWN_MODELS", "WEIGHTS", "CONFIG", "ITEM_IDS", "ITEM_CATS",
           "CATEGORIES", "ITEM_POP", "ITEM_TITLES", "CONTENT_TOWER", "REQUIRED", "DIV_QUANTILES_KEY",
           "ROUTING_INIT_KEY"]

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
ITEM_IDS = "item_ids.npy"
ITEM_CATS = "item_categories.npy"
CATEGORIES = "categories.json"
ITEM_POP = "item_pop.npy"
ITEM_TITLES = "item_titles.json"
"""Optional: a JSON list of str, one title per row of ``item_ids.npy`` ("" unknown)."""
CONTENT_TOWER = "content_tower.safetensors"
DIV_QUANTILES_KEY = "online.div_quantiles"
ROUTING_INIT_KEY = "online.routing_init"
"""DIAM's fixed capsule routing logits, float32 [seq_len, k_max]: the extractor's ``b_init``,
a buffer torch draws at construction and leaves out of its state dict, written beside the online
head so that the compiled head (``online_model.infer.DiamHead``) loads without importing torch.
Checkpoints written before it lack it; the head then draws the same logits with torch. Under
``online.``, so the torch model's loader and the config check pass it by as they pass the rest of
the online head."""
REQUIRED = (WEIGHTS, CONFIG, ITEM_IDS)


LABEL_SHA_CHARS = 12
"""Hex digits of the weights' sha256 in a checkpoint's label (:func:`checkpoint_label`)."""


def checkpoint_label(model: str, weights_sha256: str) -> str:
    """The version a base read from a checkpoint directory (not a snapshot) stamps on the vectors
    it writes (``diam run --checkpoint``): ``<model>-<first 12 hex digits of its weights'
    sha256>``. A snapshot's version names the weights by their first 8 (``snapshotter``).

    >>> checkpoint_label("diam", "0123456789abcdef" * 4)
    'diam-0123456789ab'
    """
    return f"{model}-{weights_sha256[:LABEL_SHA_CHARS]}"


def label_weights(label: str) -> tuple[str, str] | None:
    """``(model, sha256 prefix)`` of a :func:`checkpoint_label`, None for anything else (a
    snapshot version: ``20261206T005500-0123abcd``).

    >>> label_weights("diam-0123456789ab"), label_weights("20261206T005500-0123abcd")
    (('diam', '0123456789ab'), None)
    >>> all(label_weights(checkpoint_label(m, "ab" * 32)) == (m, "ab" * 6) for m in KNOWN_MODELS)
    True
    """
    m = re.fullmatch(rf"([A-Za-z][A-Za-z0-9_-]*?)-([0-9a-f]{{{LABEL_SHA_CHARS}}})", label)
    return (m.group(1), m.group(2)) if m else None


def label_names(label: str, model: object, weights_sha256: object) -> bool:
    """Whether ``label`` (:func:`checkpoint_label`) names the weights of ``model`` with this
    sha256: the one rule the store and the in-memory snapshots match a label by.

    >>> label_names("diam-0123456789ab", "diam", "0123456789ab" + "0" * 52)
    True
    >>> label_names("diam-0123456789ab", "mind", "0123456789ab" + "0" * 52)
    False
    """
    named = label_weights(label)
    return named is not None and model == named[0] and str(weights_sha256 or "").startswith(named[1])


LINEAGE_MAX = 64
"""Versions a checkpoint's warm-start lineage keeps (the newest first)."""


def warm_lineage(config: Mapping[str, Any], started_from: str | None = None) -> list[str]:
    """The snapshot versions a retrained checkpoint's weights descend from by warm starts, the
    newest first (config.json's ``retrain.warm_start.lineage``; a checkpoint trained from
    scratch has none). With ``started_from``, the lineage of a checkpoint warm-started from the
    version whose config this is: that version first, then its own lineage. Serving reads it to
    tell a gone version whose vectors still live in the active model's space (an ancestor) from
    one of an unrelated model (``serving_cache.recommend``).

    >>> warm_lineage({"retrain": {"warm_start": {"from": "v1", "lineage": ["v1", "v0"]}}})
    ['v1', 'v0']
    >>> warm_lineage({"retrain": {"warm_start": {"lineage": ["v1", "v0"]}}}, started_from="v2")
    ['v2', 'v1', 'v0']
    >>> warm_lineage({"model": "diam"}), warm_lineage({"retrain": {"warm_start": None}}, "v0")
    ([], ['v0'])

    A checkpoint warm-started before the lineage was recorded names its parent only:

    >>> warm_lineage({"retrain": {"warm_start": {"from": "v1"}}}, started_from="v2")
    ['v2', 'v1']
    """
    retrain = config.get("retrain")
    warm = retrain.get("warm_start") if isinstance(retrain, Mapping) else None
    found = warm.get("lineage") if isinstance(warm, Mapping) else None
    if found is None and isinstance(warm, Mapping) and isinstance(warm.get("from"), str):
        found = [warm["from"]]
    kept = [v for v in found if isinstance(v, str)] if isinstance(found, list) else []
    return ([started_from, *kept] if started_from is not None else kept)[:LINEAGE_MAX]


class CheckpointError(ValueError):
    """A checkpoint is missing a file, has a bad hash or inconsistent contents; the message
    starts with the file at fault and ends with the directory."""


def _error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path.name}: {what} (in {path.parent})")


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


# -- the numpy online head ----------------------------------------------------------------------
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
