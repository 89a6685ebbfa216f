"""Divergence of a vector field ``u: R^D -> R^D``: exact (autograd) and Hutchinson's estimator.

Both take the output ``u = f(x)`` already computed from an ``x`` that requires grad, so the
forward pass is shared with the velocity itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


def divergence_exact(u: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """``div u = sum_i du_i/dx_i`` by one vector-Jacobian product per dimension.

    Args:
        u: ``[N, D]`` outputs computed from ``x``. x: ``[N, D]`` with ``requires_grad``.
        create_graph: keep the graph (for training through the divergence).
    Returns:
        ``[N]``.
    """
    d = x.shape[1]
    div = x.new_zeros(x.shape[0])
    for i in range(d):
        g = torch.autograd.grad(u[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
        div = div + g[:, i]
    return div


def divergence_hutchinson(u: Tensor, x: Tensor, eps: Tensor, create_graph: bool = False) -> Tensor:
    """Hutchinson's unbiased estimate ``eps^T (du/dx) eps`` with ``E[eps eps^T] = I``.

    Args:
        u, x: as in :func:`divergence_exact`. eps: ``[N, D]`` probe (Gaussian or Rademacher),
            fixed for a whole ODE solve (Grathwohl et al. 2019, FFJORD).
    Returns:
        ``[N]``.
    """
    g = torch.autograd.grad(u, x, grad_outputs=eps, create_graph=create_graph, retain_graph=True)[0]
    return (g * eps).reshape(x.shape[0], -1).sum(-1)


def make_probe(
    shape: torch.Size | tuple[int, ...],
    kind: str = "rademacher",
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
) -> Tensor:
    """A probe for :func:`divergence_hutchinson`: ``"rademacher"`` (±1) or ``"gaussian"``."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    raise ValueError(f"unknown probe kind {kind!r}; choose 'rademacher' or 'gaussian'")
