"""Model densities: a heat map of ``exp(log_prob)`` (2-D) or a density curve (1-D)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from pushforward._utils import module_like
from pushforward.viz._common import (
    DATA_COLOR,
    SAMPLE_COLOR,
    Bounds,
    _bounds1,
    _bounds2,
    _context_row,
    _data_x,
    _figure,
    _log_prob,
    _model_dim,
    _model_samples,
    _np,
    _save,
    _sub,
)


def plot_density(
    model: Any,
    path: str | os.PathLike,
    data: Any = None,
    bounds: Bounds = None,
    n_grid: int = 200,
    samples: int | Tensor | np.ndarray | None = 500,
    context: Any = None,
    title: str | None = None,
    dpi: int = 110,
    seed: int = 0,
) -> Path:
    """Heat map of ``exp(log_prob)`` on a grid (2-D models) or a density curve (1-D models).

    Args:
        model: anything with ``log_prob(x [N, D]) -> [N]`` (and ``sample`` for the overlay).
        path: output PNG.
        data: Tensor/array/Dataset drawn over the density (2-D: blue dots; 1-D: histogram).
        bounds: ``b``, ``(lo, hi)`` or ``((xlo, xhi), (ylo, yhi))``; default from the data
            (or the samples), else ``[-4, 4]``.
        n_grid: grid points per axis.
        samples: number of model samples to draw over it (red), or a sample tensor; 0/None: none.
        context: for conditional models, one context row ``[C]``; default the first context
            row of ``data`` (a Dataset), else zeros. It is written in the title.

    The title reports the probability mass inside the plotted window (grid quadrature): about
    1 for a normalised density whose mass lies in view.
    """
    like = module_like(model)
    xdata = _data_x(data)
    dim = _model_dim(model, xdata)
    ctx = _context_row(model, data, context, like)
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
        s = _model_samples(model, int(samples), ctx, like, seed) if samples > 0 else None
    else:
        s = None if samples is None else _np(samples).reshape(len(samples), -1)
    ctx_note = "" if ctx is None else f"  context={np.array2string(_np(ctx), precision=2, max_line_width=60)}"

    if dim == 1:
        lo, hi = _bounds1(bounds, xdata, s)
        grid = np.linspace(lo, hi, max(n_grid, 50))
        dens = np.exp(_log_prob(model, grid[:, None], ctx, like))
        dens = np.where(np.isfinite(dens), dens, 0.0)
        mass = float(np.trapezoid(dens, grid))
        fig, (ax,) = _figure(1, 5.0, 3.6)
        if xdata is not None:
            ax.hist(xdata.reshape(-1), bins=60, range=(lo, hi), density=True, color=DATA_COLOR, alpha=0.35, label="data")
        if s is not None:
            ax.hist(s.reshape(-1), bins=60, range=(lo, hi), density=True, histtype="step", color=SAMPLE_COLOR, lw=1.2,
                    label="samples")
        ax.plot(grid, dens, color="k", lw=2, label="model density")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title or f"density (mass in view {mass:.3f}){ctx_note}", fontsize=9)
        return _save(fig, path, dpi)

    if dim != 2:
        raise ValueError(f"plot_density draws 1-D or 2-D models, got dimension {dim}; use plot_samples")
    (xlo, xhi), (ylo, yhi) = _bounds2(bounds, xdata, s)
    gx, gy = np.linspace(xlo, xhi, n_grid), np.linspace(ylo, yhi, n_grid)
    xx, yy = np.meshgrid(gx, gy)
    pts = np.stack([xx.ravel(), yy.ravel()], -1)
    lp = _log_prob(model, pts, ctx, like)
    dens = np.where(np.isfinite(lp), np.exp(np.minimum(lp, 50.0)), 0.0).reshape(n_grid, n_grid)
    mass = float(dens.sum() * (gx[1] - gx[0]) * (gy[1] - gy[0]))
    fig, (ax,) = _figure(1, 4.6)
    ax.imshow(dens, origin="lower", extent=(xlo, xhi, ylo, yhi), cmap="viridis", aspect="auto",
              interpolation="bilinear")
    if xdata is not None and xdata.ndim == 2 and xdata.shape[1] == 2:
        d = _sub(xdata, 1500, seed)
        ax.scatter(d[:, 0], d[:, 1], s=2, c="white", alpha=0.45, lw=0, label="data")
    if s is not None and s.shape[1] == 2:
        ax.scatter(s[:, 0], s[:, 1], s=3, c=SAMPLE_COLOR, alpha=0.7, lw=0, label="samples")
    if xdata is not None or s is not None:
        leg = ax.legend(loc="upper right", fontsize=7, markerscale=4, framealpha=0.6)
        leg.get_frame().set_linewidth(0)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_title(title or f"model density (mass in view {mass:.3f}){ctx_note}", fontsize=9)
    return _save(fig, path, dpi)
