"""Helpers shared by the plots: an Agg figure, saving, arrays, axis ranges, a model's context row,
batched log-densities and samples. matplotlib is imported inside :func:`_figure`, so importing
:mod:`pushforward.viz` does not load it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._utils import batched, to_tensor

Bounds = float | tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] | None

DATA_COLOR = "#1f77b4"
SAMPLE_COLOR = "#d62728"


def _figure(n_panels: int = 1, size: float = 4.0, height: float | None = None, layout: str = "constrained", **kw):
    """A figure on its own Agg canvas (pyplot's global state is never touched) and its row of
    ``n_panels`` axes, each ``size`` wide and ``height`` (default ``size``) high."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * n_panels, height or size), layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False, **kw)[0]
    return fig, list(axes)


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    return path


def _np(x: Any, name: str = "input") -> np.ndarray:
    """A tensor (any device/dtype), array or sequence as a float64 NumPy array."""
    return to_tensor(x, name).detach().to("cpu", torch.float64).numpy()


def _data_x(data: Any) -> np.ndarray | None:
    """Data as an array, from a Tensor, array or Dataset (its ``x``)."""
    if data is None:
        return None
    return _np(getattr(data, "x", data))


def _sub(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    if x.shape[0] <= m:
        return x
    return x[np.random.default_rng(seed).choice(x.shape[0], m, replace=False)]


def _backdrop(ax, xd: np.ndarray | None, color: str, alpha: float | None = None, m: int = 2000, **kw) -> None:
    """Data ``xd [N, >= 2]`` (a seeded subset of ``m`` rows) as faint dots behind a plot."""
    if xd is not None:
        d = _sub(xd, m)
        ax.scatter(d[:, 0], d[:, 1], s=2, c=color, alpha=alpha, lw=0, zorder=0, **kw)


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
    c = to_tensor(context, "context")
    if c.numel() != cdim:
        raise ValueError(f"context row must have {cdim} entries, got shape {list(c.shape)}")
    return c.to(**like).reshape(-1)


@torch.no_grad()
def _log_prob(model: Any, x: np.ndarray, ctx: Tensor | None, like: dict, batch: int = 8192) -> np.ndarray:
    """``model.log_prob`` of the rows of ``x [N, D]`` at one context row ``ctx [C]`` (or none): ``[N]``."""
    xt = torch.as_tensor(x).to(**like)
    if ctx is None:
        return _np(batched(model.log_prob, xt, batch_size=batch))
    return _np(batched(lambda xb, cb: model.log_prob(xb, context=cb), xt, ctx, batch_size=batch))


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
