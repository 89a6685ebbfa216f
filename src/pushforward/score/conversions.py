"""Conversions between score, noise, clean-data and velocity predictions on a Gaussian path.

A Gaussian path (the kernel of a linear SDE, or a flow-matching path) writes a noisy point as::

    x_s = m(s) x_0 + sigma(s) eps,   eps ~ N(0, I)

with *diffusion time* ``s`` (``s = 0`` data, ``s = 1`` noise; the library's time is
``t = 1 - s``). Given any one of the predictions of a model of ``p_s``, the others follow
(Kingma et al. 2021, "Variational Diffusion Models"; Song et al. 2021)::

    score = grad log p_s(x) = -E[eps | x] / sigma                     (score <-> eps)
    E[x_0 | x] = (x - sigma E[eps | x]) / m = (x + sigma^2 score) / m   (Tweedie; eps <-> x0)
    dx/ds = m'/m x + (sigma' - m'/m sigma) E[eps | x]                  (probability-flow ODE)
          = f(x, s) - 1/2 g(s)^2 score                                 (the same, for an SDE)
    u_t(x) = dx/dt = -dx/ds at s = 1 - t                               (velocity, library time)

The velocity is the marginal velocity of the path ``x = m x_0 + sigma eps`` (the conditional
expectation of ``m' x_0 + sigma' eps``), so a score model and a flow-matching model trained on
the same path estimate the same ``u_t``.

``path`` is anything with ``mean_coeff(s)``, ``std(s)``, ``dmean_coeff(s)`` and ``dstd(s)``
(derivatives in ``s``): every :class:`~pushforward.score.sde.SDE`, or a :class:`GaussianPath`
made from four callables. ``s`` is a float, a 0-d tensor, ``[N]`` or ``[N, 1, ...]``, broadcast
against the data the same way in every function (:func:`~pushforward.score.sde.broadcast_time`).
Shapes: every tensor argument and result is ``[N, ...]`` (the data's shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from pushforward.score.sde import TimeLike, broadcast_time

__all__ = [
    "GaussianPath",
    "eps_from_score",
    "eps_from_velocity",
    "eps_from_x0",
    "pf_ode_drift",
    "score_from_eps",
    "score_from_velocity",
    "score_from_x0",
    "velocity_from_eps",
    "velocity_from_score",
    "velocity_from_x0",
    "x0_from_eps",
    "x0_from_score",
]


class PathLike(Protocol):
    def mean_coeff(self, s: Tensor) -> Tensor: ...
    def std(self, s: Tensor) -> Tensor: ...
    def dmean_coeff(self, s: Tensor) -> Tensor: ...
    def dstd(self, s: Tensor) -> Tensor: ...


class GaussianPath:
    """A Gaussian path ``x_s = m(s) x_0 + sigma(s) eps`` from four callables of ``s`` (tensors).

    Args:
        mean: ``m(s)``. std: ``sigma(s)``. dmean: ``dm/ds``. dstd: ``dsigma/ds``.

    Example (the flow-matching path ``x_t = t x_1 + (1 - t) eps`` in ``s = 1 - t``):
        ``GaussianPath(lambda s: 1 - s, lambda s: s, lambda s: -s**0, lambda s: s**0)``.
    """

    def __init__(self, mean: Callable, std: Callable, dmean: Callable, dstd: Callable):
        self._m, self._s, self._dm, self._ds = mean, std, dmean, dstd

    def mean_coeff(self, s: Tensor) -> Tensor:  # noqa: D102
        return self._m(s)

    def std(self, s: Tensor) -> Tensor:  # noqa: D102
        return self._s(s)

    def dmean_coeff(self, s: Tensor) -> Tensor:  # noqa: D102
        return self._dm(s)

    def dstd(self, s: Tensor) -> Tensor:  # noqa: D102
        return self._ds(s)


def _coeffs(path: PathLike, s: TimeLike, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    s = broadcast_time(s, like)
    return path.mean_coeff(s), path.std(s), path.dmean_coeff(s), path.dstd(s)


# ---------------------------------------------------------------- score <-> eps <-> x0
def score_from_eps(eps: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """``score = -eps / sigma(s)``."""
    return -eps / path.std(broadcast_time(s, eps))


def eps_from_score(score: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """``eps = -sigma(s) score``."""
    return -path.std(broadcast_time(s, score)) * score


def x0_from_eps(x: Tensor, eps: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """``x_0 = (x - sigma eps) / m``."""
    m, sd, _, _ = _coeffs(path, s, x)
    return (x - sd * eps) / m


def eps_from_x0(x: Tensor, x0: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """``eps = (x - m x_0) / sigma``."""
    m, sd, _, _ = _coeffs(path, s, x)
    return (x - m * x0) / sd


def x0_from_score(x: Tensor, score: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Tweedie's formula ``E[x_0 | x] = (x + sigma^2 score) / m`` (Efron 2011)."""
    m, sd, _, _ = _coeffs(path, s, x)
    return (x + sd * sd * score) / m


def score_from_x0(x: Tensor, x0: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """``score = (m x_0 - x) / sigma^2``."""
    m, sd, _, _ = _coeffs(path, s, x)
    return (m * x0 - x) / (sd * sd)


# ---------------------------------------------------------------- velocities
def _ode_coeffs(path: PathLike, s: TimeLike, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``dx/ds = a x + b eps`` with ``a = m'/m``, ``b = sigma' - m'/m sigma``; returns (a, b, sigma)."""
    m, sd, dm, dsd = _coeffs(path, s, x)
    a = dm / m
    return a, dsd - a * sd, sd


def pf_ode_drift(x: Tensor, score: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Probability-flow ODE drift in diffusion time ``dx/ds = m'/m x - sigma (sigma' - m'/m sigma) score``.

    For an SDE this equals ``f(x, s) - 1/2 g(s)^2 score`` (Song et al. 2021, eq. 13).
    """
    a, b, sd = _ode_coeffs(path, s, x)
    return a * x - b * sd * score


def velocity_from_eps(x: Tensor, eps: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Velocity in library time ``u_t = dx/dt = -(m'/m x + (sigma' - m'/m sigma) eps)``, ``t = 1 - s``."""
    a, b, _ = _ode_coeffs(path, s, x)
    return -(a * x + b * eps)


def velocity_from_score(x: Tensor, score: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Velocity in library time (``t = 1 - s``) from a score: ``-pf_ode_drift``."""
    return -pf_ode_drift(x, score, s, path)


def velocity_from_x0(x: Tensor, x0: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Velocity in library time (``t = 1 - s``) from a clean-data prediction ``E[x_0 | x]``."""
    return velocity_from_eps(x, eps_from_x0(x, x0, s, path), s, path)


def eps_from_velocity(x: Tensor, u: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Invert :func:`velocity_from_eps`: ``eps = -(u + m'/m x) / (sigma' - m'/m sigma)``.

    ``sigma' - m'/m sigma > 0`` on every path here (noise grows with ``s``), so this is defined
    for ``s`` in ``(0, 1]``.
    """
    a, b, _ = _ode_coeffs(path, s, x)
    return -(u + a * x) / b


def score_from_velocity(x: Tensor, u: Tensor, s: TimeLike, path: PathLike) -> Tensor:
    """Invert :func:`velocity_from_score` (e.g. to read a flow-matching model as a score model)."""
    return score_from_eps(eps_from_velocity(x, u, s, path), s, path)
