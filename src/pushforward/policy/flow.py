"""pi0-style flow-matching policies over action chunks (Black et al. 2024, "pi0: A
Vision-Language-Action Flow Model for General Robot Control").

Time convention: t = 0 is noise, t = 1 is the action chunk (DESIGN.md; Lipman et al. 2024).
pi0's paper and code run the other way: they write ``A^tau = tau A + (1 - tau) eps`` in the
paper but integrate from ``tau = 1`` (noise) to 0 in code with ``u = eps - A``. Ours: the
straight path ``x_t = t A + (1 - t) eps``, target velocity ``A - eps``, integration 0 -> 1; the
training time density is pi0's shifted Beta converted to this convention
(:class:`pushforward.matching.BetaTime`: dense near the noise end, never exactly at the data).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pushforward._validate import check_choice, check_dim, check_finite, check_positive_int
from pushforward.continuous.cnf import ContinuousFlow, Field, fixed_grid_solve
from pushforward.continuous.ode import FIXED_SOLVERS
from pushforward.matching.models import FlowMatching
from pushforward.matching.paths import AffinePath
from pushforward.matching.time_samplers import TIME_SAMPLERS, get_time_sampler
from pushforward.policy.base import ChunkPolicyMixin, net_options
from pushforward.policy.nets import NETS, make_net


def _check_policy_args(obs_dim, action_dim, horizon, num_tasks, net, time_sampler, solver) -> None:
    # Checked before the network is built from them (ChunkPolicyMixin._init_policy checks again).
    for name, v in (("obs_dim", obs_dim), ("action_dim", action_dim), ("horizon", horizon)):
        check_dim(v, name)
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 0:
        raise ValueError(f"num_tasks must be a non-negative integer, got {num_tasks!r}")
    check_choice(net, tuple(NETS), "net")
    check_choice(time_sampler, tuple(TIME_SAMPLERS), "time_sampler")
    check_choice(solver, tuple(FIXED_SOLVERS), "solver (a fixed-grid solver)")


def expert_field(net: nn.Module, obs: Tensor, task: Tensor | None, prefix: Tensor | None = None,
                 x0: Tensor | None = None) -> Field:
    """The ODE field of an encoder/decoder action expert for one batch of observations.

    ``net.encode(obs [B, O], task)`` runs once (pi0's prefix cache); the field calls
    ``net.decode(x [B, H, A], t, cache)`` at every step. With ``prefix`` ``[B, d, A]`` (and the
    initial noise ``x0``) the first d actions follow their conditional path ``x_t = t a + (1 - t)
    x0`` exactly (inpainting, real-time chunking): their velocity ``a - x0`` is constant, so any
    Runge–Kutta solver integrates it exactly, and the network, attending to them, fills in the rest.
    """
    cache = net.encode(obs, task)
    if not torch.is_grad_enabled() and hasattr(net, "decoder"):
        # Acting: per-chunk work done once, per-step work in functional calls (the same function).
        dec = net.decoder(cache)
    else:
        def dec(x, t):
            return net.decode(x, t, cache)
    if prefix is None:
        return Field(dec)
    d, horizon = prefix.shape[1], x0.shape[1]
    mask = (torch.arange(horizon, device=x0.device) < d)[:, None]
    fixed = torch.nn.functional.pad(prefix - x0[:, :d], (0, 0, 0, horizon - d))
    return Field(lambda x, t: torch.where(mask, fixed, dec(x, t)))


FAST_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs", "eager")
# policy -> {mode: compiled chunk function}; kept outside the module so policies still pickle.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chunk_fn(field: Callable[..., Field], t0: float, t1: float):
    """``(*inputs, prefix, x0, steps, solver) -> chunk``: ``field(*inputs, prefix, x0)`` once
    (it encodes the prefix), then a fixed-grid solve; the function the fast path compiles."""
    def chunk(*args):
        *inputs, prefix, x0, steps, solver = args
        return fixed_grid_solve(field(*inputs, prefix, x0).velocity, x0, t0, t1, steps, solver)
    return chunk


class FlowPolicy(ChunkPolicyMixin, FlowMatching):
    """Conditional flow matching over action chunks ``[H, A]`` given observations ``[O]``.

    A :class:`~pushforward.matching.FlowMatching` model on the straight path whose network is an
    encoder/decoder action expert. Training (``pf.fit(policy, actions [N, H, A], context=obs
    [N, O])``) regresses the conditional OT velocity (Lipman et al. 2023; pi0 eq. 1, time
    reversed):

        L = E_{t ~ p(t), eps ~ N(0, I)} || v_theta(t A + (1 - t) eps, t, o) - (A - eps) ||^2 ,

    in normalised units (per-dimension action/observation statistics stored in the policy).
    Acting integrates ``dx/dt = v_theta(x, t, o)`` from noise at t = 0 to t = 1 with ``steps``
    Euler steps (pi0: 10); :meth:`velocity_field` encodes the observation once per chunk
    (prefix cache).

    Args:
        obs_dim: observation size O. action_dim: A. horizon: H (chunk length).
        num_tasks: > 0 adds a task-embedding token; the context then carries the task id as an
            extra last column (``context_dim = O + 1``) and ``act`` takes ``task=``.
        net: ``"transformer"`` (pi0's action expert, default) or ``"mlp"`` (tiny problems).
        time_sampler: ``"beta"`` (pi0, default), ``"uniform"`` or ``"logit-normal"``.
        steps: ``act``/``sample`` default number of steps (10, as pi0).
        solver: ``act``/``sample`` default solver (Euler, as pi0; fixed-grid solvers only).
        width: the expert's width (None: transformer 128, MLP 256).
        depth: the expert's depth (None: the expert's default).
        heads: attention heads (None: 4; transformer only).
        obs_tokens: tokens the observation is split into (None: 2; transformer only).
        time_embed: the time embedding size (None: transformer 64, MLP 32). The experts are
            :class:`~pushforward.policy.nets.ActionTransformer` and ``ActionMLP``.

    Shapes: ``loss(actions [N, H, A], context [N, C])``; ``sample(n, context [n, C])`` and
    ``act(obs [B, O]) -> [B, H, A]`` in raw units.

    >>> import torch, pushforward as pf
    >>> policy = pf.policy.FlowPolicy(obs_dim=4, action_dim=2, horizon=8, net="mlp", width=32)
    >>> policy.act(torch.zeros(3, 4)).shape
    torch.Size([3, 8, 2])
    """

    default_batch_size = 256
    default_lr = 3e-4
    default_ema = 0.999
    default_schedule = "cosine"
    default_logprob_solver = None  # log_prob integrates with the sampling solver
    exact_max_dim = ContinuousFlow.exact_max_dim

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, num_tasks: int = 0,
                 net: str = "transformer", time_sampler: str = "beta", steps: int = 10, solver: str = "euler",
                 width: int | None = None, depth: int = 3, heads: int | None = None, obs_tokens: int | None = None,
                 time_embed: int | None = None):
        _check_policy_args(obs_dim, action_dim, horizon, num_tasks, net, time_sampler, solver)
        sizes = net_options(net, width=width, depth=depth, heads=heads, obs_tokens=obs_tokens, time_embed=time_embed)
        FlowMatching.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0),
                              net=make_net(net, obs_dim, action_dim, horizon, num_tasks, **sizes),
                              time_sampler=time_sampler, steps=steps, solver=solver)
        self.default_logprob_solver = None
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        self.resolved_options = sizes
        self.config = self._policy_config("flow-policy", net=net, time_sampler=time_sampler, steps=steps,
                                          solver=solver, **sizes)

    # ----------------------------------------------------------------- field
    def velocity_field(self, context: Tensor | None = None, guidance: float | None = None) -> Field:
        """The field for raw contexts ``[N, C]``: the observation is encoded once, here."""
        if guidance not in (None, 1.0):
            raise ValueError(f"a FlowPolicy has no classifier-free guidance, got guidance={guidance}")
        return expert_field(self.net, *self._split_context(context))

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        # Time first, then noise: the order of draws of seeded training runs stays as it was.
        t = self.time_sampler.sample(x.shape[0], device=x.device, dtype=x.dtype)
        return self.paired_loss(torch.randn_like(x), x, context, t)

    # ----------------------------------------------------------------- sampling
    def _integrate(self, field: Field, x0: Tensor, steps: int | None, solver: str | None) -> Tensor:
        steps = check_positive_int(self.default_steps if steps is None else steps, "steps")
        solver = solver or self.default_solver
        if solver not in FIXED_SOLVERS:
            raise ValueError(f"act uses fixed-grid solvers {tuple(FIXED_SOLVERS)}, got {solver!r}")
        # One finiteness check of the result instead of one per step (a host sync each on GPU).
        return check_finite(self._solve(field, x0, solver, steps, check_finite=False), "generated action chunk")

    def _act_std(self, obs_n, task, generator, prefix=None, steps=None, solver=None):
        x0 = self.base.sample(obs_n.shape[0], None, generator)
        if self.fast_path is not None:
            return self._fast_chunk(obs_n, task, prefix, x0, steps, solver)
        return self._integrate(expert_field(self.net, obs_n, task, prefix, x0), x0, steps, solver)

    def _sample(self, n, context, generator=None, steps=None, solver=None, atol=None, rtol=None, x0=None):
        x0 = self.base.sample(n, context, generator) if x0 is None else x0
        if self.fast_path is not None:
            return self._fast_chunk(*self._split_context(context), None, x0, steps, solver)
        return self._integrate(self.velocity_field(context), x0, steps, solver)

    # ----------------------------------------------------------------- fast path
    fast_path: str | None = None  # class default: policies built or pickled before it existed

    def set_fast_path(self, mode: str | None = "reduce-overhead") -> FlowPolicy:
        """Opt-in fast ``act``/``sample``: the observation encoding and the whole fixed-grid solve
        as one ``torch.compile``-d function (``mode="reduce-overhead"``: CUDA-graph capture).

        On CUDA the first call per batch size compiles (seconds) and later calls replay; a
        small policy is launch-bound there, which this removes. On other devices
        ``"reduce-overhead"`` falls back to the same solve in eager mode (CUDA graphs need
        CUDA), bit-equal to the default path; ``"default"``/``"max-autotune"`` compile on any
        device (inductor: equal within float tolerance); ``"eager"`` never compiles; ``None``
        switches the fast path off. A runtime setting, not saved with the model. Returns self.
        """
        if mode is not None:
            check_choice(mode, FAST_MODES, "mode")
        self.fast_path = mode
        _COMPILED.pop(self, None)
        return self

    def _fast_chunk(self, obs, task, prefix, x0, steps, solver) -> Tensor:
        return self._fast_solve(functools.partial(expert_field, self.net), (obs, task), prefix, x0, steps, solver)

    def _fast_solve(self, field: Callable[..., Field], inputs: tuple, prefix, x0, steps, solver) -> Tensor:
        """The chunk of :func:`_chunk_fn` (``field(*inputs, prefix, x0)`` solved from ``x0``) in
        the :meth:`set_fast_path` mode; compiled once per policy and mode, as one graph."""
        steps = check_positive_int(self.default_steps if steps is None else steps, "steps")
        solver = solver or self.default_solver
        if solver not in FIXED_SOLVERS:
            raise ValueError(f"act uses fixed-grid solvers {tuple(FIXED_SOLVERS)}, got {solver!r}")
        mode = self.fast_path
        if mode == "eager" or (mode == "reduce-overhead" and x0.device.type != "cuda"):
            out = _chunk_fn(field, *self.t_span)(*inputs, prefix, x0, steps, solver)
        else:
            fns = _COMPILED.setdefault(self, {})
            if mode not in fns:
                # fullgraph: a graph break would silently give back most of the gain.
                fns[mode] = torch.compile(_chunk_fn(field, *self.t_span), mode=mode, dynamic=False, fullgraph=True)
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            # A CUDA-graph output is overwritten by the next replay: hand back a copy.
            out = fns[mode](*inputs, prefix, x0, steps, solver).clone()
        self.nfe = steps * len(FIXED_SOLVERS[solver].c)
        return check_finite(out, "generated action chunk")

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, horizon={self.horizon}, "
                f"num_tasks={self.num_tasks}, time_sampler={self.time_sampler!r}, steps={self.default_steps}")


class HierarchicalFlowPolicy(ChunkPolicyMixin, ContinuousFlow):
    """Coarse-to-fine flow policy: a flow over every ``stride``-th action, then a flow over the
    full chunk conditioned on it.

    ``A_coarse = A[:, ::stride]`` ``[H / stride, A]`` is generated from the observation; the fine
    flow sees the observation and the (normalised, flattened) coarse chunk. Both are trained by
    conditional flow matching in one loss (the fine flow on the ground-truth coarse chunk, i.e.
    teacher forcing): ``L = L_coarse + L_fine``. Acting runs both with ``steps`` each, each an
    :func:`expert_field` solved by the shared ODE routine. Options as :class:`FlowPolicy`.
    """

    default_batch_size = 256
    default_lr = 3e-4
    default_ema = 0.999

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, stride: int = 4, num_tasks: int = 0,
                 net: str = "transformer", time_sampler: str = "beta", steps: int = 10, solver: str = "euler",
                 width: int | None = None, depth: int = 3, heads: int | None = None, obs_tokens: int | None = None,
                 time_embed: int | None = None):
        _check_policy_args(obs_dim, action_dim, horizon, num_tasks, net, time_sampler, solver)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2 or horizon % stride:
            raise ValueError(f"stride must be an integer >= 2 dividing horizon={horizon}, got {stride!r}")
        ContinuousFlow.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0))
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        self.stride = stride
        self.default_steps, self.default_solver = check_positive_int(steps, "steps"), solver
        hc = horizon // stride
        sizes = net_options(net, width=width, depth=depth, heads=heads, obs_tokens=obs_tokens, time_embed=time_embed)
        self.coarse = make_net(net, obs_dim, action_dim, hc, num_tasks, **sizes)
        self.fine = make_net(net, obs_dim + hc * action_dim, action_dim, horizon, num_tasks, **sizes)
        self.resolved_options = sizes
        self.path = AffinePath("ot")
        self.time_sampler = get_time_sampler(time_sampler)
        self.config = self._policy_config("hierarchical-flow-policy", stride=stride, net=net,
                                          time_sampler=time_sampler, steps=steps, solver=solver, **sizes)

    def _fm(self, net, x: Tensor, obs: Tensor, task: Tensor | None) -> Tensor:
        t = self.time_sampler.sample(x.shape[0], device=x.device, dtype=x.dtype)
        ps = self.path.sample(torch.randn_like(x), x, t)
        return (expert_field(net, obs, task).velocity(ps.x_t, t) - ps.dx_t).pow(2).mean()

    def _loss(self, x, context):
        obs, task = self._split_context(context)
        coarse = x[:, :: self.stride]
        return self._fm(self.coarse, coarse, obs, task) + self._fm(self.fine, x, torch.cat([obs, coarse.flatten(1)], 1), task)

    def velocity(self, x, t, context=None):
        raise NotImplementedError("a hierarchical policy is two flows; use sample/act")

    def _flow(self, net, shape, obs, task, generator, steps, solver):
        x0 = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
        return self._solve(expert_field(net, obs, task), x0, solver, steps)

    def _act_std(self, obs_n, task, generator, prefix=None, steps=None, solver=None):
        if prefix is not None:
            raise ValueError("HierarchicalFlowPolicy does not support prefix inpainting; use FlowPolicy")
        steps = check_positive_int(self.default_steps if steps is None else steps, "steps")
        solver = solver or self.default_solver
        b, hc = obs_n.shape[0], self.horizon // self.stride
        coarse = self._flow(self.coarse, (b, hc, self.action_dim), obs_n, task, generator, steps, solver)
        fine_obs = torch.cat([obs_n, coarse.flatten(1)], 1)
        return self._flow(self.fine, (b, *self.event_shape), fine_obs, task, generator, steps, solver)

    def _sample(self, n, context, generator=None, steps=None, solver=None, **_):
        obs, task = self._split_context(context)
        return self._act_std(obs, task, generator, steps=steps, solver=solver)

    def _log_prob(self, x, context=None, **kwargs):
        raise NotImplementedError("HierarchicalFlowPolicy has no single ODE density; use FlowPolicy.log_prob")
