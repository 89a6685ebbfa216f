"""A tail-aware first layer: per-dimension learned sinh-arcsinh maps with data-dependent init.

Bounded splines (``[-B, B]``, identity outside) leave heavy tails heavy: a standardized
dimension of Neal's funnel has most of its mass within 0.1 of 0 and points beyond 20, so the
spline's bins sit on nothing and the tail points map to latent values far outside N(0, 1).
:class:`SinhArcsinh` compresses (or lightens) each marginal's tails once, before the splines.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pushforward.transforms.base import Transform
from pushforward.transforms.elementwise import soft_clamp

# Tail exponents tried by the data-dependent init: delta < 1 compresses tails like |u|^delta.
_DELTA_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _shared_scale(u: Tensor, threshold: float) -> Tensor:
    """``[D]`` bool: dimensions whose log-magnitude correlates (Pearson, above ``threshold``) with
    another dimension's, i.e. whose scale is shared with (predicted by) another dimension.

    For a funnel ``x_j = e^(v/2) eps_j`` two such columns correlate by
    ``Var(v/2) / (Var(v/2) + pi^2 / 8)`` (0.65 at ``v ~ N(0, 3^2)``); independent heavy tails
    (product Student-t) by 0, up to sampling noise (about ``N^(-1/2)``, 0.04 on a 512 batch).
    """
    if u.shape[1] < 2:
        return torch.zeros(u.shape[1], dtype=torch.bool, device=u.device)
    a = torch.log(u.abs() + 1e-3)
    a = a - a.mean(0)
    a = a / a.norm(dim=0).clamp_min(1e-12)
    c = a.T @ a
    c.fill_diagonal_(-1.0)
    return c.max(1).values > threshold


def _log_cosh(u: Tensor) -> Tensor:
    """``log cosh(u)``, stable for large ``|u|``."""
    a = u.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


class SinhArcsinh(Transform):
    """Per-dimension ``z = out_scale * sinh(delta * asinh((x - loc) / scale))`` (Jones & Pewsey 2009).

    ``delta < 1`` compresses the tails (``|z| ~ |u|^delta``), ``delta > 1`` lightens them,
    ``delta = 1`` is the affine map. ``delta = exp(d)`` with ``d`` soft-clamped to
    ``(-log_delta_bound, log_delta_bound)`` so the map stays finite both ways.

    ``log|dz/dx| = log delta + log cosh(delta asinh u) - log(1 + u^2) / 2 - log scale + log out_scale``.

    :meth:`initialize` (once, from a batch) sets ``loc`` to the median, ``scale`` to the median
    absolute deviation times 1.4826 (the std for Gaussian data; at least 1 % of the std) and, per
    dimension, the ``delta``
    of a grid in ``[0.1, 1]`` whose output is best fitted by a Gaussian (maximum of the marginal
    Gaussian log-likelihood plus the log-Jacobian), then ``out_scale`` so the output has unit
    std: the bulk of the data spreads over the splines' bins instead of one of them (compressing
    the tails also shrinks the centre by ``delta``). Light-tailed data keep ``delta = 1``, and so
    do dimensions whose log-magnitude correlates with another's (above
    :attr:`shared_scale_corr`): a scale shared across dimensions, as in Neal's funnel, is a
    conditional affine structure the later layers undo, not a marginal tail. Before
    initialisation the layer is the identity; the ``initialized`` buffer is saved with the state.

    Args:
        dim: D. log_delta_bound: bound on ``|log delta|`` (default 3). eps: floor on the scale.

    Shapes: ``x [N, D]`` -> ``(z [N, D], logabsdet [N])``.

    Example:
        >>> t = SinhArcsinh(2)
        >>> x = torch.randn(4, 2)
        >>> bool(torch.allclose(t(x)[0], x))   # identity before initialisation
        True
    """

    #: Correlation of log-magnitudes above which a dimension's scale counts as shared (init).
    shared_scale_corr = 0.3

    def __init__(self, dim: int, log_delta_bound: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if not (log_delta_bound > 0 and math.isfinite(log_delta_bound)):
            raise ValueError(f"log_delta_bound must be positive and finite, got {log_delta_bound!r}")
        self.dim, self.log_delta_bound, self.eps = int(dim), float(log_delta_bound), float(eps)
        self.loc = nn.Parameter(torch.zeros(self.dim))
        self.log_scale = nn.Parameter(torch.zeros(self.dim))
        self.log_delta = nn.Parameter(torch.zeros(self.dim))
        self.log_out_scale = nn.Parameter(torch.zeros(self.dim))
        self.register_buffer("initialized", torch.tensor(False))

    def _delta(self) -> Tensor:
        return torch.exp(soft_clamp(self.log_delta, self.log_delta_bound))

    @staticmethod
    def _map(u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``z = sinh(delta asinh u)`` and elementwise ``log dz/du``."""
        w = delta * torch.asinh(u)
        return torch.sinh(w), torch.log(delta) + _log_cosh(w) - 0.5 * torch.log1p(u * u)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = (x - self.loc) * torch.exp(-self.log_scale)
        z, ladj = self._map(u, self._delta())
        return z * torch.exp(self.log_out_scale), (ladj - self.log_scale + self.log_out_scale).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        delta = self._delta()
        u = torch.sinh(torch.asinh(z * torch.exp(-self.log_out_scale)) / delta)
        _, ladj = self._map(u, delta)
        return u * torch.exp(self.log_scale) + self.loc, (self.log_scale - ladj - self.log_out_scale).sum(-1)

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Robust loc/scale and the best-fitting tail exponent per dimension (once)."""
        with torch.no_grad():
            if not bool(self.initialized):
                if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] < 2:
                    raise ValueError(f"SinhArcsinh.initialize needs a batch [N >= 2, {self.dim}], "
                                     f"got {list(x.shape)}")
                loc = x.median(0).values
                # The MAD is 0 when most values tie (binary or integer columns): floor it at a
                # hundredth of the std, far below the funnel's ratio (~0.08), so ties stay finite.
                mad = 1.4826 * (x - loc).abs().median(0).values
                scale = torch.maximum(mad, 0.01 * x.std(0, unbiased=False)).clamp_min(self.eps)
                u = (x - loc) / scale
                grid = torch.tensor(_DELTA_GRID, dtype=x.dtype, device=x.device)[:, None, None]
                z, ladj = self._map(u.unsqueeze(0), grid)  # [G, N, D]
                # Marginal log-likelihood of z under its own best Gaussian, plus the Jacobian.
                fit = -torch.log(z.std(1, unbiased=False).clamp_min(self.eps)) + ladj.mean(1)  # [G, D]
                # A heavy tail that another dimension predicts is a shared scale (Neal's funnel,
                # hierarchical and volatility models: x_j = e^(v/2) eps_j), which the later
                # conditioned affine maps undo exactly; compressing that marginal would bend every
                # conditional into a v-dependent shape (funnel5 at 60 s: KL 0.044 compressed,
                # 0.017 affine). Such dimensions keep delta = 1 (the grid's last entry).
                shared = _shared_scale(u, self.shared_scale_corr)
                fit[-1] = torch.where(shared, torch.inf, fit[-1])
                pick = fit.argmax(0)
                best = grid.flatten()[pick]
                out_std = z.std(1, unbiased=False).gather(0, pick[None]).squeeze(0).clamp_min(self.eps)
                self.loc.copy_(loc)
                self.log_scale.copy_(torch.log(scale))
                # soft_clamp^{-1}: the raw parameter that gives log(best).
                b = self.log_delta_bound
                self.log_delta.copy_(b * torch.atanh((torch.log(best) / b).clamp(-0.999, 0.999)))
                self.log_out_scale.copy_(-torch.log(out_std))
                self.initialized.fill_(True)
            return self(x, context)[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, initialized={bool(self.initialized)}"
