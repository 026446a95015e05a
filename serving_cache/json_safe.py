"""Values made fit for JSON: the NaN→null rule of the ``/ui`` routes (:mod:`serving_cache.ui`)
and of every command's ``--json`` (``diam.commands.json_text``). Its own module, free of the
routes' imports, as ``diam`` may import any room and ``serving_cache`` only itself (and
``online_model``'s aggregation math)."""

from __future__ import annotations

from typing import Any

__all__ = ["nan_to_none"]


def nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: replace it by null, recursively in dicts, lists and tuples (a tuple
    comes back a list, as JSON has only lists). The one owner of that rule.

    >>> nan_to_none({"a": float("nan"), "b": [1.5, float("nan")], "c": (float("nan"),)})
    {'a': None, 'b': [1.5, None], 'c': [None]}
    """
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj
