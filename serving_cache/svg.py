"""Small server-rendered SVG charts for the operator page (``/ui``): bars and a line.

No I/O and no JavaScript: the page asks the server for JSON that carries these strings, so the
charts need no chart library and no network beyond the API itself.

>>> svg = bars(["1", "2"], [3, 1], title="K_u")
>>> svg.startswith("<svg") and svg.count("<rect") == 2 and ">K_u<" in svg
True
>>> "polyline" in line([0, 1, 2], [0.0, 2.0, 1.0], title="lag")
True
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bars", "line"]

W, H, PAD = 360, 150, 28


def _fmt(v: float) -> str:
    if v != v:  # NaN
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e3:
        return f"{v / 1e3:.1f}k"
    if a >= 10 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}" if a >= 0.01 else f"{v:.1e}"


def _frame(title: str, body: str, testid: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
            f'height="{H}" data-testid="{escape(testid)}" role="img" aria-label="{escape(title)}">'
            f'<text x="{PAD}" y="14" font-size="12" font-family="sans-serif">{escape(title)}</text>'
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 8}" y2="{H - PAD}" stroke="#888"/>'
            f"{body}</svg>")


def bars(labels: Sequence[str], values: Sequence[float], title: str = "",
         testid: str = "bars") -> str:
    """A bar chart: one bar per label, the value above each bar."""
    n = max(len(values), 1)
    top = max([float(v) for v in values] + [1e-12])
    slot = (W - PAD - 8) / n
    parts = []
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        h = (H - 2 * PAD) * float(v) / top
        x = PAD + i * slot + slot * 0.1
        y = H - PAD - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
            f'fill="#4a7ab5" data-label="{escape(str(lab))}" data-value="{float(v):g}"/>'
            f'<text x="{x + slot * 0.4:.1f}" y="{y - 2:.1f}" font-size="9" text-anchor="middle" '
            f'font-family="sans-serif">{_fmt(float(v))}</text>'
            f'<text x="{x + slot * 0.4:.1f}" y="{H - PAD + 11}" font-size="9" '
            f'text-anchor="middle" font-family="sans-serif">{escape(str(lab))}</text>')
    return _frame(title, "".join(parts), testid)


def line(xs: Sequence[float], ys: Sequence[float], title: str = "", unit: str = "",
         testid: str = "line", above: Sequence[bool] | None = None) -> str:
    """A line over ``xs`` (seconds, shown relative to the last one), the last value in the
    title. ``above``: per point, whether its value is only a lower bound (a quantile in a
    histogram's ``+Inf`` bucket, given as the top finite bound): such a point is drawn as a
    hollow circle labelled ``> value``, and so is the last value in the title, never as if
    it were the value.

    >>> s = line([0, 1], [1.0, 300.0], "p99", unit=" s", above=[False, True])
    >>> "p99: &gt; 300 s" in s and s.count("<circle") == 1 and "<title>&gt; 300 s</title>" in s
    True
    """
    flags = list(above) if above is not None else [False] * len(ys)
    pts = [(float(x), float(y), bool(a)) for x, y, a in zip(xs, ys, flags, strict=True) if y == y]
    last = (("> " if pts[-1][2] else "") + _fmt(pts[-1][1]) + unit) if pts else "no data"
    if len(pts) < 2:
        return _frame(f"{title}: {last}", "", testid)
    x0, x1 = pts[0][0], pts[-1][0]
    top = max(y for _, y, _a in pts)
    top = top if top > 0 else 1.0  # an all-zero series is drawn on the axis
    sx = (W - PAD - 8) / max(x1 - x0, 1e-9)
    sy = (H - 2 * PAD) / top
    xy = [(PAD + (x - x0) * sx, H - PAD - y * sy) for x, y, _a in pts]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
    marks = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="#fff" stroke="#c0392b" '
        f'data-above="1"><title>{escape("> " + _fmt(y) + unit)}</title></circle>'
        for (px, py), (_x, y, a) in zip(xy, pts, strict=True) if a)
    axis = (f'<text x="2" y="{PAD + 4}" font-size="9" font-family="sans-serif">{_fmt(top)}</text>'
            f'<text x="{PAD}" y="{H - PAD + 11}" font-size="9" font-family="sans-serif">'
            f"-{x1 - x0:.0f}s</text>"
            f'<text x="{W - 8}" y="{H - PAD + 11}" font-size="9" text-anchor="end" '
            f'font-family="sans-serif">now</text>')
    if marks:
        axis += (f'<text x="{W - 8}" y="14" font-size="9" text-anchor="end" '
                 f'font-family="sans-serif">{escape("o: above " + _fmt(top) + unit)}</text>')
    body = (f'<polyline fill="none" stroke="#c0392b" stroke-width="1.5" points="{path}"/>'
            f"{marks}{axis}")
    return _frame(f"{title}: {last}", body, testid)
