"""Distributions of the training time ``t`` in flow matching.

Convention (DESIGN.md): t = 0 is noise, t = 1 is data. Papers that run time the other way
(SD3: t = 1 noise; pi0's code: t = 1 noise) are converted here and each class says how.
Every sampler has ``sample(n, generator, device, dtype) -> [n]`` and its exact ``cdf(t)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward._validate import resolve_named
from pushforward.matching.paths import ByValue


class TimeSampler(ByValue):
    """Base class: ``sample(n) -> [n]`` times in [0, 1] and ``cdf(t)``."""

    def sample(self, n: int, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype | None = None) -> Tensor:
        """``n`` times ``[n]`` in [0, 1] (on ``device``, of ``dtype``), drawn with ``generator``."""
        raise NotImplementedError

    def cdf(self, t: Tensor) -> Tensor:
        """``P(T <= t)``, elementwise."""
        raise NotImplementedError


class UniformTime(TimeSampler):
    """``t ~ U[0, 1)`` (Lipman et al. 2023; Liu et al. 2023)."""

    def sample(self, n, generator=None, device=None, dtype=None):
        return torch.rand(n, generator=generator, device=device, dtype=dtype)

    def cdf(self, t):
        return t.clamp(0, 1)


class LogitNormalTime(TimeSampler):
    """Logit-normal times (Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3, eq. 19).

    SD3 draws its noise level ``t_SD3 = sigmoid(m + s n)``, ``n ~ N(0, 1)``, with t_SD3 = 1 at
    noise. Here ``t = 1 - t_SD3 = sigmoid(-(m + s n))``, so ``mean > 0`` puts more weight near the
    noise end exactly as in SD3. CDF: ``P(t <= a) = Phi((logit(a) + m) / s)``.
    Default ``m = 0, s = 1`` (SD3's best "lognorm(0.00, 1.00)").
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not std > 0:
            raise ValueError(f"logit-normal std must be > 0, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    def sample(self, n, generator=None, device=None, dtype=None):
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(-(self.mean + self.std * z))

    def cdf(self, t):
        logit = torch.log(t) - torch.log1p(-t)
        return 0.5 * (1 + torch.erf((logit + self.mean) / (self.std * math.sqrt(2.0))))


class BetaTime(TimeSampler):
    """pi0's shifted Beta (Black et al. 2024, "pi0", sec. B): ``Beta(a, b)`` on the *noise level*.

    pi0 writes ``A^tau = tau A + (1 - tau) eps`` (our convention, tau = t) and samples
    ``p(tau) = Beta((s - tau) / s; 1.5, 1)``: the noise level ``u = (s - t) / s ~ Beta(1.5, 1)``,
    i.e. ``t = s (1 - u)`` with cutoff ``s = 0.999`` (t never reaches the data end, where the
    target is trivial). Density ∝ (1 - t/s)^0.5: it favours noisy times. CDF (a, b = 1.5, 1):
    ``P(t <= x) = 1 - (1 - x/s)^1.5`` on [0, s]. With ``b = 1`` (default) draws are by inversion
    and honour ``generator``; other ``b`` use torch's Gamma sampler (global RNG).
    """

    def __init__(self, a: float = 1.5, b: float = 1.0, cutoff: float = 0.999):
        if not (a > 0 and b > 0):
            raise ValueError(f"Beta parameters must be > 0, got a={a!r}, b={b!r}")
        if not 0 < cutoff <= 1:
            raise ValueError(f"cutoff must be in (0, 1], got {cutoff!r}")
        self.a, self.b, self.cutoff = float(a), float(b), float(cutoff)

    def sample(self, n, generator=None, device=None, dtype=None):
        if self.b == 1.0:
            # Beta(a, 1) by inversion (u = U^{1/a}): honours the generator, no Gamma draws.
            u = torch.rand(n, generator=generator, device=device, dtype=dtype).pow(1.0 / self.a)
        else:
            g1 = torch._standard_gamma(torch.full((n,), self.a, device=device, dtype=dtype or torch.get_default_dtype()))
            g2 = torch._standard_gamma(torch.full((n,), self.b, device=device, dtype=dtype or torch.get_default_dtype()))
            u = g1 / (g1 + g2)
        return self.cutoff * (1.0 - u)

    def cdf(self, t):
        import scipy.special

        u = (1.0 - t / self.cutoff).clamp(0, 1)
        sf = torch.as_tensor(scipy.special.betainc(self.a, self.b, u.detach().cpu().double().numpy()))
        return (1.0 - sf).to(t)


class PowerTime(TimeSampler):
    """Power-law times ``p(t) = (a + 1) t^a`` on [0, 1] (Dax et al. 2023, "Flow Matching for
    Scalable Simulation-Based Inference", FMPE's time prior ``p(t) ∝ t^{1/(1+alpha)}``).

    ``a > 0`` puts more weight near the data end t = 1, where a narrow posterior makes the
    conditional field change fastest; ``a = 0`` is uniform. CDF ``t^(a+1)``; draws by inversion
    (``t = U^{1/(a+1)}``), so they honour ``generator``.
    """

    def __init__(self, a: float = 1.0):
        if not a > -1:
            raise ValueError(f"power-law exponent a must be > -1, got {a!r}")
        self.a = float(a)

    def sample(self, n, generator=None, device=None, dtype=None):
        return torch.rand(n, generator=generator, device=device, dtype=dtype).pow(1.0 / (self.a + 1.0))

    def cdf(self, t):
        return t.clamp(0, 1).pow(self.a + 1.0)


TIME_SAMPLERS = {"uniform": UniformTime, "logit-normal": LogitNormalTime, "beta": BetaTime, "power": PowerTime}


def get_time_sampler(name: str | TimeSampler, **kwargs) -> TimeSampler:
    """A time sampler by name (``uniform``, ``logit-normal``, ``beta``, ``power``) or pass one through."""
    return resolve_named(name, TIME_SAMPLERS, TimeSampler, "time_sampler", **kwargs)
