"""Forward SDEs of score-based generative models (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR).

An SDE here is a Gaussian path plus its diffusion coefficient. Every SDE ``dx = f(x, s) ds +
g(s) dw`` below has an affine drift, so its perturbation kernel is the affine path of a
:class:`~pushforward.matching.paths.Scheduler`::

    p_s(x_s | x_1) = N(x_s; m(s) x_1, sigma(s)^2 I),   m(s) = alpha_t,  sigma(s) = sigma_t,  t = 1 - s,

with ``x_1`` the data and ``eps = x_0 ~ N(0, I)`` the noise, as in :mod:`pushforward.matching`.
The SDE object keeps only what a path does not have: the drift ``f(x, s) = (m'/m) x``, the
diffusion ``g(s)``, the prior and the cut-off ``s_eps``; the conversions between velocity, data,
noise and score are the path's (:class:`~pushforward.matching.paths.AffinePath`, library time).

Time convention. These classes run *diffusion time* ``s`` as in the paper: ``s = 0`` is the data
and ``s = 1`` the noise prior. The library's time (DESIGN.md) runs the other way, ``t = 0`` noise,
``t = 1`` data; an SDE evaluates its scheduler at ``t = 1 - s`` and
:class:`~pushforward.score.ScoreModel` converts at its boundary. Time arguments ``s`` may be a
float, a 0-d tensor, ``[N]`` or ``[N, 1, ...]``; methods that take ``x`` broadcast ``s`` against
it with :func:`~pushforward.matching.paths.expand_time`. An SDE holds only Python floats, so it
pickles with its model.

The cut-off ``s_eps``: the reverse-time dynamics are singular at ``s = 0`` (``sigma -> 0``), so
training draws ``s ~ U[s_eps, 1]`` and samplers/likelihoods stop at ``s_eps``. The densities a
model reports are those of ``p_{s_eps}``, the data perturbed by ``N(0, sigma(s_eps)^2)`` (about
0.01 for the defaults below). Song et al. use ``1e-5`` for training and likelihoods and ``1e-3``
for sampling; here one value serves all three: ``1e-3`` for VP/sub-VP (their ``sigma(s)`` behaves
like ``sqrt(s)``, so ``1e-5`` makes the probability-flow ODE stiff in its last step) and ``1e-5``
for VE (whose noise scale never drops below ``sigma_min``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward._validate import check_choice, check_positive_float
from pushforward.distributions import Distribution
from pushforward.matching.paths import (
    AffinePath,
    Scheduler,
    SubVPScheduler,
    VEScheduler,
    VPScheduler,
    expand_time,
)
from pushforward.transforms.base import sum_except_batch

LOG_2PI = math.log(2 * math.pi)
TimeLike = float | Tensor


def _as_time(s: TimeLike) -> Tensor:
    return s if isinstance(s, Tensor) else torch.as_tensor(s, dtype=torch.get_default_dtype())


def _normal_log_prob(x: Tensor, std: float) -> Tensor:
    """``log N(x; 0, std^2 I)`` ``[N, ...] -> [N]``."""
    v = std ** 2
    return sum_except_batch(-0.5 * x.pow(2) / v - 0.5 * math.log(v) - 0.5 * LOG_2PI)


def _from_scheduler(name: str) -> property:
    # The SDE's parameters live once, in its scheduler.
    return property(lambda self: getattr(self.scheduler, name), doc=f"The scheduler's ``{name}``.")


def _check_s_eps(s_eps: float) -> float:
    if isinstance(s_eps, bool) or not isinstance(s_eps, (int, float)) or not (0 < s_eps < 0.5):
        raise ValueError(f"s_eps must be in (0, 0.5), got {s_eps!r}")
    return float(s_eps)


class SDE:
    """``dx = f(x, s) ds + g(s) dw`` on ``s in [0, 1]`` whose kernel is the path of ``scheduler``.

    For a linear SDE the kernel fixes the coefficients: ``f(x, s) = (m'/m) x`` and, from the
    kernel's variance ODE ``d sigma^2 / ds = 2 (m'/m) sigma^2 + g^2``,
    ``g(s)^2 = 2 sigma (sigma' - (m'/m) sigma)`` (primes: ``d/ds``). Subclasses give ``g`` in
    closed form where that expression is ``0 * inf`` at ``s = 0``.

    Args:
        scheduler: a :class:`~pushforward.matching.paths.Scheduler` (or its name); ``sigma`` must
            grow with ``s`` (noise grows with diffusion time).
        s_eps: smallest diffusion time used by training, samplers and likelihoods.
        prior_std: standard deviation of the prior ``N(0, prior_std^2 I)`` at ``s = 1``.
    """

    def __init__(self, scheduler: Scheduler | str, s_eps: float = 1e-3, prior_std: float = 1.0):
        self.path = AffinePath(scheduler)
        self.s_eps = _check_s_eps(s_eps)
        self.prior_std = check_positive_float(prior_std, "prior_std")

    @property
    def scheduler(self) -> Scheduler:
        """The path's scheduler (library time ``t = 1 - s``)."""
        return self.path.scheduler

    # ------------------------------------------------------------------ coefficients (elementwise in s)
    def _t(self, s: TimeLike) -> Tensor:
        return 1.0 - _as_time(s)

    def mean_coeff(self, s: TimeLike) -> Tensor:
        """``m(s) = alpha_{1 - s}``."""
        return self.scheduler.alpha(self._t(s))

    def std(self, s: TimeLike) -> Tensor:
        """``sigma(s) = sigma_{1 - s}``, the standard deviation of ``p_s(x_s | x_1)``."""
        return self.scheduler.sigma(self._t(s))

    def dmean_coeff(self, s: TimeLike) -> Tensor:
        """``d m / ds``."""
        return -self.scheduler.d_alpha(self._t(s))

    def dstd(self, s: TimeLike) -> Tensor:
        """``d sigma / ds``."""
        return -self.scheduler.d_sigma(self._t(s))

    def drift_coeff(self, s: TimeLike) -> Tensor:
        """``a(s) = m'(s) / m(s)``, with ``f(x, s) = a(s) x`` (affine drift)."""
        t = self._t(s)
        return -self.scheduler.d_alpha(t) / self.scheduler.alpha(t)

    def diffusion(self, s: TimeLike) -> Tensor:
        """``g(s) = sqrt(2 sigma (sigma' - a sigma))`` (see the class docstring)."""
        sd = self.std(s)
        return torch.sqrt(2.0 * sd * (self.dstd(s) - self.drift_coeff(s) * sd))

    # ------------------------------------------------------------------ on data
    def drift(self, x: Tensor, s: TimeLike) -> Tensor:
        """``f(x, s)`` ``[N, ...]``."""
        return self.drift_coeff(expand_time(s, x)) * x

    def marginal(self, x_1: Tensor, s: TimeLike) -> tuple[Tensor, Tensor]:
        """Mean ``m(s) x_1`` ``[N, ...]`` and std ``sigma(s)`` (broadcastable) of ``p_s(x_s | x_1)``."""
        s = expand_time(s, x_1)
        return self.mean_coeff(s) * x_1, self.std(s)

    def perturb(self, x_1: Tensor, s: TimeLike, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``x_s = m(s) x_1 + sigma(s) eps`` from data ``x_1``; returns ``(x_s, eps)``, both ``[N, ...]``."""
        if noise is None:
            noise = torch.randn(x_1.shape, generator=generator, dtype=x_1.dtype, device=x_1.device)
        mean, std = self.marginal(x_1, s)
        return mean + std * noise, noise

    # ------------------------------------------------------------------ prior at s = 1
    def prior_sample(self, shape, generator: torch.Generator | None = None, *, dtype=None, device=None) -> Tensor:
        """Draw from the prior ``N(0, prior_std^2 I)``, shape ``[n, ...]``."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std^2 I)`` ``[N, ...] -> [N]``."""
        return _normal_log_prob(x, self.prior_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheduler!r}, s_eps={self.s_eps!r}, prior_std={self.prior_std!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # mutable float holder

    def __setstate__(self, state: dict) -> None:
        if "path" not in state:
            # A VP/sub-VP/VE SDE pickled before SDEs held a scheduler (a hand-assembled model saved
            # whole): its floats are exactly its constructor's arguments, plus the derived prior_std.
            type(self).__init__(self, **{k: v for k, v in state.items() if k != "prior_std"})
            return
        self.__dict__.update(state)


class VPSDE(SDE):
    """Variance-preserving SDE (Song et al. 2021, eq. 11; the continuous limit of DDPM)::

        dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw,   beta(s) = beta_min + s (beta_max - beta_min)
        log m(s) = -1/4 s^2 (beta_max - beta_min) - 1/2 s beta_min,   sigma(s)^2 = 1 - m(s)^2

    The path of :class:`~pushforward.matching.paths.VPScheduler` with ``eps = 0``. Prior
    ``N(0, I)`` (``m(1) ~ 0.0066`` for the defaults, so the prior matches ``p_1`` to ~1e-5 in KL
    per dimension for standardized data).
    """

    _scheduler = VPScheduler

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, s_eps: float = 1e-3):
        check_positive_float(beta_min, "beta_min")
        check_positive_float(beta_max, "beta_max")
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        super().__init__(self._scheduler(beta_min, beta_max, eps=0.0), s_eps, prior_std=1.0)

    beta_min = _from_scheduler("beta_min")
    beta_max = _from_scheduler("beta_max")

    def beta(self, s: TimeLike) -> Tensor:
        """``beta(s)``, the linear noise rate."""
        return self.beta_min + _as_time(s) * (self.beta_max - self.beta_min)

    def integrated_beta(self, s: TimeLike) -> Tensor:
        """``B(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2 = -2 log m(s)``."""
        s = _as_time(s)
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s

    def diffusion(self, s: TimeLike) -> Tensor:
        """``g(s) = sqrt(beta(s))``."""
        return torch.sqrt(self.beta(s))


class SubVPSDE(VPSDE):
    """Sub-variance-preserving SDE (Song et al. 2021, eq. 13)::

        dx = -1/2 beta(s) x ds + sqrt(beta(s) (1 - exp(-2 B(s)))) dw,   B(s) = int_0^s beta
        m(s) as for VP,   sigma(s) = 1 - m(s)^2  (variance below VP's at every s)

    The path of :class:`~pushforward.matching.paths.SubVPScheduler`. Prior ``N(0, I)``.
    """

    _scheduler = SubVPScheduler

    def diffusion(self, s: TimeLike) -> Tensor:
        """``g(s) = sqrt(beta(s) (1 - exp(-2 B(s))))``."""
        return torch.sqrt(self.beta(s) * -torch.expm1(-2 * self.integrated_beta(s)))


class VESDE(SDE):
    """Variance-exploding SDE (Song et al. 2021, eq. 9; the continuous limit of NCSN/SMLD)::

        dx = sqrt(d sigma(s)^2 / ds) dw,   sigma(s) = sigma_min (sigma_max / sigma_min)^s
        g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min)),   m(s) = 1

    The path of :class:`~pushforward.matching.paths.VEScheduler`. As in the paper's code, the
    kernel's std is ``sigma(s)`` itself, i.e. the process starts at ``s = 0`` from the data
    convolved with ``N(0, sigma_min^2)``. Prior ``N(0, sigma_max^2 I)``.

    ``sigma_max`` should be about the largest pairwise distance between training points (Song &
    Ermon 2020, "Improved Techniques", technique 1) so that ``p_1`` is close to the prior;
    :func:`default_sigma_max` gives a value for standardized data (docs/score.md).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 6.0, s_eps: float = 1e-5):
        check_positive_float(sigma_min, "sigma_min")
        check_positive_float(sigma_max, "sigma_max")
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")
        super().__init__(VEScheduler(sigma_min, sigma_max), s_eps, prior_std=float(sigma_max))

    sigma_min = _from_scheduler("sigma_min")
    sigma_max = _from_scheduler("sigma_max")
    log_ratio = _from_scheduler("log_ratio")

    def diffusion(self, s: TimeLike) -> Tensor:
        """``g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min))``."""
        return self.std(s) * math.sqrt(2 * self.log_ratio)


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def default_sigma_max(dim: int) -> float:
    """Default VE ``sigma_max`` for standardized data in ``dim`` dimensions: ``3 sqrt(2 dim)``.

    Pairs of standardized points are ``sqrt(2 D)`` apart on average; three times that covers the
    largest pairwise distances of the toy sets (docs/score.md).
    """
    return 3.0 * math.sqrt(2.0 * dim)


def make_sde(name: str, dim: int, *, beta_min: float = 0.1, beta_max: float = 20.0, sigma_min: float = 0.01,
             sigma_max: float | None = None, s_eps: float | None = None) -> SDE:
    """The SDE named ``"vp"``, ``"subvp"`` or ``"ve"`` for data of ``dim`` dimensions.

    VP/sub-VP take ``beta_min, beta_max``; VE takes ``sigma_min, sigma_max`` (None:
    :func:`default_sigma_max` of ``dim``). ``s_eps=None``: the SDE's own default.
    """
    check_choice(name, tuple(SDES), "sde")
    extra = {} if s_eps is None else {"s_eps": s_eps}
    if name == "ve":
        return VESDE(sigma_min, default_sigma_max(dim) if sigma_max is None else sigma_max, **extra)
    return SDES[name](beta_min, beta_max, **extra)


class SDEPrior(Distribution):
    """The SDE's prior ``N(0, sigma^2 I)`` at ``s = 1`` as a base distribution (no parameters)."""

    def __init__(self, event_shape, std: float = 1.0):
        super().__init__(event_shape)
        self.std = check_positive_float(std, "std")

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return _normal_log_prob(x, self.std)

    def sample(self, n, context=None, generator=None):
        return self.std * self._randn(n, generator)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, std={self.std}"
