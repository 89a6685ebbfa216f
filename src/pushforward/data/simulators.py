"""Simulators with known posteriors, for simulation-based inference (SBI) tests and benchmarks.

A :class:`Simulator` has a prior over parameters ``theta`` ``[N, P]``, draws data ``x`` ``[N, X]``
given ``theta``, and can draw exact samples from the posterior ``p(theta | x_o)`` of one
observation ``x_o`` ``[X]``:

- :class:`LinearGaussian`: ``theta ~ N(0, s_p^2 I)``, ``x ~ N(theta, s_n^2 I)`` in ``dim``
  dimensions; the conjugate posterior is ``N(m, s^2 I)`` with ``1/s^2 = 1/s_p^2 + 1/s_n^2`` and
  ``m = s^2 x_o / s_n^2``.
- :class:`TwoMoons`: the two-moons simulator of Greenberg et al. (2019), "Automatic posterior
  transformation for likelihood-free inference" (uniform prior on ``[-1, 1]^2``, a bimodal
  crescent posterior); its likelihood is known in closed form, so the posterior is computed on a
  fine grid over the prior box and sampled cell by cell.
- :class:`GaussianMixture`: ``theta ~ U([-10, 10]^2)``, ``x ~ 0.5 N(theta, I) + 0.5 N(theta,
  0.01 I)`` (Sisson et al. 2007); the posterior is the same mixture centred at ``x_o``, truncated
  to the prior box (exact samples by rejection).

Every sampler takes an optional ``torch.Generator``; results are reproducible under a seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, Uniform

from pushforward._validate import check_int_range


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class Simulator:
    """A prior, a simulator ``theta -> x`` and exact posterior samples.

    Attributes:
        theta_dim, x_dim: sizes of a parameter vector and of one simulation.
        prior: a ``torch.distributions`` distribution over ``theta`` (its ``support`` is what
            posterior rejection checks; its ``log_prob`` is used by diagnostics).
    """

    theta_dim: int
    x_dim: int
    prior: Distribution

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` parameter vectors from the prior ``[n, theta_dim]``."""
        raise NotImplementedError

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One simulation per row of ``theta`` ``[N, theta_dim]`` -> ``x`` ``[N, x_dim]``."""
        raise NotImplementedError

    def sample_joint(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(theta, x)`` pairs ``[n, theta_dim], [n, x_dim]`` from ``p(theta) p(x | theta)``."""
        check_int_range(n, "number of simulations")
        theta = self.sample_prior(n, generator)
        return theta, self.simulate(theta, generator)

    def posterior_sample(self, x_o: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, theta_dim]`` of ``p(theta | x_o)`` for one observation ``[x_dim]``."""
        raise NotImplementedError

    def _check_obs(self, x_o: Tensor) -> Tensor:
        x_o = torch.as_tensor(x_o, dtype=torch.float64).reshape(-1)
        if x_o.numel() != self.x_dim:
            raise ValueError(f"observation must have {self.x_dim} values, got shape {list(x_o.shape)}")
        return x_o

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.simulate(theta, generator)


class LinearGaussian(Simulator):
    """Linear-Gaussian model with a conjugate Gaussian prior (exact posterior in closed form).

    Args:
        dim: size of ``theta`` and ``x``.
        prior_scale: ``s_p``, prior standard deviation.
        noise_scale: ``s_n``, simulator noise standard deviation.
    """

    def __init__(self, dim: int = 10, prior_scale: float = 1.0, noise_scale: float = 0.3):
        self.theta_dim = self.x_dim = check_int_range(dim, "dim")
        if not (prior_scale > 0 and noise_scale > 0):
            raise ValueError(f"prior_scale and noise_scale must be > 0, got {prior_scale!r}, {noise_scale!r}")
        self.prior_scale, self.noise_scale = float(prior_scale), float(noise_scale)
        self.prior = Independent(Normal(torch.zeros(dim), torch.full((dim,), self.prior_scale)), 1)

    def sample_prior(self, n, generator=None):
        return self.prior_scale * torch.randn(n, self.theta_dim, generator=generator, device=_gen_device(generator))

    def simulate(self, theta, generator=None):
        return theta + self.noise_scale * torch.randn(theta.shape, generator=generator, device=theta.device,
                                                      dtype=theta.dtype)

    def posterior_params(self, x_o: Tensor) -> tuple[Tensor, float]:
        """Mean ``[dim]`` and standard deviation of the conjugate posterior ``N(m, s^2 I)``."""
        x_o = self._check_obs(x_o)
        var = 1.0 / (1.0 / self.prior_scale**2 + 1.0 / self.noise_scale**2)
        return var * x_o / self.noise_scale**2, math.sqrt(var)

    def posterior_sample(self, x_o, n, generator=None):
        mean, std = self.posterior_params(x_o)
        z = torch.randn(n, self.theta_dim, generator=generator, device=_gen_device(generator), dtype=torch.float64)
        return (mean.to(z.device) + std * z).float()

    def posterior_log_prob(self, theta: Tensor, x_o: Tensor) -> Tensor:
        """``log p(theta | x_o)`` ``[N]`` for ``theta`` ``[N, dim]``."""
        mean, std = self.posterior_params(x_o)
        return Independent(Normal(mean.to(theta), std), 1).log_prob(theta)


class TwoMoons(Simulator):
    """The two-moons simulator (Greenberg et al. 2019), posterior on a grid over the prior box.

    ``theta ~ U([-1, 1]^2)``, ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
    ``x = (r cos a + 0.25, r sin a) + (-|theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2)``.
    With ``p = x - offset(theta) - (0.25, 0)`` in polar coordinates ``(rho, a)``, the likelihood is
    ``N(rho; 0.1, 0.01^2) / (pi rho)`` for ``|a| < pi/2`` (0 otherwise).

    Args:
        grid: cells per axis of the posterior grid over ``[-1, 1]^2`` (the crescents are ~0.014
            wide in ``theta``: 1000 cells of 0.002 resolve them).
    """

    def __init__(self, grid: int = 1000):
        self.theta_dim = self.x_dim = 2
        self.grid = check_int_range(grid, "grid", 10)
        self.prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)

    def sample_prior(self, n, generator=None):
        return 2 * torch.rand(n, 2, generator=generator, device=_gen_device(generator)) - 1

    @staticmethod
    def _offset(theta: Tensor) -> Tensor:
        s = 1.0 / math.sqrt(2.0)
        return torch.stack([-(theta[..., 0] + theta[..., 1]).abs() * s, (theta[..., 1] - theta[..., 0]) * s], -1)

    def simulate(self, theta, generator=None):
        n, dev = theta.shape[0], theta.device
        a = math.pi * (torch.rand(n, generator=generator, device=_gen_device(generator)) - 0.5)
        r = 0.1 + 0.01 * torch.randn(n, generator=generator, device=_gen_device(generator))
        p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1).to(dev, theta.dtype)
        return p + self._offset(theta)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log p(x | theta)`` ``[N]`` (``-inf`` where the crescent cannot reach ``x``)."""
        p = x - self._offset(theta) - x.new_tensor([0.25, 0.0])
        rho = p.norm(dim=-1).clamp_min(1e-12)
        ll = -0.5 * ((rho - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi)) - math.log(math.pi) - rho.log()
        return torch.where(p[..., 0] > 0, ll, torch.full_like(ll, -math.inf))

    def posterior_grid(self, x_o: Tensor) -> tuple[Tensor, Tensor]:
        """Cell centres ``[G, G, 2]`` and posterior cell probabilities ``[G, G]`` (summing to 1)."""
        x_o = self._check_obs(x_o)
        h = 2.0 / self.grid
        c = torch.linspace(-1 + h / 2, 1 - h / 2, self.grid, dtype=torch.float64)
        pts = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1)
        ll = self.log_likelihood(pts, x_o)
        if not bool(torch.isfinite(ll).any()):
            raise ValueError(f"observation {x_o.tolist()} has zero likelihood under every theta in the prior box")
        return pts, torch.softmax(ll.reshape(-1), 0).reshape(self.grid, self.grid)

    def posterior_sample(self, x_o, n, generator=None):
        pts, prob = self.posterior_grid(x_o)
        idx = torch.multinomial(prob.reshape(-1), n, replacement=True, generator=generator)
        h = 2.0 / self.grid
        jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * h
        return (pts.reshape(-1, 2)[idx] + jitter).float()


class GaussianMixture(Simulator):
    """Mixture simulator: ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``, ``theta ~ U([-b, b]^2)``.

    Args:
        bound: ``b``, half-width of the uniform prior box.
    """

    def __init__(self, bound: float = 10.0):
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound!r}")
        self.theta_dim = self.x_dim = 2
        self.bound = float(bound)
        self.prior = Independent(Uniform(-self.bound * torch.ones(2), self.bound * torch.ones(2)), 1)

    def sample_prior(self, n, generator=None):
        return self.bound * (2 * torch.rand(n, 2, generator=generator, device=_gen_device(generator)) - 1)

    def _mixture(self, centre: Tensor, n: int, generator) -> Tensor:
        dev = centre.device
        z = torch.randn(n, 2, generator=generator, device=_gen_device(generator)).to(dev, centre.dtype)
        narrow = torch.rand(n, generator=generator, device=_gen_device(generator)).to(dev) < 0.5
        scale = torch.where(narrow, 0.1, 1.0).to(centre.dtype)
        return centre + scale[:, None] * z

    def simulate(self, theta, generator=None):
        return self._mixture(theta, theta.shape[0], generator)

    def posterior_sample(self, x_o, n, generator=None):
        x_o = self._check_obs(x_o).float()
        out, have = [], 0
        for _ in range(1000):
            draw = self._mixture(x_o.expand(2 * n, 2), 2 * n, generator)
            draw = draw[(draw.abs() < self.bound).all(-1)]
            out.append(draw)
            have += draw.shape[0]
            if have >= n:
                return torch.cat(out)[:n]
        raise RuntimeError(f"observation {x_o.tolist()} lies too far outside the prior box to sample its posterior")


SIMULATORS = {"linear-gaussian": LinearGaussian, "two-moons": TwoMoons, "gaussian-mixture": GaussianMixture}


def get_simulator(name: str, **options) -> Simulator:
    """A simulator by name: ``linear-gaussian``, ``two-moons``, ``gaussian-mixture``."""
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; expected one of {sorted(SIMULATORS)}")
    return SIMULATORS[name](**options)
