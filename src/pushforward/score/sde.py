"""Forward SDEs of score-based generative models (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR).

Time convention. These classes run *diffusion time* ``s`` as in the paper: ``s = 0`` is the data
and ``s = 1`` the noise prior. The library's time (DESIGN.md) runs the other way, ``t = 0`` noise,
``t = 1`` data; :class:`~pushforward.score.ScoreModel` converts at its boundary with ``s = 1 - t``.

Every SDE ``dx = f(x, s) ds + g(s) dw`` here has an affine drift, so its perturbation kernel is
Gaussian in closed form::

    p_s(x_s | x_0) = N(x_s; m(s) x_0, sigma(s)^2 I),  i.e.  x_s = m(s) x_0 + sigma(s) eps.

Time arguments ``s`` may be a float, a 0-d tensor, ``[N]`` or ``[N, 1, ...]``; methods that take
``x`` broadcast ``s`` against it (see :func:`broadcast_time`). Everything follows the dtype and
device of the inputs; an SDE holds only Python floats, so it pickles with its model.

The cut-off ``s_eps``: the reverse-time dynamics are singular at ``s = 0`` (``sigma -> 0``), so
training draws ``s ~ U[s_eps, 1]`` and samplers/likelihoods stop at ``s_eps``. The densities a
model reports are those of ``p_{s_eps}``, the data perturbed by ``N(0, sigma(s_eps)^2)`` (about
0.01 for the defaults below). Song et al. use ``1e-5`` for training and likelihoods and ``1e-3``
for sampling; here one value serves all three: ``1e-3`` for VP/sub-VP (their ``sigma(s)`` and
its derivative behave like ``sqrt(s)``, so ``1e-5`` makes the probability-flow ODE stiff in its
last step for no visible gain on the data scales used here) and ``1e-5`` for VE (whose noise
scale never drops below ``sigma_min``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward.distributions import Distribution
from pushforward.transforms.base import sum_except_batch

LOG_2PI = math.log(2 * math.pi)
TimeLike = float | Tensor


def broadcast_time(s: TimeLike, like: Tensor) -> Tensor:
    """``s`` as a tensor broadcastable against ``like`` ``[N, ...]`` (dtype/device of ``like``).

    Accepts a float, a 0-d tensor (returned 0-d), ``[N]`` (reshaped to ``[N, 1, ..., 1]``) or a
    tensor with ``like.dim()`` dimensions that broadcasts (e.g. ``[N, 1]`` for ``[N, D]``).
    """
    s = torch.as_tensor(s, dtype=like.dtype, device=like.device)
    if s.dim() == 0:
        return s
    if s.dim() == 1 and like.dim() >= 1 and s.shape[0] in (like.shape[0], 1):
        return s.reshape(s.shape[0], *([1] * (like.dim() - 1)))
    if s.dim() == like.dim():
        try:
            torch.broadcast_shapes(s.shape, like.shape)
            return s
        except RuntimeError:
            pass
    raise ValueError(f"time must be a float, 0-d, [N] or [N, 1, ...] tensor broadcastable to x of shape "
                     f"{list(like.shape)}; got shape {list(s.shape)}")


def _as_time(s: TimeLike, like: Tensor | None = None) -> Tensor:
    if like is not None:
        return broadcast_time(s, like)
    return torch.as_tensor(s, dtype=torch.get_default_dtype() if not isinstance(s, Tensor) else None)


class SDE:
    """Base class: an SDE ``dx = f(x, s) ds + g(s) dw`` on ``s in [0, 1]`` with Gaussian kernels.

    Subclasses implement :meth:`log_mean_coeff`, :meth:`std`, their derivatives, :meth:`beta`-like
    coefficients through :meth:`drift_coeff` (``f(x, s) = drift_coeff(s) * x``) and :meth:`diffusion`.

    Attributes:
        s_eps: smallest diffusion time used by training, samplers and likelihoods.
        prior_std: standard deviation of the prior ``N(0, prior_std^2 I)`` at ``s = 1``.
    """

    s_eps: float = 1e-3
    prior_std: float = 1.0

    # ------------------------------------------------------------------ coefficients (s: tensor)
    def log_mean_coeff(self, s: Tensor) -> Tensor:
        """``log m(s)``."""
        raise NotImplementedError

    def std(self, s: Tensor) -> Tensor:
        """``sigma(s)``, the standard deviation of ``p_s(x_s | x_0)``."""
        raise NotImplementedError

    def dlog_mean_coeff(self, s: Tensor) -> Tensor:
        """``d log m / ds = m'(s) / m(s)``."""
        raise NotImplementedError

    def dstd(self, s: Tensor) -> Tensor:
        """``d sigma / ds``."""
        raise NotImplementedError

    def drift_coeff(self, s: Tensor) -> Tensor:
        """``a(s)`` with ``f(x, s) = a(s) x`` (affine drift); equals ``d log m / ds``."""
        return self.dlog_mean_coeff(s)

    def diffusion(self, s: TimeLike) -> Tensor:
        """``g(s)``."""
        raise NotImplementedError

    def mean_coeff(self, s: Tensor) -> Tensor:
        """``m(s) = exp(log m(s))``."""
        return torch.exp(self.log_mean_coeff(s))

    def dmean_coeff(self, s: Tensor) -> Tensor:
        """``d m / ds``."""
        return self.mean_coeff(s) * self.dlog_mean_coeff(s)

    # ------------------------------------------------------------------ on data
    def drift(self, x: Tensor, s: TimeLike) -> Tensor:
        """``f(x, s)`` ``[N, ...]``."""
        return self.drift_coeff(broadcast_time(s, x)) * x

    def marginal(self, x0: Tensor, s: TimeLike) -> tuple[Tensor, Tensor]:
        """Mean ``m(s) x_0`` ``[N, ...]`` and std ``sigma(s)`` (broadcastable) of ``p_s(x_s | x_0)``."""
        s = broadcast_time(s, x0)
        return self.mean_coeff(s) * x0, self.std(s)

    def perturb(self, x0: Tensor, s: TimeLike, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``x_s = m(s) x_0 + sigma(s) eps``; returns ``(x_s, eps)``, both ``[N, ...]``."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        mean, std = self.marginal(x0, s)
        return mean + std * noise, noise

    # ------------------------------------------------------------------ prior at s = 1
    def prior_sample(self, shape, generator: torch.Generator | None = None, *, dtype=None, device=None) -> Tensor:
        """Draw from the prior ``N(0, prior_std^2 I)``, shape ``[n, ...]``."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std^2 I)`` ``[N, ...] -> [N]``."""
        v = self.prior_std ** 2
        return sum_except_batch(-0.5 * x.pow(2) / v - 0.5 * math.log(v) - 0.5 * LOG_2PI)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # mutable float holder


def _check_positive(**kw: float) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or not math.isfinite(v):
            raise ValueError(f"{k} must be a positive finite number, got {v!r}")


def _check_s_eps(s_eps: float) -> float:
    if isinstance(s_eps, bool) or not isinstance(s_eps, (int, float)) or not (0 < s_eps < 0.5):
        raise ValueError(f"s_eps must be in (0, 0.5), got {s_eps!r}")
    return float(s_eps)


class VPSDE(SDE):
    """Variance-preserving SDE (Song et al. 2021, eq. 11; the continuous limit of DDPM)::

        dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw,   beta(s) = beta_min + s (beta_max - beta_min)
        log m(s) = -1/4 s^2 (beta_max - beta_min) - 1/2 s beta_min,   sigma(s)^2 = 1 - m(s)^2

    Prior ``N(0, I)`` (``m(1) ~ 0.0066`` for the defaults, so the prior matches ``p_1`` to
    ~1e-5 in KL per dimension for standardized data).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, s_eps: float = 1e-3):
        _check_positive(beta_min=beta_min, beta_max=beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.beta_min, self.beta_max, self.s_eps = float(beta_min), float(beta_max), _check_s_eps(s_eps)
        self.prior_std = 1.0

    def beta(self, s: TimeLike) -> Tensor:
        """``beta(s)``, the linear noise rate."""
        s = _as_time(s)
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def integrated_beta(self, s: Tensor) -> Tensor:
        """``B(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2 = -2 log m(s)``."""
        s = _as_time(s)
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s

    def log_mean_coeff(self, s):
        return -0.5 * self.integrated_beta(s)

    def dlog_mean_coeff(self, s):
        return -0.5 * self.beta(s)

    def std(self, s):
        # expm1 keeps sigma accurate near s = 0, where 1 - m^2 ~ beta_min s
        return torch.sqrt(-torch.expm1(-self.integrated_beta(s)))

    def dstd(self, s):
        # d/ds sqrt(1 - e^{-B}) = beta e^{-B} / (2 sigma)
        return self.beta(s) * torch.exp(-self.integrated_beta(s)) / (2 * self.std(s))

    def diffusion(self, s):
        return torch.sqrt(self.beta(s))


class SubVPSDE(VPSDE):
    """Sub-variance-preserving SDE (Song et al. 2021, eq. 13)::

        dx = -1/2 beta(s) x ds + sqrt(beta(s) (1 - exp(-2 B(s)))) dw,   B(s) = int_0^s beta
        m(s) as for VP,   sigma(s) = 1 - m(s)^2  (variance below VP's at every s)

    Prior ``N(0, I)``.
    """

    def std(self, s):
        return -torch.expm1(-self.integrated_beta(s))

    def dstd(self, s):
        return self.beta(s) * torch.exp(-self.integrated_beta(s))

    def diffusion(self, s):
        s = _as_time(s)
        return torch.sqrt(self.beta(s) * -torch.expm1(-2 * self.integrated_beta(s)))


class VESDE(SDE):
    """Variance-exploding SDE (Song et al. 2021, eq. 9; the continuous limit of NCSN/SMLD)::

        dx = sqrt(d sigma(s)^2 / ds) dw,   sigma(s) = sigma_min (sigma_max / sigma_min)^s
        g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min)),   m(s) = 1

    As in the paper's code, the kernel's std is ``sigma(s)`` itself, i.e. the process starts at
    ``s = 0`` from the data convolved with ``N(0, sigma_min^2)`` (``sigma_min = 0.01``: invisible
    at the scale of standardized data). Prior ``N(0, sigma_max^2 I)``.

    ``sigma_max``: Song & Ermon (2020, "Improved Techniques", technique 1) take it as large as the
    largest pairwise distance between training points, so that ``p_1`` is close to the prior.
    The model works on standardized data, where pairs are ``sqrt(2 D)`` apart on average and the
    largest distances of 2-D toy sets (rings, spirals, checkerboards, Gaussians with ~10^4
    points) are 3 to 9; the default :func:`default_sigma_max` ``= 3 sqrt(2 D)`` (6 for D = 2,
    13.4 for D = 10) covers those. ``p_1`` is then the data convolved with
    ``N(0, sigma_max^2)``, KL-close to the prior (variance ratio ``1 + 1/sigma_max^2``:
    ~4e-4 nats for D = 2). Larger values (the paper's 50 for CIFAR-10 pixels) only spend
    sampler steps on noise levels that carry no information.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 6.0, s_eps: float = 1e-5):
        _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")
        self.sigma_min, self.sigma_max, self.s_eps = float(sigma_min), float(sigma_max), _check_s_eps(s_eps)
        self.prior_std = float(sigma_max)

    @property
    def log_ratio(self) -> float:
        """``log(sigma_max / sigma_min)``."""
        return math.log(self.sigma_max / self.sigma_min)

    def log_mean_coeff(self, s):
        return torch.zeros_like(_as_time(s))

    def dlog_mean_coeff(self, s):
        return torch.zeros_like(_as_time(s))

    def std(self, s):
        return self.sigma_min * torch.exp(_as_time(s) * self.log_ratio)

    def dstd(self, s):
        return self.std(s) * self.log_ratio

    def diffusion(self, s):
        return self.std(_as_time(s)) * math.sqrt(2 * self.log_ratio)


def default_sigma_max(dim: int) -> float:
    """Default VE ``sigma_max`` for standardized data in ``dim`` dimensions: ``3 sqrt(2 dim)``."""
    return 3.0 * math.sqrt(2.0 * dim)


class SDEPrior(Distribution):
    """The SDE's prior ``N(0, sigma^2 I)`` at ``s = 1`` as a base distribution (no parameters)."""

    def __init__(self, event_shape, std: float = 1.0):
        super().__init__(event_shape)
        _check_positive(std=std)
        self.std = float(std)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        v = self.std ** 2
        return sum_except_batch(-0.5 * x.pow(2) / v - 0.5 * math.log(v) - 0.5 * LOG_2PI)

    def sample(self, n, context=None, generator=None):
        return self.std * self._randn(n, generator)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, std={self.std}"
