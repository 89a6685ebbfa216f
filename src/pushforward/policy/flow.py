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

from typing import Any

import torch
from torch import Tensor

from pushforward._validate import check_finite
from pushforward.continuous.cnf import ContinuousFlow
from pushforward.continuous.ode import FIXED_SOLVERS, odeint
from pushforward.matching.paths import AffinePath
from pushforward.matching.time_samplers import TIME_SAMPLERS, get_time_sampler
from pushforward.policy.base import ChunkPolicyMixin
from pushforward.policy.nets import NETS, make_net


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


class FlowPolicy(ChunkPolicyMixin, ContinuousFlow):
    """Conditional flow matching over action chunks ``[H, A]`` given observations ``[O]``.

    Training (``pf.fit(policy, actions [N, H, A], context=obs [N, O])``) regresses the
    conditional OT velocity (Lipman et al. 2023; pi0 eq. 1, time reversed):

        L = E_{t ~ p(t), eps ~ N(0, I)} || v_theta(t A + (1 - t) eps, t, o) - (A - eps) ||^2 ,

    in normalised units (per-dimension action/observation statistics stored in the policy).
    Acting integrates ``dx/dt = v_theta(x, t, o)`` from noise at t = 0 to t = 1 with ``steps``
    Euler steps (pi0: 10); the observation is encoded once per chunk (prefix cache).

    Args:
        obs_dim: observation size O. action_dim: A. horizon: H (chunk length).
        num_tasks: > 0 adds a task-embedding token; the context then carries the task id as an
            extra last column (``context_dim = O + 1``) and ``act`` takes ``task=``.
        net: ``"transformer"`` (pi0's action expert, default) or ``"mlp"`` (tiny problems).
        time_sampler: ``"beta"`` (pi0, default), ``"uniform"`` or ``"logit-normal"``.
        steps, solver: ``act``/``sample`` defaults (10 Euler steps, as pi0).
        **net_options: ``width``, ``depth``, ``heads``, ``obs_tokens``, ``time_embed`` (see
            :class:`~pushforward.policy.nets.ActionTransformer` / ``ActionMLP``).

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

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, num_tasks: int = 0,
                 net: str = "transformer", time_sampler: str = "beta", steps: int = 10,
                 solver: str = "euler", **net_options: Any):
        ContinuousFlow.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0))
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        if net not in NETS:
            raise ValueError(f"net must be one of {tuple(NETS)}, got {net!r}")
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"time_sampler must be one of {tuple(TIME_SAMPLERS)}, got {time_sampler!r}")
        if solver not in FIXED_SOLVERS:
            raise ValueError(f"solver must be a fixed-grid solver {tuple(FIXED_SOLVERS)}, got {solver!r}")
        self.default_steps, self.default_solver = _check_steps(steps), solver
        self.net = make_net(net, obs_dim, action_dim, horizon, num_tasks, **net_options)
        self.path = AffinePath("ot")
        self.time_sampler = get_time_sampler(time_sampler)
        self.config = self._policy_config("flow-policy", net=net, time_sampler=time_sampler, steps=steps,
                                          solver=solver, **net_options)

    # ----------------------------------------------------------------- field
    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """``v(x, t, c)`` in normalised action units; context in raw units ``[N, C]``."""
        obs, task = self._split_context(context)
        return self.net.decode(x, t, self.net.encode(obs, task))

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        obs, task = self._split_context(context)
        t = self.time_sampler.sample(x.shape[0], device=x.device, dtype=x.dtype)
        ps = self.path.sample(torch.randn_like(x), x, t)
        v = self.net.decode(ps.x_t, t, self.net.encode(obs, task))
        return (v - ps.dx_t).pow(2).mean()

    # ----------------------------------------------------------------- sampling
    def _integrate(self, obs_n: Tensor, task: Tensor | None, generator: torch.Generator | None,
                   steps: int | None, solver: str | None, prefix: Tensor | None, x0: Tensor | None = None) -> Tensor:
        steps = _check_steps(self.default_steps if steps is None else steps)
        solver = solver or self.default_solver
        if solver not in FIXED_SOLVERS:
            raise ValueError(f"act uses fixed-grid solvers {tuple(FIXED_SOLVERS)}, got {solver!r}")
        b = obs_n.shape[0]
        if x0 is None:
            x0 = torch.randn((b, *self.event_shape), generator=generator, device=obs_n.device, dtype=obs_n.dtype)
        cache = self.net.encode(obs_n, task)  # once per chunk, reused at every step
        if prefix is None:
            def field(t, x):
                return self.net.decode(x, t, cache)
        else:
            # Inpainting (real-time chunking): the first d actions follow their conditional path
            # x_t = t a + (1 - t) x0 exactly (constant velocity a - x0, integrated exactly by any
            # RK solver); the network, attending to them, fills in the rest consistently.
            d = prefix.shape[1]
            mask = torch.zeros(self.horizon, 1, dtype=torch.bool, device=obs_n.device)
            mask[:d] = True
            fixed = torch.nn.functional.pad(prefix - x0[:, :d], (0, 0, 0, self.horizon - d))

            def field(t, x):
                return torch.where(mask, fixed, self.net.decode(x, t, cache))
        # One finiteness check of the result instead of one per step (a host sync each on GPU).
        xs, self.nfe = odeint(field, x0, [0.0, 1.0], solver=solver, steps=steps, return_nfe=True, check_finite=False)
        return check_finite(xs[-1], "generated action chunk")

    def _act_std(self, obs_n, task, generator, prefix=None, steps=None, solver=None):
        return self._integrate(obs_n, task, generator, steps, solver, prefix)

    def _sample(self, n, context, generator=None, steps=None, solver=None, atol=None, rtol=None, x0=None):
        obs, task = self._split_context(context)
        return self._integrate(obs, task, generator, steps, solver, None, x0)

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, horizon={self.horizon}, "
                f"num_tasks={self.num_tasks}, time_sampler={self.time_sampler!r}, steps={self.default_steps}")


class HierarchicalFlowPolicy(ChunkPolicyMixin, ContinuousFlow):
    """Coarse-to-fine flow policy: a flow over every ``stride``-th action, then a flow over the
    full chunk conditioned on it.

    ``A_coarse = A[:, ::stride]`` ``[H / stride, A]`` is generated from the observation; the fine
    flow sees the observation and the (normalised, flattened) coarse chunk. Both are trained by
    conditional flow matching in one loss (the fine flow on the ground-truth coarse chunk, i.e.
    teacher forcing): ``L = L_coarse + L_fine``. Acting runs both with ``steps`` each.
    """

    default_batch_size = 256
    default_lr = 3e-4
    default_ema = 0.999

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, stride: int = 4, num_tasks: int = 0,
                 net: str = "transformer", time_sampler: str = "beta", steps: int = 10,
                 solver: str = "euler", **net_options: Any):
        ContinuousFlow.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0))
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2 or horizon % stride:
            raise ValueError(f"stride must be an integer >= 2 dividing horizon={horizon}, got {stride!r}")
        if solver not in FIXED_SOLVERS:
            raise ValueError(f"solver must be a fixed-grid solver {tuple(FIXED_SOLVERS)}, got {solver!r}")
        self.stride = stride
        self.default_steps, self.default_solver = _check_steps(steps), solver
        hc = horizon // stride
        self.coarse = make_net(net, obs_dim, action_dim, hc, num_tasks, **net_options)
        self.fine = make_net(net, obs_dim + hc * action_dim, action_dim, horizon, num_tasks, **net_options)
        self.path = AffinePath("ot")
        self.time_sampler = get_time_sampler(time_sampler)
        self.config = self._policy_config("hierarchical-flow-policy", stride=stride, net=net,
                                          time_sampler=time_sampler, steps=steps, solver=solver, **net_options)

    def _fm(self, net, x: Tensor, obs: Tensor, task: Tensor | None) -> Tensor:
        t = self.time_sampler.sample(x.shape[0], device=x.device, dtype=x.dtype)
        ps = self.path.sample(torch.randn_like(x), x, t)
        return (net.decode(ps.x_t, t, net.encode(obs, task)) - ps.dx_t).pow(2).mean()

    def _loss(self, x, context):
        obs, task = self._split_context(context)
        coarse = x[:, :: self.stride]
        return self._fm(self.coarse, coarse, obs, task) + self._fm(self.fine, x, torch.cat([obs, coarse.flatten(1)], 1), task)

    def velocity(self, x, t, context=None):
        raise NotImplementedError("a hierarchical policy is two flows; use sample/act")

    def _solve(self, net, shape, obs, task, generator, steps, solver):
        x0 = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
        cache = net.encode(obs, task)
        xs = odeint(lambda t, x: net.decode(x, t, cache), x0, [0.0, 1.0], solver=solver, steps=steps)
        return xs[-1]

    def _act_std(self, obs_n, task, generator, prefix=None, steps=None, solver=None):
        if prefix is not None:
            raise ValueError("HierarchicalFlowPolicy does not support prefix inpainting; use FlowPolicy")
        steps = _check_steps(self.default_steps if steps is None else steps)
        solver = solver or self.default_solver
        b, hc = obs_n.shape[0], self.horizon // self.stride
        coarse = self._solve(self.coarse, (b, hc, self.action_dim), obs_n, task, generator, steps, solver)
        fine_obs = torch.cat([obs_n, coarse.flatten(1)], 1)
        return self._solve(self.fine, (b, *self.event_shape), fine_obs, task, generator, steps, solver)

    def _sample(self, n, context, generator=None, steps=None, solver=None, **_):
        obs, task = self._split_context(context)
        return self._act_std(obs, task, generator, steps=steps, solver=solver)

    def _log_prob(self, x, context=None, **kwargs):
        raise NotImplementedError("HierarchicalFlowPolicy has no single ODE density; use FlowPolicy.log_prob")
