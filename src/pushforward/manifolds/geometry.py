"""Manifolds of the Riemannian flow matching family: the unit sphere S^{D-1} in R^D and the flat
torus [-pi, pi)^D.

Each manifold gives the operations a flow on it needs (Chen & Lipman 2024, "Flow matching on
general geometries"): the projection of an ambient vector to the tangent space, the exponential and
logarithm maps, the geodesic interpolant and its velocity, the uniform (volume-normalised) base,
and the Riemannian divergence of a tangent field from its ambient Jacobian.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Below this angle the sphere's maps use their Taylor series (sin(a)/a -> 1) to avoid 0/0.
_SMALL = 1e-6


def _sinc(a: Tensor) -> Tensor:
    """``sin(a) / a`` with the limit 1 at a = 0 (differentiable there)."""
    small = a.abs() < _SMALL
    safe = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, 1 - a * a / 6, torch.sin(safe) / safe)


class Manifold:
    """Interface; :class:`Sphere` and :class:`FlatTorus` implement it. Points are ``[N, D]``."""

    name = "manifold"
    #: dimension of the manifold (D - 1 for the sphere in R^D, D for the torus)
    intrinsic_dim: int

    def check(self, x: Tensor, name: str = "x", atol: float | None = None) -> Tensor:
        raise NotImplementedError

    def projx(self, x: Tensor) -> Tensor:
        """The nearest point on the manifold (used after each solver step)."""
        raise NotImplementedError

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Project an ambient vector ``u`` at ``x`` to the tangent space ``T_x M``."""
        raise NotImplementedError

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def geodesic(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The constant-speed geodesic ``x_t = exp_{x0}(t log_{x0} x1)`` and ``dx_t/dt``; t ``[N]``."""
        raise NotImplementedError

    def uniform_sample(self, n: int, dim: int, generator=None, dtype=None, device=None) -> Tensor:
        raise NotImplementedError

    def log_volume(self, dim: int) -> float:
        """``log`` of the manifold's total volume (the uniform density is its negative)."""
        raise NotImplementedError

    def divergence(self, x: Tensor, jac_trace: Tensor, jac_xx: Tensor) -> Tensor:
        """Riemannian divergence from the ambient Jacobian ``J`` of a tangent extension of the field:
        ``tr J`` and ``x^T J x`` (``[N]`` each)."""
        raise NotImplementedError

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return self.logmap(x, y).norm(dim=-1)


class Sphere(Manifold):
    """The unit sphere ``S^{D-1} = {x in R^D : |x| = 1}`` with the round metric.

    ``exp_x(u) = cos|u| x + sin|u| u/|u|``, ``log_x(y) = theta (y - cos(theta) x)/sin(theta)`` with
    ``theta = arccos <x, y>``; geodesics are great circles (slerp). For a field tangent along the
    sphere, the Riemannian divergence is ``tr(P_x J P_x) = tr J - x^T J x`` (``P_x = I - x x^T``).
    """

    name = "sphere"
    tol = 1e-4  # accepted | |x| - 1 | of user input

    def check(self, x: Tensor, name: str = "x", atol: float | None = None) -> Tensor:
        err = (x.norm(dim=-1) - 1).abs()
        atol = self.tol if atol is None else atol
        if bool((err > atol).any()):
            i = int(err.argmax())
            raise ValueError(f"{name} must lie on the unit sphere (|x| = 1 within {atol:g}); row {i} has "
                             f"|x| = {float(x[i].norm()):.6g}")
        return x

    def projx(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u - (x * u).sum(-1, keepdim=True) * x

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        a = u.norm(dim=-1, keepdim=True)
        return self.projx(torch.cos(a) * x + _sinc(a) * u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        c = (x * y).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        theta = torch.arccos(c)
        v = y - c * x
        return v / _sinc(theta).clamp_min(1e-12)

    def geodesic(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        u = self.logmap(x0, x1)  # [N, D], |u| = theta
        a = u.norm(dim=-1, keepdim=True)
        t = t.reshape(-1, 1)
        xt = torch.cos(t * a) * x0 + t * _sinc(t * a) * u
        # d/dt [cos(t a) x0 + sin(t a) u/a] = -a sin(t a) x0 + cos(t a) u
        dxt = -a * torch.sin(t * a) * x0 + torch.cos(t * a) * u
        return self.projx(xt), dxt

    def uniform_sample(self, n: int, dim: int, generator=None, dtype=None, device=None) -> Tensor:
        z = torch.randn(n, dim, generator=generator, dtype=dtype, device=device)
        return self.projx(z)

    def log_volume(self, dim: int) -> float:
        # |S^{D-1}| = 2 pi^{D/2} / Gamma(D/2)
        return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)

    def divergence(self, x: Tensor, jac_trace: Tensor, jac_xx: Tensor) -> Tensor:
        return jac_trace - jac_xx


def wrap(theta: Tensor) -> Tensor:
    """Angles to ``[-pi, pi)``."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


class FlatTorus(Manifold):
    """The flat torus ``[-pi, pi)^D`` (angles, periodic in each coordinate, the Euclidean metric).

    Tangent spaces are ``R^D`` (no projection), ``exp_x(u) = wrap(x + u)``,
    ``log_x(y) = wrap(y - x)`` (the shortest signed difference); the divergence is ``tr J``.
    """

    name = "torus"
    tol = 1e-6

    def check(self, x: Tensor, name: str = "x", atol: float | None = None) -> Tensor:
        atol = self.tol if atol is None else atol
        bad = (x < -math.pi - atol) | (x >= math.pi + atol)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise ValueError(f"{name} must be angles in [-pi, pi); {int(bad.sum())} value(s) outside, first "
                             f"{float(x[first]):.6g} at index {first} (wrap them with pushforward.manifolds.wrap)")
        return x

    def projx(self, x: Tensor) -> Tensor:
        return wrap(x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return wrap(x + u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return wrap(y - x)

    def geodesic(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        u = self.logmap(x0, x1)
        return wrap(x0 + t.reshape(-1, 1) * u), u

    def uniform_sample(self, n: int, dim: int, generator=None, dtype=None, device=None) -> Tensor:
        u = torch.rand(n, dim, generator=generator, dtype=dtype, device=device)
        return (2 * u - 1) * math.pi

    def log_volume(self, dim: int) -> float:
        return dim * math.log(2 * math.pi)

    def divergence(self, x: Tensor, jac_trace: Tensor, jac_xx: Tensor) -> Tensor:
        return jac_trace
