"""Plots of models, samples, maps, velocity fields and training runs, written to files.

Every function renders with matplotlib's Agg canvas (no pyplot, no GUI, the global backend is
left alone), writes the figure to ``path`` (PNG, or GIF for :func:`animate_flow`; parent
folders are created) and returns the path as a :class:`pathlib.Path`.

Inputs may be tensors (any device/dtype) or arrays; models are anything with
``log_prob`` / ``sample`` (closed-form targets from :mod:`pushforward.data` work too).
Conditional models are drawn at one fixed context row.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Bounds = float | tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] | None

DATA_COLOR = "#1f77b4"
SAMPLE_COLOR = "#d62728"


# --------------------------------------------------------------------------- helpers
def _figure(n_panels: int = 1, size: float = 4.0, height: float | None = None, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * n_panels, height or size), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False, **kw)[0]
    return fig, list(axes)


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    return path


def _np(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _data_x(data: Any) -> np.ndarray | None:
    """Data as an array, from a Tensor, array or Dataset (its ``x``)."""
    if data is None:
        return None
    return _np(getattr(data, "x", data))


def _like(obj: Any) -> dict:
    mod = obj if isinstance(obj, nn.Module) else getattr(obj, "__self__", None)
    if isinstance(mod, nn.Module):
        for t in (*mod.parameters(), *mod.buffers()):
            if t.is_floating_point():
                return {"device": t.device, "dtype": t.dtype}
    return {"device": torch.device("cpu"), "dtype": torch.float32}


def _sub(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    if x.shape[0] <= m:
        return x
    return x[np.random.default_rng(seed).choice(x.shape[0], m, replace=False)]


def _axis_range(v: np.ndarray, pad: float = 0.1, q: float = 0.5) -> tuple[float, float]:
    """Percentile range ``[q, 100 - q]`` of the finite values of ``v``, padded by ``pad``."""
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (-4.0, 4.0)
    lo, hi = np.percentile(v, [q, 100 - q])
    span = max(hi - lo, 1e-3)
    return (float(lo - pad * span), float(hi + pad * span))


def _bounds2(
    bounds: Bounds, *arrays: np.ndarray | None, q: float = 0.5
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((xlo, xhi), (ylo, yhi))`` from a scalar ``b`` (``[-b, b]``), a pair, a pair of pairs,
    or, when None, the 0.5-99.5 percentiles of the given point sets (default ``[-4, 4]``)."""
    if bounds is None:
        pts = [a[:, :2] for a in arrays if a is not None and a.ndim == 2 and a.shape[1] >= 2]
        if not pts:
            return ((-4.0, 4.0), (-4.0, 4.0))
        allp = np.concatenate(pts)
        return (_axis_range(allp[:, 0], q=q), _axis_range(allp[:, 1], q=q))
    if np.isscalar(bounds):
        b = abs(float(bounds))
        return ((-b, b), (-b, b))
    bounds = tuple(bounds)
    if len(bounds) == 2 and all(np.isscalar(b) for b in bounds):
        lo, hi = float(bounds[0]), float(bounds[1])
        return ((lo, hi), (lo, hi))
    if len(bounds) == 2 and all(len(b) == 2 for b in bounds):
        return ((float(bounds[0][0]), float(bounds[0][1])), (float(bounds[1][0]), float(bounds[1][1])))
    raise ValueError(f"bounds must be b, (lo, hi) or ((xlo, xhi), (ylo, yhi)), got {bounds!r}")


def _bounds1(bounds: Bounds, *arrays: np.ndarray | None) -> tuple[float, float]:
    if bounds is None:
        vals = [a.reshape(-1) for a in arrays if a is not None]
        return _axis_range(np.concatenate(vals)) if vals else (-4.0, 4.0)
    if np.isscalar(bounds):
        return (-abs(float(bounds)), abs(float(bounds)))
    lo, hi = bounds
    return (float(lo), float(hi))


def _model_dim(model: Any, data: np.ndarray | None) -> int:
    shape = getattr(model, "event_shape", None)
    if shape is not None:
        return int(np.prod(shape))
    if getattr(model, "dim", None) is not None:
        return int(model.dim)
    if data is not None:
        return int(np.prod(data.shape[1:]))
    raise ValueError("cannot tell the model's dimension; pass data")


def _context_row(model: Any, data: Any, context: Any, like: dict) -> Tensor | None:
    """One context row ``[C]`` for a conditional model: given, else the data's first row, else 0."""
    cdim = int(getattr(model, "context_dim", 0) or 0)
    if cdim == 0:
        return None
    if context is None and getattr(data, "context", None) is not None:
        context = data.context[0]
    if context is None:
        context = torch.zeros(cdim)
    c = torch.as_tensor(context).to(**like).reshape(-1)
    if c.numel() != cdim:
        raise ValueError(f"context row must have {cdim} entries, got shape {list(torch.as_tensor(context).shape)}")
    return c


@torch.no_grad()
def _log_prob(model: Any, x: np.ndarray, ctx: Tensor | None, like: dict, batch: int = 8192) -> np.ndarray:
    xt = torch.as_tensor(x).to(**like)
    out = []
    for i in range(0, xt.shape[0], batch):
        xb = xt[i : i + batch]
        lp = model.log_prob(xb) if ctx is None else model.log_prob(xb, context=ctx.expand(xb.shape[0], -1))
        out.append(_np(lp))
    return np.concatenate(out)


@torch.no_grad()
def _model_samples(model: Any, n: int, ctx: Tensor | None, like: dict, seed: int = 0) -> np.ndarray | None:
    g = torch.Generator(device=like["device"]).manual_seed(seed)
    kw = {} if ctx is None else {"context": ctx.expand(n, -1)}
    try:
        try:
            s = model.sample(n, generator=g, **kw)
        except TypeError:
            s = model.sample(n, **kw)
    except NotImplementedError:
        return None
    return _np(s).reshape(n, -1)


def _as_traj(traj: Any) -> np.ndarray:
    if isinstance(traj, (list, tuple)):
        traj = np.stack([_np(f) for f in traj])
    t = _np(traj)
    if t.ndim == 2:  # [T, N] -> [T, N, 1]
        t = t[..., None]
    if t.ndim != 3:
        raise ValueError(f"trajectories must be [T, N, D], got shape {list(t.shape)}")
    return t


# --------------------------------------------------------------------------- densities
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
    like = _like(model)
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


# --------------------------------------------------------------------------- samples
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


# --------------------------------------------------------------------------- maps and fields
def _flow_map(flow: Any, context: Any) -> Callable[[Tensor], Tensor]:
    """Latent -> data map (user units) of a NormalizingFlow at a fixed context row."""
    like = _like(flow)
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
    if hasattr(transform_fn, "transform") and hasattr(transform_fn, "unstandardize"):
        fn, like = _flow_map(transform_fn, context), _like(transform_fn)
        left, right = "latent grid z", "mapped grid x = T⁻¹(z)"
    else:
        fn, like = transform_fn, _like(transform_fn)
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
    if xd is not None:
        d = _sub(xd, 2000)
        axes[1].scatter(d[:, 0], d[:, 1], s=2, c="0.6", alpha=0.4, lw=0, zorder=0)
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
    like = _like(velocity_fn)
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
        if xd is not None:
            d = _sub(xd, 2000)
            ax.scatter(d[:, 0], d[:, 1], s=2, c="0.7", alpha=0.4, lw=0, zorder=0)
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
        if xd is not None:
            d = _sub(xd, 2000)
            ax.scatter(d[:, 0], d[:, 1], s=2, c="0.75", alpha=0.5, lw=0, zorder=0, label="data")
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
        source, target: optional densities (anything with ``log_prob([M, 1]) -> [M]``, e.g.
            ``pf.distributions.StandardNormal(1)`` and ``pf.data.get_target("gauss1d")``) drawn
            as curves on the first and last panels.
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


# --------------------------------------------------------------------------- training curves
_CURVE_SKIP = {"step", "time", "epoch", "wall", "elapsed", "val_step"}


def _records(history: Any) -> list[dict]:
    """Normalise a history (jsonl path, dict of lists, list of dicts, or an object with
    ``records``/``history``/``as_dict``/``to_dict``) to a list of per-row dicts with a step."""
    if isinstance(history, (str, os.PathLike)):
        p = Path(history)
        if p.is_dir():
            p = p / "metrics.jsonl"
        if not p.is_file():
            raise FileNotFoundError(f"no metrics file at {str(p)!r}")
        rows = []
        for k, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(p)!r} line {k + 1} is not JSON: {e}") from None
        return [dict(r, step=r.get("step", i)) for i, r in enumerate(rows)]
    for attr in ("as_dict", "to_dict"):
        if callable(getattr(history, attr, None)):
            return _records(getattr(history, attr)())
    for attr in ("records", "history"):
        if hasattr(history, attr) and not isinstance(history, Mapping):
            return _records(getattr(history, attr))
    if isinstance(history, Mapping):
        if "records" in history and isinstance(history["records"], list):
            return _records(history["records"])
        lists = {k: list(v) for k, v in history.items() if isinstance(v, (list, tuple, np.ndarray, Tensor))}
        if not lists:
            raise ValueError("history dict has no lists of values")
        base = lists.get("step")
        n = len(base) if base is not None else max(len(v) for v in lists.values())
        steps = list(base) if base is not None else list(range(n))
        rows: dict[float, dict] = {}
        for k, vals in lists.items():
            if k == "step" or not vals:
                continue
            if len(vals) == len(steps):
                st = steps
            elif f"{k}_step" in lists or (k.startswith("val") and "val_step" in lists):
                st = lists.get(f"{k}_step", lists.get("val_step"))
            else:  # recorded less often and without its own steps: spread over the run
                st = list(np.linspace(steps[0], steps[-1], len(vals))) if steps else list(range(len(vals)))
            for s, v in zip(st, vals):
                rows.setdefault(float(s), {"step": float(s)})[k] = v
        return [rows[s] for s in sorted(rows)]
    if isinstance(history, Iterable):
        return [dict(r, step=r.get("step", i)) for i, r in enumerate(history)]
    raise TypeError(f"cannot read a training history from {type(history).__name__}")


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = []
    for r in rows:
        v = r.get(key)
        if v is None or isinstance(v, (str, bool, dict, list)):
            continue
        try:
            pt = (float(r["step"]), float(v))
        except (TypeError, ValueError):
            continue
        if math.isfinite(pt[1]):  # NaN marks "not evaluated at this step" (fit's History)
            pts.append(pt)
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts)
    return a[:, 0], a[:, 1]


def _ema(v: np.ndarray, span: int) -> np.ndarray:
    alpha, out, m = 2.0 / (span + 1), np.empty_like(v), np.nan
    for i, x in enumerate(v):
        m = x if not np.isfinite(m) else (m if not np.isfinite(x) else (1 - alpha) * m + alpha * x)
        out[i] = m
    return out


def plot_training_curves(
    history_or_metrics_path: Any,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Training loss (raw and smoothed), validation loss and learning rate against step.

    Args:
        history_or_metrics_path: a dict of lists (``step``, ``loss``, optionally ``val_loss``,
            ``lr``, ``time``; a shorter ``val_loss`` uses ``val_step`` or is spread over the
            run), a list of per-step dicts, a run folder, or a ``metrics.jsonl`` file (one JSON
            object per line with ``step``, ``loss``, optionally ``val_loss``, ``lr``, ``time``).

    A third panel shows ``grad_norm`` when recorded. Losses can be negative (NLL), so the y
    axis is linear; outlying early spikes (beyond ``q90 + 5 (q90 - q10)``) are cut off so they do
    not flatten the rest of the curve. More than 100 points also get an EMA-smoothed line.
    """
    rows = _records(history_or_metrics_path)
    s_loss, loss = _series(rows, "loss")
    s_val, val = _series(rows, "val_loss")
    s_lr, lr = _series(rows, "lr")
    s_gn, gn = _series(rows, "grad_norm")
    if loss.size == 0 and val.size == 0:
        keys = sorted({k for r in rows for k in r} - _CURVE_SKIP)
        raise ValueError(f"history has no 'loss' or 'val_loss' values (keys: {keys})")
    panels = ["loss"] + (["lr"] if lr.size else []) + (["grad_norm"] if gn.size else [])
    fig, axes = _figure(len(panels), 4.2, 3.4)
    ax = axes[0]
    if loss.size:
        smooth = loss.size > 100  # few points: an EMA would mostly show its own lag
        ax.plot(s_loss, loss, color=DATA_COLOR, alpha=0.3 if smooth else 1.0, lw=0.8 if smooth else 1.4,
                label="train loss")
        if smooth:
            ax.plot(s_loss, _ema(loss, max(5, loss.size // 50)), color=DATA_COLOR, lw=1.6, label="train (EMA)")
    if val.size:
        ax.plot(s_val, val, color=SAMPLE_COLOR, lw=1.6, marker="o" if val.size < 40 else None, ms=3, label="val loss")
    fin = np.concatenate([loss[np.isfinite(loss)], val[np.isfinite(val)]])
    if fin.size:  # keep a few huge early losses from flattening the rest of the curve
        lo, q10, q90, hi = np.percentile(fin, [0, 10, 90, 100])
        hi = min(hi, q90 + 5 * (q90 - q10)) if q90 > q10 else hi
        span = max(hi - lo, 1e-6)
        ax.set_ylim(lo - 0.05 * span, hi + 0.08 * span)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    for name, ax in zip(panels[1:], axes[1:]):
        sx, sv = (s_lr, lr) if name == "lr" else (s_gn, gn)
        ax.plot(sx, sv, color="0.2", lw=1.2)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate" if name == "lr" else "grad norm")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "training", fontsize=10)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------- animation
def _flat_transforms(t: Any) -> list:
    from pushforward.transforms.base import Compose

    if isinstance(t, Compose):
        return [u for s in t.transforms for u in _flat_transforms(s)]
    return [t]


@torch.no_grad()
def flow_frames(
    model: Any,
    n: int = 1000,
    steps: int = 50,
    context: Any = None,
    seed: int = 0,
) -> list[Tensor]:
    """Point clouds along a model's latent -> data path, for :func:`animate_flow`.

    - :class:`pushforward.NormalizingFlow`: base samples, then the points after each layer
      (nested compositions flattened) in the latent -> data direction. Every frame is mapped
      through the data standardization (``x * scale + loc``) so all frames are in user units
      and the last one is ``model.sample``.
    - models with ``trajectory(n, steps) -> [T, n, D]`` (ODE models): its frames.

    Returns:
        a list of ``[n, D]`` CPU tensors.
    """
    like = _like(model)
    ctx = _context_row(model, None, context, like)
    c = None if ctx is None else ctx.expand(n, -1)
    if hasattr(model, "transform") and hasattr(model, "base"):
        g = torch.Generator(device=like["device"]).manual_seed(seed)
        z = model.base.sample(n, c, g)
        un = getattr(model, "unstandardize", lambda v: v)
        frames = [un(z)]
        for t in reversed(_flat_transforms(model.transform)):
            z, _ = t.inverse(z, c)
            frames.append(un(z))
        return [f.detach().to("cpu", torch.float32).reshape(n, -1) for f in frames]
    if callable(getattr(model, "trajectory", None)):
        kw = {} if c is None else {"context": c}
        traj = model.trajectory(n, steps, **kw)
        return [f.detach().to("cpu", torch.float32).reshape(n, -1) for f in traj]
    raise TypeError(
        f"flow_frames needs a NormalizingFlow or a model with trajectory(n, steps); got {type(model).__name__}"
    )


def animate_flow(
    frames: Any,
    path: str | os.PathLike,
    fps: int = 12,
    bounds: Bounds = None,
    data: Any = None,
    hold: float = 1.0,
    max_points: int = 2000,
    titles: Sequence[str] | None = None,
    size: float = 3.6,
    dpi: int = 80,
) -> Path:
    """Animated GIF of point clouds moving from noise to data (matplotlib's Pillow writer).

    Points are coloured by their first coordinate in the first frame, so each can be followed.

    Args:
        frames: a list of ``[N, 2]`` point clouds (or ``[T, N, 2]``), e.g. from
            :func:`flow_frames`; wider data show the first two coordinates.
        fps: frames per second; the last frame is held for ``hold`` seconds.
        bounds: fixed axes for all frames; default from all frames (and ``data``).
        data: optional data drawn faintly behind the points.
        titles: one title per frame (default ``"step k / T-1"``).
    """
    from matplotlib.animation import PillowWriter

    tr = _as_traj(frames)
    if tr.shape[2] < 2:
        raise ValueError(f"animate_flow draws 2-D point clouds, got dimension {tr.shape[2]}")
    T = tr.shape[0]
    keep = np.random.default_rng(0).permutation(tr.shape[1])[:max_points]
    tr = tr[:, keep, :2]
    xd = _data_x(data)
    (xlo, xhi), (ylo, yhi) = _bounds2(bounds, tr.reshape(-1, 2), xd, q=0.1)
    fig, (ax,) = _figure(1, size)
    if xd is not None:
        d = _sub(xd, 2000)
        ax.scatter(d[:, 0], d[:, 1], s=2, c="0.8", lw=0, zorder=0)
    # colour each point by where it started, so the eye can follow the map
    start = tr[0, :, 0] if tr.shape[1] > 1 else np.zeros(1)
    sc = ax.scatter(tr[0, :, 0], tr[0, :, 1], s=3, c=start, cmap="turbo", lw=0, alpha=0.85)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    ttl = ax.set_title("", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi):
        order = list(range(T)) + [T - 1] * max(0, int(round(hold * fps)))
        for i in order:
            sc.set_offsets(tr[i])
            ttl.set_text(titles[i] if titles is not None else f"step {i} / {T - 1}")
            writer.grab_frame()
    return path


__all__ = [
    "animate_flow",
    "flow_frames",
    "plot_density",
    "plot_grid_deformation",
    "plot_hist_over_time",
    "plot_quiver",
    "plot_samples",
    "plot_trajectories",
    "plot_training_curves",
]
