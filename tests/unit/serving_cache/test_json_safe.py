"""The NaN→null rule of JSON has one home that the CLI and the ``/ui`` routes share, apart from
the routes' module: ``diam``'s ``--json`` does not load the operator page to write JSON."""

from __future__ import annotations

import math
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from serving_cache.json_safe import nan_to_none

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=4),
    max_leaves=20)


def test_json_text_does_not_import_the_ui_routes() -> None:
    code = ("import sys; from diam.commands import json_text; "
            "assert json_text({'a': float('nan')}) == '{\"a\": null}'; "
            "print('serving_cache.ui' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out


def test_the_ui_routes_use_the_one_rule() -> None:
    from serving_cache import ui

    assert ui.nan_to_none is nan_to_none and "nan_to_none" not in ui.__all__


@given(_JSONISH)
def test_only_nans_change(obj) -> None:
    """Oracle: the same tree with every NaN float as None and everything else equal."""
    def same(a, b) -> bool:
        if isinstance(a, float) and math.isnan(a):
            return b is None
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(map(same, a, b))
        return a == b and type(a) is type(b)

    assert same(obj, nan_to_none(obj))
