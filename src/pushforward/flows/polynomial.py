"""Bernstein polynomial flow: ``bernstein`` (Ramasinghe et al. 2021, "Robust normalizing flows
using Bernstein-type polynomials").

The autoregressive scheme with :class:`pushforward.transforms.polynomial.BernsteinPolynomial`
maps: monotone polynomials of degree ``M`` on ``[-bound, bound]`` (standardized units), linear
outside; sampling inverts them by bisection to ``tol``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward.distributions import StandardNormal
from pushforward.flows.autoregressive import autoregressive_layers
from pushforward.flows.base import NormalizingFlow
from pushforward.registry import register
from pushforward.transforms.elementwise import Affine, Chain
from pushforward.transforms.polynomial import BernsteinPolynomial

__all__ = ["BernsteinFlow"]


@register("bernstein", "Bernstein polynomial flow: monotone polynomials on a MADE (Ramasinghe et al. 2021)")
class BernsteinFlow(NormalizingFlow):
    """MADE layers of monotone Bernstein polynomials ``z_i = sum_k c_k(x_{<i}) b_{k,M}(u(x_i))``.

    Args:
        dim: D (``dim = 1`` works). context_dim: size C of a context ``[N, C]``.
        transforms: number of MADE layers (orders alternate). hidden, activation: MADE.
        degree: polynomial degree ``M``. bound: the polynomial acts on ``[-bound, bound]`` of the
            standardized data (default 3, where they mostly lie; measured against 5 in
            ``benchmarks/results/new_flows_bernstein.md``).
        affine: a conditioned affine map before each polynomial (same MADE), so data beyond
            ``bound`` can be brought inside.
        order: as in :class:`pushforward.flows.AutoregressiveFlow`. tol: bisection tolerance.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 3, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", degree: int = 16, bound: float = 3.0, affine: bool = True,
        order: str = "alternate", tol: float = 1e-6,
    ):
        f = BernsteinPolynomial(degree, bound, tol)
        if affine:
            f = Chain(Affine(), f)
        layers = autoregressive_layers(dim, context_dim, f, transforms, hidden, activation, order)
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)
