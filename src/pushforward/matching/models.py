"""Flow matching models: a velocity field trained by regression on a conditional path.

Conditional flow matching (Lipman et al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden 2023;
Tong et al. 2024): with noise ``x_0 ~ N(0, I)`` (t = 0), data ``x_1`` (t = 1), a coupling
``pi(x_0, x_1)``, a time density ``p(t)`` and a conditional path ``x_t`` with velocity ``dx_t``,

    L(theta) = E_{t, (x_0, x_1) ~ pi} || v_theta(x_t, t, c) - dx_t ||^2 ,

whose minimiser is the marginal velocity ``u_t(x) = E[dx_t | x_t = x]`` that pushes the noise to
the data. Sampling integrates ``dx/dt = v(x, t)`` from 0 to 1; the likelihood uses the
instantaneous change of variables (:func:`pushforward.continuous.ode_log_prob`).

Classifier-free guidance (Ho & Salimans 2022, for flows: Zheng et al. 2023 "Guided flows"):
train with ``cond_drop`` (the context is replaced by a learned null context with that
probability), sample with ``v = v(x, t, null) + w (v(x, t, c) - v(x, t, null))``; ``w = 1`` is
the conditional model, ``w = 0`` the unconditional one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward._validate import check_choice, check_dim, check_positive_int
from pushforward.continuous.cnf import ContinuousFlow, Field
from pushforward.continuous.divergence import network_divergence
from pushforward.continuous.ode import SOLVERS
from pushforward.matching.couplings import IndependentCoupling, OTCoupling, PairCoupling, SinkhornCoupling
from pushforward.matching.paths import AffinePath, BrownianBridgePath
from pushforward.matching.time_samplers import TIME_SAMPLERS, TimeSampler, get_time_sampler
from pushforward.registry import register

PATHS = ("ot", "polynomial", "vp", "cosine", "bridge")
COUPLINGS = ("independent", "ot", "sinkhorn")


def make_path(path: str | AffinePath | BrownianBridgePath, sigma_min: float = 0.0,
              sigma: float = 0.5) -> AffinePath | BrownianBridgePath:
    """A path by name (``ot`` with ``sigma_min``, ``polynomial``, ``vp``, ``cosine``, ``bridge``
    of width ``sigma``) or pass a path object through."""
    if isinstance(path, (AffinePath, BrownianBridgePath)):
        if sigma_min:
            raise ValueError(f"sigma_min={sigma_min} applies to the path name 'ot', not to a path object {path!r}")
        return path
    check_choice(path, PATHS, "path")
    if path == "bridge":
        return BrownianBridgePath(sigma)
    if path != "ot" and sigma_min:
        raise ValueError(f"sigma_min={sigma_min} only applies to the 'ot' path, not {path!r}")
    return AffinePath(path, sigma_min=sigma_min) if path == "ot" else AffinePath(path)


def make_coupling(coupling: str | PairCoupling, path: AffinePath | BrownianBridgePath, *, ot_block: int | None = 32,
                  ot_reg: float = 0.05, by_context: bool = False, context_dim: int = 0) -> PairCoupling:
    """A coupling by name or pass one through. ``ot``: exact minibatch OT in blocks of
    ``ot_block`` rows; ``sinkhorn``: entropic, ``ot_reg`` relative to the mean cost (with a
    bridge path the absolute ``2 sigma^2`` of SB-CFM); ``by_context``: pair within equal contexts."""
    if by_context and context_dim == 0:
        raise ValueError("by_context=True needs a conditional model (context_dim > 0)")
    if isinstance(coupling, PairCoupling):
        return coupling
    check_choice(coupling, COUPLINGS, "coupling")
    if by_context and coupling == "independent":
        raise ValueError("by_context=True only applies to the 'ot' and 'sinkhorn' couplings")
    if coupling == "independent":
        return IndependentCoupling()
    if coupling == "ot":
        return OTCoupling("exact", block_size=ot_block, by_context=by_context)
    if isinstance(path, BrownianBridgePath):
        return SinkhornCoupling(reg=2 * path.sigma**2, relative=False, by_context=by_context)
    return SinkhornCoupling(reg=ot_reg, by_context=by_context)


def _event_shape(dim, image_shape) -> tuple[int, ...]:
    if image_shape is not None:
        return tuple(int(s) for s in image_shape)
    if dim is None:
        raise ValueError("FlowMatching needs dim (vectors [N, D]), an event shape or image_shape")
    if isinstance(dim, int) and not isinstance(dim, bool):
        return (check_dim(dim, "dim"),)
    if isinstance(dim, (str, bytes)) or not isinstance(dim, Sequence) or not dim:
        raise TypeError(f"dim must be a positive integer or an event shape (a sequence of them), got {dim!r}")
    return tuple(check_dim(s, "dim") for s in dim)


def _default_net(event_shape, context_dim, hidden, time_embed, activation, width, time_scale=100.0) -> nn.Module:
    if len(event_shape) == 3:
        from pushforward.nets.unet import UNet

        return UNet(event_shape[0], context_dim=context_dim, width=width, time_scale=time_scale)
    if len(event_shape) != 1:
        raise ValueError(f"the default networks take vectors (D,) or images (C, H, W), got event shape "
                         f"{event_shape}; pass net=")
    from pushforward.nets import TimeMLP

    return TimeMLP(event_shape[0], context_dim=context_dim, hidden=tuple(hidden), time_embed=time_embed,
                   activation=activation, time_scale=time_scale)


class FlowMatching(ContinuousFlow):
    """A velocity field ``v(x, t, c)`` trained by conditional flow matching.

    Args:
        dim: D for vectors ``[N, D]``, or the event shape (``(D,)``, ``(C, H, W)``, ...).
        context_dim: conditioning size (0: unconditional).
        image_shape: ``(C, H, W)`` for images (then ``dim`` may be omitted; the net is a U-Net).
        net: the field ``net(x, t, context) -> like x``; default a :class:`~pushforward.nets.TimeMLP`
            (``hidden``, ``time_embed``, ``activation``) for vectors and a
            :class:`~pushforward.nets.unet.UNet` (``width``) for images.
        path: ``ot`` (straight, ``sigma_min``), ``polynomial``, ``vp``, ``cosine``, ``bridge``
            (Brownian bridge of width ``sigma``, Schrödinger-bridge CFM), or a path object.
        coupling: how noise and data are paired in a batch: ``independent``, ``ot``, ``sinkhorn``
            (options ``ot_block``, ``ot_reg``, ``by_context``, see :func:`make_coupling`) or a
            :class:`~pushforward.matching.PairCoupling`.
        by_context: pair only rows with equal context (None, default: True for conditional
            models with an OT/Sinkhorn coupling, so continuous conditions, as in SBI, keep the
            independent pairing; False: minibatch OT across conditions).
        time_sampler: the training time density: ``uniform``, ``logit-normal``, ``beta`` (pi0), ``power``
            or a :class:`~pushforward.matching.TimeSampler`.
        cond_drop: probability of replacing the context by a learned null context in training
            (classifier-free guidance). 0 (default) learns no null context.
        guidance: default guidance scale at sampling/likelihood (1: the conditional model).
        steps: ``sample(n)``'s default number of steps, 16 (with ``midpoint``, 32 network
            evaluations); ``steps=1..4`` for few-step generation (best after reflow,
            :func:`pushforward.matching.reflow`).
        solver: ``sample(n)``'s default solver, ``midpoint``: accurate for trained OT paths at
            a fraction of an adaptive solve; ``solver="dopri5"`` for an adaptive one.
        logprob_solver: ``log_prob``'s default solver (adaptive ``dopri5``, tolerances 1e-5).

    ``log_prob(exact=None)`` is exact up to D = 32; a network with ``forward_with_divergence``
    (the default TimeMLP) gives it without autograd. Registered as ``fm``, ``ot-fm``, ``vp-fm``,
    ``sb-fm`` (presets of these options) and ``rectified``.

    Shapes: x ``[N, *event_shape]``, context ``[N, C]``; ``loss`` is a scalar (mean squared error
    per element, in standardized units).
    """

    default_batch_size = 256
    default_lr = 1e-3
    default_solver = "midpoint"
    default_steps = 16
    default_logprob_solver = "dopri5"
    exact_max_dim = 32  # exact divergence costs D backward passes per evaluation without a fast trace
    straight_path_only = False  # rectified flow: only the straight path (path="ot", sigma_min=0)

    def __init__(
        self,
        dim: int | Sequence[int] | None = None,
        context_dim: int = 0,
        image_shape: Sequence[int] | None = None,
        *,
        net: nn.Module | None = None,
        path: str | AffinePath | BrownianBridgePath = "ot",
        sigma_min: float = 0.0,
        sigma: float = 0.5,
        coupling: str | PairCoupling = "independent",
        ot_block: int | None = 32,
        ot_reg: float = 0.05,
        by_context: bool | None = None,
        time_sampler: str | TimeSampler = "uniform",
        hidden: Sequence[int] = (128, 128, 128),
        time_embed: int = 32,
        activation: str = "silu",
        width: int = 32,
        cond_drop: float = 0.0,
        guidance: float = 1.0,
        steps: int = 16,
        solver: str = "midpoint",
        logprob_solver: str = "dopri5",
    ):
        event_shape = _event_shape(dim, image_shape)
        super().__init__(event_shape, context_dim)
        if self.straight_path_only and (path != "ot" or sigma_min != 0.0):
            raise ValueError(f"{type(self).__name__} uses the straight path: path='ot' with sigma_min=0, "
                             f"got path={path!r}, sigma_min={sigma_min!r}")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be a probability in [0, 1), got {cond_drop!r}")
        if cond_drop > 0 and context_dim == 0:
            raise ValueError(f"cond_drop={cond_drop} needs a conditional model (context_dim > 0)")
        check_choice(solver, SOLVERS, "solver")
        check_choice(logprob_solver, SOLVERS, "logprob_solver")
        if not isinstance(time_sampler, TimeSampler):
            check_choice(time_sampler, tuple(TIME_SAMPLERS), "time_sampler")
        self.net = net if net is not None else _default_net(event_shape, context_dim, hidden, time_embed,
                                                            activation, width)
        self.path = make_path(path, sigma_min, sigma)
        if by_context is None:
            # Conditional models pair noise and data only within a condition: OT across
            # conditions moves noise between observations and breaks the conditional law
            # (two-moons SBI, C2ST: benchmarks/results/sbi_coupling.md).
            by_context = bool(context_dim) and coupling in ("ot", "sinkhorn")
            self.resolved_options["by_context"] = by_context
        self.coupling = make_coupling(coupling, self.path, ot_block=ot_block, ot_reg=ot_reg, by_context=by_context,
                                      context_dim=context_dim)
        self.time_sampler = get_time_sampler(time_sampler)
        self.cond_drop = float(cond_drop)
        self.guidance = float(guidance)
        self.default_solver, self.default_steps = solver, check_positive_int(steps, "steps")
        self.default_logprob_solver = logprob_solver
        # The null context of classifier-free guidance: learned, one vector for the whole model.
        self.null_context = nn.Parameter(torch.zeros(context_dim)) if cond_drop > 0 else None
        if len(self.event_shape) == 3:
            self.standardize_by_default = False  # per-pixel scales blow up near-constant pixels

    # ----------------------------------------------------------------- the field
    def velocity_field(self, context: Tensor | None = None, guidance: float | None = None) -> Field:
        """The field for ``context`` ``[N, C]`` with classifier-free guidance ``w`` (default
        ``self.guidance``): ``v = v(x, t, null) + w (v(x, t, c) - v(x, t, null))``.

        With ``w`` not 0 or 1 the conditional and null-context fields run in one batched call;
        the divergence is linear in the two fields, so a network's exact trace carries over.
        """
        w = self.guidance if guidance is None else float(guidance)
        if context is None or w == 1.0:
            return self._net_field(context)
        if self.null_context is None:
            raise ValueError(f"guidance={w} needs a model trained with cond_drop > 0 (it has no null context)")
        null = self.null_context.to(context).expand_as(context)
        if w == 0.0:
            return self._net_field(null)
        both = self._net_field(torch.cat([context, null]))

        def twice(x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            tt = t.expand(x.shape[0]) if t.dim() == 0 else t
            return torch.cat([x, x]), torch.cat([tt, tt])

        def velocity(x: Tensor, t: Tensor | float) -> Tensor:
            cond, uncond = both.velocity(*twice(x, t)).chunk(2)
            return uncond + w * (cond - uncond)

        def with_divergence(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            u, div = both.with_divergence(*twice(x, t))
            (cond, uncond), (dc, du) = u.chunk(2), div.chunk(2)
            return uncond + w * (cond - uncond), du + w * (dc - du)

        return Field(velocity, with_divergence if both.with_divergence is not None else None)

    def _net_field(self, context: Tensor | None) -> Field:
        net = self.net
        return Field(lambda x, t: net(x, t, context), network_divergence(net, context))

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None,
                 guidance: float | None = None) -> Tensor:
        """``v(x, t, c)`` in standardized units, with classifier-free guidance (:meth:`velocity_field`).

        x ``[N, ...]``, t ``[]`` or ``[N]``, context ``[N, C]`` -> ``[N, ...]``.
        """
        return self.velocity_field(context, guidance).velocity(x, t)

    # ----------------------------------------------------------------- training
    def paired_loss(self, x_0: Tensor, x_1: Tensor, context: Tensor | None = None,
                    t: Tensor | None = None) -> Tensor:
        """CFM regression on given pairs (standardized units): ``mean ||v(x_t, t, c) - dx_t||^2``.

        x_0, x_1 ``[N, ...]`` (row i paired), context ``[N, C]``, t ``[N]`` (default: drawn from
        the time sampler). Applies the condition dropout of classifier-free guidance.
        """
        n = x_1.shape[0]
        if t is None:
            t = self.time_sampler.sample(n, device=x_1.device, dtype=x_1.dtype)
        ps = self.path.sample(x_0, x_1, t)
        if context is not None and self.null_context is not None:
            drop = torch.rand(n, device=x_1.device) < self.cond_drop
            context = torch.where(drop[:, None], self.null_context.to(context).expand_as(context), context)
        v = self.velocity_field(context, guidance=1.0).velocity(ps.x_t, t)
        return (v - ps.dx_t).pow(2).mean()

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        x_0 = self.base.sample(x.shape[0], context)
        x_0 = self.coupling(x_0, x, context)
        return self.paired_loss(x_0, x, context)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, path={self.path!r}, coupling={self.coupling!r}, "
                f"time_sampler={self.time_sampler!r}, cond_drop={self.cond_drop}, guidance={self.guidance}")


register("fm", FlowMatching, "Flow matching (Lipman et al. 2023): straight OT path, independent coupling")
register("ot-fm", FlowMatching, "OT-CFM (Tong et al. 2024): minibatch optimal-transport coupling, straight path",
         preset={"coupling": "ot"})
# Raw time (time_embed=0) for vp-fm and sb-fm: with a 32-d embedding their nearly nonlinear fields
# stay at the zero field on standardized data (docs/matching.md, "Raw time").
register("vp-fm", FlowMatching, "Flow matching on the variance-preserving diffusion path (Lipman et al. 2023)",
         preset={"path": "vp", "time_embed": 0})
register("sb-fm", FlowMatching,
         "Schrödinger-bridge CFM (Tong et al. 2024): entropic OT pairs, Brownian bridge path",
         preset={"path": "bridge", "coupling": "sinkhorn", "time_embed": 0})
