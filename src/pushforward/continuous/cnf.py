"""Continuous flows: a velocity field ``u_t(x)`` pushes a base (noise) at t=0 to data at t=1.

Time convention (DESIGN.md): t = 0 is the source (noise), t = 1 is the data.

Sampling integrates ``dx/dt = u_t(x)`` from t=0 to 1. The likelihood uses the instantaneous change
of variables (Chen et al. 2018, "Neural ODEs"): integrating ``[x, l]`` with ``dl/dt = div u_t(x)``
from t=1 (the data point, l=0) back to t=0 gives

    log p_1(x) = log p_0(x_0) - int_0^1 div u_t(x_t) dt = log p_0(x_0) + l(0).

One routine, :func:`ode_log_prob`, serves FFJORD, flow matching and the probability-flow ODE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pushforward.continuous.divergence import divergence_exact, divergence_hutchinson, make_probe
from pushforward.continuous.ode import FIXED_SOLVERS, odeint
from pushforward.distributions import Distribution, StandardNormal
from pushforward.models import FlowModel

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x [N, ...], t 0-d) -> [N, ...]


def ode_log_prob(
    velocity: Velocity,
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    *,
    exact: bool = True,
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    adjoint: bool = False,
    adjoint_params=None,
    t0: float = 0.0,
    t1: float = 1.0,
) -> tuple[Tensor, int]:
    """``log p_{t1}(x)`` of the flow of ``velocity`` from ``p_{t0}`` (instantaneous change of variables).

    Args:
        velocity: ``(x [N, ...], t) -> [N, ...]``.
        x: points at time ``t1`` ``[N, ...]``.
        base_log_prob: ``log p_{t0}``, ``[N, ...] -> [N]``.
        exact: exact divergence (D vector-Jacobian products per evaluation) or Hutchinson's
            estimator with one probe fixed for the whole solve (unbiased in expectation).
        solver, steps, atol, rtol, adjoint: see :func:`pushforward.continuous.odeint`.
    Returns:
        ``(log_prob [N], nfe)``. Differentiable w.r.t. the velocity's parameters when grad is
        enabled (training); under ``torch.no_grad()`` the divergence still uses autograd locally.
    """
    train = torch.is_grad_enabled()
    flat_shape = x.shape
    eps = None if exact else make_probe(x.shape, probe, generator, x.device, x.dtype)

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        xt = state[0]
        with torch.enable_grad():
            if not xt.requires_grad:
                xt = xt.detach().requires_grad_(True)
            u = velocity(xt, t)
            if exact:
                div = divergence_exact(u.reshape(u.shape[0], -1), xt, create_graph=train) if xt.dim() == 2 else \
                    _divergence_exact_nd(u, xt, train)
            else:
                div = divergence_hutchinson(u, xt, eps, create_graph=train)
        if not train:
            u, div = u.detach(), div.detach()
        return u, div

    l0 = x.new_zeros(x.shape[0])
    (xs, ls), nfe = odeint(
        dynamics, (x, l0), [t1, t0], solver=solver, steps=steps, atol=atol, rtol=rtol,
        adjoint=adjoint, adjoint_params=adjoint_params, return_nfe=True,
    )
    x0, l_end = xs[-1], ls[-1]
    assert x0.shape == flat_shape
    return base_log_prob(x0) + l_end, nfe


def _divergence_exact_nd(u: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    flat_u = u.reshape(u.shape[0], -1)
    div = x.new_zeros(x.shape[0])
    for i in range(flat_u.shape[1]):
        g = torch.autograd.grad(flat_u[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
        div = div + g.reshape(g.shape[0], -1)[:, i]
    return div


class ContinuousFlow(FlowModel):
    """Base class of ODE-defined models: subclasses implement :meth:`velocity` (standardized units).

    Provides ``sample(n, steps=..., solver=...)``, ``log_prob(x, exact=True|False, ...)``,
    :meth:`trajectory` and an ``nfe`` counter (function evaluations of the last solve).

    Attributes:
        default_solver / default_steps: used when a call gives none (fixed-grid solvers use
            ``steps``; adaptive ones ``atol``/``rtol``).
    """

    default_solver: str = "dopri5"
    default_steps: int | None = None
    default_atol: float = 1e-5
    default_rtol: float = 1e-5

    def __init__(self, event_shape, context_dim: int = 0, base: Distribution | None = None):
        super().__init__(event_shape, context_dim)
        self.base = base if base is not None else StandardNormal(self.event_shape)
        self.nfe = 0

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """``u_t(x)`` in standardized units: x ``[N, ...]``, t ``[]`` or ``[N]`` -> ``[N, ...]``."""
        raise NotImplementedError

    def _solver_args(self, solver, steps, atol, rtol) -> dict:
        solver = solver or self.default_solver
        if steps is None:
            steps = self.default_steps if self.default_steps is not None else (100 if solver in FIXED_SOLVERS else None)
        return {
            "solver": solver,
            "steps": steps,
            "atol": atol if atol is not None else self.default_atol,
            "rtol": rtol if rtol is not None else self.default_rtol,
        }

    def _sample(self, n, context, generator=None, steps=None, solver=None, atol=None, rtol=None, x0=None):
        x0 = self.base.sample(n, context, generator) if x0 is None else x0
        xs, self.nfe = odeint(
            lambda t, x: self.velocity(x, t, context), x0, [0.0, 1.0],
            return_nfe=True, **self._solver_args(solver, steps, atol, rtol),
        )
        return xs[-1]

    def _log_prob(self, x, context=None, exact=True, steps=None, solver=None, atol=None, rtol=None,
                  probe="rademacher", generator=None, adjoint=False):
        lp, self.nfe = ode_log_prob(
            lambda y, t: self.velocity(y, t, context), x, lambda z: self.base.log_prob(z, context),
            exact=exact, probe=probe, generator=generator, adjoint=adjoint,
            adjoint_params=tuple(self.parameters()) if adjoint else None,
            **self._solver_args(solver, steps, atol, rtol),
        )
        return lp

    def trajectory(
        self,
        n: int | None = None,
        steps: int = 50,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        x0: Tensor | None = None,
        solver: str = "euler",
    ) -> Tensor:
        """States from noise (t=0) to data (t=1) in user units: ``[steps + 1, n, *event_shape]``.

        Give ``n`` (noise drawn from the base) or ``x0`` (noise ``[n, ...]`` in model units).
        """
        if x0 is None:
            if n is None:
                raise ValueError("trajectory needs n or x0")
            context = self._check_context(context, n)
            x0 = self.base.sample(n, context, generator)
        times = torch.linspace(0.0, 1.0, steps + 1).tolist()
        with torch.no_grad():
            xs, self.nfe = odeint(lambda t, x: self.velocity(x, t, context), x0, times,
                                  solver=solver, steps=steps, return_nfe=True)
        return self.unstandardize(xs)
