"""Bernstein polynomial monotone map (Ramasinghe et al. 2021; Hothorn et al. 2018's MLT).

On ``[-B, B]``, with ``u = (x + B) / (2B)`` in ``[0, 1]``::

    f(x) = sum_{k=0}^{M} c_k b_{k,M}(u),    b_{k,M}(u) = C(M, k) u^k (1 - u)^{M - k}

    f'(x) = (M / 2B) sum_{k=0}^{M-1} (c_{k+1} - c_k) b_{k,M-1}(u)

so increasing coefficients ``c_0 < c_1 < ... < c_M`` make ``f`` strictly increasing (a
Bernstein polynomial's derivative is the Bernstein polynomial of the differences). Outside
``[-B, B]`` the map continues linearly with the end slopes ``M (c_1 - c_0) / 2B`` and
``M (c_M - c_{M-1}) / 2B``: a C^1 bijection of ``R``. Zero parameters give
``c_k = -B + 2Bk/M``, for which ``f(x) = x`` (Bernstein polynomials reproduce linear functions):
the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward._validate import check_int_range, check_positive_float
from pushforward.transforms.elementwise import ElementwiseMap
from pushforward.transforms.monotone import bisect_inverse

_SOFTPLUS_ONE = math.log(math.expm1(1.0))


class BernsteinPolynomial(ElementwiseMap):
    """Monotone Bernstein polynomial of degree ``M`` on ``[-B, B]``, linear outside.

    ``theta = [c_0 shift, M raw increments]``: ``c_0 = -B + theta_0``,
    ``c_k - c_{k-1} = (2B / M) softplus(theta_k + c)`` (``c``: zero gives the unit slope).

    Args:
        degree: ``M`` (>= 1).
        bound: ``B``.
        tol: absolute tolerance of the bisection inverse.

    Shapes: ``x [..., D]``, ``theta [..., D, M + 1]`` -> ``(z [..., D], ladj [..., D])``.

    Example:
        >>> f = BernsteinPolynomial(degree=6, bound=3.0)
        >>> x = torch.linspace(-5, 5, 6, dtype=torch.float64)[:, None]
        >>> z, ladj = f(x, torch.zeros(6, 1, f.num_params, dtype=torch.float64))
        >>> bool(torch.allclose(z, x)) and bool(ladj.abs().max() < 1e-12)
        True
    """

    def __init__(self, degree: int = 16, bound: float = 5.0, tol: float = 1e-6):
        self.degree = check_int_range(degree, "degree", 1)
        self.bound = check_positive_float(bound, "bound")
        self.tol = check_positive_float(tol, "tol")
        self.num_params = self.degree + 1

    def _coefficients(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients ``c [..., M + 1]`` and their increments ``[..., M]``."""
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"BernsteinPolynomial of degree {self.degree} needs {self.num_params} parameters per "
                             f"dimension, got theta of shape {list(theta.shape)}")
        m, b = self.degree, self.bound
        inc = (2 * b / m) * F.softplus(theta[..., 1:] + _SOFTPLUS_ONE)
        c0 = theta[..., :1] - b
        return torch.cat([c0, c0 + torch.cumsum(inc, -1)], -1), inc

    @staticmethod
    def _basis(u: Tensor, m: int) -> Tensor:
        """``b_{k,m}(u)`` for ``k = 0..m``: ``[...] -> [..., m + 1]``."""
        k = torch.arange(m + 1, dtype=u.dtype, device=u.device)
        log_binom = torch.lgamma(k.new_tensor(m + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
        u = u[..., None]
        return torch.exp(log_binom) * u.pow(k) * (1 - u).pow(m - k)

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        c, inc = self._coefficients(theta)
        m, b = self.degree, self.bound
        u = ((x.clamp(-b, b) + b) / (2 * b)).clamp(0, 1)
        inner = (c * self._basis(u, m)).sum(-1)
        slope_scale = m / (2 * b)
        d_inner = slope_scale * (inc * self._basis(u, m - 1)).sum(-1)
        lo_slope, hi_slope = slope_scale * inc[..., 0], slope_scale * inc[..., -1]
        below, above = x < -b, x > b
        z = torch.where(below, c[..., 0] + lo_slope * (x + b), torch.where(above, c[..., -1] + hi_slope * (x - b), inner))
        d = torch.where(below, lo_slope, torch.where(above, hi_slope, d_inner))
        return z, torch.log(d)

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        x = bisect_inverse(lambda v: self.forward(v, theta), z, self.tol, width=self.bound)
        return x, -self.forward(x, theta)[1]

    def __repr__(self) -> str:
        return f"BernsteinPolynomial(degree={self.degree}, bound={self.bound}, tol={self.tol})"
