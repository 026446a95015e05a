"""DIAM and the multi-interest baselines (torch), one small file per model.

All models share :class:`MultiInterestModel`: histories in, K interest vectors in the item
embedding space out (``Interests``), a sampled-softmax training loss, and a numpy export of the
online head. Build one by name with :func:`build_model`.

>>> sorted(MODELS)
['adasr', 'comirec-dr', 'comirec-sa', 'diam', 'mind', 'remi', 'single']
"""

from __future__ import annotations

import numpy as np

from online_model.models.adasr import AdaptiveK
from online_model.models.base import Batch, Interests, ModelConfig, MultiInterestModel
from online_model.models.comirec_dr import ComiRecDR
from online_model.models.comirec_sa import ComiRecSA
from online_model.models.diam import DIAM
from online_model.models.mind import MIND
from online_model.models.remi import REMI
from online_model.models.single import SingleInterest

__all__ = [
    "MODELS",
    "Batch",
    "Interests",
    "ModelConfig",
    "MultiInterestModel",
    "DIAM",
    "MIND",
    "ComiRecSA",
    "ComiRecDR",
    "SingleInterest",
    "REMI",
    "AdaptiveK",
    "build_model",
]

MODELS: dict[str, type[MultiInterestModel]] = {
    "diam": DIAM,
    "mind": MIND,
    "comirec-sa": ComiRecSA,
    "comirec-dr": ComiRecDR,
    "single": SingleInterest,
    "remi": REMI,
    "adasr": AdaptiveK,
}


def build_model(cfg: ModelConfig, item_cat: np.ndarray | None = None) -> MultiInterestModel:
    """The model named ``cfg.model``; ``item_cat`` [N] primary category per item row."""
    try:
        cls = MODELS[cfg.model]
    except KeyError:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(MODELS)}") from None
    return cls(cfg, item_cat)
