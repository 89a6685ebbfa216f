"""Coupling flows: ``nice``, ``realnvp`` (and the coupling kind of ``nsf``).

A stack of ``transforms`` coupling layers (:class:`pushforward.transforms.Coupling`) over a
standard normal base; the masks alternate so that every dimension is transformed and every pair
of dimensions meets in a conditioner. Density and sampling are both one pass per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pushforward._validate import check_choice, check_positive_int, check_widths
from pushforward.distributions import StandardNormal
from pushforward.flows.base import NormalizingFlow
from pushforward.nets.mlp import _ACTIVATIONS
from pushforward.registry import register
from pushforward.transforms.coupling import ADDITIVE_INIT_STD, Coupling, coupling_mask
from pushforward.transforms.elementwise import Additive, Affine, ElementwiseMap
from pushforward.transforms.linear import ActNorm

__all__ = ["NICE", "CouplingFlow", "RealNVP", "check_conditioner", "coupling_layers"]

MASKS = ("alternate", "halves", "checkerboard")


def check_conditioner(transforms: int, hidden: Sequence[int], activation: str) -> tuple[int, ...]:
    """Validate the options every conditioner-based flow shares; returns ``hidden`` as a tuple."""
    check_positive_int(transforms, "transforms")
    widths = check_widths(hidden, "hidden")
    check_choice(activation, sorted(_ACTIVATIONS), "activation")
    return widths


def _layer_mask(dim: int, i: int, mask: str) -> Tensor:
    if mask == "alternate":
        # Flip parity every layer so every dimension is transformed; switch between
        # even-odd and halves every two layers so every pair of dimensions meets in a conditioner.
        mask = "checkerboard" if (i // 2) % 2 == 0 else "halves"
    return coupling_mask(dim, mask, parity=i)


def coupling_layers(
    dim: int, context_dim: int, elementwise: ElementwiseMap, transforms: int, hidden: Sequence[int],
    activation: str, mask: str, init_std: float = 0.0, name: str = "coupling",
) -> list[Coupling]:
    """``transforms`` validated coupling layers with alternating masks (see :class:`CouplingFlow`)."""
    hidden = check_conditioner(transforms, hidden, activation)
    check_choice(mask, MASKS, "mask")
    if dim < 2:
        raise ValueError(
            f"{name!r} is a coupling flow and needs dim >= 2 (one part conditions the other), got dim={dim}; "
            "for 1-D data use 'maf' or 'nsf' (autoregressive), which condition on the context only"
        )
    return [Coupling(_layer_mask(dim, i, mask), elementwise, context_dim, hidden, activation, init_std)
            for i in range(transforms)]


class CouplingFlow(NormalizingFlow):
    """``transforms`` coupling layers ``z_b = f(x_b; theta(x_a, c))`` over N(0, I) (Dinh et al. 2017).

    The generic scheme *coupling conditioner × elementwise map*; :class:`NICE` and :class:`RealNVP`
    are its named presets (:class:`pushforward.flows.NeuralSplineFlow` uses its layers).

    Args:
        dim: D >= 2 (one part of ``x`` conditions the other). Data ``[N, D]``.
        context_dim: size C of a context ``[N, C]`` fed to every conditioner (0: none).
        elementwise: the monotone map (default :class:`pushforward.transforms.Affine`).
        transforms: number of coupling layers.
        hidden: widths of each conditioner MLP.
        activation: conditioner nonlinearity (relu, silu, gelu, tanh, elu).
        mask: ``"alternate"`` (checkerboard/halves every two layers, parity every layer),
            ``"halves"`` or ``"checkerboard"``.
        init_std: std of the conditioners' random last layer (0: every layer starts at the identity).
        scaling: append a learned diagonal scaling (:class:`pushforward.transforms.ActNorm`).
        name: the model's name in error messages.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, elementwise: ElementwiseMap | None = None, transforms: int = 6,
        hidden: Sequence[int] = (128, 128), activation: str = "relu", mask: str = "alternate",
        init_std: float = 0.0, scaling: bool = False, name: str = "coupling",
    ):
        f = Affine() if elementwise is None else elementwise
        layers = coupling_layers(dim, context_dim, f, transforms, hidden, activation, mask, init_std, name)
        super().__init__([*layers, ActNorm(dim)] if scaling else layers, StandardNormal(dim), context_dim=context_dim)


@register("nice", "NICE: additive coupling layers + diagonal scaling (Dinh et al. 2014)")
class NICE(CouplingFlow):
    """NICE: ``transforms`` additive couplings ``z_b = x_b + t(x_a)``, then a learned diagonal scaling.

    Volume preserving except for the final scaling (Dinh et al. 2014). Needs ``dim >= 2``.
    ``init_std``: std of the conditioners' random last layer, so the flow starts *near* the
    identity; with 0 (exact identity) training stalls on symmetric data such as 8 Gaussians,
    whose additive shifts get no expected gradient there (see
    :data:`pushforward.transforms.coupling.ADDITIVE_INIT_STD`). Other options: :class:`CouplingFlow`.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 6, hidden: Sequence[int] = (128, 128),
        activation: str = "relu", mask: str = "alternate", init_std: float = ADDITIVE_INIT_STD,
    ):
        super().__init__(dim, context_dim, elementwise=Additive(), transforms=transforms, hidden=hidden,
                         activation=activation, mask=mask, init_std=init_std, scaling=True, name="nice")


@register("realnvp", "RealNVP: affine coupling layers with bounded scales (Dinh et al. 2017)")
class RealNVP(CouplingFlow):
    """RealNVP on vectors: affine couplings ``z_b = x_b exp(s) + t``, ``|s| < scale_bound``.

    Dinh et al. (2017). Needs ``dim >= 2``. Sampling and density are both one pass per layer.
    Other options: :class:`CouplingFlow`.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, transforms: int = 6, hidden: Sequence[int] = (128, 128),
        activation: str = "relu", mask: str = "alternate", scale_bound: float = 3.0,
    ):
        super().__init__(dim, context_dim, elementwise=Affine(scale_bound), transforms=transforms,
                         hidden=hidden, activation=activation, mask=mask, name="realnvp")
