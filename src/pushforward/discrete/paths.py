"""Mixture probability paths on sequences of categories (Gat et al. 2024, "Discrete flow matching").

Each position of ``x_t`` is, independently, the data token ``x_1^i`` with probability ``kappa_t``
and the source token ``x_0^i`` otherwise:

    p_t(x^i | x_0, x_1) = (1 - kappa_t) delta_{x_0^i} + kappa_t delta_{x_1^i},

with ``x_0`` all-mask (``source="mask"``, an extra token K) or uniform on ``0..K-1``. It is generated
by the per-position rate ``u_t(y | x_t, x_1) = lambda_t (delta_{x_1}(y) - delta_{x_t}(y))``,
``lambda_t = kappa'_t / (1 - kappa_t)``; with a denoiser ``p_{1|t}`` the marginal rate is
``lambda_t (p_{1|t}(y | x_t) - delta_{x_t}(y))``.

Schedulers: ``linear`` (``kappa_t = t``) and ``kinetic`` (``kappa_t = sin^2(pi t / 2)``): for the
conditional path between two different tokens, the kinetic-optimal path of Shaul et al. 2024
("Flow matching with general discrete paths: a kinetic-optimal perspective") is the great circle
between ``sqrt(delta_{x_0})`` and ``sqrt(delta_{x_1})``, ``sqrt p_t = cos(pi t/2) delta_{x_0} +
sin(pi t/2) delta_{x_1}``, i.e. this mixture with ``kappa_t = sin^2(pi t / 2)``.

The evidence lower bound of the jump process (Girsanov for CTMCs; Shaul et al. 2024, sec. 6) is

    log p(x_1) >= int_0^1 lambda_t E_{x_t ~ p_t(. | x_1)} sum_i [ 1[x_t^i != x_1^i] (1 + log p_{1|t}(x_1^i | x_t))
                                                                - (1 - p_{1|t}(x_t^i | x_t)) ] dt,

written here in the variable ``kappa`` (``lambda_t dt = d kappa / (1 - kappa)``). For the masked
source it reduces to the masked-diffusion bound ``int dkappa/(1-kappa) E sum_{masked i} log
p_{1|t}(x_1^i | x_t)``, which is tight when the denoiser is the true posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import numpy as np
import torch
from torch import Tensor

SOURCES = ("mask", "uniform")


class LinearScheduler:
    """``kappa_t = t``."""

    name = "linear"

    def kappa(self, t: Tensor) -> Tensor:
        return t

    def t_of_kappa(self, k: Tensor) -> Tensor:
        return k


class KineticOptimalScheduler:
    """``kappa_t = sin^2(pi t / 2)`` (the kinetic-optimal mixture of two point masses)."""

    name = "kinetic"

    def kappa(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t).pow(2)

    def t_of_kappa(self, k: Tensor) -> Tensor:
        return torch.arcsin(k.clamp(0, 1).sqrt()) * (2 / math.pi)


SCHEDULERS = {"linear": LinearScheduler, "kinetic": KineticOptimalScheduler}

# (x_t [N, L] long, t [N]) -> log p_{1|t}(. | x_t) [N, L, K]
Denoiser = Callable[[Tensor, Tensor], Tensor]


class MixturePath:
    """The mixture path for ``num_categories`` K, a source (``"mask"``/``"uniform"``) and a scheduler.

    With the masked source the token K is the mask (the network sees K + 1 tokens).
    """

    def __init__(self, num_categories: int, source: str = "mask", scheduler: str = "kinetic"):
        self.K = int(num_categories)
        self.source = source
        self.scheduler = SCHEDULERS[scheduler]()

    @property
    def mask_token(self) -> int | None:
        return self.K if self.source == "mask" else None

    @property
    def vocab(self) -> int:
        """Tokens the network may see in ``x_t`` (K, or K + 1 with the mask)."""
        return self.K + (self.source == "mask")

    def sample_source(self, shape, generator=None, device=None) -> Tensor:
        if self.source == "mask":
            return torch.full(shape, self.K, dtype=torch.long, device=device)
        return torch.randint(0, self.K, shape, generator=generator, device=device)

    def sample_xt(self, x1: Tensor, kappa: Tensor, generator=None) -> Tensor:
        """``x_t ~ p_t(. | x_1)`` for ``x_1`` ``[N, L]`` and ``kappa_t`` ``[N]``."""
        x0 = self.sample_source(x1.shape, generator, x1.device)
        u = torch.rand(x1.shape, generator=generator, dtype=kappa.dtype, device=x1.device)
        return torch.where(u < kappa[:, None], x1, x0)

    def position_probs(self, x1: Tensor, kappa: Tensor) -> Tensor:
        """``p_t(x_t^i = v | x_1)`` ``[N, L, vocab]`` (``kappa`` ``[N]``)."""
        k = kappa[:, None, None]
        one = torch.nn.functional.one_hot(x1, self.vocab).to(kappa.dtype)
        if self.source == "mask":
            src = torch.nn.functional.one_hot(torch.full_like(x1, self.K), self.vocab).to(kappa.dtype)
        else:
            src = torch.full_like(one, 1.0 / self.K)
        return k * one + (1 - k) * src


def elbo_integrand(path: MixturePath, log_p1t: Tensor, xt: Tensor, x1: Tensor, kappa: Tensor) -> Tensor:
    """The bound's integrand in ``kappa`` at one ``x_t``: ``[N]``.

    ``(1 / (1 - kappa)) sum_i [1[x_t^i != x_1^i] (1 + log p(x_1^i|x_t)) - (1 - p(x_t^i|x_t))]``;
    ``log_p1t`` ``[N, L, K]``; a mask token counts as ``p(mask | x_t) = 0``.
    """
    lp_x1 = log_p1t.gather(-1, x1[..., None]).squeeze(-1)
    differ = xt != x1
    p_stay = torch.where(xt < path.K, log_p1t.gather(-1, xt.clamp(max=path.K - 1)[..., None]).squeeze(-1).exp(),
                         torch.zeros_like(lp_x1))
    jump = torch.where(differ, 1 + lp_x1, torch.zeros_like(lp_x1))
    return (jump - (1 - p_stay)).sum(-1) / (1 - kappa)


def path_elbo(path: MixturePath, denoiser: Denoiser, x1: Tensor, times: int = 16, samples: int | None = 4,
              generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """The evidence lower bound ``<= log p(x_1)`` of the jump process, ``[N]``.

    The ``kappa``-integral uses ``times`` Gauss-Legendre nodes on (0, 1); the expectation over
    ``x_t ~ p_t(. | x_1)`` uses ``samples`` draws per node, or (``samples=None``) the exact sum over
    every ``x_t`` (at most 20 000 states per sequence).
    """
    nodes, weights = np.polynomial.legendre.leggauss(times)
    nodes = torch.as_tensor((nodes + 1) / 2, dtype=dtype, device=x1.device)
    weights = torch.as_tensor(weights / 2, dtype=dtype, device=x1.device)
    n, length = x1.shape
    total = torch.zeros(n, dtype=dtype, device=x1.device)
    if samples is None:
        states = path.vocab ** length
        if states > 20_000:
            raise ValueError(f"samples=None sums over {path.vocab}^{length} = {states} states per sequence; "
                             "at most 20000 (give samples=k for a Monte Carlo estimate)")
        allx = torch.tensor(list(product(range(path.vocab), repeat=length)), dtype=torch.long, device=x1.device)
    for k, w in zip(nodes, weights):
        kap = k.expand(n)
        t = path.scheduler.t_of_kappa(kap)
        if samples is None:
            probs = path.position_probs(x1, kap)  # [N, L, V]
            for row in range(n):
                pr = probs[row].gather(-1, allx.T).prod(0)  # [S]
                keep = pr > 0
                xs, pr = allx[keep], pr[keep]
                x1r = x1[row].expand_as(xs)
                val = elbo_integrand(path, denoiser(xs, t[row].expand(xs.shape[0])).to(dtype), xs, x1r,
                                     k.expand(xs.shape[0]))
                total[row] = total[row] + w * (pr * val).sum()
        else:
            # all draws in one batch: row r of x1 repeated ``samples`` times
            x1r, kr, tr = (v.repeat_interleave(samples, 0) for v in (x1, kap, t))
            xt = path.sample_xt(x1r, kr, generator)
            val = elbo_integrand(path, denoiser(xt, tr).to(dtype), xt, x1r, kr)
            total = total + w * val.view(n, samples).mean(1)
    return total
