"""Elementwise monotone maps ``z_i = f(x_i; theta_i)`` given per-dimension parameters.

These are the *univariate monotone transform* half of the scheme
``conditioner × monotone transform`` (zuko's design): a conditioner (a coupling mask, a MADE)
produces ``theta`` of shape ``[N, D, num_params]`` and an elementwise map consumes it. Every map
here is the identity when all its parameters are zero, so a zero-initialised conditioner output
layer makes the whole layer start at the identity.

Each map has::

    f.num_params                        # parameters per dimension, P
    f.forward(x, theta)  -> (z, ladj)   # x, z, ladj: [..., D]; theta: [..., D, P]
    f.inverse(z, theta)  -> (x, ladj)   # ladj of the inverse, = -forward ladj at x

``ladj`` is elementwise ``log|dz_i/dx_i|`` (not summed), so conditioners can mask or sum it.

The maps are small picklable objects (no parameters of their own); see also
:class:`pushforward.transforms.splines.RationalQuadraticSpline`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ElementwiseMap:
    """Base class of elementwise monotone maps parametrised by ``[..., D, num_params]``."""

    num_params: int = 0

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``z = f(x; theta)`` and elementwise ``log|f'(x)|``: ``[..., D] -> ([..., D], [..., D])``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``x = f^{-1}(z; theta)`` and elementwise ``log|(f^{-1})'(z)|``."""
        raise NotImplementedError

    def __call__(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(x, theta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Additive(ElementwiseMap):
    """Shift ``z = x + t`` with ``theta = [t]`` (NICE, Dinh et al. 2014): volume preserving, ladj 0."""

    num_params = 1

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return x + theta[..., 0], torch.zeros_like(x)

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return z - theta[..., 0], torch.zeros_like(z)


def soft_clamp(u: Tensor, bound: float) -> Tensor:
    """``bound * tanh(u / bound)``: identity near 0 (slope 1), smoothly bounded in ``(-bound, bound)``."""
    return bound * torch.tanh(u / bound)


class Affine(ElementwiseMap):
    """Affine ``z = x * exp(s) + t`` with a bounded log-scale (RealNVP, Dinh et al. 2017).

    ``theta = [t, u]`` and ``s = B tanh(u / B)`` (soft clamp, ``B = scale_bound``): the scale
    stays in ``(e^{-B}, e^{B})`` however far the conditioner drifts, which is what keeps
    affine flows free of inf/NaN, and ``s = u`` near zero so zero parameters give the identity.
    ``log|dz/dx| = s``.

    Args:
        scale_bound: bound ``B`` on ``|log scale|`` per layer (default 3: scales in (0.05, 20)).
    """

    num_params = 2

    def __init__(self, scale_bound: float = 3.0):
        if not (scale_bound > 0 and math.isfinite(scale_bound)):
            raise ValueError(f"scale_bound must be positive and finite, got {scale_bound!r}")
        self.scale_bound = float(scale_bound)

    def _shift_log_scale(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta[..., 0], soft_clamp(theta[..., 1], self.scale_bound)

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_log_scale(theta)
        return x * torch.exp(s) + t, s

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_log_scale(theta)
        return (z - t) * torch.exp(-s), -s

    def __repr__(self) -> str:
        return f"Affine(scale_bound={self.scale_bound})"


class Chain(ElementwiseMap):
    """Composition ``f_k ∘ ... ∘ f_1`` of elementwise maps; ``theta`` is their parameters
    concatenated along the last axis (``f_1``'s first).

    ``Chain(Affine(), RationalQuadraticSpline())`` rescales before the spline, so the spline's
    fixed interval ``[-B, B]`` can be reached by heavy-tailed data whose scale depends on the
    conditioner (e.g. a funnel). Identity at zero parameters if every map is.
    """

    def __init__(self, *maps: ElementwiseMap):
        if not maps or not all(isinstance(m, ElementwiseMap) for m in maps):
            raise TypeError("Chain takes one or more ElementwiseMap objects")
        self.maps = tuple(maps)
        self.num_params = sum(m.num_params for m in self.maps)

    def _split(self, theta: Tensor) -> list[Tensor]:
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"Chain needs {self.num_params} parameters per dimension, got {list(theta.shape)}")
        return list(theta.split([m.num_params for m in self.maps], dim=-1))

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        total = torch.zeros_like(x)
        for m, th in zip(self.maps, self._split(theta)):
            x, ladj = m.forward(x, th)
            total = total + ladj
        return x, total

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        total = torch.zeros_like(z)
        for m, th in reversed(list(zip(self.maps, self._split(theta)))):
            z, ladj = m.inverse(z, th)
            total = total + ladj
        return z, total

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(repr(m) for m in self.maps) + ")"

    def __hash__(self) -> int:
        return hash(("Chain", self.maps))
