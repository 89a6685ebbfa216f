"""Categorical sequences ``[N, L]`` (values ``0..K-1``): per-position category frequencies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pushforward.viz._common import _figure, _np, _save


def category_frequencies(x: Any, num_categories: int) -> np.ndarray:
    """``[L, K]`` frequency of each category at each position of integer sequences ``x [N, L]``."""
    a = _np(x)
    if a.ndim != 2:
        raise ValueError(f"sequences must be [N, L] integers, got shape {list(a.shape)}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= num_categories):
        raise ValueError(f"sequence values must lie in 0..{num_categories - 1}, got {a.min()}..{a.max()}")
    counts = np.stack([np.bincount(col, minlength=num_categories) for col in a.T]) if a.shape[1] else \
        np.zeros((0, num_categories))
    return counts / max(a.shape[0], 1)


def plot_categories(
    path: str | os.PathLike,
    samples: Any = None,
    data: Any = None,
    num_categories: int | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Heat maps of the per-position category frequencies ``[L, K]`` of model samples and data
    (one panel each), and of their difference when both are given (the marginals a discrete
    model must match; the total-variation distance averaged over positions is in its title).

    Args:
        samples, data: integer sequences ``[N, L]`` (tensors or arrays).
        num_categories: K (default: one more than the largest value seen).
    """
    items = [(k, v) for k, v in (("samples", samples), ("data", data)) if v is not None]
    if not items:
        raise ValueError("plot_categories needs samples or data")
    if num_categories is None:
        num_categories = int(max(_np(v).max() for _, v in items)) + 1
    freqs = [(k, category_frequencies(v, num_categories)) for k, v in items]
    if len(freqs) == 2:
        if freqs[0][1].shape != freqs[1][1].shape:
            raise ValueError(f"samples and data must have the same length L, got {freqs[0][1].shape[0]} and "
                             f"{freqs[1][1].shape[0]}")
        diff = freqs[0][1] - freqs[1][1]
        tv = 0.5 * np.abs(diff).sum(1).mean()
        freqs.append((f"samples - data (mean TV {tv:.3f})", diff))
    fig, axes = _figure(len(freqs), size=3.8)
    for ax, (kind, f) in zip(axes, freqs):
        signed = kind.startswith("samples -")
        lim = max(float(np.abs(f).max()), 1e-12) if signed else 1.0
        im = ax.imshow(f.T, aspect="auto", origin="lower", cmap="RdBu_r" if signed else "viridis",
                       vmin=-lim if signed else 0.0, vmax=lim, interpolation="nearest")
        ax.set_xlabel("position")
        ax.set_ylabel("category")
        ax.set_title(kind if title is None else f"{title}: {kind}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, dpi)
