"""Baselines on the same action experts: chunk regression (MSE) and a DDPM/DDIM diffusion policy.

* :class:`RegressionPolicy`: ``min E || f_theta(o) - A ||^2`` -- predicts the conditional mean,
  which averages distinct modes (the failure mode that generative policies fix).
* :class:`DiffusionPolicy`: Diffusion Policy (Chi et al. 2023): epsilon-prediction DDPM
  (Ho et al. 2020) with K = 100 steps and the squared-cosine schedule (Nichol & Dhariwal 2021),
  sampled by ancestral DDPM (100 network calls) or deterministic DDIM (Song et al. 2021).

The DDPM math (:func:`ddpm_loss`, :func:`ddpm_sample`, :func:`diffusion_time`) takes the network
as a function ``eps_fn(x, tau)`` with its observation already encoded, so the same code trains and
samples :class:`DiffusionPolicy` and ``VLAPolicy(objective="ddpm")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pushforward._validate import check_int_range
from pushforward.models import FlowModel
from pushforward.policy.base import ChunkPolicyMixin, net_options
from pushforward.policy.nets import make_net


class RegressionPolicy(ChunkPolicyMixin, FlowModel):
    """Deterministic chunk regression with the same network: ``A_hat = f(0, t=1, o)``.

    The action expert is fed a zero chunk at time 1 (no noise), so the baseline differs from
    :class:`~pushforward.policy.FlowPolicy` only in its objective, ``mean ||A_hat - A||^2``.
    ``sample``/``act`` return the prediction (``n`` identical rows per context).

    Args:
        obs_dim: observation size O. action_dim: A. horizon: H (chunk length).
        num_tasks: > 0 adds a task embedding; the task id is the last context column.
        net: ``"transformer"`` (default) or ``"mlp"``, as for :class:`~pushforward.policy.FlowPolicy`.
        width, depth, heads, obs_tokens, time_embed: options of the network (``None``: its
            default; ``heads``/``obs_tokens`` only for the transformer), see
            :class:`~pushforward.policy.nets.ActionTransformer` / ``ActionMLP``.

    Shapes: ``loss(actions [N, H, A], context [N, C])``; ``act(obs [B, O]) -> [B, H, A]``.
    """

    default_batch_size = 256
    default_lr = 3e-4
    default_ema = 0.999

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, num_tasks: int = 0,
                 net: str = "transformer", width: int | None = None, depth: int | None = None,
                 heads: int | None = None, obs_tokens: int | None = None, time_embed: int | None = None):
        FlowModel.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0))
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        opts = net_options(net, width=width, depth=depth, heads=heads, obs_tokens=obs_tokens, time_embed=time_embed)
        self.net = make_net(net, obs_dim, action_dim, horizon, num_tasks, **opts)
        self.resolved_options = opts
        self.config = self._policy_config("regression-policy", net=net, **opts)

    def _predict(self, obs: Tensor, task: Tensor | None) -> Tensor:
        x = obs.new_zeros(obs.shape[0], *self.event_shape)
        return self.net.decode(x, 1.0, self.net.encode(obs, task))

    def _loss(self, x, context):
        obs, task = self._split_context(context)
        return (self._predict(obs, task) - x).pow(2).mean()

    def _act_std(self, obs_n, task, generator, prefix=None):
        if prefix is not None:
            raise ValueError("RegressionPolicy cannot inpaint a prefix")
        return self._predict(obs_n, task)

    def _sample(self, n, context, generator=None, **_):
        obs, task = self._split_context(context)
        return self._predict(obs, task)

    def _log_prob(self, x, context=None, **_):
        raise NotImplementedError("a regression policy is not a density")


SAMPLERS = ("ddpm", "ddim")


def _check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    return sampler


def cosine_alpha_bar(k: int, s: float = 0.008) -> Tensor:
    """``alpha_bar`` of the squared-cosine schedule at ``k`` steps -> ``[k]`` (Nichol & Dhariwal 2021, eq. 17).

    ``f(u) = cos^2((u + s) / (1 + s) * pi / 2)``, ``beta_i = min(1 - f(i+1)/f(i), 0.999)``,
    ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``.
    """
    u = torch.arange(k + 1, dtype=torch.float64) / k
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


# ---------------------------------------------------------------- epsilon-prediction DDPM, written once
# ``eps_fn(x [B, ...], tau [B]) -> eps [B, ...]`` is the network with its observation already
# encoded; ``tau = 1 - (k + 1) / K`` is what it gets where a flow network gets its time (1 =
# clean, as the flow convention; it is only an input). DiffusionPolicy and VLAPolicy(objective=
# "ddpm") both train and sample through these two functions.
EpsFn = Callable[[Tensor, Tensor], Tensor]


def diffusion_time(k: Tensor | int, num_steps: int, ref: Tensor) -> Tensor:
    """The network's time input ``1 - (k + 1) / K`` for diffusion step(s) k -> ``[B]`` (B = ``ref``'s rows)."""
    k = torch.as_tensor(k, device=ref.device)
    return (1.0 - (k.to(ref.dtype) + 1.0) / num_steps).expand(ref.shape[0])


def ddpm_loss(eps_fn: EpsFn, x: Tensor, alpha_bar: Tensor) -> Tensor:
    """``E_{k ~ U{0..K-1}, eps} || eps_fn(sqrt(ab_k) x + sqrt(1 - ab_k) eps, tau_k) - eps ||^2`` (Ho et al. 2020, eq. 14).

    x ``[N, ...]`` clean (normalised) data, ``alpha_bar [K]``; one k and one eps per row.
    """
    k = torch.randint(0, alpha_bar.shape[0], (x.shape[0],), device=x.device)
    ab = alpha_bar.to(x)[k].view(-1, *([1] * (x.dim() - 1)))
    eps = torch.randn_like(x)
    xk = ab.sqrt() * x + (1 - ab).sqrt() * eps
    return (eps_fn(xk, diffusion_time(k, alpha_bar.shape[0], x)) - eps).pow(2).mean()


def _clean(x: Tensor, eps: Tensor, ab: Tensor, clip: float | None) -> Tensor:
    # The predicted clean sample, clipped (see DiffusionPolicy: without it 10-step DDIM diverges).
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0.clamp(-clip, clip) if clip else x0


def ddpm_sample(eps_fn: EpsFn, x: Tensor, alpha_bar: Tensor, sampler: str = "ddpm", steps: int = 10,
                clip: float | None = 5.0, generator: torch.Generator | None = None) -> Tensor:
    """Denoise ``x`` (pure noise ``[B, ...]``) with an epsilon-prediction network.

    ``sampler="ddpm"``: ancestral sampling over all K steps, posterior variance ``beta~`` (Ho et
    al. 2020, eq. 6-7; fresh noise from ``generator``); ``"ddim"``: the deterministic (eta = 0)
    update on ``steps`` evenly spaced steps (Song et al. 2021, eq. 12). ``clip`` bounds the
    predicted clean sample at every step (``None``: off); with it, DDIM's epsilon is recomputed
    from the clipped prediction so the update stays on the clipped sample.
    """
    _check_sampler(sampler)
    abar = alpha_bar.to(x)
    num = abar.shape[0]
    if sampler == "ddpm":
        for k in range(num - 1, -1, -1):
            ab, ab_prev = abar[k], (abar[k - 1] if k > 0 else abar.new_tensor(1.0))
            beta = 1 - ab / ab_prev
            x0 = _clean(x, eps_fn(x, diffusion_time(k, num, x)), ab, clip)
            mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x
            if k > 0:
                var = beta * (1 - ab_prev) / (1 - ab)
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + var.sqrt() * noise
            else:
                x = mean
        return x
    n = check_int_range(steps, "DDIM steps", 1, num)
    ks = torch.linspace(num - 1, 0, n).round().long().tolist()
    for i, k in enumerate(ks):
        ab = abar[k]
        ab_prev = abar[ks[i + 1]] if i + 1 < n else abar.new_tensor(1.0)
        eps = eps_fn(x, diffusion_time(k, num, x))
        x0 = _clean(x, eps, ab, clip)
        if clip:
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x


class DiffusionPolicy(ChunkPolicyMixin, FlowModel):
    """Diffusion Policy baseline: epsilon-prediction DDPM over chunks on the same action expert.

    Training: ``k ~ U{0..K-1}``, ``x_k = sqrt(ab_k) A + sqrt(1 - ab_k) eps``,
    ``L = || eps_theta(x_k, k, o) - eps ||^2``. The network's time input is ``1 - (k + 1) / K``
    (1 = clean, matching the flow convention; it is only an input). Sampling: ``sampler="ddpm"``
    (ancestral, K calls, posterior variance ``beta~``) or ``"ddim"`` (eta = 0, ``steps`` calls).
    Both are :func:`ddpm_loss` / :func:`ddpm_sample`, shared with ``VLAPolicy(objective="ddpm")``.

    ``clip``: the predicted clean chunk is clipped to ``[-clip, clip]`` (normalised units) at
    every step, as Diffusion Policy does (``clip_sample``, there on min-max units, [-1, 1]; ours
    are z-scores, default 5). Without it the first steps of the squared-cosine schedule
    (``alpha_bar_{K-1} ~ 1e-7``) divide the noise-prediction error by ``sqrt(alpha_bar)`` and
    10-step DDIM falls apart (measured on TwoRoute: 1 % success unclipped).

    Args:
        obs_dim, action_dim, horizon, num_tasks, net, width, depth, heads, obs_tokens,
            time_embed: as for :class:`RegressionPolicy`.
        diffusion_steps: K >= 2 (Diffusion Policy: 100). sampler: ``"ddpm"`` or ``"ddim"``.
        steps: DDIM steps, in ``[1, K]``. clip: bound of the predicted clean chunk (``None``: off).
    """

    default_batch_size = 256
    default_lr = 3e-4
    default_ema = 0.999

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, *, num_tasks: int = 0,
                 net: str = "transformer", diffusion_steps: int = 100, sampler: str = "ddpm",
                 steps: int = 10, clip: float | None = 5.0, width: int | None = None, depth: int | None = None,
                 heads: int | None = None, obs_tokens: int | None = None, time_embed: int | None = None):
        FlowModel.__init__(self, (horizon, action_dim), obs_dim + (1 if num_tasks else 0))
        self._init_policy(obs_dim, action_dim, horizon, num_tasks)
        opts = net_options(net, width=width, depth=depth, heads=heads, obs_tokens=obs_tokens, time_embed=time_embed)
        check_int_range(diffusion_steps, "diffusion_steps", 2)
        _check_sampler(sampler)
        self.net = make_net(net, obs_dim, action_dim, horizon, num_tasks, **opts)
        self.K, self.sampler, self.steps, self.clip = diffusion_steps, sampler, steps, clip
        self.register_buffer("alpha_bar", cosine_alpha_bar(diffusion_steps).float(), persistent=False)
        self.resolved_options = opts
        self.config = self._policy_config("diffusion-policy", net=net, diffusion_steps=diffusion_steps,
                                          sampler=sampler, steps=steps, clip=clip, **opts)

    def _loss(self, x, context):
        obs, task = self._split_context(context)
        cache = self.net.encode(obs, task)
        return ddpm_loss(lambda xk, tau: self.net.decode(xk, tau, cache), x, self.alpha_bar)

    def _denoise(self, obs: Tensor, task: Tensor | None, generator, sampler: str | None = None,
                 steps: int | None = None) -> Tensor:
        sampler = _check_sampler(sampler or self.sampler)
        cache = self.net.encode(obs, task)  # the observation is encoded once, as for the flow
        x = torch.randn((obs.shape[0], *self.event_shape), generator=generator, device=obs.device, dtype=obs.dtype)
        return ddpm_sample(lambda x, tau: self.net.decode(x, tau, cache), x, self.alpha_bar, sampler,
                           self.steps if steps is None else steps, self.clip, generator)

    def _act_std(self, obs_n, task, generator, prefix=None, sampler=None, steps=None):
        if prefix is not None:
            raise ValueError("DiffusionPolicy does not implement prefix inpainting")
        return self._denoise(obs_n, task, generator, sampler, steps)

    def _sample(self, n, context, generator=None, sampler=None, steps=None, **_):
        obs, task = self._split_context(context)
        return self._denoise(obs, task, generator, sampler, steps)

    def _log_prob(self, x, context=None, **_):
        raise NotImplementedError("DiffusionPolicy has no likelihood here; use FlowPolicy.log_prob")
