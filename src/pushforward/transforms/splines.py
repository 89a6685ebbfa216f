"""Monotone rational-quadratic splines with linear tails (Durkan et al. 2019, "Neural Spline Flows").

On ``[-B, B]`` the map is a piecewise rational-quadratic through ``K + 1`` knots
``(x_k, y_k)`` with positive derivatives ``d_k`` at the knots (Gregory & Delbourgo, 1982). In
bin ``k``, with ``xi = (x - x_k) / w_k`` in ``[0, 1]`` and ``s_k = h_k / w_k``::

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2

Outside ``[-B, B]`` the map is the identity (``d_0 = d_K = 1`` makes it C^1 there). The
inverse solves ``a xi^2 + b xi + c = 0`` in the cancellation-free form
``xi = 2c / (-b - sqrt(b^2 - 4ac))`` (Durkan et al. 2019, appendix A).

Parameters per dimension (``3K - 1``): ``K`` unnormalised widths, ``K`` unnormalised heights,
``K - 1`` unnormalised interior derivatives. Widths/heights go through a softmax with a floor
(``min_width``, ``min_height``); derivatives through ``min_derivative + softplus(u + c)`` with
``c`` chosen so that ``u = 0`` gives derivative 1. Zero parameters therefore give equal bins of
slope 1 and unit derivatives: the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward.transforms.elementwise import ElementwiseMap


def _knots(u: Tensor, bound: float, min_size: float) -> Tensor:
    """Knot positions ``[..., K + 1]`` from ``-B`` to ``B`` (bin sizes floored at ``min_size * 2B``)."""
    k = u.shape[-1]
    size = min_size + (1.0 - min_size * k) * torch.softmax(u, dim=-1)
    inner = (2.0 * bound) * torch.cumsum(size[..., :-1], dim=-1) - bound
    # The end knots are set exactly (not from a cumsum that may end at 1 - eps) so the spline
    # meets its linear tails without a gap.
    lo = inner.new_full((*inner.shape[:-1], 1), -bound)
    return torch.cat([lo, inner, -lo], dim=-1)


class RationalQuadraticSpline(ElementwiseMap):
    """Monotone rational-quadratic spline on ``[-B, B]``, identity outside (Durkan et al. 2019).

    Args:
        bins: number of bins ``K``.
        bound: tail bound ``B``; the spline acts on ``[-B, B]``.
        min_width: smallest bin width as a fraction of ``2B`` (keeps the slopes bounded and the
            inverse well conditioned).
        min_height: smallest bin height as a fraction of ``2B`` (likewise).
        min_derivative: smallest knot derivative.

    Shapes: ``x [..., D]``, ``theta [..., D, 3K - 1]`` -> ``(z [..., D], ladj [..., D])``.

    Example:
        >>> import torch
        >>> f = RationalQuadraticSpline(bins=4)
        >>> x = torch.linspace(-6, 6, 7)[:, None]
        >>> z, ladj = f(x, torch.zeros(7, 1, f.num_params))
        >>> bool(torch.allclose(z, x)) and bool(ladj.abs().max() < 1e-6)
        True
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        if not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"tail bound must be positive and finite, got {bound!r}")
        for name, v in (("min_width", min_width), ("min_height", min_height)):
            if not 0 <= v < 1.0 / bins:
                raise ValueError(f"{name} must be in [0, 1/bins) = [0, {1.0 / bins:.4g}), got {v!r}")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative!r}")
        self.bins = int(bins)
        self.bound = float(bound)
        self.min_width = float(min_width)
        self.min_height = float(min_height)
        self.min_derivative = float(min_derivative)
        # softplus(shift) = 1 - min_derivative, so zero parameters give derivative exactly 1.
        self._shift = math.log(math.expm1(1.0 - self.min_derivative))
        self.num_params = 3 * self.bins - 1

    def _spline(self, theta: Tensor) -> Tensor:
        """``[..., 3(K + 1)]``: x-knots, y-knots and knot derivatives, concatenated."""
        k = self.bins
        if theta.shape[-1] != self.num_params:
            raise ValueError(
                f"spline with {k} bins needs {self.num_params} parameters per dimension, "
                f"got theta of shape {list(theta.shape)}"
            )
        xk = _knots(theta[..., :k], self.bound, self.min_width)
        yk = _knots(theta[..., k : 2 * k], self.bound, self.min_height)
        d_inner = self.min_derivative + F.softplus(theta[..., 2 * k :] + self._shift)
        one = d_inner.new_ones((*d_inner.shape[:-1], 1))
        return torch.cat([xk, yk, one, d_inner, one], dim=-1)

    def _bin(self, knots: Tensor, v: Tensor, start: int) -> tuple[Tensor, ...]:
        """Bin of ``v`` among ``knots[..., start : start + K + 1]`` and that bin's
        ``(x0, x1, y0, y1, d0, d1)``, fetched with a single gather."""
        k = self.bins
        inner = knots[..., start + 1 : start + k]
        # Count interior knots <= v: as fast as searchsorted for small K, and it works under
        # torch.func / torch.compile.
        idx = (v[..., None] >= inner).sum(-1, keepdim=True)
        offsets = torch.tensor([0, 1, k + 1, k + 2, 2 * k + 2, 2 * k + 3], device=v.device)
        vals = torch.gather(knots, -1, idx + offsets)
        return vals.unbind(-1)

    @staticmethod
    def _log_derivative(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, om: Tensor, denom: Tensor) -> Tensor:
        num = d1 * xi.square() + 2 * s * om + d0 * (1 - xi).square()
        return torch.log(s.square() * num / denom.square())

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Spline ``z = f(x)`` and ``log f'(x)`` elementwise (identity, ladj 0, in the tails)."""
        knots = self._spline(theta)
        inside = (x >= -self.bound) & (x <= self.bound)
        xc = x.clamp(-self.bound, self.bound)
        x0, x1, y0, y1, d0, d1 = self._bin(knots, xc, 0)
        w, h = x1 - x0, y1 - y0
        s = h / w
        xi = ((xc - x0) / w).clamp(0, 1)
        om = xi * (1 - xi)
        denom = s + (d0 + d1 - 2 * s) * om
        z = y0 + h * (s * xi.square() + d0 * om) / denom
        ladj = self._log_derivative(xi, s, d0, d1, om, denom)
        return torch.where(inside, z, x), torch.where(inside, ladj, torch.zeros_like(ladj))

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse ``x = f^{-1}(z)`` via the stable quadratic root, and ``log (f^{-1})'(z)``."""
        knots = self._spline(theta)
        inside = (z >= -self.bound) & (z <= self.bound)
        zc = z.clamp(-self.bound, self.bound)
        x0, x1, y0, y1, d0, d1 = self._bin(knots, zc, self.bins + 1)
        w, h = x1 - x0, y1 - y0
        s = h / w
        dy = zc - y0
        delta = d0 + d1 - 2 * s
        a = h * (s - d0) + dy * delta
        b = h * d0 - dy * delta
        c = -s * dy
        disc = (b.square() - 4 * a * c).clamp_min(0)
        # -b - sqrt(disc) < 0 whenever the spline is monotone, so no cancellation and no 0/0.
        xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0, 1)
        x = x0 + xi * w
        om = xi * (1 - xi)
        ladj = -self._log_derivative(xi, s, d0, d1, om, s + delta * om)
        return torch.where(inside, x, z), torch.where(inside, ladj, torch.zeros_like(ladj))

    def __repr__(self) -> str:
        return f"RationalQuadraticSpline(bins={self.bins}, bound={self.bound})"
