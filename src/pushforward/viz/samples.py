"""Model samples next to data: scatter panels, histograms or image grids."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pushforward.viz._common import (
    DATA_COLOR,
    SAMPLE_COLOR,
    Bounds,
    _bounds1,
    _bounds2,
    _data_x,
    _figure,
    _np,
    _save,
    _sub,
)


def _image_grid(x: np.ndarray, n: int, vmin: float, vmax: float) -> np.ndarray:
    """``[N, C, H, W]`` -> one ``[rows*H, cols*W(, 3)]`` tile image scaled to [0, 1]."""
    x = x[:n]
    c, h, w = x.shape[1:]
    cols = int(math.ceil(math.sqrt(x.shape[0])))
    rows = int(math.ceil(x.shape[0] / cols))
    pad = 1
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad))
    x = np.clip((x - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    for k in range(x.shape[0]):
        r, q = divmod(k, cols)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[k]
    return grid[0] if c == 1 else np.transpose(grid[:3], (1, 2, 0))


def plot_samples(
    samples: Any,
    path: str | os.PathLike,
    data: Any = None,
    bounds: Bounds = None,
    title: str | None = None,
    max_points: int = 3000,
    n_images: int = 64,
    dpi: int = 110,
) -> Path:
    """Model samples next to data.

    - ``[N, 2]`` (or ``[N, D > 2]``: the first two coordinates): two scatter panels with the
      same axes.
    - ``[N, 1]`` / ``[N]``: overlaid histograms.
    - ``[N, C, H, W]``: image grids (the first ``n_images``), on the data's value range.
    """
    s = _np(samples)
    xd = _data_x(data)
    if s.ndim == 1:
        s = s[:, None]
    if xd is not None and xd.ndim == 1:
        xd = xd[:, None]
    if xd is not None and xd.shape[1:] != s.shape[1:]:
        raise ValueError(f"samples {list(s.shape)} and data {list(xd.shape)} have different event shapes")

    if s.ndim == 4:
        ref = xd if xd is not None else s
        vmin, vmax = float(np.min(ref)), float(np.max(ref))
        sets = [("samples", s)] + ([("data", xd)] if xd is not None else [])
        fig, axes = _figure(len(sets), 4.0)
        for ax, (name, arr) in zip(axes, sets):
            img = _image_grid(arr, n_images, vmin, vmax)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=10)
            ax.set_axis_off()
        if title:
            fig.suptitle(title, fontsize=10)
        return _save(fig, path, dpi)

    if s.ndim != 2:
        raise ValueError(f"samples must be [N], [N, D] or [N, C, H, W], got shape {list(s.shape)}")

    if s.shape[1] == 1:
        lo, hi = _bounds1(bounds, s, xd)
        fig, (ax,) = _figure(1, 5.0, 3.6)
        if xd is not None:
            ax.hist(xd[:, 0], bins=60, range=(lo, hi), density=True, color=DATA_COLOR, alpha=0.4, label="data")
        ax.hist(s[:, 0], bins=60, range=(lo, hi), density=True, histtype="step", lw=1.5, color=SAMPLE_COLOR,
                label="samples")
        ax.set_xlim(lo, hi)
        ax.set_ylabel("density")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title or "samples vs data", fontsize=10)
        return _save(fig, path, dpi)

    (xlo, xhi), (ylo, yhi) = _bounds2(bounds, xd, s)
    sets = ([("data", xd, DATA_COLOR)] if xd is not None else []) + [("samples", s, SAMPLE_COLOR)]
    # equal aspect: size the figure to the data's shape so the panels are not letterboxed
    ratio = float(np.clip((yhi - ylo) / max(xhi - xlo, 1e-9), 0.4, 2.0))
    fig, axes = _figure(len(sets), 4.0, 4.0 * ratio + 0.5, sharex=True, sharey=True)
    for ax, (name, arr, color) in zip(axes, sets):
        a = _sub(arr, max_points)
        ax.scatter(a[:, 0], a[:, 1], s=2, c=color, alpha=0.5, lw=0)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(ylo, yhi)
        ax.set_title(f"{name} (n={arr.shape[0]})", fontsize=10)
        ax.set_aspect("equal", adjustable="box")
        if arr.shape[1] > 2:
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)
