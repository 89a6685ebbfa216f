"""Animations: point clouds along a model's latent -> data path, written as a GIF."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._utils import module_like
from pushforward.flows import NormalizingFlow
from pushforward.viz._common import Bounds, _as_traj, _backdrop, _bounds2, _context_row, _data_x, _figure


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
    like = module_like(model)
    ctx = _context_row(model, None, context, like)
    c = None if ctx is None else ctx.expand(n, -1)
    if isinstance(model, NormalizingFlow):
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
    _backdrop(ax, xd, "0.8")
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
