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

__all__ = ["extend_base", "load_tower", "ClickTail"]


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


class ClickTail:
    """The item ids of valid clicks arriving on the clicks topic from now on (no group, no
    commits: a serving process's live view). :meth:`poll` never blocks longer than asked."""

    def __init__(self, cfg: Any, topic: str, max_records: int = 20_000) -> None:
        self.cfg, self.topic, self.max_records = cfg, topic, max_records
        self._consumer: Any = None

    def _assign(self) -> bool:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from streams.kafka_io import partition_ids

        try:
            parts = partition_ids(self.cfg, self.topic, timeout=5.0)
        except Exception:  # noqa: BLE001 - no topic yet, or the broker is away: next poll
            return False
        conf = dict(self.cfg.client_config())
        conf.update({"group.id": "diam-serve-clicks", "enable.auto.commit": "false"})
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])
        return True

    def poll(self, timeout: float = 0.0) -> list[tuple[str, int]]:
        """``(item_id, ts)`` of the valid clicks since the last poll."""
        from streams.events import decode_click

        if self._consumer is None and not self._assign():
            return []
        out: list[tuple[str, int]] = []
        for m in self._consumer.consume(self.max_records, timeout):
            if m.error() is None:
                ev = decode_click(m.value())
                if type(ev) is tuple:
                    out.append((ev[1], ev[2]))
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
