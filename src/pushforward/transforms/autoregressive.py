"""Masked autoregressive transforms (MAF, Papamakarios et al. 2017; IAF, Kingma et al. 2016).

A MADE (:class:`pushforward.nets.made.MADE`) reads ``x`` and produces, for each dimension ``i``,
parameters that depend only on the dimensions before ``i`` in an ordering; an elementwise
monotone map consumes them::

    z_i = f(x_i; theta_i(x_{<i}, context)),     log|det dz/dx| = sum_i log f'(x_i)

The Jacobian is triangular (in the ordering), so the density direction ``x -> z`` is one MADE
pass. The inverse ``z -> x`` needs ``D`` sequential passes: pass ``r`` fixes the ``r``-th
dimension of the ordering. Wrapping a layer in :class:`pushforward.transforms.Inverse` gives an
IAF layer: one-pass sampling, ``D``-pass density (see :func:`inverse_autoregressive`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward.nets.made import MADE
from pushforward.transforms.base import Inverse, Transform
from pushforward.transforms.elementwise import Affine, ElementwiseMap
from pushforward.transforms.splines import RationalQuadraticSpline


class MaskedAutoregressive(Transform):
    """MAF layer: ``z = f(x; MADE(x, context))`` elementwise (Papamakarios et al. 2017).

    Args:
        dim: D. ``dim = 1`` works: the single dimension is conditioned on the context only
            (or on nothing: a learned fixed elementwise map).
        elementwise: monotone map (:class:`Affine`, :class:`RationalQuadraticSpline`, ...).
        context_dim: size of the context ``[N, C]``, connected to every hidden unit.
        hidden: MADE hidden widths. order: ``"natural"``, ``"reversed"``, ``"random"`` or a
            permutation (see :func:`pushforward.nets.made.make_order`). seed: for ``"random"``.
        activation: MADE nonlinearity.

    Shapes: ``x [N, D]`` -> ``(z [N, D], logabsdet [N])``.

    Example:
        >>> t = MaskedAutoregressive(3, Affine(), order="reversed")
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(t(x)[0], x))   # identity at initialisation
        True
    """

    def __init__(
        self, dim: int, elementwise: ElementwiseMap, context_dim: int = 0, hidden: Sequence[int] = (64, 64),
        order: str | Sequence[int] | Tensor = "natural", seed: int = 0, activation: str = "relu",
    ):
        super().__init__()
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.elementwise = elementwise
        self.made = MADE(dim, elementwise.num_params, context_dim, hidden, order, seed, activation)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.elementwise.forward(x, self.made(x, context))
        return z, ladj.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Pass r makes the r-th dimension of the ordering exact (its parameters depend only on
        # earlier ones, already exact), so D passes recover x.
        x = torch.zeros_like(z)
        ladj = z.new_zeros(z.shape)
        for _ in range(self.dim):
            x, ladj = self.elementwise.inverse(z, self.made(x, context))
        return x, ladj.sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, elementwise={self.elementwise!r}, context_dim={self.context_dim}"


class AffineAutoregressive(MaskedAutoregressive):
    """MAF affine layer ``z_i = x_i exp(s_i) + t_i`` with soft-clamped ``s_i`` (Papamakarios et al. 2017)."""

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), order="natural",
                 seed: int = 0, activation: str = "relu", scale_bound: float = 3.0):
        super().__init__(dim, Affine(scale_bound), context_dim, hidden, order, seed, activation)


class SplineAutoregressive(MaskedAutoregressive):
    """Autoregressive rational-quadratic spline layer (Durkan et al. 2019, NSF-AR)."""

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), order="natural",
                 seed: int = 0, activation: str = "relu", bins: int = 8, tail_bound: float = 5.0):
        super().__init__(dim, RationalQuadraticSpline(bins, tail_bound), context_dim, hidden, order, seed, activation)


def inverse_autoregressive(layer: MaskedAutoregressive) -> Inverse:
    """IAF layer (Kingma et al. 2016): ``Inverse(layer)``.

    Its ``inverse`` (latent -> data, sampling) is the MAF layer's one-pass ``forward``; its
    ``forward`` (density) is the ``D``-pass MAF inverse.
    """
    if not isinstance(layer, MaskedAutoregressive):
        raise TypeError(f"inverse_autoregressive takes a MaskedAutoregressive layer, got {type(layer).__name__}")
    return Inverse(layer)
