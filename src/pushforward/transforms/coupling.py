"""Coupling layers: a mask splits ``x`` into ``(x_a, x_b)``; ``x_a`` passes unchanged and
conditions an elementwise monotone map of ``x_b`` (Dinh et al. 2014, NICE; Dinh et al. 2017,
RealNVP; Durkan et al. 2019, Neural Spline Flows)::

    z_a = x_a,    z_b = f(x_b; theta(x_a, context)),    log|det J| = sum_i log f'(x_b,i)

Both directions take one network evaluation, so density and sampling are equally fast. The
conditioner's last layer is zero-initialised, so every layer starts at the identity, except for
additive (NICE) couplings, which start *near* it (see :data:`ADDITIVE_INIT_STD`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward.nets.mlp import MLP
from pushforward.transforms.base import Transform
from pushforward.transforms.elementwise import Additive, Affine, ElementwiseMap
from pushforward.transforms.splines import RationalQuadraticSpline

# Why additive couplings must not start exactly at the identity: with a zero last layer the
# hidden layers get no gradient, and the last layer's gradient is E[z_b h(x_a)] = E[x_b h(x_a)],
# which vanishes whenever E[x_b | x_a] = 0, e.g. for data symmetric under x_b -> -x_b (8
# Gaussians, rings). A stack of such layers then sits on a saddle: each layer's optimum given
# identity neighbours is the identity, and only minibatch noise moves it (hundreds of flat
# steps measured on 8 Gaussians). Affine and spline maps also see the conditional second
# moment (d/ds of the NLL is x_b^2 - 1), so they learn from zero. A small random last layer
# (about PyTorch's default Linear scale at width 128) breaks the symmetry.
ADDITIVE_INIT_STD = 0.05


def coupling_mask(dim: int, kind: str = "halves", parity: int = 0) -> Tensor:
    """A boolean mask ``[dim]``; ``True`` marks the dimensions that pass unchanged (``x_a``).

    Args:
        kind: ``"halves"`` (first ``ceil(D/2)`` identity, the rest transformed) or
            ``"checkerboard"`` (even indices identity; for vectors, "even-odd").
        parity: 1 flips the mask, so alternating parities transform every dimension.
    """
    if dim < 2:
        raise ValueError(f"a coupling layer needs dim >= 2 (one part conditions the other), got dim={dim}")
    idx = torch.arange(dim)
    if kind == "halves":
        mask = idx < (dim + 1) // 2
    elif kind in ("checkerboard", "even-odd"):
        mask = idx % 2 == 0
    else:
        raise ValueError(f"mask kind must be 'halves' or 'checkerboard', got {kind!r}")
    return mask ^ bool(parity % 2)


def _as_slice(idx: Tensor) -> slice | None:
    """``idx`` (sorted, non-empty) as ``slice(start, stop, step)`` if it is an arithmetic run."""
    vals = idx.tolist()
    if len(vals) == 1:
        return slice(vals[0], vals[0] + 1, 1)
    step = vals[1] - vals[0]
    if step < 1 or any(b - a != step for a, b in zip(vals, vals[1:])):
        return None
    return slice(vals[0], vals[-1] + 1, step)


class Coupling(Transform):
    """Coupling layer with any elementwise monotone map (the *coupling scheme*).

    Args:
        mask: boolean ``[D]``; ``True`` = identity part ``x_a`` (conditions the rest). Must have
            at least one ``True`` and one ``False``. See :func:`coupling_mask`.
        elementwise: the monotone map applied to ``x_b`` (:class:`Additive`,
            :class:`Affine`, :class:`RationalQuadraticSpline`, ...).
        context_dim: size C of an optional context ``[N, C]`` fed to the conditioner.
        hidden: conditioner MLP hidden widths. activation: its nonlinearity.
        init_std: std of a normal init of the conditioner's last-layer weights (bias stays 0).
            0 (default) starts the layer exactly at the identity; additive couplings need a
            small positive value to leave the identity saddle (:data:`ADDITIVE_INIT_STD`).

    Shapes: ``x [N, D]`` -> ``(z [N, D], logabsdet [N])``.

    Example:
        >>> t = Coupling(coupling_mask(4), Affine())
        >>> x = torch.randn(8, 4)
        >>> z, ladj = t(x)
        >>> bool(torch.allclose(z, x))   # identity at initialisation
        True
    """

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        elementwise: ElementwiseMap,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        init_std: float = 0.0,
    ):
        super().__init__()
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not (
            init_std >= 0 and math.isfinite(init_std)
        ):
            raise ValueError(f"init_std must be a non-negative finite number, got {init_std!r}")
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        dim = mask.numel()
        if dim < 2:
            raise ValueError(f"a coupling layer needs dim >= 2 (one part conditions the other), got dim={dim}")
        n_a = int(mask.sum())
        if n_a == 0 or n_a == dim:
            raise ValueError(f"coupling mask must mark some but not all dimensions as identity, got {mask.tolist()}")
        self.dim, self.context_dim = dim, int(context_dim)
        self.elementwise = elementwise
        idx_a = torch.nonzero(mask).flatten()
        idx_b = torch.nonzero(~mask).flatten()
        self.register_buffer("mask", mask)
        self.register_buffer("idx_a", idx_a)
        self.register_buffer("idx_b", idx_b)
        # z = cat([z_a, z_b])[:, unsplit] puts the parts back in place without in-place writes.
        self.register_buffer("unsplit", torch.argsort(torch.cat([idx_a, idx_b])))
        # Every built-in mask (halves, even-odd) is a pair of strided slices: then the split is
        # two views and the merge one fresh tensor, instead of three gathers and a cat, which
        # were a third of a small coupling layer's sampling time (D = 10, 10 000 samples).
        sa, sb = _as_slice(idx_a), _as_slice(idx_b)
        self._slices = (sa, sb) if sa is not None and sb is not None else None
        self.n_b = dim - n_a
        self.conditioner = MLP(
            n_a + self.context_dim, self.n_b * elementwise.num_params, hidden, activation, zero_last=True
        )
        if init_std > 0:
            nn.init.normal_(self.conditioner[-1].weight, std=float(init_std))

    def _theta(self, x_a: Tensor, context: Tensor | None) -> Tensor:
        if self.context_dim:
            if context is None:
                raise ValueError(f"this coupling layer is conditional: context [N, {self.context_dim}] is required")
            x_a = torch.cat([x_a, context], dim=-1)
        return self.conditioner(x_a).unflatten(-1, (self.n_b, self.elementwise.num_params))

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        f = self.elementwise.inverse if inverse else self.elementwise.forward
        if self._slices is None:
            x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
            y_b, ladj = f(x_b, self._theta(x_a, context))
            return torch.cat([x_a, y_b], dim=-1)[:, self.unsplit], ladj.sum(-1)
        sa, sb = self._slices
        x_a, x_b = x[:, sa], x[:, sb]
        y_b, ladj = f(x_b, self._theta(x_a, context))
        # Writes into a tensor made here (not into x): autograd records them as slice copies.
        z = torch.empty_like(x)
        z[:, sa] = x_a
        z[:, sb] = y_b
        return z, ladj.sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)

    def extra_repr(self) -> str:
        return f"mask={self.mask.int().tolist()}, elementwise={self.elementwise!r}, context_dim={self.context_dim}"


class AdditiveCoupling(Coupling):
    """NICE coupling ``z_b = x_b + t(x_a)`` (Dinh et al. 2014): volume preserving.

    Starts near (not at) the identity: ``init_std`` defaults to :data:`ADDITIVE_INIT_STD`,
    because a zero-initialised additive layer gets no expected gradient on symmetric data.
    """

    def __init__(self, mask, context_dim: int = 0, hidden: Sequence[int] = (64, 64), activation: str = "relu",
                 init_std: float = ADDITIVE_INIT_STD):
        super().__init__(mask, Additive(), context_dim, hidden, activation, init_std)


class AffineCoupling(Coupling):
    """RealNVP coupling ``z_b = x_b exp(s(x_a)) + t(x_a)`` with soft-clamped ``s`` (Dinh et al. 2017)."""

    def __init__(self, mask, context_dim: int = 0, hidden: Sequence[int] = (64, 64), activation: str = "relu",
                 scale_bound: float = 3.0):
        super().__init__(mask, Affine(scale_bound), context_dim, hidden, activation)


class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019), identity outside ``[-B, B]``."""

    def __init__(self, mask, context_dim: int = 0, hidden: Sequence[int] = (64, 64), activation: str = "relu",
                 bins: int = 8, tail_bound: float = 5.0):
        super().__init__(mask, RationalQuadraticSpline(bins, tail_bound), context_dim, hidden, activation)
