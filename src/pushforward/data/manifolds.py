"""Targets on manifolds with closed-form densities (w.r.t. the volume measure) and exact samplers.

- :class:`SphereMixture`: a mixture of von Mises-Fisher distributions on ``S^2``,
  ``p(x) = sum_k w_k kappa_k / (4 pi sinh kappa_k) exp(kappa_k mu_k . x)``.
- :class:`TorusMixture`: a mixture of products of von Mises distributions on ``[-pi, pi)^D``,
  ``p(x) = sum_k w_k prod_d exp(kappa cos(x_d - mu_kd)) / (2 pi I_0(kappa))``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _log_sinh_ratio(kappa: Tensor) -> Tensor:
    # log(kappa / (4 pi sinh kappa)), stable for large kappa
    return torch.log(kappa) - math.log(2 * math.pi) - kappa - torch.log1p(-torch.exp(-2 * kappa))


class SphereMixture:
    """A mixture of von Mises-Fisher components on the unit sphere in R^3.

    Args:
        means: ``[K, 3]`` directions (normalised here). concentrations: ``[K]``. weights: ``[K]``.
    """

    dim = 3

    def __init__(self, means=None, concentrations=None, weights=None):
        if means is None:  # four well-separated components (tetrahedron vertices)
            means = [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
        self.means = torch.nn.functional.normalize(torch.as_tensor(means, dtype=torch.float64), dim=-1)
        k = self.means.shape[0]
        self.kappa = torch.as_tensor(concentrations if concentrations is not None else [8.0] * k, dtype=torch.float64)
        w = torch.as_tensor(weights if weights is not None else [1.0] * k, dtype=torch.float64)
        self.weights = w / w.sum()

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` w.r.t. the area measure (x ``[N, 3]`` unit vectors)."""
        x = x.to(torch.float64)
        comp = _log_sinh_ratio(self.kappa) + self.kappa * (x @ self.means.T)
        return torch.logsumexp(comp + self.weights.log(), -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points ``[n, 3]``: exact vMF sampling (w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        mu, kap = self.means[idx], self.kappa[idx]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        w = 1 + torch.log(u + (1 - u) * torch.exp(-2 * kap)) / kap
        v = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        v = torch.nn.functional.normalize(v - (v * mu).sum(-1, keepdim=True) * mu, dim=-1)
        return w[:, None] * mu + torch.sqrt((1 - w * w).clamp_min(0))[:, None] * v


class TorusMixture:
    """A mixture of product von Mises components on the flat torus ``[-pi, pi)^D``.

    Args:
        means: ``[K, D]`` angles. concentration: one kappa for every coordinate. weights: ``[K]``.
    """

    def __init__(self, means=None, concentration: float = 4.0, weights=None, dim: int = 2):
        if means is None:
            means = [[-2.0, -2.0], [0.0, 2.0], [2.0, -1.0], [2.5, 2.5]]
            means = [(m * ((dim + 1) // 2))[:dim] for m in means]
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.dim = self.means.shape[1]
        self.kappa = float(concentration)
        k = self.means.shape[0]
        w = torch.as_tensor(weights if weights is not None else [1.0] * k, dtype=torch.float64)
        self.weights = w / w.sum()

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` w.r.t. the Lebesgue measure on ``[-pi, pi)^D``."""
        x = x.to(torch.float64)
        log_norm = math.log(2 * math.pi) + math.log(torch.special.i0e(torch.tensor(self.kappa)).item()) + self.kappa
        comp = (self.kappa * torch.cos(x[:, None, :] - self.means) - log_norm).sum(-1)
        return torch.logsumexp(comp + self.weights.log(), -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` angles ``[n, D]`` in ``[-pi, pi)`` (von Mises by Best & Fisher's rejection sampler)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = _von_mises(torch.zeros(n, self.dim, dtype=torch.float64), self.kappa, generator)
        return torch.remainder(z + self.means[idx] + math.pi, 2 * math.pi) - math.pi


def _von_mises(loc: Tensor, kappa: float, generator) -> Tensor:
    """Best & Fisher (1979) rejection sampling of von Mises(loc, kappa), seeded by ``generator``."""
    tau = 1 + math.sqrt(1 + 4 * kappa**2)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    out = torch.empty_like(loc)
    todo = torch.ones_like(loc, dtype=torch.bool)
    while bool(todo.any()):
        u1, u2, u3 = (torch.rand(loc.shape, generator=generator, dtype=loc.dtype) for _ in range(3))
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.arccos(f.clamp(-1, 1))
        take = ok & todo
        out = torch.where(take, theta, out)
        todo = todo & ~ok
    return out + loc
