"""Masked autoregressive flows: ``maf``, ``iaf`` (and the autoregressive kind of ``nsf``).

A stack of ``transforms`` MADE layers (:class:`pushforward.transforms.MaskedAutoregressive`)
over a standard normal base: one-pass density, ``D``-pass sampling; wrapped in
:class:`pushforward.transforms.Inverse` (IAF) the costs swap.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._validate import check_choice
from pushforward.distributions import StandardNormal
from pushforward.flows.base import NormalizingFlow
from pushforward.flows.coupling import check_conditioner
from pushforward.registry import register
from pushforward.transforms.autoregressive import MaskedAutoregressive
from pushforward.transforms.base import Inverse
from pushforward.transforms.elementwise import Affine, ElementwiseMap

__all__ = ["IAF", "MAF", "AutoregressiveFlow", "autoregressive_layers"]

ORDERS = ("alternate", "natural", "random")


def autoregressive_layers(
    dim: int, context_dim: int, elementwise: ElementwiseMap, transforms: int, hidden: Sequence[int],
    activation: str, order: str | Sequence[int], inverse: bool = False,
) -> list[MaskedAutoregressive] | list[Inverse]:
    """``transforms`` validated MADE layers (IAF layers with ``inverse``); see :class:`AutoregressiveFlow`."""
    hidden = check_conditioner(transforms, hidden, activation)
    if isinstance(order, str):
        check_choice(order, ORDERS, "order")
    layers = []
    for i in range(transforms):
        o = ("natural" if i % 2 == 0 else "reversed") if order == "alternate" else order
        layers.append(MaskedAutoregressive(dim, elementwise, context_dim, hidden, o, seed=i, activation=activation))
    if inverse:
        # Reversed, so that with the same weights the whole IAF is the inverse of the whole MAF:
        # iaf.transform(x) == maf.transform.inverse(x).
        return [Inverse(t) for t in reversed(layers)]
    return layers


class AutoregressiveFlow(NormalizingFlow):
    """``transforms`` MADE layers ``z_i = f(x_i; theta(x_{<i}, c))`` over N(0, I) (Papamakarios et al. 2017).

    The generic scheme *autoregressive conditioner × elementwise map*; :class:`MAF`,
    :class:`IAF` are its named presets (:class:`pushforward.flows.NeuralSplineFlow` uses its
    layers). ``dim = 1`` works (conditioned on the context only).

    Args:
        dim: D. Data ``[N, D]``.
        context_dim: size C of a context ``[N, C]`` fed to every MADE (0: none).
        elementwise: the monotone map (default :class:`pushforward.transforms.Affine`).
        transforms: number of MADE layers.
        hidden: MADE hidden widths.
        activation: MADE nonlinearity (relu, silu, gelu, tanh, elu).
        order: ``"alternate"`` (natural, reversed, natural, ...: later layers condition the
            dimensions earlier ones could not), ``"natural"``, ``"random"`` (seeded by the layer
            index) or a permutation of ``range(dim)`` for every layer.
        inverse: IAF (Kingma et al. 2016): every layer wrapped in ``Inverse``, one-pass sampling.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, elementwise: ElementwiseMap | None = None, transforms: int = 5,
        hidden: Sequence[int] = (64, 64), activation: str = "relu", order: str | Sequence[int] = "alternate",
        inverse: bool = False,
    ):
        f = Affine() if elementwise is None else elementwise
        layers = autoregressive_layers(dim, context_dim, f, transforms, hidden, activation, order, inverse)
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)


class _AffineAutoregressiveFlow(AutoregressiveFlow):
    """Affine MADE layers ``z_i = x_i exp(s_i) + t_i``, ``|s_i| < scale_bound``: the options of MAF and IAF."""

    _inverse: bool

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 5, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", order: str = "alternate", scale_bound: float = 3.0,
    ):
        super().__init__(dim, context_dim, elementwise=Affine(scale_bound), transforms=transforms, hidden=hidden,
                         activation=activation, order=order, inverse=self._inverse)


@register("maf", "MAF: masked autoregressive affine flow (Papamakarios et al. 2017)")
class MAF(_AffineAutoregressiveFlow):
    """MAF: affine MADE layers ``z_i = x_i exp(s_i) + t_i``, ``|s_i| < scale_bound``, alternating orders.

    Papamakarios et al. (2017). One-pass density, ``dim``-pass sampling; ``dim = 1`` works
    (conditioned on the context only). Other options: :class:`AutoregressiveFlow`.
    """

    _inverse = False


@register("iaf", "IAF: inverse autoregressive affine flow, one-pass sampling (Kingma et al. 2016)")
class IAF(_AffineAutoregressiveFlow):
    """IAF: each layer is ``Inverse(MAF layer)`` (Kingma et al. 2016), with the options of :class:`MAF`.

    One-pass sampling (best with ``reverse_kl_loss``); density takes ``dim`` passes per layer.
    With the same weights, ``iaf.transform(x) == maf.transform.inverse(x)``.
    """

    _inverse = True
