"""Circular spline flow on the torus: ``circular-nsf`` (Rezende et al. 2020, "Normalizing Flows
on Tori and Spheres").

Data are angles ``[N, D]`` in ``[-pi, pi)`` (other values are taken mod ``2 pi``); the base is
the uniform distribution on the flat torus, so :meth:`log_prob` is a density with respect to the
flat volume ``dtheta_1 ... dtheta_D`` and integrates to 1 over ``[-pi, pi)^D``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward.distributions import Uniform
from pushforward.flows.base import NormalizingFlow
from pushforward.flows.coupling import _layer_mask, check_conditioner
from pushforward.registry import register
from pushforward.transforms.circular import CircularCoupling, CircularSpline, wrap_angle

__all__ = ["CircularSplineFlow"]


@register("circular-nsf", "Circular spline flow on the torus [-pi, pi)^D (Rezende et al. 2020)")
class CircularSplineFlow(NormalizingFlow):
    """Couplings of circular rational-quadratic splines (with rotations) over the uniform torus.

    Conditioners read ``(cos, sin)`` of the conditioning angles, so the density is continuous
    (and periodic) on the torus. For ``dim = 1`` every layer is a spline conditioned on the
    context only (unconditional: a learned fixed spline).

    Args:
        dim: D, the number of angles. context_dim: size C of a context ``[N, C]``.
        transforms: number of coupling layers (masks alternate as in :class:`pushforward.flows.CouplingFlow`).
        hidden, activation: conditioner MLP.
        bins: spline bins per angle.
    """

    standardize_by_default = False  # angles have their own fixed domain

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 4, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", bins: int = 8,
    ):
        hidden = check_conditioner(transforms, hidden, activation)
        spline = CircularSpline(bins)
        layers = []
        for i in range(transforms):
            mask = _layer_mask(dim, i, "alternate") if dim >= 2 else torch.zeros(1, dtype=torch.bool)
            layers.append(CircularCoupling(mask, spline, context_dim, hidden, activation))
        super().__init__(layers, Uniform(dim, -math.pi, math.pi), context_dim=context_dim)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return super()._log_prob(wrap_angle(x), context)

    def _sample(self, n: int, context: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        return wrap_angle(super()._sample(n, context, generator))

    def _sample_and_log_prob(self, n, context, generator=None) -> tuple[Tensor, Tensor]:
        x, lp = super()._sample_and_log_prob(n, context, generator)
        return wrap_angle(x), lp
