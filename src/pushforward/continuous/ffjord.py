"""FFJORD: a continuous normalizing flow trained by maximum likelihood through the ODE solve.

Grathwohl et al. 2019, "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
Models": a free-form velocity field ``u_t(x)`` pushes N(0, I) at t=0 to the data at t=1; the
log-likelihood comes from the instantaneous change of variables (Chen et al. 2018)

    log p_1(x) = log p_0(x_0) - int_0^1 div u_t(x_t) dt,

with Hutchinson's trace estimator during training (one Rademacher probe per solve) and the exact
divergence for evaluation in low dimension. Optional RNODE regularisers (Finlay et al. 2020,
"How to train your neural ODE") add ``lambda_K int ||u||^2 dt + lambda_J int ||eps^T du/dx||^2 dt``
to the loss; they keep trajectories straight and cut the number of function evaluations.

The field is an MLP of "ConcatSquash" layers (FFJORD's default): each layer is
``a = (W h + b) * sigmoid(G c) + S c`` with ``c = [emb(t), context]``, so time and context
modulate every layer; its exact divergence is computed in one forward pass
(:func:`~pushforward.continuous.divergence.mlp_divergence`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward._validate import check_choice, check_positive_float, check_positive_int, check_widths
from pushforward.continuous.cnf import ContinuousFlow, Field, ode_log_prob
from pushforward.continuous.divergence import activation, fold_modulation, mlp_divergence, modulated_linear
from pushforward.continuous.ode import SOLVERS
from pushforward.registry import register

ACTIVATIONS = ("softplus", "tanh", "silu", "elu")
DIVERGENCES = ("hutchinson", "exact")


class ConcatSquashField(nn.Module):
    """Velocity field ``u_t(x | c)`` built from ConcatSquash layers (Grathwohl et al. 2019).

    Layer k: ``a_k = (W_k h_{k-1} + b_k) * sigmoid(G_k c + g_k) + S_k c``, ``h_k = sigma(a_k)``
    (no activation after the last layer), with ``h_0 = x`` and ``c = [emb(t), context]``.
    ``emb(t)`` is ``t`` itself (``time_embed=0``) or ``[cos(k pi t), sin(k pi t)]_{k<=time_embed/2}``.
    The last layer starts at zero, so the flow starts as the identity map.

    Args:
        dim: D. context_dim: C (0: none). hidden: hidden widths.
        time_embed: 0 (raw t) or an even number of Fourier features.
        activation: one of :data:`ACTIVATIONS` (smooth, so the divergence is well defined).
    Shapes: x ``[N, D]``, t ``[]`` or ``[N]``, context ``[N, C]`` -> ``[N, D]``.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (96, 96), time_embed: int = 0,
                 activation: str = "tanh"):
        super().__init__()
        check_choice(activation, ACTIVATIONS, "activation")
        if isinstance(time_embed, bool) or not isinstance(time_embed, int) or time_embed < 0 or time_embed % 2:
            raise ValueError(f"time_embed must be 0 (raw t) or an even positive integer, got {time_embed!r}")
        self.dim, self.context_dim, self.activation = dim, context_dim, activation
        self.time_embed = time_embed
        if time_embed:
            self.register_buffer("freqs", math.pi * torch.arange(1, time_embed // 2 + 1, dtype=torch.float32),
                                 persistent=False)
        cond = (time_embed or 1) + context_dim
        widths = [dim, *hidden, dim]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.gates = nn.ModuleList(nn.Linear(cond, b) for b in widths[1:])
        self.shifts = nn.ModuleList(nn.Linear(cond, b, bias=False) for b in widths[1:])
        for p in (self.linears[-1].weight, self.linears[-1].bias, self.shifts[-1].weight):
            nn.init.zeros_(p)

    def _condition(self, x: Tensor, t: Tensor | float, context: Tensor | None) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(1) if t.dim() == 0 else t  # a shared time is broadcast, not copied N times
        emb = t[:, None] if not self.time_embed else torch.cat(
            [torch.cos(t[:, None] * self.freqs.to(x.dtype)), torch.sin(t[:, None] * self.freqs.to(x.dtype))], -1)
        if context is not None:
            emb = torch.cat([emb.expand(x.shape[0], -1), context], -1)
        return emb

    def _modulation(self, c: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return [torch.sigmoid(g(c)) for g in self.gates], [s(c) for s in self.shifts]

    def forward(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:  # noqa: D102
        gates, shifts = self._modulation(self._condition(x, t, context))
        # A shared t (the ODE solvers) gives [1, H] gates/shifts: folded into the weights.
        layers = fold_modulation([lin.weight for lin in self.linears], [lin.bias for lin in self.linears],
                                 gates, shifts)
        h = x
        last = len(layers) - 1
        for k, layer in enumerate(layers):
            a = modulated_linear(h, *layer)
            h = a if k == last else activation(self.activation, a)
        return h

    def forward_with_divergence(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(u [N, D], div u [N])`` with the exact divergence from a forward-mode Jacobian."""
        gates, shifts = self._modulation(self._condition(x, t, context))
        return mlp_divergence(
            x, [lin.weight for lin in self.linears], [lin.bias for lin in self.linears],
            self.activation, gates, shifts,
        )


class FFJORD(ContinuousFlow):
    """Continuous normalizing flow trained by maximum likelihood through the ODE (FFJORD).

    ``loss(x) = -mean log p(x)`` with the trace estimated by Hutchinson (or exact), plus the
    optional RNODE terms ``kinetic * int ||u||^2 dt + jacobian * int ||eps^T du/dx||_2^2 dt``.
    In eval mode (validation) the loss is the plain exact NLL. ``log_prob(x)`` is exact for
    ``dim <= 10`` (``exact=False`` for Hutchinson's estimate); ``sample(n, solver=, steps=)``.

    Args:
        dim: D.
        context_dim: C (conditional flow: the context modulates every layer).
        time_embed: the field's time embedding, see :class:`ConcatSquashField`.
        activation: the field's activation, see :class:`ConcatSquashField`.
        hidden: the field's hidden widths, see :class:`ConcatSquashField`. With one or
            two hidden layers (the default ``(96, 96)``) and no context, the exact trace is a
            single GEMM whatever D (:func:`~pushforward.continuous.divergence.mlp_divergence`),
            so ``divergence="exact"`` trains at about Hutchinson's cost; deeper fields take D
            Jacobian columns (docs/concepts/continuous.md).
        solver: ODE solver for training *and* default evaluation.
        atol: absolute tolerance (``eval_atol`` overrides it outside training).
        rtol: relative tolerance (``eval_rtol`` overrides it outside training).
        steps: steps of a fixed-grid solver.
        adjoint: gradients by the adjoint method (O(1) memory in the number of solver steps).
        kinetic: RNODE kinetic-energy regulariser weight (0 disables).
        jacobian: RNODE Jacobian-norm regulariser weight (0 disables).
        divergence: ``"hutchinson"`` or ``"exact"`` trace during training.
        probe: Hutchinson probe, ``"rademacher"`` or ``"gaussian"``.

    Registered as ``pf.build("ffjord", dim)``; the defaults train a 2-D toy in CPU minutes
    (docs/concepts/continuous.md gives the measurements behind them).

    Raises:
        ValueError: an option outside its range, naming it (e.g. ``atol must be a finite
            number > 0``).
    """

    default_batch_size = 512
    default_lr = 2e-3

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] = (96, 96),
        time_embed: int = 0,
        activation: str = "tanh",
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        steps: int | None = None,
        eval_atol: float | None = None,
        eval_rtol: float | None = None,
        adjoint: bool = False,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
        divergence: str = "hutchinson",
        probe: str = "rademacher",
    ):
        super().__init__((dim,), context_dim)
        check_choice(divergence, DIVERGENCES, "divergence")
        check_choice(probe, ("rademacher", "gaussian"), "probe")
        check_choice(solver, SOLVERS, "solver")
        for name, tol in (("atol", atol), ("rtol", rtol), ("eval_atol", eval_atol), ("eval_rtol", eval_rtol)):
            check_positive_float(tol, name, allow_none=name.startswith("eval"))
        check_positive_int(steps, "steps", allow_none=True)
        for name, w in (("kinetic", kinetic), ("jacobian", jacobian)):
            check_positive_float(w, f"{name} regulariser weight", allow_zero=True)
        hidden = check_widths(hidden, "hidden")
        self.field = ConcatSquashField(dim, context_dim, hidden, time_embed, activation)
        self.default_solver, self.default_steps = solver, steps
        self.train_atol, self.train_rtol = atol, rtol
        self.eval_atol = atol if eval_atol is None else eval_atol
        self.eval_rtol = rtol if eval_rtol is None else eval_rtol
        self.adjoint, self.kinetic, self.jacobian = bool(adjoint), float(kinetic), float(jacobian)
        self.divergence, self.probe = divergence, probe

    # The tolerances used by sample/log_prob when a call gives none.
    @property
    def default_atol(self) -> float:  # noqa: D102
        return self.train_atol if self.training else self.eval_atol

    @property
    def default_rtol(self) -> float:  # noqa: D102
        return self.train_rtol if self.training else self.eval_rtol

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """``u_t(x)`` in standardized units: ``[N, D]`` -> ``[N, D]``."""
        return self.field(x, t, context)

    def velocity_field(self, context: Tensor | None = None) -> Field:
        """The field for ``context`` with its exact divergence in one forward pass."""
        field = self.field

        def with_divergence(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return field.forward_with_divergence(x, t, context)

        return Field(lambda x, t: field(x, t, context), with_divergence)

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return -self._log_prob(x, context).mean()
        regularize = self.kinetic > 0 or self.jacobian > 0
        f = self.velocity_field(context)
        out = ode_log_prob(
            f.velocity, x, lambda z: self.base.log_prob(z, context),
            exact=self.divergence == "exact", probe=self.probe, velocity_divergence=f.with_divergence,
            adjoint=self.adjoint, adjoint_params=tuple(self.parameters()) if self.adjoint else None,
            regularize=regularize, **self._solver_args(None, None, None, None),
        )
        self.nfe = out[1]
        loss = -out[0].mean()
        if regularize:
            loss = loss + self.kinetic * out[2].mean() + self.jacobian * out[3].mean()
        return loss

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, solver={self.default_solver!r}, divergence={self.divergence!r}, "
                f"kinetic={self.kinetic}, jacobian={self.jacobian}, adjoint={self.adjoint}")


register("ffjord", FFJORD,
         "continuous normalizing flow trained by maximum likelihood through the ODE (Grathwohl et al. 2019)")
