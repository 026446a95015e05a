"""Figures for people who would rather look than read: ``diam inspect namespace --plot`` and
``diam diff --plot``. Matplotlib without a display (Agg); each function writes one PNG."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["namespace_figure", "diff_figure"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def namespace_figure(ns: str, ks: Sequence[int], ds: Sequence[float],
                     drift: Sequence[dict[str, Any]], out: str | Path, buckets: int = 40) -> Path:
    """K_u histogram, d_u histogram and drift events over (event) time, by kind.

    ``drift``: drift events as the dataflow writes them (``kind``, ``ts_ms``, ...)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    kc = Counter(int(k) for k in ks)
    ax = axes[0]
    ax.bar([str(k) for k in sorted(kc)], [kc[k] for k in sorted(kc)], color="#4a7ab5")
    ax.set_title(f"K_u in {ns} ({len(ks):,} users)")
    ax.set_xlabel("K_u")
    ax.set_ylabel("users")
    ax = axes[1]
    ax.hist(np.asarray(ds, dtype=np.float64), bins=20, range=(0.0, 1.0), color="#4a7ab5")
    ax.set_title("d_u" + (f" (mean {np.mean(ds):.3f})" if len(ds) else ""))
    ax.set_xlabel("d_u")
    ax = axes[2]
    if drift:
        ts = np.array([int(e["ts_ms"]) for e in drift], dtype=np.int64)
        edges = np.linspace(ts.min(), max(ts.max(), ts.min() + 1), buckets + 1)
        centres = [datetime.fromtimestamp(x / 1000, UTC) for x in (edges[:-1] + edges[1:]) / 2]
        width = (edges[1] - edges[0]) / 1000 / 86400  # in days, matplotlib's date unit
        bottom = np.zeros(buckets)
        for kind in sorted({str(e["kind"]) for e in drift}):
            sel = np.array([str(e["kind"]) == kind for e in drift])
            counts, _ = np.histogram(ts[sel], bins=edges)
            ax.bar(centres, counts, width=width, bottom=bottom, label=kind)
            bottom += counts
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        ax.set_title(f"drift events over event time ({len(drift):,})")
    else:
        ax.text(0.5, 0.5, "no drift events read", ha="center", va="center")
        ax.set_title("drift events over event time")
    ax.set_ylabel("events")
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def diff_figure(result: Any, out: str | Path) -> Path:
    """Per-user interest movement between two namespaces (a
    :class:`serving_cache.diff.NamespaceDiff`): matched cosine per user, d_u before/after and
    K_u transitions."""
    plt = _plt()
    users = result.users
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    cos = np.array([u.mean_cos for u in users], dtype=np.float64)
    ax.hist(cos, bins=40, range=(min(-0.0, float(cos.min())) if cos.size else 0.0, 1.0),
            color="#4a7ab5")
    ax.set_title(f"matched interest cosine per user ({len(users):,} users)")
    ax.set_xlabel(f"mean cosine, {result.ns_a} vs {result.ns_b}")
    ax.set_ylabel("users")
    ax = axes[1]
    da = np.array([u.d_a for u in users], dtype=np.float64)
    db = np.array([u.d_b for u in users], dtype=np.float64)
    moved = np.array([u.k_a != u.k_b for u in users], dtype=bool)
    ax.scatter(da[~moved], db[~moved], s=6, alpha=0.6, label="same K_u")
    ax.scatter(da[moved], db[moved], s=10, alpha=0.8, color="#c0392b", label="K_u changed")
    ax.plot([0, 1], [0, 1], color="#888", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"d_u in {result.ns_a}")
    ax.set_ylabel(f"d_u in {result.ns_b}")
    ax.legend(fontsize=8)
    ax.set_title("d_u per user")
    ax = axes[2]
    trans = Counter((u.k_a, u.k_b) for u in users)
    ks = sorted({k for pair in trans for k in pair}) or [1]
    grid = np.zeros((len(ks), len(ks)))
    for (a, b), n in trans.items():
        grid[ks.index(a), ks.index(b)] = n
    im = ax.imshow(grid, cmap="Blues", origin="lower")
    for i in range(len(ks)):
        for j in range(len(ks)):
            if grid[i, j]:
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel(f"K_u in {result.ns_b}")
    ax.set_ylabel(f"K_u in {result.ns_a}")
    ax.set_title("K_u transitions (users)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
