"""Target distributions with exact, normalised closed-form densities.

Each target has ``dim``, ``sample(n, generator=None) -> [n, dim]`` and
``log_prob(x [N, dim]) -> [N]``. They are the ground truth for KL estimates
(:func:`pushforward.metrics.kl`), density plots and reverse-KL training.

Computations follow the dtype and device of the input ``x`` (``log_prob``) or of the
generator (``sample``: float32 on the generator's device, CPU by default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward._utils import to_tensor

LOG_2PI = math.log(2 * math.pi)


class Target:
    """Base class: a distribution over ``R^dim`` with an exact ``log_prob``."""

    name: str = "target"
    dim: int

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact normalised log-density of ``x`` ``[N, dim]`` -> ``[N]``."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``[n, dim]`` (float32)."""
        raise NotImplementedError

    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = to_tensor(x, "x", dtype=torch.float32)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name}: x must have shape [N, {self.dim}], got {list(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class GaussianMixtureTarget(Target):
    """Mixture of diagonal Gaussians ``p(x) = sum_k w_k N(x; mu_k, diag(sigma_k^2))``.

    Args:
        means: ``[K, D]`` component means.
        scales: ``[K, D]`` (or broadcastable) component standard deviations.
        weights: ``[K]`` mixture weights (normalised here); default uniform.
    """

    def __init__(self, means: Tensor, scales: Tensor | float, weights: Tensor | None = None, name: str = "gmm"):
        means = torch.as_tensor(means, dtype=torch.float64)
        scales = torch.as_tensor(scales, dtype=torch.float64).expand_as(means).clone()
        weights = torch.ones(means.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64
        )
        if bool((scales <= 0).any()) or bool((weights < 0).any()):
            raise ValueError("GaussianMixtureTarget: scales must be positive and weights non-negative")
        self.means, self.scales = means, scales
        self.weights = weights / weights.sum()
        self.dim = int(means.shape[1])
        self.name = name

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._check(x)
        mu = self.means.to(x)
        sd = self.scales.to(x)
        u = (x[:, None, :] - mu) / sd  # [N, K, D]
        comp = (-0.5 * u.pow(2) - torch.log(sd) - 0.5 * LOG_2PI).sum(-1)
        return torch.logsumexp(comp + torch.log(self.weights.to(x)), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Samples ``[n, D]`` (float32) and the index ``[n]`` of the component each came from."""
        dev = _device(generator)
        k = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        x = self.means.to(dev)[k] + self.scales.to(dev)[k] * eps
        return x.float(), k


class CheckerboardTarget(Target):
    """Uniform density on the 8 dark squares of a 4x4 checkerboard on ``[-4, 4]^2``.

    The squares have side 2; a point is in the support when
    ``floor(x1 / 2) + floor(x2 / 2)`` is even, so ``p(x) = 1/32`` there and 0 elsewhere
    (``log_prob = -inf`` off the support). Same distribution as the FFJORD ``checkerboard`` toy
    (Grathwohl et al., 2019).
    """

    name = "checkerboard"
    dim = 2
    side = 2.0
    half = 4.0

    def _inside(self, x: Tensor) -> Tensor:
        cell = torch.floor(x / self.side)
        in_box = ((x >= -self.half) & (x < self.half)).all(-1)
        even = torch.remainder(cell.sum(-1), 2) == 0
        return in_box & even

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._check(x)
        area = 8 * self.side**2
        inside = self._inside(x)
        return torch.where(inside, x.new_full((x.shape[0],), -math.log(area)), x.new_full((x.shape[0],), -math.inf))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = _device(generator)
        x1 = torch.rand(n, generator=generator, device=dev) * 4 - 2
        x2 = torch.rand(n, generator=generator, device=dev) - 2 * torch.randint(0, 2, (n,), generator=generator, device=dev)
        x2 = x2 + torch.remainder(torch.floor(x1), 2)
        return torch.stack([x1, x2], -1) * (self.side)


class FunnelTarget(Target):
    """Neal's funnel in ``dim`` dimensions (Neal, 2003, "Slice sampling").

    ``v = x_1 ~ N(0, 3^2)`` and ``x_i | v ~ N(0, e^v)`` for ``i = 2..dim``:
    ``log p(x) = log N(v; 0, 9) + sum_i log N(x_i; 0, e^v)``.
    """

    def __init__(self, dim: int = 10, v_scale: float = 3.0, name: str = "funnel10"):
        self.dim = int(dim)
        self.v_scale = float(v_scale)
        self.name = name

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._check(x)
        v, rest = x[:, 0], x[:, 1:]
        lp_v = -0.5 * (v / self.v_scale) ** 2 - math.log(self.v_scale) - 0.5 * LOG_2PI
        # x_i ~ N(0, e^v): log-density -x^2 e^{-v} / 2 - v / 2 - log(2 pi) / 2
        lp_rest = (-0.5 * rest.pow(2) * torch.exp(-v)[:, None] - 0.5 * v[:, None] - 0.5 * LOG_2PI).sum(-1)
        return lp_v + lp_rest

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = _device(generator)
        v = torch.randn(n, 1, generator=generator, device=dev) * self.v_scale
        rest = torch.randn(n, self.dim - 1, generator=generator, device=dev) * torch.exp(0.5 * v)
        return torch.cat([v, rest], -1)


def ring(n_components: int = 8, radius: float = 3.0, scale: float = 0.3) -> GaussianMixtureTarget:
    """Equal-weight Gaussian mixture with ``n_components`` modes evenly spaced on a circle."""
    a = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    means = radius * torch.stack([torch.cos(a), torch.sin(a)], -1)
    return GaussianMixtureTarget(means, scale, name="ring")


def eight_gaussians() -> GaussianMixtureTarget:
    """The FFJORD ``8gaussians`` toy as a closed form: 8 modes at radius ``4/1.414``, std ``0.5/1.414``."""
    t = GaussianMixtureTarget(ring(8, 4 / 1.414, 0.5 / 1.414).means, 0.5 / 1.414, name="8gaussians")
    # FFJORD orders centres (1,0),(-1,0),(0,1),(0,-1),diagonals; the set is the same.
    return t


def spiral(n_components: int = 20, turns: float = 1.5, r_min: float = 0.5, r_max: float = 3.5, scale: float = 0.25):
    """Equal-weight Gaussian mixture with modes evenly spaced (by arc length) along the
    Archimedean spiral ``r = r_min + (r_max - r_min) s``, ``theta = 2 pi turns s``, ``s in [0, 1]``."""
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)
    theta = s * turns * 2 * math.pi
    r = r_min + (r_max - r_min) * s
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1)
    arc = torch.cat([pts.new_zeros(1), (pts[1:] - pts[:-1]).norm(dim=-1).cumsum(0)])
    idx = torch.searchsorted(arc, torch.linspace(0, float(arc[-1]), n_components, dtype=torch.float64))
    means = pts[idx.clamp_max(len(s) - 1)]
    return GaussianMixtureTarget(means, scale, name="spiral")


def gmm10(dim: int = 10, n_components: int = 6) -> GaussianMixtureTarget:
    """A fixed 10-D diagonal Gaussian mixture (6 modes, means in ``[-3, 3]^10``, stds in
    ``[0.3, 1]``, unequal weights), drawn once from a seed so it is the same everywhere."""
    g = torch.Generator().manual_seed(20240610)
    means = (torch.rand(n_components, dim, generator=g, dtype=torch.float64) * 6 - 3)
    scales = 0.3 + 0.7 * torch.rand(n_components, dim, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    return GaussianMixtureTarget(means, scales, weights, name="gmm10")


def gauss1d() -> GaussianMixtureTarget:
    """``N(2, 0.5^2)`` in 1-D: the target of the classic ``N(0, 1) -> N(2, 0.5^2)`` example."""
    return GaussianMixtureTarget(torch.tensor([[2.0]]), 0.5, name="gauss1d")


_TARGETS = {
    "ring": ring,
    "spiral": spiral,
    "checkerboard": CheckerboardTarget,
    "8gaussians": eight_gaussians,
    "gmm10": gmm10,
    "funnel10": lambda: FunnelTarget(10),
    "gauss1d": gauss1d,
}


def available_targets() -> list[str]:
    """Names accepted by :func:`get_target`."""
    return sorted(_TARGETS)


def get_target(name: str) -> Target:
    """A closed-form target by name: ``ring``, ``spiral``, ``checkerboard``, ``8gaussians``,
    ``gmm10``, ``funnel10``, ``gauss1d``."""
    if name not in _TARGETS:
        raise ValueError(f"unknown target {name!r}; available: {', '.join(available_targets())}")
    return _TARGETS[name]()
