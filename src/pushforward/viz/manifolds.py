"""Densities and samples on the sphere (an equal-area Mollweide projection of longitude and
latitude) and on the flat torus (the square ``[-pi, pi)^2``, periodic edges)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushforward.viz._common import _figure, _np, _save


def _lonlat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``[N, 3]`` -> (longitude, latitude) in radians."""
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1, 1))


def _sphere_density(model: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lon = np.linspace(-math.pi, math.pi, 2 * n)
    lat = np.linspace(-math.pi / 2, math.pi / 2, n)
    LON, LAT = np.meshgrid(lon, lat)
    pts = np.stack([np.cos(LAT) * np.cos(LON), np.cos(LAT) * np.sin(LON), np.sin(LAT)], -1).reshape(-1, 3)
    dens = _density(model, pts)
    return LON, LAT, dens.reshape(LAT.shape)


def _density(model: Any, pts: np.ndarray) -> np.ndarray:
    p = next(model.parameters()) if hasattr(model, "parameters") else None
    x = torch.as_tensor(pts, dtype=p.dtype if p is not None else torch.float64)
    if p is not None:
        x = x.to(p.device)
    with torch.no_grad():
        lp = torch.cat([model.log_prob(c) for c in x.split(4096)])
    return lp.exp().cpu().double().numpy()


def plot_sphere(
    path: str | os.PathLike,
    model: Any = None,
    samples: Any = None,
    data: Any = None,
    grid: int = 60,
    max_points: int = 3000,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Density and/or points on ``S^2`` in the Mollweide projection (one panel per item).

    Args:
        model: anything with ``log_prob`` on unit vectors ``[N, 3]`` (density panel).
        samples, data: unit vectors ``[N, 3]`` (scatter panels).
        grid: latitude rows of the density grid (twice as many longitudes).
    """
    panels = [("density", model), ("samples", samples), ("data", data)]
    panels = [(k, v) for k, v in panels if v is not None]
    if not panels:
        raise ValueError("plot_sphere needs a model, samples or data")
    fig, axes = _figure(len(panels), size=4.5, height=2.8, subplot_kw={"projection": "mollweide"})
    for ax, (kind, item) in zip(axes, panels):
        if kind == "density":
            LON, LAT, D = _sphere_density(item, grid)
            ax.pcolormesh(LON, LAT, D, shading="auto", cmap="viridis")
        else:
            x = _np(item)[:max_points]
            if x.ndim != 2 or x.shape[1] != 3:
                raise ValueError(f"{kind} must be unit vectors [N, 3], got shape {list(x.shape)}")
            lon, lat = _lonlat(x)
            ax.scatter(lon, lat, s=2, alpha=0.5, color="#d62728" if kind == "samples" else "#1f77b4")
        ax.set_title(kind if title is None else f"{title}: {kind}")
        ax.grid(True, alpha=0.3)
        ax.set_xticklabels([])
    return _save(fig, path, dpi)


def plot_torus(
    path: str | os.PathLike,
    model: Any = None,
    samples: Any = None,
    data: Any = None,
    grid: int = 100,
    max_points: int = 3000,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Density and/or points on the flat torus ``[-pi, pi)^2`` (the first two angles of points)."""
    panels = [("density", model), ("samples", samples), ("data", data)]
    panels = [(k, v) for k, v in panels if v is not None]
    if not panels:
        raise ValueError("plot_torus needs a model, samples or data")
    fig, axes = _figure(len(panels), size=3.6)
    for ax, (kind, item) in zip(axes, panels):
        if kind == "density":
            dim = getattr(item, "event_shape", (2,))[0]
            if dim != 2:
                raise ValueError(f"plot_torus draws 2-D torus densities; the model is on {dim} angles")
            u = (np.arange(grid) + 0.5) * 2 * math.pi / grid - math.pi
            A, B = np.meshgrid(u, u)
            D = _density(item, np.stack([A.reshape(-1), B.reshape(-1)], -1)).reshape(A.shape)
            ax.pcolormesh(A, B, D, shading="auto", cmap="viridis")
        else:
            x = _np(item)[:max_points]
            if x.ndim != 2 or x.shape[1] < 2:
                raise ValueError(f"{kind} must be angles [N, D >= 2], got shape {list(x.shape)}")
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="#d62728" if kind == "samples" else "#1f77b4")
        ax.set_xlim(-math.pi, math.pi)
        ax.set_ylim(-math.pi, math.pi)
        ax.set_aspect("equal")
        ax.set_title(kind if title is None else f"{title}: {kind}")
    return _save(fig, path, dpi)
