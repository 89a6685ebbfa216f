"""Maps and fields: a grid under a learned map, velocity arrows, paths from noise to data and
histograms of a 1-D flow over time. Time convention: t = 0 noise, t = 1 data."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._utils import module_like
from pushforward.flows import NormalizingFlow
from pushforward.viz._common import (
    DATA_COLOR,
    SAMPLE_COLOR,
    Bounds,
    _as_traj,
    _axis_range,
    _backdrop,
    _bounds2,
    _context_row,
    _data_x,
    _figure,
    _np,
    _save,
)


def _flow_map(flow: Any, context: Any) -> Callable[[Tensor], Tensor]:
    """Latent -> data map (user units) of a NormalizingFlow at a fixed context row."""
    like = module_like(flow)
    ctx = _context_row(flow, None, context, like)

    def fn(z: Tensor) -> Tensor:
        c = None if ctx is None else ctx.expand(z.shape[0], -1)
        x, _ = flow.transform.inverse(z.to(**like), c)
        return flow.unstandardize(x)

    return fn


def plot_grid_deformation(
    transform_fn: Any,
    path: str | os.PathLike,
    bounds: Bounds = (-3.0, 3.0),
    n_lines: int = 17,
    n_points: int = 200,
    data: Any = None,
    context: Any = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """A regular grid (left) and its image under the learned map (right).

    Args:
        transform_fn: a callable ``[N, 2] -> [N, 2]`` (a tuple return takes its first item, so
            a Transform's ``inverse`` works) or a :class:`pushforward.NormalizingFlow`, for
            which the latent -> data map ``x = T^{-1}(z)`` in user units is drawn.
        bounds: the grid's extent in the input space.
        n_lines: grid lines per direction; ``n_points`` points per line.
        data: optional data drawn faintly under the deformed grid.
        context: a context row for conditional flows.
    """
    if isinstance(transform_fn, NormalizingFlow):
        fn, like = _flow_map(transform_fn, context), module_like(transform_fn)
        left, right = "latent grid z", "mapped grid x = T⁻¹(z)"
    else:
        fn, like = transform_fn, module_like(transform_fn)
        left, right = "input grid", "mapped grid"
    (xlo, xhi), (ylo, yhi) = _bounds2(bounds)
    ts = np.linspace(0, 1, n_points)
    lines = []  # (kind, k, [n_points, 2])
    for k, v in enumerate(np.linspace(ylo, yhi, n_lines)):
        lines.append(("h", k, np.stack([xlo + ts * (xhi - xlo), np.full_like(ts, v)], -1)))
    for k, v in enumerate(np.linspace(xlo, xhi, n_lines)):
        lines.append(("v", k, np.stack([np.full_like(ts, v), ylo + ts * (yhi - ylo)], -1)))
    pts = np.concatenate([ln for _, _, ln in lines])
    with torch.no_grad():
        out = fn(torch.as_tensor(pts).to(**like))
    if isinstance(out, tuple):
        out = out[0]
    mapped = _np(out)
    if mapped.shape != pts.shape:
        raise ValueError(f"transform_fn must map [N, 2] -> [N, 2], got {list(mapped.shape)}")
    mapped = mapped.reshape(len(lines), n_points, 2)

    from matplotlib import colormaps

    fig, axes = _figure(2, 4.2)
    xd = _data_x(data)
    _backdrop(axes[1], xd, "0.6", 0.4)
    cmaps = {"h": colormaps["Blues"], "v": colormaps["Oranges"]}
    for (kind, k, ln), mp in zip(lines, mapped):
        color = cmaps[kind](0.35 + 0.6 * k / max(n_lines - 1, 1))
        axes[0].plot(ln[:, 0], ln[:, 1], color=color, lw=0.9)
        axes[1].plot(mp[:, 0], mp[:, 1], color=color, lw=0.9)
    mx, my = 0.03 * (xhi - xlo), 0.03 * (yhi - ylo)  # keep the border lines off the frame
    axes[0].set_xlim(xlo - mx, xhi + mx)
    axes[0].set_ylim(ylo - my, yhi + my)
    rx, ry = _axis_range(mapped[..., 0].ravel(), 0.05), _axis_range(mapped[..., 1].ravel(), 0.05)
    if xd is not None:
        dx, dy = _bounds2(None, xd)
        rx, ry = (min(rx[0], dx[0]), max(rx[1], dx[1])), (min(ry[0], dy[0]), max(ry[1], dy[1]))
    axes[1].set_xlim(*rx)
    axes[1].set_ylim(*ry)
    for ax, name in zip(axes, (left, right)):
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def _call_velocity(fn: Callable, x: Tensor, t: float) -> Tensor:
    try:
        v = fn(x, float(t))
    except (TypeError, AttributeError, RuntimeError):  # some fields want a tensor time [N]
        v = fn(x, x.new_full((x.shape[0],), float(t)))
    return v[0] if isinstance(v, tuple) else v


def plot_quiver(
    velocity_fn: Callable,
    path: str | os.PathLike,
    t: float | Sequence[float] = (0.0, 0.5, 1.0),
    bounds: Bounds = (-4.0, 4.0),
    n_grid: int = 21,
    data: Any = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Velocity field ``u(x, t)`` as arrows, one panel per time ``t``.

    Args:
        velocity_fn: ``(x [N, 2], t float) -> [N, 2]`` (a tensor time ``[N]`` is tried if a
            float fails). Time convention: t = 0 noise, t = 1 data.
        t: one time or several.
        n_grid: arrows per axis.
        data: optional data drawn faintly behind the arrows.

    Arrows share one length scale across panels (the longest spans about 1.1 grid cells) and
    are coloured by speed ``|u|`` so magnitudes compare between times; each arrow starts at its
    grid point.
    """
    times = [float(t)] if np.isscalar(t) else [float(v) for v in t]
    (xlo, xhi), (ylo, yhi) = _bounds2(bounds)
    like = module_like(velocity_fn)
    gx, gy = np.linspace(xlo, xhi, n_grid), np.linspace(ylo, yhi, n_grid)
    xx, yy = np.meshgrid(gx, gy)
    pts = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], -1)).to(**like)
    with torch.no_grad():
        vels = [_np(_call_velocity(velocity_fn, pts, tv)) for tv in times]
    for v in vels:
        if v.shape != (pts.shape[0], 2):
            raise ValueError(f"velocity_fn must return [N, 2], got {list(v.shape)}")
    speeds = [np.linalg.norm(v, axis=1) for v in vels]
    vmax = max(float(np.nanmax(s)) for s in speeds) or 1.0
    cell = min(gx[1] - gx[0], gy[1] - gy[0])
    fig, axes = _figure(len(times), 3.8)
    xd = _data_x(data)
    q = None
    for ax, tv, v, sp in zip(axes, times, vels, speeds):
        _backdrop(ax, xd, "0.7", 0.4)
        q = ax.quiver(xx.ravel(), yy.ravel(), v[:, 0], v[:, 1], sp, cmap="viridis", clim=(0, vmax),
                      angles="xy", scale_units="xy", scale=vmax / (1.1 * cell), width=0.0045,
                      headwidth=3.5, headlength=4, headaxislength=3.5, pivot="tail")
        ax.set_xlim(xlo - cell, xhi + cell)
        ax.set_ylim(ylo - cell, yhi + cell)
        ax.set_aspect("equal")
        ax.set_title(f"u(x, t={tv:g})", fontsize=10)
    fig.colorbar(q, ax=axes, shrink=0.8, label="|u|")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------- trajectories
def plot_trajectories(
    traj: Any,
    path: str | os.PathLike,
    max_lines: int = 300,
    data: Any = None,
    times: Sequence[float] | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Paths from noise to data.

    Args:
        traj: ``[T, N, 2]`` (or a list of T ``[N, 2]`` arrays); ``[T, N, 1]`` is drawn as value
            against time. Frame 0 is the noise (t = 0), frame T-1 the data (t = 1).
        max_lines: at most this many paths are drawn (endpoints: all, up to 3 000).
        data: optional data drawn faintly (2-D only).
        times: times of the frames for 1-D plots (default ``linspace(0, 1, T)``).
    """
    from matplotlib.collections import LineCollection

    tr = _as_traj(traj)
    T, N, D = tr.shape
    idx = np.random.default_rng(0).permutation(N)
    lines_idx, pts_idx = idx[:max_lines], idx[:3000]
    fig, (ax,) = _figure(1, 4.8 if D >= 2 else 5.5, 4.6 if D >= 2 else 3.8)
    if D == 1:
        ts = np.linspace(0, 1, T) if times is None else np.asarray(times, dtype=float)
        segs = np.stack([np.broadcast_to(ts[:, None], (T, len(lines_idx))), tr[:, lines_idx, 0]], -1)
        ax.add_collection(LineCollection(list(np.transpose(segs, (1, 0, 2))), colors="0.35", linewidths=0.5, alpha=0.35))
        ax.scatter(np.full(len(pts_idx), ts[0]), tr[0, pts_idx, 0], s=4, c=DATA_COLOR, label="noise (t=0)", zorder=3)
        ax.scatter(np.full(len(pts_idx), ts[-1]), tr[-1, pts_idx, 0], s=4, c=SAMPLE_COLOR, label="end (t=1)", zorder=3)
        ax.set_xlim(ts[0] - 0.03 * (ts[-1] - ts[0]), ts[-1] + 0.03 * (ts[-1] - ts[0]))
        ax.set_ylim(*_axis_range(tr[..., 0].ravel(), 0.05, q=0.0))
        ax.set_xlabel("t")
        ax.set_ylabel("x")
    else:
        xd = _data_x(data)
        _backdrop(ax, xd, "0.75", 0.5, label="data")
        segs = np.transpose(tr[:, lines_idx, :2], (1, 0, 2))
        ax.add_collection(LineCollection(list(segs), colors="0.3", linewidths=0.6, alpha=0.35, zorder=1))
        ax.scatter(tr[0, pts_idx, 0], tr[0, pts_idx, 1], s=3, c=DATA_COLOR, lw=0, alpha=0.8, label="noise (t=0)", zorder=2)
        ax.scatter(tr[-1, pts_idx, 0], tr[-1, pts_idx, 1], s=3, c=SAMPLE_COLOR, lw=0, alpha=0.9, label="end (t=1)", zorder=3)
        (xlo, xhi), (ylo, yhi) = _bounds2(None, tr.reshape(-1, D), xd, q=0.1)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(ylo, yhi)
        ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper right", fontsize=7, markerscale=3, framealpha=0.7)
    ax.set_title(title or f"trajectories ({min(N, max_lines)} of {N} paths, {T} steps)", fontsize=10)
    return _save(fig, path, dpi)


def plot_hist_over_time(
    traj: Any,
    path: str | os.PathLike,
    times: Sequence[float] | None = None,
    bins: int = 50,
    max_panels: int = 6,
    source: Any = None,
    target: Any = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Histograms of a 1-D flow at several times, side by side (time runs left to right).

    The picture of the classic ``N(0, 1) -> N(2, 0.5^2)`` example: each panel is a sideways
    histogram over a shared value axis, so the mass visibly moves up and narrows.

    Args:
        traj: ``[T, N, 1]`` or ``[T, N]``; frame 0 at t = 0.
        times: either the time of each of the T frames (length T), or the times to show, in
            which case frames are taken as evenly spaced on [0, 1] and the nearest are shown.
            None: ``linspace(0, 1, T)``. At most ``max_panels`` evenly spread frames are drawn.
        source: an optional density (anything with ``log_prob([M, 1]) -> [M]``, e.g.
            ``pf.distributions.StandardNormal(1)``) drawn as a curve on the first panel.
        target: an optional density (e.g. ``pf.data.get_target("gauss1d")``) drawn as a curve
            on the last panel.
    """
    tr = _as_traj(traj)
    T = tr.shape[0]
    if tr.shape[2] != 1:
        raise ValueError(f"plot_hist_over_time takes 1-D trajectories [T, N, 1], got {list(tr.shape)}")
    grid_t = np.linspace(0, 1, T)
    if times is None:
        frame_t = grid_t
        show = np.unique(np.round(np.linspace(0, T - 1, min(T, max_panels))).astype(int))
    else:
        times = [float(v) for v in times]
        if len(times) == T:
            frame_t = np.asarray(times)
            show = np.unique(np.round(np.linspace(0, T - 1, min(T, max_panels))).astype(int))
        else:
            frame_t = grid_t
            show = np.unique([int(np.argmin(np.abs(grid_t - v))) for v in times])
    lo, hi = _axis_range(tr.ravel(), 0.05, q=0.0)
    fig, axes = _figure(len(show), 1.9, 3.8, sharey=True)
    edges = np.linspace(lo, hi, bins + 1)
    hmax = max(np.histogram(tr[i, :, 0], bins=edges, density=True)[0].max() for i in show)
    ys = np.linspace(lo, hi, 300)
    for j, (ax, i) in enumerate(zip(axes, show)):
        ax.hist(tr[i, :, 0], bins=edges, density=True, orientation="horizontal",
                color=DATA_COLOR if j < len(show) - 1 else SAMPLE_COLOR, alpha=0.75)
        for dist, on in ((source, j == 0), (target, j == len(show) - 1)):
            if dist is not None and on:
                with torch.no_grad():
                    p = np.exp(_np(dist.log_prob(torch.as_tensor(ys[:, None], dtype=torch.float32))))
                ax.plot(p, ys, color="k", lw=1.5)
        ax.set_xlim(0, 1.1 * hmax)
        ax.set_title(f"t = {frame_t[i]:.2f}", fontsize=10)
        ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(lo, hi)
    axes[0].set_ylabel("x")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)
