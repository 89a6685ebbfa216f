"""Few-step and one-step generators: MeanFlow, shortcut and consistency models (consistency FM, sCT).

All three learn, besides the instantaneous velocity ``v(x, t)`` of flow matching, a map that
jumps a finite step (sCT on its own TrigFlow path, mapped onto the library's time). With the
straight path ``x_t = (1 - t) x_0 + t x_1`` (t = 0 noise, t = 1 data) and the marginal flow
``z_t``, the *average velocity* over a step of length ``d >= 0`` is

    u(z_t, t, d) = (z_{t+d} - z_t) / d = (1/d) int_t^{t+d} v(z_s, s) ds ,   u(z, t, 0) = v(z, t),

so ``z_{t+d} = z_t + d u(z_t, t, d)`` and one step of ``d = 1`` maps noise to data.

* MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): differentiating
  ``d u = int v`` in t along the flow gives the MeanFlow identity ``u = v + d du/dt`` with
  ``du/dt = v . grad_z u + d_t u - d_d u`` (the end time ``t + d`` fixed), a forward-mode JVP.
  The loss regresses ``u_theta`` onto ``sg(v_c + d du_theta/dt)`` with the conditional velocity
  ``v_c = x_1 - x_0``. The improved variant (``loss="imf"``, Geng et al. 2025, "Improved Mean
  Flows") takes the JVP tangent from the model's own instantaneous velocity ``u_theta(z, t, 0)``
  instead of ``v_c``.
* Shortcut models (Frans et al. 2025, "One Step Diffusion via Shortcut Models"): flow matching at
  ``d = 0`` plus self-consistency, one step of ``2d`` equals two of ``d``:
  ``s(x_t, t, 2d) = sg(s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2``.
* Consistency models without a teacher (:class:`Consistency`, ``method=``): consistency flow
  matching (``"cfm"``, Yang et al. 2024, "Consistency Flow Matching"): the velocity's one-step
  prediction ``f(x_t, t) = x_t + (1 - t) v(x_t, t)`` is made constant along the path,
  ``||f(x_t, t) - sg f(x_{t+dt}, t+dt)||^2 + alpha ||v(x_t, t) - sg v(x_{t+dt}, t+dt)||^2``,
  alone by default: a flow-matching term would pull ``v(x_0, 0)`` to the marginal
  ``E[x_1] - x_0``, whose one step is the data mean; or continuous-time consistency training
  (``"sct"``, Lu & Song 2024) on the TrigFlow path, its tangent ``df/dtau`` by the same JVP (or
  finite differences) as MeanFlow's, with tangent normalisation and warm-up.

Every model is a :class:`~pushforward.continuous.ContinuousFlow` whose ODE field is the
instantaneous velocity (``d = 0``; sCT: TrigFlow's probability-flow velocity of its network in
library time, :class:`Consistency`): ``log_prob`` and ``sample(n, solver=...)`` come from the ODE
family; ``sample(n, steps=k)`` without a solver uses the few-step map. The two views agree only
as far as the network is consistent (docs/matching.md, "Few-step generation").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pushforward._validate import check_choice, check_positive_float, check_positive_int
from pushforward.continuous.cnf import Field
from pushforward.matching.models import FlowMatching, _default_net, _event_shape
from pushforward.nets.time import SinusoidalEmbedding, batch_times, embed_with_tangent
from pushforward.registry import register

SAMPLERS = ("fewstep", "ode")
JVP_METHODS = ("jvp", "fd")
MEANFLOW_LOSSES = ("meanflow", "imf")


class StepNet(nn.Module):
    """A two-time field ``net(x, t, d, context)``: an inner ``inner(x, t, [emb(d), context])``.

    The step length ``d`` enters the inner network as extra context (a sinusoidal embedding of
    ``embed`` features, or raw with ``embed = 0``), so any ``(x, t, context)`` network works
    (:class:`~pushforward.nets.TimeMLP`, :class:`~pushforward.nets.unet.UNet`), and a network's
    exact divergence in ``x`` carries over (``forward_with_divergence``).

    Shapes: x ``[N, ...]``, t and d ``[]`` or ``[N]``, context ``[N, C]`` -> ``[N, ...]``.
    """

    def __init__(self, inner: nn.Module, embed: int = 32, time_scale: float = 100.0):
        super().__init__()
        self.inner = inner
        self.embed = SinusoidalEmbedding(embed, scale=time_scale) if embed else None
        self.embed_dim = embed or 1

    def condition(self, x: Tensor, d: Tensor | float, context: Tensor | None) -> Tensor:
        """``[emb(d), context]`` ``[N, E + C]``."""
        d = batch_times(d, x)
        e = self.embed(d) if self.embed is not None else d[:, None]
        return e if context is None else torch.cat([e, context.to(e)], dim=-1)

    def forward(self, x: Tensor, t: Tensor | float, d: Tensor | float,
                context: Tensor | None = None) -> Tensor:  # noqa: D102
        return self.inner(x, t, self.condition(x, d, context))

    def forward_and_jvp(self, x: Tensor, t: Tensor | float, d: Tensor | float, context: Tensor | None,
                        dx: Tensor, dt: Tensor | float, dd: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(f(x, t, d, c) [N, ...] with its graph, J_f . (dx, dt, dd) [N, ...] without)``.

        Through the inner network's hand-written forward mode where it has one
        (:meth:`~pushforward.nets.TimeMLP.forward_and_jvp`, ~5x faster than ``torch.func.jvp``
        on a CPU), else ``torch.func.jvp`` (its tangent detached).
        """
        if getattr(self.inner, "has_jvp", False):
            d, dd = batch_times(d, x), batch_times(dd, x)
            e, de = embed_with_tangent(self.embed, d, dd)
            if context is not None:
                c = context.to(e)
                e, de = torch.cat([e, c], dim=-1), torch.cat([de, torch.zeros_like(c)], dim=-1)
            return self.inner.forward_and_jvp(x, t, e, dx, dt, de)
        t, d = batch_times(t, x), batch_times(d, x)
        out, tangent = torch.func.jvp(lambda a, b, c: self(a, b, c, context), (x, t, d),
                                      (dx, batch_times(dt, x), batch_times(dd, x)))
        return out, tangent.detach()

    @property
    def has_divergence(self) -> bool:
        """Whether the inner network gives its exact divergence without autograd."""
        return hasattr(self.inner, "forward_with_divergence") and getattr(self.inner, "has_divergence", True)

    def forward_with_divergence(self, x: Tensor, t: Tensor | float, d: Tensor | float,
                                context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f [N, D], div_x f [N])`` through the inner network's exact trace."""
        return self.inner.forward_with_divergence(x, t, self.condition(x, d, context))


def jvp(f: Callable[..., Tensor], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...],
        method: str = "jvp", eps: float | None = None) -> tuple[Tensor, Tensor]:
    """``(f(primals), J_f(primals) . tangents)``: forward-mode JVP or central finite differences.

    ``method="jvp"`` uses :func:`torch.func.jvp` (the output keeps its autograd graph to the
    parameters; the derivative is exact). ``method="fd"`` is the fallback where forward mode is
    unavailable: ``(f(p + eps t) - f(p - eps t)) / (2 eps)`` without a graph (error O(eps^2);
    default ``eps`` 1e-3 in float32, 1e-5 in float64).
    """
    check_choice(method, JVP_METHODS, "jvp")
    if method == "jvp":
        return torch.func.jvp(f, primals, tangents)
    out = f(*primals)
    if eps is None:
        eps = 1e-5 if out.dtype == torch.float64 else 1e-3
    with torch.no_grad():
        plus = f(*(p + eps * v for p, v in zip(primals, tangents)))
        minus = f(*(p - eps * v for p, v in zip(primals, tangents)))
    return out, (plus - minus) / (2 * eps)


def net_jvp(net: nn.Module, x: Tensor, t: Tensor, d: Tensor, context: Tensor | None, dx: Tensor, dt: Tensor,
            dd: Tensor, method: str = "jvp") -> tuple[Tensor, Tensor]:
    """``(net(x, t, d, c), J . (dx, dt, dd))`` for a two-time field: the network's own forward mode
    (:meth:`StepNet.forward_and_jvp`) for ``method="jvp"`` where it has one, else :func:`jvp`."""
    if method == "jvp" and hasattr(net, "forward_and_jvp"):
        return net.forward_and_jvp(x, t, d, context, dx, dt, dd)
    return jvp(lambda x_, t_, d_: net(x_, t_, d_, context), (x, t, d), (dx, dt, dd), method)


class FewStepFlow(FlowMatching):
    """Shared base: a step-conditioned field ``u(x, t, d, c)`` whose ``d = 0`` slice is the ODE velocity.

    Subclasses give ``paired_loss``. Options shared by ``meanflow``, ``shortcut`` and
    ``consistency`` (the flow-matching ones are :class:`~pushforward.matching.FlowMatching`'s,
    with the path fixed to the straight one):

    Args:
        dim, context_dim, image_shape, net: as FlowMatching; ``net(x, t, d, context)`` (default a
            :class:`StepNet` around a TimeMLP of ``hidden``/``time_embed``/``activation`` or a
            U-Net of ``width``; ``d`` embedded like t).
        time_scale: the default network's sinusoidal embedding scale of t and d (default
            ``default_time_scale``: 100, as the other ODE models; sCT 1: a fast embedding makes its
            t-derivative, and so its tangent, large and training unstable; measured in
            benchmarks/results/fewstep_consistency.md).
        steps: ``sample(n)``'s default number of steps of the few-step map (default 1).
        sampler: ``"fewstep"`` (default: ``sample(n, steps=k)`` takes k jumps of ``1/k``) or
            ``"ode"`` (``sample`` integrates the instantaneous velocity with ``solver``).
            A ``solver=`` passed to ``sample`` always integrates the ODE.
        solver, logprob_solver: ODE solvers for ``sample(solver=...)`` / ``log_prob``.
        guidance: classifier-free guidance scale (needs ``cond_drop > 0``), applied to the
            few-step map as ``u = u(null) + w (u(c) - u(null))`` as well as to the ODE field.
        guidance_range: ``(lo, hi)``: train with the guidance scale as a network input (as
            improved MeanFlow does; ``meanflow`` only, conditional with ``cond_drop > 0``):
            ``w ~ U[lo, hi]`` per sample, the network sees ``w - 1`` as an extra context
            column and learns the guided field itself, so ``sample(guidance=w)`` for any w in
            the range costs one network call per step instead of two. None (default): off.
    """

    default_steps = 1
    default_solver = "midpoint"
    default_time_scale = 100.0

    straight_path_only = True
    default_explode_factor = None  # the target moves with the network: its loss may rise legitimately
    guidance_input = False  # subclasses whose loss trains the guided field set this

    def __init__(self, dim: int | Sequence[int] | None = None, context_dim: int = 0,
                 image_shape: Sequence[int] | None = None, *, net: nn.Module | None = None,
                 hidden: Sequence[int] = (128, 128, 128), time_embed: int = 32, activation: str = "silu",
                 width: int = 32, steps: int = 1, sampler: str = "fewstep",
                 guidance_range: Sequence[float] | None = None, time_scale: float | None = None, **options):
        # **options: FlowMatching's (coupling, time_sampler, cond_drop, guidance, solver, ...).
        check_choice(sampler, SAMPLERS, "sampler")
        time_scale = check_positive_float(self.default_time_scale if time_scale is None else time_scale,
                                          "time_scale")
        guidance_range = self._check_guidance_range(guidance_range, context_dim, options.get("cond_drop", 0.0))
        if net is None:
            event_shape = _event_shape(dim, image_shape)
            e = time_embed or 1
            extra = 1 if guidance_range is not None else 0  # the w - 1 column
            inner = _default_net(event_shape, context_dim + extra + e, hidden, time_embed, activation, width,
                                 time_scale)
            net = StepNet(inner, time_embed, time_scale)
        super().__init__(dim, context_dim, image_shape, net=net, hidden=hidden, time_embed=time_embed,
                         activation=activation, width=width, steps=check_positive_int(steps, "steps"), **options)
        self.resolved_options["time_scale"] = time_scale
        self.sampler = sampler
        self.guidance_range = guidance_range
        if guidance_range is not None and self.guidance != 0.0 and not (
                guidance_range[0] <= self.guidance <= guidance_range[1]):
            raise ValueError(f"guidance={self.guidance} (the default scale at sampling) must lie in "
                             f"guidance_range={list(guidance_range)} or be 0")

    def _check_guidance_range(self, guidance_range, context_dim, cond_drop) -> tuple[float, float] | None:
        if guidance_range is None:
            return None
        name = type(self).__name__
        if not self.guidance_input:
            raise ValueError(f"guidance_range: {name} does not train the guidance scale as an input "
                             "(meanflow does); use guidance= at sampling instead")
        try:
            lo, hi = (float(v) for v in guidance_range)
        except (TypeError, ValueError):
            raise ValueError(f"guidance_range must be two numbers (lo, hi), got {guidance_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise ValueError(f"guidance_range must be finite with 0 <= lo <= hi, got {guidance_range!r}")
        if not context_dim or not cond_drop:
            raise ValueError(f"guidance_range needs a conditional model trained with cond_drop > 0 "
                             f"(got context_dim={context_dim}, cond_drop={cond_drop})")
        return lo, hi

    def guided_context(self, context: Tensor, w: Tensor | float) -> Tensor:
        """``[context, w - 1]`` ``[N, C + 1]``: what the network of a ``guidance_range`` model reads."""
        w = torch.as_tensor(w, dtype=context.dtype, device=context.device)
        return torch.cat([context, (w - 1).expand(context.shape[0])[:, None]], -1)

    def _guidance_context(self, context: Tensor, w: float) -> Tensor:
        """The network context for guidance ``w`` of a ``guidance_range`` model (0: the null context)."""
        if w == 0.0:
            return self.guided_context(self.null_context.to(context).expand_as(context), 1.0)
        lo, hi = self.guidance_range
        if not lo - 1e-9 <= w <= hi + 1e-9:
            raise ValueError(f"guidance={w}: this model learned guidance scales in [{lo}, {hi}] (guidance_range) "
                             "or 0 (unconditional)")
        return self.guided_context(context, w)

    def velocity_field(self, context: Tensor | None = None, guidance: float | None = None) -> Field:
        """As :meth:`FlowMatching.velocity_field`; a ``guidance_range`` model evaluates its
        learned guided field (one network call) instead of combining two."""
        if self.guidance_range is None or context is None:
            return super().velocity_field(context, guidance)
        w = self.guidance if guidance is None else float(guidance)
        return self._net_field(self._guidance_context(context, w))

    # ----------------------------------------------------------------- fields
    def _net_field(self, context: Tensor | None) -> Field:
        # The ODE field is the instantaneous velocity, the d = 0 slice of the step field.
        net = self.net
        fast = None
        if getattr(net, "has_divergence", False):
            def fast(x, t):
                return net.forward_with_divergence(x, t, 0.0, context)
        return Field(lambda x, t: net(x, t, 0.0, context), fast)

    def step_velocity(self, x: Tensor, t: Tensor | float, d: Tensor | float, context: Tensor | None = None,
                      guidance: float | None = None) -> Tensor:
        """The learned average velocity ``u(x, t, d, c)`` (standardized units) with guidance.

        x ``[N, ...]``, t and d ``[]`` or ``[N]`` (``x + d u`` is the state at ``t + d``),
        context ``[N, C]`` -> ``[N, ...]``.
        """
        w = self.guidance if guidance is None else float(guidance)
        if self.guidance_range is not None and context is not None:
            return self.net(x, t, d, self._guidance_context(context, w))
        if context is None or w == 1.0:
            return self.net(x, t, d, context)
        if self.null_context is None:
            raise ValueError(f"guidance={w} needs a model trained with cond_drop > 0 (it has no null context)")
        null = self.null_context.to(context).expand_as(context)
        if w == 0.0:
            return self.net(x, t, d, null)
        t, d = batch_times(t, x), batch_times(d, x)
        cond, uncond = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([d, d]),
                                torch.cat([context, null])).chunk(2)
        return uncond + w * (cond - uncond)

    def few_step(self, x0: Tensor, steps: int, context: Tensor | None = None,
                 guidance: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The few-step map: ``steps`` jumps ``x <- x + h u(x, t, h)``, ``h = 1/steps``, from 0 to 1
        (deterministic: ``generator`` is for subclasses that re-noise between steps)."""
        steps = check_positive_int(steps, "steps")
        h = 1.0 / steps
        x = x0
        for i in range(steps):
            x = x + h * self.step_velocity(x, i * h, h, context, guidance)
        self.nfe = steps
        return x

    def _sample(self, n, context, generator=None, steps=None, solver=None, atol=None, rtol=None, x0=None,
                guidance=None):
        if solver is None and self.sampler == "fewstep":
            x0 = self.base.sample(n, context, generator) if x0 is None else x0
            return self.few_step(x0, self.default_steps if steps is None else steps, context, guidance,
                                 generator=generator)
        return super()._sample(n, context, generator, steps=steps, solver=solver, atol=atol, rtol=rtol, x0=x0,
                               guidance=guidance)

    # ----------------------------------------------------------------- training helpers
    def _drop_context(self, context: Tensor | None, n: int, device) -> Tensor | None:
        return self._drop_context_mask(context, n, device)[0]

    def _drop_context_mask(self, context: Tensor | None, n: int, device) -> tuple[Tensor | None, Tensor | None]:
        """Condition dropout: ``(context with the null context in dropped rows, drop mask [N])``."""
        drop = None
        if context is not None and self.null_context is not None:
            drop = torch.rand(n, device=device) < self.cond_drop
            context = torch.where(drop[:, None], self.null_context.to(context).expand_as(context), context)
        return context, drop

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sampler={self.sampler!r}"


def _mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(-1)


class MeanFlow(FewStepFlow):
    """MeanFlow (Geng et al. 2025): the network is the average velocity ``u(z, t, d)``.

    Loss (per sample, straight path, ``v_c = x_1 - x_0``, ``z = x_t``, end time ``t + d`` fixed)::

        u_tgt = v + d (v . grad_z u + d_t u - d_d u),   L = w ||u_theta(z, t, d) - sg(u_tgt)||^2

    with ``v = v_c`` (``loss="meanflow"``) or, for the JVP tangent only, the model's own
    instantaneous velocity ``u_theta(z, t, 0)`` (``loss="imf"``). ``(t, t + d)`` are two sorted
    draws of the time sampler; a fraction ``flow_ratio`` of the batch has ``d = 0`` (plain flow
    matching). ``w = 1 / (||.||^2 + 1e-3)^adaptive_p`` (the paper's adaptive weight, default p = 1 as in the paper;
    0: plain MSE, which failed to train the conditional U-Net on digits: docs/matching.md).

    With ``guidance_range`` (MeanFlow's training-time guidance, sec. 4.2, with the scale as an
    input as in improved MeanFlow): each conditional row draws ``omega ~ U[lo, hi]`` and ``v``
    is replaced by the guided velocity ``omega v + (1 - omega) sg u_theta(z, t, 0 | null)``
    (rows whose condition was dropped keep ``v``, ``omega = 1``); the network reads
    ``omega - 1`` (:meth:`guided_context`).

    Args (besides :class:`FewStepFlow`'s):
        flow_ratio: fraction of the batch with ``d = 0`` (paper: 0.75).
        loss: ``"meanflow"`` or ``"imf"``.
        jvp: ``"jvp"`` (exact forward mode: :meth:`StepNet.forward_and_jvp`, hand-written for a
            TimeMLP, else :func:`torch.func.jvp`) or ``"fd"`` (finite differences, the fallback).
        adaptive_p: power of the adaptive loss weight.
    """

    guidance_input = True

    def __init__(
        self,
        dim: int | Sequence[int] | None = None,
        context_dim: int = 0,
        image_shape: Sequence[int] | None = None,
        *,
        flow_ratio: float = 0.75,
        loss: str = "meanflow",
        jvp: str = "jvp",
        adaptive_p: float = 1.0,
        **options,  # FewStepFlow's and FlowMatching's (the registry records them)
    ):
        super().__init__(dim, context_dim, image_shape, **options)
        if not 0.0 <= flow_ratio <= 1.0:
            raise ValueError(f"flow_ratio must be in [0, 1], got {flow_ratio!r}")
        if not (adaptive_p >= 0.0 and math.isfinite(adaptive_p)):
            raise ValueError(f"adaptive_p must be a finite number >= 0, got {adaptive_p!r}")
        check_choice(loss, MEANFLOW_LOSSES, "loss")
        check_choice(jvp, JVP_METHODS, "jvp")
        self.flow_ratio, self.loss_kind, self.jvp_method, self.adaptive_p = float(flow_ratio), loss, jvp, adaptive_p

    def meanflow_target(self, z: Tensor, t: Tensor, d: Tensor, v: Tensor, context: Tensor | None,
                        tangent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(u_theta(z, t, d), u_tgt)`` with ``u_tgt = v + d du/dt`` (not detached).

        z ``[N, ...]``, t and d ``[N]``, v the conditional velocity ``[N, ...]``; ``tangent`` the
        JVP direction in z (default v). ``du/dt = J_u . (tangent, 1, -1)`` in (z, t, d).
        """
        tangent = v if tangent is None else tangent
        u, dudt = net_jvp(self.net, z, t, d, context, tangent, torch.ones_like(t), -torch.ones_like(d),
                          self.jvp_method)
        dd = d.reshape(-1, *([1] * (z.dim() - 1)))
        return u, v + dd * dudt

    def paired_loss(self, x_0: Tensor, x_1: Tensor, context: Tensor | None = None, t: Tensor | None = None,
                    d: Tensor | None = None) -> Tensor:
        """The MeanFlow loss on given pairs; t, d ``[N]`` default to the sampler's draws."""
        n = x_1.shape[0]
        if t is None or d is None:
            a = self.time_sampler.sample(n, device=x_1.device, dtype=x_1.dtype)
            b = self.time_sampler.sample(n, device=x_1.device, dtype=x_1.dtype)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
            flow = torch.rand(n, device=x_1.device) < self.flow_ratio
            t = torch.where(flow, a, lo) if t is None else t
            d = torch.where(flow, torch.zeros_like(a), hi - lo) if d is None else d
        ps = self.path.sample(x_0, x_1, t)
        context, drop = self._drop_context_mask(context, n, x_1.device)
        v = ps.dx_t
        if self.guidance_range is not None and context is not None:
            lo, hi = self.guidance_range
            omega = torch.where(drop, 1.0, lo + (hi - lo) * torch.rand(n, device=x_1.device)).to(x_1.dtype)
            null = self.guided_context(self.null_context.to(context).expand_as(context), 1.0)
            with torch.no_grad():
                v_null = self.net(ps.x_t, t, torch.zeros_like(t), null)
            om = omega.reshape(-1, *([1] * (v.dim() - 1)))
            v = om * v + (1 - om) * v_null
            context = self.guided_context(context, omega)
        # Rows with d = 0 have u_tgt = v exactly (the d du/dt term vanishes): a plain forward pass
        # serves them, and only the others (1 - flow_ratio of the batch) pay for the JVP.
        z, mean = ps.x_t, d != 0
        errs = []
        if not bool(mean.all()):
            inst = ~mean
            c0 = None if context is None else context[inst]
            errs.append(_mse(self.net(z[inst], t[inst], d[inst], c0), v[inst]))
        if bool(mean.any()):
            z1, t1, d1, v1 = z[mean], t[mean], d[mean], v[mean]
            c1 = None if context is None else context[mean]
            tangent = None
            if self.loss_kind == "imf":
                with torch.no_grad():
                    tangent = self.net(z1, t1, torch.zeros_like(t1), c1)
            u, target = self.meanflow_target(z1, t1, d1, v1, c1, tangent)
            errs.append(_mse(u, target.detach()))
        err = torch.cat(errs)
        if self.adaptive_p:
            err = err / (err.detach() + 1e-3).pow(self.adaptive_p)
        return err.mean()


class Shortcut(FewStepFlow):
    """Shortcut model (Frans et al. 2025): ``s(x, t, d)`` with flow matching at ``d = 0`` and self-consistency.

    A fraction ``1 - consistency_fraction`` of each batch regresses ``s(x_t, t, 0)`` onto
    ``x_1 - x_0``; the rest draws ``d = 2^-j`` (``j = 1..log2(max_steps)``), ``t ~ U[0, 1 - 2d]``
    and regresses ``s(x_t, t, 2d)`` onto ``sg((s_1 + s_2) / 2)``, ``s_1 = s(x_t, t, d)``,
    ``s_2 = s(x_t + d s_1, t + d, d)``.

    Args (besides :class:`FewStepFlow`'s):
        consistency_fraction: fraction of the batch used for self-consistency (paper: 1/4).
        max_steps: the finest step ``1 / max_steps`` (a power of 2, paper: 128).
    """

    def __init__(
        self,
        dim: int | Sequence[int] | None = None,
        context_dim: int = 0,
        image_shape: Sequence[int] | None = None,
        *,
        consistency_fraction: float = 0.25,
        max_steps: int = 128,
        **options,  # FewStepFlow's and FlowMatching's (the registry records them)
    ):
        super().__init__(dim, context_dim, image_shape, **options)
        if not 0.0 < consistency_fraction < 1.0:
            raise ValueError(f"consistency_fraction must be in (0, 1), got {consistency_fraction!r}")
        check_positive_int(max_steps, "max_steps")
        if max_steps < 2 or max_steps & (max_steps - 1):
            raise ValueError(f"max_steps must be a power of 2 >= 2, got {max_steps!r}")
        self.consistency_fraction, self.max_steps = float(consistency_fraction), int(max_steps)

    def consistency_target(self, x: Tensor, t: Tensor, d: Tensor, context: Tensor | None) -> Tensor:
        """``(s(x, t, d) + s(x + d s(x, t, d), t + d, d)) / 2``: two steps of d (no graph)."""
        dd = d.reshape(-1, *([1] * (x.dim() - 1)))
        with torch.no_grad():
            s1 = self.net(x, t, d, context)
            s2 = self.net(x + dd * s1, t + d, d, context)
        return (s1 + s2) / 2

    def paired_loss(self, x_0: Tensor, x_1: Tensor, context: Tensor | None = None) -> Tensor:
        """Flow matching on the first rows, self-consistency on the last ``consistency_fraction``."""
        n = x_1.shape[0]
        k = max(1, int(round(n * self.consistency_fraction))) if n > 1 else 0
        context = self._drop_context(context, n, x_1.device)
        t_fm = self.time_sampler.sample(n - k, device=x_1.device, dtype=x_1.dtype)
        levels = int(math.log2(self.max_steps))
        j = torch.randint(1, levels + 1, (k,), device=x_1.device)
        d = torch.pow(2.0, -j.to(x_1.dtype))
        t_sc = torch.rand(k, device=x_1.device, dtype=x_1.dtype) * (1 - 2 * d)
        t = torch.cat([t_fm, t_sc])
        ps = self.path.sample(x_0, x_1, t)
        c_fm = None if context is None else context[:n - k]
        c_sc = None if context is None else context[n - k:]
        v = self.net(ps.x_t[:n - k], t_fm, torch.zeros_like(t_fm), c_fm)
        err = _mse(v, ps.dx_t[:n - k])
        if k:
            target = self.consistency_target(ps.x_t[n - k:], t_sc, d, c_sc)
            err = torch.cat([err, _mse(self.net(ps.x_t[n - k:], t_sc, 2 * d, c_sc), target)])
        return err.mean()


CONSISTENCY_METHODS = ("sct", "cfm")
# Each method's own options and their defaults; the other method's options must stay None.
CFM_DEFAULTS = {"delta": 0.05, "alpha": 1e-1, "fm_weight": 0.0}
# sCT differentiates the network in t: a slow time embedding keeps that derivative small.
SCT_TIME_SCALE = 1.0
SCT_DEFAULTS = {"sigma_d": 1.0, "warmup": 1000, "tangent_c": 0.1, "p_mean": -1.0, "p_std": 1.4, "jvp": "jvp"}


def trig_time(t: Tensor | float) -> Tensor | float:
    """TrigFlow time ``tau = (1 - t) pi / 2`` of library time ``t`` (t = 0 noise: tau = pi/2; t = 1 data: tau = 0)."""
    return (1 - t) * (math.pi / 2)


class Consistency(FewStepFlow):
    """Consistency models trained without a teacher: ``method="cfm"`` or ``method="sct"``.

    **Consistency flow matching** (``"cfm"``, Yang et al. 2024, "Consistency Flow Matching"): the
    network is a velocity ``v(x, t)`` whose one-step prediction ``f(x_t, t) = x_t + (1 - t) v(x_t, t)``
    (``f(x, 1) = x`` by construction) is made constant along the straight path. Per sample, with
    ``t ~ U[0, 1 - delta]`` and ``x_t, x_{t+delta}`` on the same pair::

        L = ||f(x_t, t) - sg f(x_{t+delta}, t+delta)||^2 + alpha ||v(x_t, t) - sg v(x_{t+delta}, t+delta)||^2
            + fm_weight ||v(x_t, t) - (x_1 - x_0)||^2

    ``v`` is then a straightened velocity, not the marginal one: its ODE (``log_prob``,
    ``sample(solver=...)``) is the flow of that field. The few-step map is Euler on ``v``; one
    step is ``f(x_0, 0)``.

    **Continuous-time consistency training** (``"sct"``, Lu & Song 2024, "Simplifying, Stabilizing
    and Scaling Continuous-Time Consistency Models", Algorithm 1 without a teacher). TrigFlow:
    data ``x`` at ``tau = 0``, noise ``z = sigma_d eps`` (``eps ~ N(0, I)``, the base) at
    ``tau = pi/2``, ``x_tau = cos(tau) x + sin(tau) z``, and the library's time is
    ``t = 1 - 2 tau / pi`` (:func:`trig_time`; the network reads ``t``). The consistency function
    is ``f(x_tau, tau) = cos(tau) x_tau - sin(tau) sigma_d F(x_tau / sigma_d, tau)`` (``f(x, 0) = x``).
    With ``tau = arctan(e^n / sigma_d)``, ``n ~ N(p_mean, p_std^2)``, the conditional velocity
    ``v_c = cos(tau) z - sin(tau) x`` of the pair and ``cs = cos(tau) sin(tau)``::

        (F-, cs sigma_d dF-/dtau) = jvp(F, (x_tau / sigma_d, tau), (cs v_c, cs sigma_d))
        g = -cos^2(tau) (sigma_d F- - v_c) - r cs (x_tau + sigma_d dF-/dtau)      (= cos(tau) df-/dtau at r = 1)
        g <- g / (||g|| + tangent_c)                                               (tangent normalisation)
        L = ||F_theta - sg(F- + g)||^2 / D

    ``r = min(1, iteration / warmup)`` is the tangent warm-up (the training iteration is the
    buffer ``sct_iters``, saved with the model, advanced by every loss evaluated with gradients in
    training mode). ``jvp="fd"`` takes the tangent by central differences (:func:`jvp`, shared
    with :class:`MeanFlow`). The few-step map is multistep consistency sampling (Song et al. 2023,
    Algorithm 1) on the library grid ``t_i = i / k``: ``x = f(x, tau_i)``, then re-noised with
    fresh base noise to ``cos(tau_{i+1}) x + sin(tau_{i+1}) sigma_d eps`` (from the sampler's
    generator); one step is ``f(sigma_d eps, pi/2) = -sigma_d F(eps, pi/2)``.

    *The ODE of sCT* is TrigFlow's probability-flow ODE with ``F`` read as the diffusion field,
    ``dx_tau/dtau = sigma_d F(x_tau / sigma_d, tau)`` (the velocity that ``f``'s parametrisation
    implies: ``f`` is the DDIM jump from tau to 0 with it; the flow along which ``f`` itself is
    constant, ``-(d_x f)^-1 d_tau f``, needs a Jacobian solve and is singular at ``tau = pi/2``
    wherever ``d_x F = 0``), in library time and units. The ODE state ``y_t = x_tau / a_t`` with ``a_t = t + (1 - t) sigma_d`` starts at the
    base (``y_0 = eps``) and ends at the data (``y_1 = x``); since ``dtau/dt = -pi/2``::

        dy/dt = (-(pi/2) sigma_d F(a_t y / sigma_d, tau) - (1 - sigma_d) y) / a_t,
        div_y  = -(pi/2) div F - (1 - sigma_d) D / a_t        (D = the event size)

    (``sigma_d = 1``: ``y = x_tau`` and ``dy/dt = -(pi/2) F(y, tau)``). The exact consistency
    function's ``F`` equals the diffusion field only at ``tau = 0``, so even at the optimum this
    ODE is the flow of the learned field, not the one-step map's (as for ``cfm``,
    docs/matching.md); the other way round, the diffusion field's ``F`` makes it the exact
    marginal flow (tests/test_fewstep.py).

    Which method is the default, and why: benchmarks/results/fewstep_consistency.md.

    Args (besides :class:`FewStepFlow`'s; each method's options must be left at None by the
    other, None meaning the method's default, which the model records):
        method: ``"sct"`` (default) or ``"cfm"``. ``time_scale`` (FewStepFlow's) defaults to 1 for
            sct and 100 for cfm.
        delta: (cfm) the time offset of the consistency pair (default 0.05; paper 1e-3).
        alpha: (cfm) weight of the velocity-consistency term (default 0.1).
        fm_weight: (cfm) weight of an added flow-matching term (default 0, the paper's loss).
        sigma_d: (sct) the data's standard deviation in standardized units (default 1.0).
        warmup: (sct) iterations of the tangent warm-up (default 1000; 0: none).
        tangent_c: (sct) the tangent normalisation constant ``c`` (default 0.1; 0: no normalisation).
        p_mean, p_std: (sct) the log-normal proposal of ``tan(tau) sigma_d`` (defaults -1.0, 1.4, the paper's).
        jvp: (sct) ``"jvp"`` (exact forward mode, :meth:`StepNet.forward_and_jvp`; default) or
            ``"fd"`` (finite differences).
    """

    def __init__(
        self,
        dim: int | Sequence[int] | None = None,
        context_dim: int = 0,
        image_shape: Sequence[int] | None = None,
        *,
        method: str = "sct",
        delta: float | None = None,
        alpha: float | None = None,
        fm_weight: float | None = None,
        sigma_d: float | None = None,
        warmup: int | None = None,
        tangent_c: float | None = None,
        p_mean: float | None = None,
        p_std: float | None = None,
        jvp: str | None = None,
        **options,  # FewStepFlow's and FlowMatching's (the registry records them)
    ):
        check_choice(method, CONSISTENCY_METHODS, "method")
        if options.get("time_scale") is None:
            options["time_scale"] = SCT_TIME_SCALE if method == "sct" else self.default_time_scale
        super().__init__(dim, context_dim, image_shape, **options)
        given = {"delta": delta, "alpha": alpha, "fm_weight": fm_weight, "sigma_d": sigma_d, "warmup": warmup,
                 "tangent_c": tangent_c, "p_mean": p_mean, "p_std": p_std, "jvp": jvp}
        own, other = (CFM_DEFAULTS, SCT_DEFAULTS) if method == "cfm" else (SCT_DEFAULTS, CFM_DEFAULTS)
        foreign = [k for k in other if given[k] is not None]
        if foreign:
            raise ValueError(f"option(s) {foreign} belong to method={'sct' if method == 'cfm' else 'cfm'!r}, "
                             f"not to method={method!r}")
        opts = {k: own[k] if given[k] is None else given[k] for k in own}
        self.method = method
        self.resolved_options.update(opts)
        if method == "cfm":
            if not 0.0 < opts["delta"] < 1.0:
                raise ValueError(f"delta must be in (0, 1), got {opts['delta']!r}")
            for what in ("alpha", "fm_weight"):
                if not (opts[what] >= 0.0 and math.isfinite(opts[what])):
                    raise ValueError(f"{what} must be a finite number >= 0, got {opts[what]!r}")
            self.delta, self.alpha, self.fm_weight = (float(opts[k]) for k in ("delta", "alpha", "fm_weight"))
            return
        if not (opts["sigma_d"] > 0.0 and math.isfinite(opts["sigma_d"])):
            raise ValueError(f"sigma_d must be a finite number > 0, got {opts['sigma_d']!r}")
        if not (opts["tangent_c"] >= 0.0 and math.isfinite(opts["tangent_c"])):
            raise ValueError(f"tangent_c must be a finite number >= 0 (0: no normalisation), got {opts['tangent_c']!r}")
        if not (opts["p_std"] > 0.0 and math.isfinite(opts["p_std"])):
            raise ValueError(f"p_std must be a finite number > 0, got {opts['p_std']!r}")
        check_choice(opts["jvp"], JVP_METHODS, "jvp")
        self.sigma_d, self.tangent_c = float(opts["sigma_d"]), float(opts["tangent_c"])
        self.warmup, self.p_mean, self.p_std = int(opts["warmup"]), float(opts["p_mean"]), float(opts["p_std"])
        self.jvp_method = opts["jvp"]
        self.register_buffer("sct_iters", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------- shared
    def _guided_net(self, x: Tensor, t: Tensor | float, context: Tensor | None, guidance: float | None) -> Tensor:
        """The network at ``d = 0`` (it ignores ``d``) with classifier-free guidance."""
        return super().step_velocity(x, t, 0.0, context, guidance)

    def step_velocity(self, x, t, d, context=None, guidance=None):  # noqa: D102 - d is not an input here
        if self.method == "sct":
            raise NotImplementedError("method='sct' has no step-conditioned velocity; its few-step map is "
                                      "consistency_function + re-noising (few_step)")
        return self._guided_net(x, t, context, guidance)

    def paired_loss(self, x_0: Tensor, x_1: Tensor, context: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """The method's loss on given pairs (x_0 base noise, x_1 data); t ``[N]`` in library time
        (cfm: in ``[0, 1 - delta]``; sct: ``tau = trig_time(t)``) defaults to the method's draws."""
        if self.method == "sct":
            return self._sct_loss(x_0, x_1, context, t)
        return self._cfm_loss(x_0, x_1, context, t)

    def few_step(self, x0: Tensor, steps: int, context: Tensor | None = None, guidance: float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """cfm: Euler on ``v`` (:meth:`FewStepFlow.few_step`); sct: multistep consistency sampling
        on ``t_i = i / steps`` with fresh base noise from ``generator`` between steps."""
        if self.method == "cfm":
            return super().few_step(x0, steps, context, guidance)
        steps = check_positive_int(steps, "steps")
        sd = self.sigma_d
        x = sd * x0
        for i in range(steps):
            f = self.consistency_function(x, i / steps, context, guidance)
            if i < steps - 1:
                tau = trig_time((i + 1) / steps)
                x = math.cos(tau) * f + math.sin(tau) * sd * self.base.sample(x.shape[0], context, generator).to(f)
        self.nfe = steps
        return f

    # ----------------------------------------------------------------- cfm
    def _cfm_loss(self, x_0, x_1, context, t):
        n = x_1.shape[0]
        if t is None:
            t = torch.rand(n, device=x_1.device, dtype=x_1.dtype) * (1 - self.delta)
        context = self._drop_context(context, n, x_1.device)
        a, b = self.path.sample(x_0, x_1, t), self.path.sample(x_0, x_1, t + self.delta)
        zero = torch.zeros_like(t)
        shape = (-1, *([1] * (x_1.dim() - 1)))
        v = self.net(a.x_t, t, zero, context)
        with torch.no_grad():
            v_next = self.net(b.x_t, t + self.delta, zero, context)
            f_next = b.x_t + (1 - t - self.delta).reshape(shape) * v_next
        f = a.x_t + (1 - t).reshape(shape) * v
        err = _mse(f, f_next) + self.alpha * _mse(v, v_next)
        if self.fm_weight:
            err = err + self.fm_weight * _mse(v, a.dx_t)
        return err.mean()

    # ----------------------------------------------------------------- sct
    def consistency_function(self, x: Tensor, t: Tensor | float, context: Tensor | None = None,
                             guidance: float | None = None) -> Tensor:
        """sct: ``f(x, tau) = cos(tau) x - sin(tau) sigma_d F(x / sigma_d, tau)``, ``tau = trig_time(t)``.

        x ``[N, ...]`` a TrigFlow state (noise scale ``sigma_d``), t ``[]`` or ``[N]`` library time
        -> the data prediction ``[N, ...]`` (standardized units).
        """
        t = batch_times(t, x)
        tau = trig_time(t).reshape(-1, *([1] * (x.dim() - 1)))
        return tau.cos() * x - tau.sin() * self.sigma_d * self._guided_net(x / self.sigma_d, t, context, guidance)

    def sct_tangent(self, x_t: Tensor, tau: Tensor, v: Tensor, context: Tensor | None,
                    r: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(F_theta(x_t / sigma_d, tau) [N, ...] with its graph, g [N, ...] before normalisation, no graph)``.

        x_t ``[N, ...]`` at TrigFlow time tau ``[N]``, v the conditional velocity ``dx_t/dtau``;
        ``g = -cos^2 (sigma_d F- - v) - r cos sin (x_t + sigma_d dF-/dtau)`` with the total
        derivative along v by :func:`net_jvp` (the JVP tangents carry the ``cos sin`` factor).
        """
        net, sd = self.net, self.sigma_d
        zero = torch.zeros_like(tau)
        shape = (-1, *([1] * (x_t.dim() - 1)))
        cs = tau.cos() * tau.sin()
        # F's library time is 1 - 2 tau / pi, so its tangent is -2 / pi times tau's (cs sigma_d).
        out, d_out = net_jvp(net, x_t / sd, 1 - tau * (2 / math.pi), zero, context, cs.reshape(shape) * v,
                             -(2 / math.pi) * cs * sd, zero, self.jvp_method)
        c = tau.cos().reshape(shape)
        f_minus, d_minus = out.detach(), d_out.detach()
        g = -c**2 * (sd * f_minus - v) - r * (cs.reshape(shape) * x_t + d_minus)
        return out, g

    def _sct_loss(self, x_0, x_1, context, t):
        n = x_1.shape[0]
        if t is None:
            e = torch.exp(self.p_mean + self.p_std * torch.randn(n, device=x_1.device, dtype=x_1.dtype))
            tau = torch.atan(e / self.sigma_d)
        else:
            tau = trig_time(t)
        context = self._drop_context(context, n, x_1.device)
        shape = (-1, *([1] * (x_1.dim() - 1)))
        c, s, z = tau.cos().reshape(shape), tau.sin().reshape(shape), self.sigma_d * x_0
        x_t, v = c * x_1 + s * z, c * z - s * x_1
        r = 1.0 if self.warmup == 0 else min(1.0, int(self.sct_iters) / self.warmup)
        if self.training and torch.is_grad_enabled():
            self.sct_iters += 1
        out, g = self.sct_tangent(x_t, tau, v, context, r)
        if self.tangent_c:
            g = g / (g.reshape(n, -1).norm(dim=-1).reshape(shape) + self.tangent_c)
        return _mse(out, out.detach() + g).mean()

    def _net_field(self, context: Tensor | None) -> Field:
        # sct: TrigFlow's PF-ODE dx/dtau = sigma_d F in library time and units (class docstring).
        if self.method == "cfm":
            return super()._net_field(context)
        net, sd = self.net, self.sigma_d
        size = math.prod(self.event_shape)

        def scales(y, t):
            t = batch_times(t, y)
            return t, (t + (1 - t) * sd).reshape(-1, *([1] * (y.dim() - 1)))

        def velocity(y, t):
            t, a = scales(y, t)
            return (-(math.pi / 2) * sd * net(a * y / sd, t, 0.0, context) - (1 - sd) * y) / a

        fast = None
        if getattr(net, "has_divergence", False):
            def fast(y, t):
                t, a = scales(y, t)
                out, div = net.forward_with_divergence(a * y / sd, t, 0.0, context)
                u = (-(math.pi / 2) * sd * out - (1 - sd) * y) / a
                return u, -(math.pi / 2) * div - (1 - sd) * size / a.reshape(-1)
        return Field(velocity, fast)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, method={self.method!r}"


class ConsistencyFM(Consistency):
    """:class:`Consistency` with ``method="cfm"`` (consistency flow matching, Yang et al. 2024)."""

    def __init__(self, dim: int | Sequence[int] | None = None, context_dim: int = 0,
                 image_shape: Sequence[int] | None = None, *, method: str = "cfm", **options):
        super().__init__(dim, context_dim, image_shape, method=method, **options)


class ConsistencyTraining(Consistency):
    """:class:`Consistency` with ``method="sct"`` (continuous-time consistency training, Lu & Song 2024)."""

    def __init__(self, dim: int | Sequence[int] | None = None, context_dim: int = 0,
                 image_shape: Sequence[int] | None = None, *, method: str = "sct", **options):
        super().__init__(dim, context_dim, image_shape, method=method, **options)


register("meanflow", MeanFlow, "MeanFlow (Geng et al. 2025): average velocity u(z, t, d) by a JVP; one-step sampling")
register("shortcut", Shortcut, "Shortcut model (Frans et al. 2025): step-conditioned field, self-consistency")
# Checkpoints saved before sct existed are consistency flow matching; before time_scale, scale 100.
register("consistency", Consistency,
         "Consistency models: sCT (Lu & Song 2024, default) or consistency flow matching (Yang et al. 2024); "
         "one-step sampling", legacy={"method": "cfm", "time_scale": 100.0})
