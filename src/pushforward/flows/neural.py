"""Neural autoregressive flows: ``naf`` (deep sigmoidal, Huang et al. 2018) and ``unaf``
(unconstrained monotonic networks, Wehenkel & Louppe 2019).

Both are the autoregressive scheme (MADE conditioner, as in :mod:`pushforward.flows.autoregressive`)
with a *neural* monotone map per dimension: :class:`pushforward.transforms.neural.SigmoidalMap`
and :class:`pushforward.transforms.neural.MonotoneIntegral`. The density direction is one MADE
pass per layer; sampling inverts each dimension by bisection to ``tol`` (``dim`` sequential
passes per layer), with implicit gradients so ``reverse_kl_loss`` trains through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._validate import check_choice, check_positive_int
from pushforward.distributions import StandardNormal
from pushforward.flows.autoregressive import ORDERS, autoregressive_layers
from pushforward.flows.base import NormalizingFlow
from pushforward.flows.coupling import check_conditioner
from pushforward.registry import register
from pushforward.transforms.autoregressive import MaskedAutoregressive
from pushforward.transforms.neural import MonotoneIntegral, SigmoidalMap

__all__ = ["NeuralAutoregressiveFlow", "UnconstrainedNeuralAutoregressiveFlow"]


@register("naf", "NAF: neural autoregressive flow with deep sigmoidal maps, bisection inverse (Huang et al. 2018)")
class NeuralAutoregressiveFlow(NormalizingFlow):
    """NAF (Huang et al. 2018): MADE layers of ``z_i = logit(sum_j w_j sigmoid(a_j x_i + b_j))``.

    Args:
        dim: D. Data ``[N, D]``; ``dim = 1`` works (conditioned on the context only).
        context_dim: size C of a context ``[N, C]``.
        transforms: number of MADE layers (orders alternate, see :class:`pushforward.flows.AutoregressiveFlow`).
        hidden: MADE hidden widths. activation: MADE nonlinearity.
        units: sigmoid units K per dimension (the DSF width; 3K conditioner outputs per dimension).
        order: ``"alternate"``, ``"natural"``, ``"random"`` or a permutation.
        tol: absolute tolerance of the bisection inverse used by :meth:`sample`.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 3, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", units: int = 8, order: str = "alternate", tol: float = 1e-6,
    ):
        f = SigmoidalMap(units, tol)
        layers = autoregressive_layers(dim, context_dim, f, transforms, hidden, activation, order)
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)


@register("unaf", "UNAF: integral of a positive network, Clenshaw-Curtis quadrature (Wehenkel & Louppe 2019)")
class UnconstrainedNeuralAutoregressiveFlow(NormalizingFlow):
    """UNAF / UMNN-MAF (Wehenkel & Louppe 2019): MADE layers of ``z_i = beta_i + int_0^{x_i} g(t, h_i) dt``.

    ``g > 0`` is a free MLP of ``(t, h_i)`` (one per layer); ``(beta_i, h_i)`` come from the MADE.
    ``log dz_i/dx_i = log g(x_i, h_i)`` exactly; the integral uses Clenshaw-Curtis quadrature
    with ``nodes`` intervals (:func:`pushforward.transforms.neural.clenshaw_curtis`).

    Args:
        dim, context_dim, transforms, hidden, activation, order, tol: as in :class:`NeuralAutoregressiveFlow`.
        embed: size of the per-dimension embedding ``h_i``.
        integrand: hidden widths of the integrand network ``g`` (SiLU, smooth for the quadrature).
        nodes: even number of quadrature intervals.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 3, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", embed: int = 8, integrand: Sequence[int] = (32, 32), nodes: int = 20,
        order: str = "alternate", tol: float = 1e-6,
    ):
        hidden = check_conditioner(transforms, hidden, activation)
        check_choice(order, ORDERS, "order")
        check_positive_int(nodes, "nodes")
        if nodes % 2:
            raise ValueError(f"nodes must be an even number of quadrature intervals, got {nodes}")
        layers = []
        for i in range(transforms):
            o = ("natural" if i % 2 == 0 else "reversed") if order == "alternate" else order
            f = MonotoneIntegral(embed, integrand, "silu", nodes, tol)
            layers.append(MaskedAutoregressive(dim, f, context_dim, hidden, o, seed=i, activation=activation))
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)
