"""New items in a running stream: catalogue items the base does not know get a content embedding
at once and are appended to the base (same version: nobody is re-anchored).

:func:`extend_base` is what the dataflow's hot-reload hook calls (``diam run``): after every
poll of the catalogue (:class:`streams.catalog.CatalogFollower`) and after a new snapshot is
loaded, so catalogue items that a new snapshot does not know yet stay embedded.

>>> import numpy as np
>>> from online_model.base import toy_base
>>> from online_model.models.content import ContentTower
>>> from streams.catalog import CatalogItem
>>> base = toy_base(n_items=8, dim=4)
>>> tower = ContentTower(base.category_names, np.ones((len(base.category_names) + 8 + 1, 4)), 8)
>>> b2 = extend_base(base, [CatalogItem("new", ("c1",), "x", 0), CatalogItem("i3", (), "", 0)], tower)
>>> b2.index_of("new"), b2.category_of(8), b2.version == base.version
(8, 1, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streams.catalog import CatalogItem

__all__ = ["extend_base", "load_tower"]


def load_tower(snapshot_dir: str | Path) -> Any:
    """The snapshot's content tower, or None when it has none (new items then stay cold)."""
    from online_model.models.content import FILE, ContentTower

    path = Path(snapshot_dir) / FILE
    return ContentTower.load(path) if path.is_file() else None


def extend_base(base: Any, items: Sequence[CatalogItem], tower: Any) -> Any:
    """``base`` with the catalogue ``items`` it does not know appended (content embeddings);
    ``base`` itself when there is nothing to add or no tower."""
    if tower is None or tower.dim != base.dim:
        return base
    new = [it for it in items if base.index_of(it.item_id) < 0]
    if not new:
        return base
    emb = tower.embed([list(it.categories) for it in new], [it.title for it in new])
    pos = {c: i for i, c in enumerate(base.category_names)}
    cats = np.array([pos.get(it.categories[0], -1) if it.categories else -1 for it in new],
                    dtype=np.int32)
    return base.with_items([it.item_id for it in new], emb, cats)
