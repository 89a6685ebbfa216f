"""Continuous flows: a velocity field ``u_t(x)`` pushes a base (noise) at t=0 to data at t=1.

Time convention (DESIGN.md): t = 0 is the source (noise), t = 1 is the data.

Sampling integrates ``dx/dt = u_t(x)`` from t=0 to 1. The likelihood uses the instantaneous change
of variables (Chen et al. 2018, "Neural ODEs"): integrating ``[x, l]`` with ``dl/dt = div u_t(x)``
from t=1 (the data point, l=0) back to t=0 gives

    log p_1(x) = log p_0(x_0) - int_0^1 div u_t(x_t) dt = log p_0(x_0) + l(0).

One routine, :func:`ode_log_prob`, serves FFJORD, flow matching and the probability-flow ODE.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pushforward.continuous.divergence import EXACT_METHODS, divergence_exact, make_probe
from pushforward.continuous.ode import FIXED_SOLVERS, odeint
from pushforward.distributions import Distribution, StandardNormal
from pushforward.models import FlowModel

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x [N, ...], t 0-d) -> [N, ...]
VelocityDivergence = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (x, t) -> (u, div u)


def _check_field(u: Tensor, x: Tensor) -> None:
    if u.shape != x.shape:
        raise ValueError(
            f"the velocity field must return the shape of its input: got output {list(u.shape)} "
            f"for input {list(x.shape)}"
        )


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
    exact_method: str = "auto",
    velocity_divergence: VelocityDivergence | None = None,
    regularize: bool = False,
):
    """``log p_{t1}(x)`` of the flow of ``velocity`` from ``p_{t0}`` (instantaneous change of variables).

    Integrates ``d[x, l]/dt = [u_t(x), div u_t(x)]`` from ``t1`` (``x``, ``l = 0``) to ``t0``;
    then ``log p_{t1}(x) = log p_{t0}(x_{t0}) + l(t0)`` (Chen et al. 2018, eq. 4).

    Args:
        velocity: ``(x [N, ...], t) -> [N, ...]``.
        x: points at time ``t1`` ``[N, ...]``.
        base_log_prob: ``log p_{t0}``, ``[N, ...] -> [N]``.
        exact: exact divergence or Hutchinson's estimator with one probe fixed for the whole
            solve (Grathwohl et al. 2019; unbiased in expectation).
        solver: see :func:`pushforward.continuous.odeint`.
        steps: see :func:`pushforward.continuous.odeint`.
        atol: see :func:`pushforward.continuous.odeint`.
        rtol: see :func:`pushforward.continuous.odeint`.
        adjoint: see :func:`pushforward.continuous.odeint`.
        probe: Hutchinson probe kind, ``"rademacher"`` or ``"gaussian"``.
        generator: the RNG of the Hutchinson probes.
        exact_method: ``"auto"`` (``velocity_divergence`` when given, else the batched VJP),
            ``"batched"`` or ``"loop"`` (one autograd call per dimension, the reference).
        velocity_divergence: optional fast exact path ``(x, t) -> (u, div u)`` (e.g. a
            forward-mode MLP Jacobian, :func:`~pushforward.continuous.divergence.mlp_divergence`).
        regularize: also integrate the RNODE regularisers (Finlay et al. 2020) along the solve:
            kinetic energy ``int ||u||^2 dt`` and Jacobian Frobenius norm
            ``int ||eps^T du/dx||^2 dt`` (Hutchinson, same probe).
    Returns:
        ``(log_prob [N], nfe)``, or ``(log_prob, nfe, kinetic [N], frobenius [N])`` with
        ``regularize``. Differentiable w.r.t. the velocity's parameters when grad is enabled
        (training); under ``torch.no_grad()`` the divergence still uses autograd locally.
    Raises:
        ValueError: the field's output shape differs from its input's (naming both), unknown
            solver, tolerances <= 0. NonFiniteError: NaN/inf during the solve (naming t, solver).
    """
    if exact_method not in EXACT_METHODS:
        raise ValueError(f"unknown exact_method {exact_method!r}; choose from {', '.join(EXACT_METHODS)}")
    if float(t0) == float(t1):
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    train = torch.is_grad_enabled()
    flat_shape = x.shape
    need_probe = (not exact) or regularize
    eps = make_probe(x.shape, probe, generator, x.device, x.dtype) if need_probe else None
    fast = exact and exact_method == "auto" and velocity_divergence is not None

    def dynamics(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        xt = state[0]
        vjp = None
        if fast and not regularize:
            # Forward-mode path: no autograd graph needed unless training through it.
            u, div = velocity_divergence(xt, t)
            _check_field(u, xt)
        else:
            with torch.enable_grad():
                if not xt.requires_grad:
                    xt = xt.detach().requires_grad_(True)
                if fast:
                    u, div = velocity_divergence(xt, t)
                    _check_field(u, xt)
                else:
                    u = velocity(xt, t)
                    _check_field(u, xt)
                    if exact:
                        div = divergence_exact(u, xt, create_graph=train, method=exact_method)
                if need_probe:
                    vjp = torch.autograd.grad(u, xt, grad_outputs=eps, create_graph=train, retain_graph=True)[0]
                    if not exact:
                        div = (vjp * eps).reshape(xt.shape[0], -1).sum(-1)
        out = [u, div]
        if regularize:
            out += [u.pow(2).reshape(u.shape[0], -1).sum(-1), vjp.pow(2).reshape(u.shape[0], -1).sum(-1)]
        if not train:
            out = [o.detach() for o in out]
        return tuple(out)

    zero = x.new_zeros(x.shape[0])
    y0 = (x, zero, zero, zero) if regularize else (x, zero)
    ys, nfe = odeint(
        dynamics, y0, [t1, t0], solver=solver, steps=steps, atol=atol, rtol=rtol,
        adjoint=adjoint, adjoint_params=adjoint_params, return_nfe=True,
    )
    x0, l_end = ys[0][-1], ys[1][-1]
    if x0.shape != flat_shape:  # pragma: no cover - guarded by _check_field
        raise RuntimeError(f"ODE state changed shape from {list(flat_shape)} to {list(x0.shape)}")
    lp = base_log_prob(x0) + l_end
    if not regularize:
        return lp, nfe
    # The regularisers were integrated from t1 down to t0: flip the sign for t0 < t1.
    sign = -1.0 if t0 < t1 else 1.0
    return lp, nfe, sign * ys[2][-1], sign * ys[3][-1]


@dataclass(frozen=True)
class Field:
    """The right-hand side of a model's ODE for one context: ``f(t, x) -> u_t(x)``.

    Attributes:
        velocity: ``(x [N, ...], t [] or [N]) -> u [N, ...]`` in the model's (standardized) units.
        with_divergence: optional exact fast path ``(x, t) -> (u [N, ...], div u [N])`` without
            autograd (e.g. the network's ``forward_with_divergence``); ``log_prob`` uses it.
    """

    velocity: Velocity
    with_divergence: VelocityDivergence | None = None

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        u = self.velocity(x, t)
        _check_field(u, x)
        return u


class ContinuousFlow(FlowModel):
    """Base class of ODE-defined models: one hook, :meth:`velocity_field`, gives the ODE for a context.

    Sampling (``sample(n, steps=..., solver=...)``), likelihood (``log_prob(x, exact=True|False|
    None, ...)``) and :meth:`trajectory` are written once here on top of :meth:`velocity_field`, with an
    ``nfe`` counter (function evaluations of the last solve). A subclass implements
    :meth:`velocity` (standardized units), or overrides :meth:`velocity_field` when the field
    takes options (guidance) or work that is done once per context (a policy's observation
    prefix); a network with a cheaper exact divergence than autograd (its
    ``forward_with_divergence``, see :func:`~pushforward.continuous.divergence.network_divergence`)
    gives ``Field.with_divergence``.

    The ODE runs over ``t_span = (t_start, t_end)``, by default ``(0, 1)``: sampling integrates
    from the base at ``t_start`` to ``t_end``, ``log_prob`` back from ``t_end`` to ``t_start``,
    ``log p_{t_end}(x) = log p_base(x_{t_start}) - int_{t_start}^{t_end} div u_t(x_t) dt``. A model
    whose ODE stops short of 1 (the probability-flow ODE of a score model stops at
    ``1 - s_eps``) or runs backwards (``t_start > t_end``) passes its own span.

    Args:
        event_shape: see :class:`~pushforward.models.FlowModel`.
        context_dim: see :class:`~pushforward.models.FlowModel`.
        base: the distribution at ``t_start`` (default ``N(0, I)``).
        t_span: ``(t_start, t_end)``, two different finite numbers (default ``(0.0, 1.0)``).

    Attributes:
        default_solver / default_steps: used when a call gives none (fixed-grid solvers use
            ``steps``; adaptive ones ``atol``/``rtol``).
        exact_max_dim: ``log_prob(exact=None)`` is exact up to this many dimensions, else
            Hutchinson's estimate (exact costs D Jacobian products per evaluation).
        default_logprob_solver: ``log_prob``'s solver when a call gives none (None: ``default_solver``).
    """

    default_solver: str = "dopri5"
    default_steps: int | None = None
    default_atol: float = 1e-5
    default_rtol: float = 1e-5
    exact_max_dim: int = 10
    default_logprob_solver: str | None = None  # None: log_prob uses default_solver too
    t_span: tuple[float, float] = (0.0, 1.0)  # class default: instances pickled before t_span existed

    def __init__(
        self,
        event_shape: Sequence[int],
        context_dim: int = 0,
        base: Distribution | None = None,
        t_span: tuple[float, float] | None = None,
    ):
        super().__init__(event_shape, context_dim)
        self.base = base if base is not None else StandardNormal(self.event_shape)
        self.nfe = 0
        if t_span is None:
            t_span = (0.0, 1.0)
        try:
            start, end = (float(v) for v in t_span)
        except (TypeError, ValueError):
            raise ValueError(f"t_span must be two numbers (t_start, t_end), got {t_span!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start == end:
            raise ValueError(f"t_span must be two different finite times, got {t_span!r}")
        self.t_span = (start, end)

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """``u_t(x)`` in standardized units: x ``[N, ...]``, t ``[]`` or ``[N]`` -> ``[N, ...]``."""
        raise NotImplementedError

    def velocity_with_divergence(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(u_t(x) [N, ...], div u_t(x) [N])`` exactly, without autograd: the field's fast path.

        Raises:
            NotImplementedError: the field of this model has no exact divergence of its own
                (``log_prob`` then uses autograd).
        """
        fast = self.velocity_field(context).with_divergence
        if fast is None:
            raise NotImplementedError(
                f"{type(self).__name__}'s network has no exact divergence without autograd "
                "(forward_with_divergence); log_prob uses autograd")
        u, div = fast(x, t)
        _check_field(u, x)
        return u, div

    def velocity_field(self, context: Tensor | None = None) -> Field:
        """The ODE's right-hand side for ``context`` ``[N, C]`` (or None): a :class:`Field`.

        The default wraps :meth:`velocity`. Subclasses override it to add options (e.g.
        ``guidance``: ``sample``, ``log_prob`` and ``trajectory`` forward the extra keyword
        arguments they are given), to do per-context work once (a policy's observation prefix),
        or to give the network's exact divergence (``Field.with_divergence``).
        """
        return Field(lambda x, t: self.velocity(x, t, context))

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

    def _solve(self, field: Field, x0: Tensor, solver=None, steps=None, atol=None, rtol=None,
               check_finite: bool = True) -> Tensor:
        """Integrate ``field`` from ``x0`` (at ``t_start``) to ``t_end``; sets :attr:`nfe`."""
        xs, self.nfe = odeint(field, x0, list(self.t_span), return_nfe=True, check_finite=check_finite,
                              **self._solver_args(solver, steps, atol, rtol))
        return xs[-1]

    def _sample(self, n, context, generator=None, steps=None, solver=None, atol=None, rtol=None, x0=None,
                **field_options):
        x0 = self.base.sample(n, context, generator) if x0 is None else x0
        return self._solve(self.velocity_field(context, **field_options), x0, solver, steps, atol, rtol)

    def _log_prob(self, x, context=None, exact=None, steps=None, solver=None, atol=None, rtol=None,
                  probe="rademacher", generator=None, adjoint=False, exact_method="auto", **field_options):
        if exact is None:
            exact = x[0].numel() <= self.exact_max_dim
        solver = solver or self.default_logprob_solver
        f = self.velocity_field(context, **field_options)
        lp, self.nfe = ode_log_prob(
            f.velocity, x, lambda z: self.base.log_prob(z, context),
            exact=exact, probe=probe, generator=generator, adjoint=adjoint,
            adjoint_params=tuple(self.parameters()) if adjoint else None,
            exact_method=exact_method, velocity_divergence=f.with_divergence, t0=self.t_span[0],
            t1=self.t_span[1], **self._solver_args(solver, steps, atol, rtol),
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
        **field_options,
    ) -> Tensor:
        """States from noise (``t_start``, 0 by default) to data (``t_end``, 1 by default) in user
        units, on ``steps`` uniform steps: ``[steps + 1, n, *event_shape]``.

        Give ``n`` (noise drawn from the base) or ``x0`` (noise ``[n, ...]`` in model units).
        """
        if x0 is None:
            if n is None:
                raise ValueError("trajectory needs n or x0")
            context = self._check_context(context, n)
            x0 = self.base.sample(n, context, generator)
        times = torch.linspace(*self.t_span, steps + 1, dtype=torch.float64).tolist()
        with torch.no_grad():
            xs, self.nfe = odeint(self.velocity_field(context, **field_options), x0, times, solver=solver, steps=steps,
                                  return_nfe=True)
        return self.unstandardize(xs)


def _rounded(v: float, dtype: torch.dtype) -> float:
    """``float(torch.tensor(v, dtype=dtype))`` computed on the host with :mod:`struct` (IEEE
    round-to-nearest-even), so ``torch.compile`` traces it without a graph break."""
    if dtype == torch.float64:
        return float(v)
    code = {torch.float32: "f", torch.float16: "e"}.get(dtype)
    if code is None:
        return float(torch.tensor(v, dtype=dtype))
    return struct.unpack(code, struct.pack(code, v))[0]


def fixed_grid_solve(velocity: Velocity, x0: Tensor, t0: float, t1: float, steps: int, solver: str) -> Tensor:
    """The end state of ``steps`` uniform Runge–Kutta steps of ``dx/dt = velocity(x, t)`` from ``t0``.

    The same arithmetic as :func:`pushforward.continuous.ode.odeint` on a fixed grid (so results
    are bit-equal in eager mode), written as one plain loop with no host synchronisation and no
    counters, so that ``torch.compile`` traces it whole and CUDA graphs can capture it
    (``FlowPolicy.set_fast_path``). ``x0 [N, ...]`` -> ``[N, ...]``; ``solver`` one of
    :data:`~pushforward.continuous.ode.FIXED_SOLVERS`.
    """
    from pushforward.continuous.ode import _axpy

    tab = FIXED_SOLVERS[solver]
    # Times as odeint forms them: the span rounded to the state's dtype, then Python floats.
    t0, t1 = _rounded(t0, x0.dtype), _rounded(t1, x0.dtype)
    h = (t1 - t0) / steps
    y = x0
    for k in range(steps):
        tk = t0 + k * h
        ks: list[Tensor] = []
        for ci, ai in zip(tab.c, tab.a):
            yi = _axpy(y, h, ks, ai) if ai else y
            ks.append(velocity(yi, torch.tensor(tk + ci * h, dtype=x0.dtype, device=x0.device)))
        y = _axpy(y, h, ks, tab.b)
    return y
