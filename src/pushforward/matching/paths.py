"""Probability paths for flow matching: affine conditional paths and their schedulers.

Time convention (DESIGN.md): t = 0 is the source (noise ``x_0``), t = 1 is the data ``x_1``.
An affine conditional path (Lipman et al. 2024, "Flow Matching Guide and Code", sec. 4.8) is

    x_t = alpha_t x_1 + sigma_t x_0,        d/dt x_t = alpha'_t x_1 + sigma'_t x_0,

with ``alpha_0 ~ 0, sigma_0 ~ 1`` and ``alpha_1 ~ 1, sigma_1 ~ 0`` (the variance-exploding path is
the exception: ``alpha_t = 1``, ``sigma_0 = sigma_max``). A scheduler is an object giving
``alpha, sigma, d_alpha, d_sigma`` at times ``t``; :class:`AffinePath` samples the path
(:class:`PathSample`) and converts between the four usual parametrisations of the learned field
(velocity, data/x_1 prediction, noise/epsilon prediction, score), all broadcasting ``t`` the same
way: ``t`` may be a float, a 0-d tensor, ``[N]``, or already ``[N, 1, ..., 1]``.

The same schedulers describe the Gaussian kernels of the score models' SDEs (VP, sub-VP, VE;
Song et al. 2021): :class:`pushforward.score.SDE` is a scheduler plus its diffusion coefficient,
evaluated at ``t = 1 - s`` for the diffusion time ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pushforward._validate import check_choice


def expand_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast times to a batch ``x`` ``[N, ...]`` (dtype and device of ``x``).

    ``t`` float or ``[]`` -> ``[]``; ``[N]`` or ``[1]`` -> ``[N or 1, 1, ..., 1]``; ``[N, 1, ..., 1]``
    as is. The one rule of every path method and of the score models' SDEs, so ``sample`` and the
    conversions agree whatever form of ``t`` they are given.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    if t.dim() == 1:
        if t.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"time t has {t.shape[0]} entries but the batch has {x.shape[0]} rows")
        return t.reshape(t.shape[0], *((1,) * (x.dim() - 1)))
    if t.dim() == x.dim() and all(s == 1 for s in t.shape[1:]):
        return t
    raise ValueError(f"time t of shape {list(t.shape)} does not broadcast to x of shape {list(x.shape)}; "
                     "give a float, [], [N] or [N, 1, ..., 1]")


class ByValue:
    """An object of Python-float parameters: repr, equality and hash by value (it pickles as is)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


# --------------------------------------------------------------------------- schedulers
class Scheduler(ByValue):
    """``(alpha_t, sigma_t)`` of an affine path and their time derivatives (elementwise in ``t``)."""

    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t``, the weight of the data ``x_1``."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma_t``, the weight of the noise ``x_0``."""
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """``d alpha_t / dt``."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """``d sigma_t / dt``."""
        raise NotImplementedError


class CondOTScheduler(Scheduler):
    """Conditional optimal transport (straight line; Lipman et al. 2023, eq. 20):

    ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t``. ``sigma_min = 0`` is rectified flow's
    straight interpolation (Liu et al. 2023); ``sigma_min > 0`` keeps a little noise at t = 1.
    """

    def __init__(self, sigma_min: float = 0.0):
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_sigma(self, t):
        return torch.full_like(t, -(1.0 - self.sigma_min))


class PolynomialScheduler(Scheduler):
    """``alpha_t = t^n``, ``sigma_t = 1 - t^n`` (n = 1 is the OT path; larger n spends more time near noise)."""

    def __init__(self, n: float = 2.0):
        if not n > 0:
            raise ValueError(f"polynomial exponent must be > 0, got {n!r}")
        self.n = float(n)

    def alpha(self, t):
        return t.clamp_min(0).pow(self.n)  # t < 0 (a solver overshooting the noise end) would give NaN

    def sigma(self, t):
        return 1.0 - t.clamp_min(0).pow(self.n)

    def d_alpha(self, t):
        return self.n * t.clamp_min(0).pow(self.n - 1) if self.n != 1 else torch.ones_like(t)

    def d_sigma(self, t):
        return -self.d_alpha(t)


class VPScheduler(Scheduler):
    """Variance preserving diffusion path (Song et al. 2021 VP-SDE; Lipman et al. 2023, eq. 19).

    With diffusion time ``s = eps + (1 - eps)(1 - t)`` (diffusion runs the other way: s = 1 is
    noise), ``T(s) = beta_min s / 2 + (beta_max - beta_min) s^2 / 4`` (half the integrated
    ``beta(s) = beta_min + s (beta_max - beta_min)``), ``alpha_t = exp(-T(s))``,
    ``sigma_t = sqrt(1 - alpha_t^2)``. ``eps`` (default 1e-3, as score models stop at) keeps
    ``sigma'_t`` finite at t = 1 (``sigma_1 ~ 0.01``); at t = 0, ``alpha_0 = exp(-T(1)) ~ 0.007``
    with the default betas. ``eps = 0`` is the SDE's own clock ``s = 1 - t``
    (:class:`pushforward.score.VPSDE`, which stops at its ``s_eps`` instead). Outside [0, 1]
    (adaptive solvers overshoot the ends) the schedule is held at its end values.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3):
        if not (0 <= beta_min <= beta_max and beta_max > 0):
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min!r}, "
                             f"beta_max={beta_max!r}")
        if not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {eps!r}")
        self.beta_min, self.beta_max, self.eps = float(beta_min), float(beta_max), float(eps)

    def _s(self, t):
        # Adaptive solvers step a little past the ends (dopri5 evaluates at t = 1.008): s < 0 there
        # would make 1 - alpha^2 negative and sigma NaN, so the schedule is held constant outside [0, 1].
        return self.eps + (1.0 - self.eps) * (1.0 - t.clamp(0.0, 1.0))

    def _T(self, s):
        return 0.5 * self.beta_min * s + 0.25 * (self.beta_max - self.beta_min) * s * s

    def _dT(self, s):
        return 0.5 * self.beta_min + 0.5 * (self.beta_max - self.beta_min) * s

    def alpha(self, t):
        return torch.exp(-self._T(self._s(t)))

    def sigma(self, t):
        # 1 - exp(-2T) via expm1: accurate when sigma is small (t near 1).
        return torch.sqrt(-torch.expm1(-2.0 * self._T(self._s(t))))

    def d_alpha(self, t):
        s = self._s(t)
        return (1.0 - self.eps) * self._dT(s) * torch.exp(-self._T(s))

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


class SubVPScheduler(VPScheduler):
    """Sub-variance preserving path (Song et al. 2021, eq. 13): VP's ``alpha_t``,
    ``sigma_t = 1 - alpha_t^2`` (below VP's ``sqrt(1 - alpha_t^2)`` at every t).

    Same clock ``s(t)`` and arguments as :class:`VPScheduler`.
    """

    def sigma(self, t):
        return -torch.expm1(-2.0 * self._T(self._s(t)))

    def d_sigma(self, t):
        return -2.0 * self.alpha(t) * self.d_alpha(t)


class VEScheduler(Scheduler):
    """Variance exploding path (Song et al. 2021, eq. 9; continuous NCSN): ``alpha_t = 1``,
    ``sigma_t = sigma_min (sigma_max / sigma_min)^(1 - t)``.

    Unlike the other schedulers the source is ``N(0, sigma_max^2 I)`` at t = 0, and the data keep
    a blur ``sigma_min`` at t = 1 (as in the paper's code).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 6.0):
        if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min!r}, "
                             f"sigma_max={sigma_max!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def log_ratio(self) -> float:
        """``log(sigma_max / sigma_min)``."""
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp((1.0 - t) * self.log_ratio)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return -self.log_ratio * self.sigma(t)


class CosineScheduler(Scheduler):
    """``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)`` (Nichol & Dhariwal 2021; variance preserving)."""

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


SCHEDULERS = {"ot": CondOTScheduler, "polynomial": PolynomialScheduler, "vp": VPScheduler,
              "subvp": SubVPScheduler, "ve": VEScheduler, "cosine": CosineScheduler}


def get_scheduler(name: str | Scheduler, **kwargs) -> Scheduler:
    """A scheduler by name (``ot``, ``polynomial``, ``vp``, ``subvp``, ``ve``, ``cosine``) or pass one through."""
    if isinstance(name, Scheduler):
        return name
    return SCHEDULERS[check_choice(name, tuple(SCHEDULERS), "path")](**kwargs)


# --------------------------------------------------------------------------- paths
@dataclass
class PathSample:
    """One draw from a conditional path.

    Attributes:
        x_0: source (noise) ``[N, ...]``. x_1: data ``[N, ...]``. t: times ``[N]``.
        x_t: the point on the path ``[N, ...]``. dx_t: the conditional (target) velocity
            ``d/dt x_t`` ``[N, ...]``, the flow matching regression target.
    """

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor


class AffinePath:
    """``x_t = alpha_t x_1 + sigma_t x_0`` for a :class:`Scheduler` (Lipman et al. 2024, sec. 4.8).

    The conversions assume the field was trained on this path with a standard normal source; they
    all take ``t`` as a float, ``[]``, ``[N]`` or ``[N, 1, ..]`` (:func:`expand_time`).

    >>> path = AffinePath(CondOTScheduler())
    >>> s = path.sample(torch.zeros(4, 2), torch.ones(4, 2), torch.full((4,), 0.25))
    >>> s.x_t[0].tolist(), s.dx_t[0].tolist()
    ([0.25, 0.25], [1.0, 1.0])
    """

    def __init__(self, scheduler: Scheduler | str = "ot", **kwargs):
        self.scheduler = get_scheduler(scheduler, **kwargs)

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    def _coeffs(self, t, x):
        t = expand_time(t, x)
        s = self.scheduler
        return s.alpha(t), s.sigma(t), s.d_alpha(t), s.d_sigma(t)

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Points and target velocities: x_0, x_1 ``[N, ...]``, t ``[N]`` -> :class:`PathSample`."""
        if x_0.shape != x_1.shape:
            raise ValueError(f"x_0 {list(x_0.shape)} and x_1 {list(x_1.shape)} must have the same shape")
        a, s, da, ds = self._coeffs(t, x_1)
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=a * x_1 + s * x_0, dx_t=da * x_1 + ds * x_0)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.scheduler == other.scheduler

    __hash__ = None  # holds a scheduler; compared by value

    # x_1 prediction <-> velocity: u = da x1 + ds x0 with x0 = (x - a x1) / s.
    def target_to_velocity(self, x_1: Tensor, x_t: Tensor, t) -> Tensor:
        """Data prediction ``x_1 = E[x_1 | x_t]`` -> velocity ``u = (s' / s) x_t + (a' - s' a / s) x_1``."""
        a, s, da, ds = self._coeffs(t, x_t)
        return (ds / s) * x_t + (da - ds * a / s) * x_1

    def velocity_to_target(self, velocity: Tensor, x_t: Tensor, t) -> Tensor:
        """Velocity -> data prediction ``x_1 = (s u - s' x_t) / (a' s - s' a)``."""
        a, s, da, ds = self._coeffs(t, x_t)
        return (s * velocity - ds * x_t) / (da * s - ds * a)

    # noise prediction <-> velocity: x1 = (x - s eps) / a.
    def epsilon_velocity_coeffs(self, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        """``(A, B)`` with ``u = A x_t + B eps``: ``A = a' / a``, ``B = s' - a' s / a`` (broadcastable to ``x_t``).

        The velocity is affine in the noise prediction; a divergence of ``u`` follows from that of
        ``eps`` as ``A D + B div eps`` (used by the score models' exact trace).
        """
        a, s, da, ds = self._coeffs(t, x_t)
        return da / a, ds - da * s / a

    def epsilon_to_velocity(self, epsilon: Tensor, x_t: Tensor, t) -> Tensor:
        """Noise prediction ``eps = E[x_0 | x_t]`` -> velocity ``u = (a' / a) x_t + (s' - a' s / a) eps``."""
        A, B = self.epsilon_velocity_coeffs(x_t, t)
        return A * x_t + B * epsilon

    def velocity_to_epsilon(self, velocity: Tensor, x_t: Tensor, t) -> Tensor:
        """Velocity -> noise prediction ``eps = (a u - a' x_t) / (a s' - a' s)``."""
        a, s, da, ds = self._coeffs(t, x_t)
        return (a * velocity - da * x_t) / (a * ds - da * s)

    def target_to_epsilon(self, x_1: Tensor, x_t: Tensor, t) -> Tensor:
        """``eps = (x_t - a x_1) / s``."""
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - a * x_1) / s

    def epsilon_to_target(self, epsilon: Tensor, x_t: Tensor, t) -> Tensor:
        """``x_1 = (x_t - s eps) / a``."""
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - s * epsilon) / a

    # score of p_t for a N(0, I) source (Tweedie): grad log p_t(x) = -E[x_0 | x_t = x] / sigma_t.
    def epsilon_to_score(self, epsilon: Tensor, x_t: Tensor, t) -> Tensor:
        """Noise prediction -> score ``grad log p_t(x_t) = -eps / sigma_t`` (standard normal source)."""
        _, s, _, _ = self._coeffs(t, x_t)
        return -epsilon / s

    def score_to_epsilon(self, score: Tensor, x_t: Tensor, t) -> Tensor:
        """Score -> noise prediction ``eps = -sigma_t score``."""
        _, s, _, _ = self._coeffs(t, x_t)
        return -s * score

    def target_to_score(self, x_1: Tensor, x_t: Tensor, t) -> Tensor:
        """Data prediction -> score ``(a x_1 - x_t) / sigma_t^2``."""
        a, s, _, _ = self._coeffs(t, x_t)
        return (a * x_1 - x_t) / (s * s)

    def score_to_target(self, score: Tensor, x_t: Tensor, t) -> Tensor:
        """Tweedie's formula (Efron 2011): ``E[x_1 | x_t] = (x_t + sigma_t^2 score) / a``."""
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t + s * s * score) / a

    def velocity_to_score(self, velocity: Tensor, x_t: Tensor, t) -> Tensor:
        """Velocity -> score ``-eps / sigma_t`` (standard normal source)."""
        return self.epsilon_to_score(self.velocity_to_epsilon(velocity, x_t, t), x_t, t)

    def score_to_velocity(self, score: Tensor, x_t: Tensor, t) -> Tensor:
        """Score -> velocity via ``eps = -sigma_t score`` (standard normal source). For an SDE this
        is minus the probability-flow drift ``f - g^2 score / 2`` in diffusion time (Song et al. 2021, eq. 13)."""
        return self.epsilon_to_velocity(self.score_to_epsilon(score, x_t, t), x_t, t)


class BrownianBridgePath:
    """Brownian bridge between paired points (Schrödinger-bridge CFM; Tong et al. 2024, eq. 19-20):

    ``x_t = t x_1 + (1 - t) x_0 + sigma sqrt(t (1 - t)) z``, ``z ~ N(0, I)``, with conditional velocity
    ``u_t = x_1 - x_0 + (1 - 2t) / (2 t (1 - t)) (x_t - t x_1 - (1 - t) x_0)``. Paired with an
    entropic OT coupling of regularisation ``2 sigma^2`` it regresses the Schrödinger bridge's
    probability-flow velocity. ``t`` is clamped to [1e-4, 1 - 1e-4] in the velocity so ``u`` stays finite.
    """

    def __init__(self, sigma: float = 0.5):
        if not sigma > 0:
            raise ValueError(f"bridge sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"BrownianBridgePath(sigma={self.sigma})"

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> PathSample:
        """As :meth:`AffinePath.sample`, plus the bridge noise."""
        te = expand_time(t, x_1)
        mu = te * x_1 + (1 - te) * x_0
        z = torch.randn(x_1.shape, generator=generator, dtype=x_1.dtype, device=x_1.device)
        noise = self.sigma * torch.sqrt(te * (1 - te)) * z
        tc = te.clamp(1e-4, 1 - 1e-4)
        # (1 - 2t) / (2 t (1 - t)) * sigma sqrt(t (1 - t)) z, simplified to avoid 0/0 at the ends.
        drift = (1 - 2 * tc) / (2 * torch.sqrt(tc * (1 - tc))) * self.sigma * z
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=mu + noise, dx_t=x_1 - x_0 + drift)
