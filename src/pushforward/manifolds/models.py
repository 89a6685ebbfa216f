"""Riemannian flow matching (Chen & Lipman 2024) on the sphere and the flat torus.

Training regresses a tangent velocity field on the geodesic conditional path between a uniform
source point ``x_0`` and a data point ``x_1``:

    x_t = exp_{x_0}(t log_{x_0} x_1),   u_t = d x_t / dt,
    loss = E_{t, x_0, x_1} | v_theta(x_t, t) - u_t |^2_g.

The network's ambient output is projected to ``T_x M``. Sampling integrates ``dx/dt = v`` on the
manifold (:func:`~pushforward.manifolds.solvers.manifold_odeint`); ``log_prob`` is the density
with respect to the manifold's volume measure by the Riemannian instantaneous change of variables

    log p_1(x_1) = log p_0(x_0) - int_0^1 div_g v_t(x_t) dt,

with the divergence computed exactly from the ambient Jacobian (D vector-Jacobian products).
Time: t = 0 is the uniform source, t = 1 the data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pushforward._validate import (
    check_choice,
    check_embed_size,
    check_int_range,
    check_positive_int,
    check_widths,
)
from pushforward.manifolds.geometry import FlatTorus, Manifold, Sphere
from pushforward.manifolds.solvers import SOLVERS, STEPS, manifold_odeint
from pushforward.models import FlowModel
from pushforward.nets.mlp import MLP
from pushforward.nets.time import SinusoidalEmbedding, batch_times
from pushforward.registry import register


class RiemannianFlowMatching(FlowModel):
    """Flow matching on a manifold with a tangent-projected MLP velocity field.

    Args:
        manifold: a :class:`~pushforward.manifolds.geometry.Manifold`.
        dim: ambient dimension D of a point ``[N, D]``.
        context_dim: conditioning size C (0: none); the context is an input of the network.
        hidden, activation: the MLP on ``[features(x), emb(t), context]`` (smooth activations:
            the likelihood differentiates the field).
        time_embed: sinusoidal time-embedding size (0: raw t).
        solver: ``"euler"``, ``"midpoint"`` or ``"rk4"``; steps: solver steps for sampling and
            likelihood; step: ``"project"`` (ambient Runge-Kutta + projection, full order) or ``"exp"``
            (geodesic steps; second order on the sphere), see :mod:`pushforward.manifolds.solvers`.
    """

    standardize_by_default = False
    support = "manifold"

    def __init__(self, manifold: Manifold, dim: int, context_dim: int = 0, hidden=(128, 128),
                 activation: str = "silu", time_embed: int = 16, solver: str = "rk4", steps: int = 20,
                 step: str = "project"):
        super().__init__((dim,), context_dim)
        self.manifold = manifold
        self.hidden = check_widths(hidden)
        self.solver = check_choice(solver, SOLVERS, "solver")
        self.step = check_choice(step, STEPS, "step")
        self.steps = check_positive_int(steps, "steps")
        check_embed_size(time_embed)
        self.embed = SinusoidalEmbedding(time_embed, scale=10.0) if time_embed else None
        t_size = time_embed or 1
        self.net = MLP(self._feature_size(dim) + t_size + context_dim, dim, self.hidden, activation)

    # ------------------------------------------------------------------ the field
    def _feature_size(self, dim: int) -> int:
        return dim

    def features(self, x: Tensor) -> Tensor:
        """Network input features of points ``[N, D]`` (the torus uses ``cos``/``sin``)."""
        return x

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The tangent field ``v_t(x) = P_x net(features(x), t, context)``: ``[N, D]``."""
        t = batch_times(t, x)
        te = self.embed(t) if self.embed is not None else t[:, None]
        parts = [self.features(x), te] + ([context] if context is not None else [])
        return self.manifold.proju(x, self.net(torch.cat(parts, -1)))

    def velocity_and_divergence(self, x: Tensor, t: Tensor | float, context: Tensor | None = None,
                                create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """``(v [N, D], div_g v [N])``: the Riemannian divergence from the exact ambient Jacobian."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True) if not x.requires_grad else x
            v = self.velocity(x, t, context)
            rows = []
            for i in range(x.shape[1]):
                e = torch.zeros_like(v)
                e[:, i] = 1
                rows.append(torch.autograd.grad(v, x, e, create_graph=create_graph, retain_graph=True)[0])
            jac = torch.stack(rows, 1)  # [N, D, D], jac[n, i, j] = dv_i / dx_j
        tr = jac.diagonal(dim1=1, dim2=2).sum(-1)
        xx = torch.einsum("ni,nij,nj->n", x, jac, x)
        div = self.manifold.divergence(x, tr, xx)
        if not create_graph:
            v, div = v.detach(), div.detach()
        return v, div

    # ------------------------------------------------------------------ contract
    def _check_points(self, x: Tensor, name: str = "x") -> Tensor:
        if isinstance(x, Tensor) and not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of points on the {self.manifold.name}, "
                            f"got dtype {x.dtype}")
        x = self._check_x(x, name)
        return self.manifold.projx(self.manifold.check(x, name))

    def log_prob(self, x: Tensor, context: Tensor | None = None, steps: int | None = None,
                 solver: str | None = None, step: str | None = None) -> Tensor:
        """``log p(x)`` w.r.t. the manifold's volume measure, ``[N]`` (x ``[N, D]`` on the manifold)."""
        x = self._check_points(x)
        context = self._check_context(context, x.shape[0])
        train = torch.is_grad_enabled()

        def dyn(y, t):
            return self.velocity_and_divergence(y, t, context, create_graph=train)

        x0, l0 = manifold_odeint(dyn, x, self.manifold, 1.0, 0.0, steps or self.steps, solver or self.solver,
                                 step or self.step, with_scalar=True)
        return -self.manifold.log_volume(self.dim) + l0

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def sample(self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None,
               steps: int | None = None, solver: str | None = None, step: str | None = None) -> Tensor:
        """``n`` points on the manifold ``[n, D]`` (context ``[n, C]`` or ``[C]``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
        context = self._check_context(context, n)
        p = next(self.parameters())
        x0 = self.manifold.uniform_sample(n, self.dim, generator, dtype=p.dtype).to(p.device)

        def dyn(y, t):
            return self.velocity(y, t, context), None

        with torch.no_grad():
            x, _ = manifold_odeint(dyn, x0, self.manifold, 0.0, 1.0, steps or self.steps, solver or self.solver,
                                   step or self.step)
        return x

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Riemannian conditional flow matching loss on a batch ``[N, D]`` of points: a scalar."""
        x1 = self._check_points(x)
        context = self._check_context(context, x1.shape[0])
        n = x1.shape[0]
        x0 = self.manifold.uniform_sample(n, self.dim, dtype=x1.dtype).to(x1.device)
        t = torch.rand(n, dtype=x1.dtype, device=x1.device)
        xt, ut = self.manifold.geodesic(x0, x1, t)
        v = self.velocity(xt, t, context)
        return (v - ut).pow(2).sum(-1).mean()

    def extra_repr(self) -> str:
        return (f"manifold={self.manifold.name}, dim={self.dim}, context_dim={self.context_dim}, "
                f"solver={self.solver!r}, steps={self.steps}, step={self.step!r}")


class SphereFlowMatching(RiemannianFlowMatching):
    """Riemannian flow matching on the unit sphere ``S^{D-1}`` (points: unit vectors ``[N, D]``)."""

    def __init__(self, dim: int = 3, context_dim: int = 0, hidden=(128, 128), activation: str = "silu",
                 time_embed: int = 16, solver: str = "rk4", steps: int = 20, step: str = "project"):
        check_int_range(dim, "dim (the sphere's ambient dimension)", 2)
        super().__init__(Sphere(), dim, context_dim, hidden, activation, time_embed, solver, steps, step)


class TorusFlowMatching(RiemannianFlowMatching):
    """Riemannian flow matching on the flat torus ``[-pi, pi)^D`` (points: angles ``[N, D]``).

    The network sees ``(cos x, sin x)``, so the field is periodic.
    """

    def __init__(self, dim: int = 2, context_dim: int = 0, hidden=(128, 128), activation: str = "silu",
                 time_embed: int = 16, solver: str = "rk4", steps: int = 20, step: str = "project"):
        super().__init__(FlatTorus(), dim, context_dim, hidden, activation, time_embed, solver, steps, step)

    def _feature_size(self, dim: int) -> int:
        return 2 * dim

    def features(self, x: Tensor) -> Tensor:
        return torch.cat([torch.cos(x), torch.sin(x)], -1)


register("sphere-fm", SphereFlowMatching, "Riemannian flow matching on the unit sphere (unit vectors in R^D)")
register("torus-fm", TorusFlowMatching, "Riemannian flow matching on the flat torus (angles in [-pi, pi)^D)")
