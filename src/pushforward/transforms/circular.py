"""Circular rational-quadratic splines: diffeomorphisms of the circle (Rezende et al. 2020,
"Normalizing Flows on Tori and Spheres", section 3.1).

A rational-quadratic spline on ``[-pi, pi]`` with ``f(-pi) = -pi``, ``f(pi) = pi`` and *equal*
end derivatives ``f'(-pi) = f'(pi)`` glues into a C^1 bijection of the circle; a rotation
``z = wrap(f(x) + phi)`` then moves the fixed point ``-pi`` (``wrap`` maps onto ``[-pi, pi)``).
Rotations have unit Jacobian, so ``log|dz/dx| = log f'(x)``. Zero parameters give the identity.

:class:`CircularCoupling` conditions the splines of some angles on the others through the
periodic features ``(cos x_a, sin x_a)``, so the density stays continuous on the torus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets.mlp import MLP
from pushforward.transforms.base import Transform
from pushforward.transforms.splines import RationalQuadraticSpline, _knots

TWO_PI = 2 * math.pi


def wrap_angle(x: Tensor) -> Tensor:
    """Angles mod ``2 pi`` onto ``[-pi, pi)`` (elementwise)."""
    return torch.remainder(x + math.pi, TWO_PI) - math.pi


class CircularSpline(RationalQuadraticSpline):
    """Circular RQ spline plus rotation on ``[-pi, pi)`` (Rezende et al. 2020).

    ``theta = [K widths, K heights, K - 1 interior derivatives, 1 end derivative, 1 rotation]``
    per dimension (``3K + 1``); the end derivative is shared by ``-pi`` and ``pi``.

    Shapes: ``x [..., D]`` angles, ``theta [..., D, 3K + 1]`` -> ``(z [..., D], ladj [..., D])``.

    Example:
        >>> f = CircularSpline(bins=4)
        >>> x = torch.tensor([[-3.0], [0.5], [3.1]])
        >>> z, _ = f(x, torch.zeros(3, 1, f.num_params))
        >>> bool(torch.allclose(z, x))
        True
    """

    def __init__(self, bins: int = 8, min_width: float = 1e-3, min_height: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__(bins, math.pi, min_width, min_height, min_derivative)
        self.num_params = 3 * self.bins + 1

    def _spline(self, theta: Tensor) -> Tensor:
        k = self.bins
        if theta.shape[-1] != 3 * k:
            raise ValueError(f"circular spline with {k} bins needs {3 * k + 1} parameters per dimension "
                             f"(3K + 1), got {theta.shape[-1] + 1}")
        xk = _knots(theta[..., :k], self.bound, self.min_width)
        yk = _knots(theta[..., k : 2 * k], self.bound, self.min_height)
        d = self.min_derivative + F.softplus(theta[..., 2 * k :] + self._shift)
        # d[..., -1] is the end derivative, shared by both ends (the periodic C^1 condition).
        return torch.cat([xk, yk, d[..., -1:], d[..., :-1], d[..., -1:]], dim=-1)

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        self._check(theta)
        y, ladj = super().forward(wrap_angle(x), theta[..., :-1])
        return wrap_angle(y + theta[..., -1]), ladj

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        self._check(theta)
        return super().inverse(wrap_angle(z - theta[..., -1]), theta[..., :-1])

    def _check(self, theta: Tensor) -> None:
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"circular spline with {self.bins} bins needs {self.num_params} parameters per "
                             f"dimension, got theta of shape {list(theta.shape)}")

    def __repr__(self) -> str:
        return f"CircularSpline(bins={self.bins})"


class CircularCoupling(Transform):
    """Coupling on the torus: ``z_b = CircularSpline(x_b; theta(cos x_a, sin x_a, context))``, ``z_a = x_a``.

    Args:
        mask: boolean ``[D]``; ``True`` marks the conditioning angles ``x_a``. All ``False``
            transforms every angle, conditioned on the context only (or, without a context, by
            learned fixed splines): the 1-D case.
        spline: the :class:`CircularSpline`.
        context_dim: size C of an optional context ``[N, C]``.
        hidden, activation: conditioner MLP (its last layer starts at zero: the identity).

    Shapes: ``x [N, D]`` angles in ``[-pi, pi)`` -> ``(z [N, D], logabsdet [N])``.
    """

    def __init__(self, mask: Tensor, spline: CircularSpline, context_dim: int = 0, hidden: Sequence[int] = (64, 64),
                 activation: str = "relu"):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if bool(mask.all()):
            raise ValueError("a circular coupling mask must leave at least one angle to transform")
        self.register_buffer("mask", mask, persistent=False)
        self.spline = spline
        self.context_dim = int(context_dim)
        self.n_a, self.n_b = int(mask.sum()), int((~mask).sum())
        in_dim = 2 * self.n_a + self.context_dim
        out = self.n_b * spline.num_params
        if in_dim:
            self.net = MLP(in_dim, out, hidden, activation, zero_last=True)
        else:
            self.theta = nn.Parameter(torch.zeros(out))

    def _params(self, xa: Tensor, context: Tensor | None, n: int) -> Tensor:
        if not hasattr(self, "net"):
            return self.theta.expand(n, -1).reshape(n, self.n_b, -1)
        feats = [torch.cos(xa), torch.sin(xa)] if self.n_a else []
        if self.context_dim:
            feats.append(context)
        return self.net(torch.cat(feats, -1)).reshape(n, self.n_b, -1)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, self.mask], x[:, ~self.mask]
        theta = self._params(xa, context, x.shape[0])
        yb, ladj = (self.spline.inverse if inverse else self.spline.forward)(xb, theta)
        out = torch.zeros_like(x)
        out = out.index_copy(1, torch.nonzero(self.mask).flatten(), xa) if self.n_a else out
        out = out.index_copy(1, torch.nonzero(~self.mask).flatten(), yb)
        return out, ladj.sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)

    def extra_repr(self) -> str:
        return f"mask={self.mask.tolist()}, spline={self.spline!r}, context_dim={self.context_dim}"
