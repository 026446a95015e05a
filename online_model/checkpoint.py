"""Checkpoint directories (contracts: "Checkpoint directory"), written by the trainer and read by
the stream (``online_model.base.BaseView``), the snapshotter and ``diam evaluate``.

Files: ``weights.safetensors`` (the torch state dict and the numpy-friendly ``online.*`` head),
``config.json``, ``item_ids.npy``, ``item_categories.npy``, ``categories.json``. The directory is
written under a temporary name and renamed into place, so readers never see half a checkpoint;
``config.json`` carries the sha256 of the weights, checked on load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "WEIGHTS",
           "CONFIG"]

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
ITEM_IDS = "item_ids.npy"
ITEM_CATS = "item_categories.npy"
CATEGORIES = "categories.json"


class CheckpointError(ValueError):
    """A checkpoint is missing a file, has a bad hash or an unknown model; says which."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the torch model (eval mode), its config and vocabulary."""

    model: Any  # MultiInterestModel
    config: dict
    item_ids: np.ndarray
    item_categories: np.ndarray
    categories: list[str]
    online: dict[str, np.ndarray]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(out: str | Path, model: Any, corpus: Any, *, seed: int,
                    train_metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (a MultiInterestModel) trained on ``corpus`` to the directory ``out``."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        for k, v in model.export_online().items():
            tensors[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        save_file(tensors, str(tmp / WEIGHTS), metadata={"model": model.cfg.model})
        np.save(tmp / ITEM_IDS, np.asarray(corpus.item_ids).astype(str), allow_pickle=False)
        np.save(tmp / ITEM_CATS, np.asarray(corpus.item_cat, dtype=np.int32), allow_pickle=False)
        (tmp / CATEGORIES).write_text(json.dumps(list(corpus.category_names)), encoding="utf-8")
        cfg = model.cfg.to_dict()
        config = {
            **cfg,
            "model": cfg["model"],
            "dim": cfg["dim"],
            "k_max": cfg["k_max"] if cfg["model"] == "diam" else cfg["n_interests"],
            "seq_len": cfg["seq_len"],
            "n_items": int(corpus.n_items),
            "n_categories": int(corpus.n_categories),
            "seed": int(seed),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "train_metrics": train_metrics or {},
            "data": dict(corpus.info),
            "weights_sha256": _sha256(tmp / WEIGHTS),
            **(extra or {}),
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=_json_default),
                                  encoding="utf-8")
        if out.exists():  # swap: the old directory stays complete until the rename
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


def load_checkpoint(path: str | Path, device: str = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint (or snapshot) directory; raises :class:`CheckpointError` when broken."""
    from safetensors.torch import load_file

    from online_model.models import MODELS, ModelConfig, build_model

    d = Path(path)
    for name in (WEIGHTS, CONFIG, ITEM_IDS, ITEM_CATS):
        if not (d / name).is_file():
            raise CheckpointError(f"{d / name}: missing (is {d} a checkpoint directory?)")
    try:
        config = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{d / CONFIG}: not valid JSON ({exc})") from None
    want = config.get("weights_sha256")
    if verify and want and _sha256(d / WEIGHTS) != want:
        raise CheckpointError(f"{d / WEIGHTS}: sha256 differs from config.json's weights_sha256")
    if config.get("model") not in MODELS:
        raise CheckpointError(f"{d / CONFIG}: unknown model {config.get('model')!r}")
    item_ids = np.load(d / ITEM_IDS, allow_pickle=False)
    item_cat = np.load(d / ITEM_CATS, allow_pickle=False)
    cats = (json.loads((d / CATEGORIES).read_text(encoding="utf-8"))
            if (d / CATEGORIES).is_file() else [])
    tensors = load_file(str(d / WEIGHTS), device=device)
    online = {k: v.cpu().numpy() for k, v in tensors.items() if k.startswith("online.")}
    state = {k: v for k, v in tensors.items() if not k.startswith("online.")}
    model = build_model(ModelConfig.from_dict(config), item_cat).to(device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{d / WEIGHTS}: state dict mismatch (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.eval()
    return Checkpoint(model, config, item_ids, item_cat, cats, online)
