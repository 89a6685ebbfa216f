"""What every action-chunk policy shares: normalisation, input checks and ``act``.

Units. A policy stores per-dimension statistics of the actions (``data_loc``/``data_scale``,
one value per action dimension, shared by the H steps of a chunk) and of the observations
(``obs_loc``/``obs_scale``). ``loss``, ``sample`` and ``act`` take and return *raw* units; the
networks only ever see normalised ones. (A missing de-normalisation is the most common
deployment bug of learned policies: here there is nothing to forget.)

Context layout. ``context = [obs (O columns), task id (1 column, only if num_tasks > 0)]``;
the task id is an integer stored as a float.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._utils import column_stats, to_tensor
from pushforward._validate import check_dim, check_finite, check_int_range
from pushforward.policy.nets import NETS
from pushforward.registry import entry


def pooled_stats(loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean/std of chunks from per-(step, dim) ones: ``[H, A] -> [A], [A]``.

    The pooled variance of equal-sized groups: ``var = mean_h(scale_h^2 + (loc_h - loc)^2)``,
    which is exactly the variance over all N*H rows. A zero scale becomes 1 (a constant action
    dimension has nothing to scale).
    """
    loc, scale = loc.double(), scale.double()
    m = loc.mean(0)
    var = (scale.pow(2) + (loc - m).pow(2)).mean(0)
    s = var.sqrt()
    return m, torch.where(s > 1e-12 * (1 + m.abs()), s, torch.ones_like(s))


def net_options(net: str, **options: Any) -> dict:
    """The options of the action network ``NETS[net]``, checked and resolved.

    ``None`` means "the network's own default" (the two networks differ: the transformer is
    128 wide with a 64-d time embedding, the MLP 256 wide with 32), so a policy's signature can
    list every option once for both. Returns every option the network takes, ``None`` replaced
    by the network's default (policies record these values: ``resolved_options``); an option
    given that the network does not take raises.

    >>> net_options("mlp", width=None, depth=2, heads=None)
    {'width': 256, 'depth': 2}
    """
    if net not in NETS:
        raise ValueError(f"net must be one of {tuple(NETS)}, got {net!r}")
    params = inspect.signature(NETS[net]).parameters
    given = {k: v for k, v in options.items() if v is not None}
    wrong = [k for k in given if k not in params]
    if wrong:
        takes = [k for k in params if k not in ("obs_dim", "action_dim", "horizon", "num_tasks")]
        raise TypeError(f"net={net!r} does not take option(s) {wrong}; it takes {takes}")
    return {k: given.get(k, params[k].default) for k in options if k in params}


class ChunkPolicyMixin:
    """Mixed into :class:`pushforward.FlowModel` subclasses over chunks ``[H, A]``.

    Subclasses call :meth:`_init_policy` in ``__init__`` and implement
    ``_act_std(obs_n [B, O], task [B] | None, generator, **kwargs) -> [B, H, A]`` (normalised).
    """

    standardize_by_default = True  # fit's per-element stats are pooled per action dimension

    def _init_policy(self, obs_dim: int, action_dim: int, horizon: int, num_tasks: int) -> None:
        check_dim(obs_dim, "obs_dim")
        check_dim(action_dim, "action_dim")
        check_dim(horizon, "horizon")
        check_int_range(num_tasks, "num_tasks", 0)
        self.obs_dim, self.action_dim, self.horizon, self.num_tasks = obs_dim, action_dim, horizon, num_tasks
        self.register_buffer("obs_loc", torch.zeros(obs_dim))
        self.register_buffer("obs_scale", torch.ones(obs_dim))
        # Whether obs statistics were set from the full data (then fit's first batch does not override them).
        self.register_buffer("obs_stats_set", torch.zeros((), dtype=torch.bool))

    # ----------------------------------------------------------------- normalisation
    def set_standardization(self, loc: Tensor, scale: Tensor) -> None:
        """Action normalisation from :func:`pushforward.fit`'s per-element statistics.

        ``loc``/``scale`` ``[H, A]`` (or anything broadcasting to it) are pooled to one value
        per action dimension (:func:`pooled_stats`), so the H steps of a chunk share units.
        """
        loc = torch.as_tensor(loc).expand(self.event_shape)
        scale = torch.as_tensor(scale).expand(self.event_shape)
        check_finite(loc, "standardization loc")
        check_finite(scale, "standardization scale")
        if bool((scale <= 0).any()):
            raise ValueError("standardization scale must be positive")
        m, s = pooled_stats(loc, scale)
        super().set_standardization(m.to(self.data_loc), s.to(self.data_scale))

    def set_normalization(self, actions: Any = None, obs: Any = None) -> None:
        """Exact per-dimension statistics from the full data set (raw units).

        actions ``[N, H, A]`` (or ``[N, A]`` single steps), obs ``[N, O]``. ``pf.fit`` sets the
        action statistics itself (``standardize=True``, the default) and, unless this method was
        called first, estimates the observation statistics from its first batch.
        """
        if actions is not None:
            a = self._tensor(actions, "actions")
            if a.shape[-1] != self.action_dim:
                raise ValueError(f"actions have {a.shape[-1]} dimensions, the policy has action_dim={self.action_dim}")
            check_finite(a, "actions")
            m, s = column_stats(a)
            super().set_standardization(m.to(self.data_loc), s.to(self.data_scale))
        if obs is not None:
            o = self._tensor(obs, "obs")
            if o.dim() != 2 or o.shape[1] != self.obs_dim:
                raise ValueError(f"obs must be [N, {self.obs_dim}], got {list(o.shape)}")
            check_finite(o, "obs")
            m, s = column_stats(o)
            self.obs_loc.copy_(m)
            self.obs_scale.copy_(s)
            self.obs_stats_set.fill_(True)

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Called by ``pf.fit`` with a first batch: observation statistics, unless already set."""
        if context is not None and not bool(self.obs_stats_set):
            m, s = column_stats(context[:, : self.obs_dim])
            self.obs_loc.copy_(m)
            self.obs_scale.copy_(s)

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw -> normalised observations ``[B, O]``."""
        return (obs - self.obs_loc) / self.obs_scale

    # ----------------------------------------------------------------- context
    def _split_context(self, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[B, C] -> (normalised obs [B, O], task ids [B] long or None)``."""
        obs = self.normalize_obs(context[:, : self.obs_dim])
        if not self.num_tasks:
            return obs, None
        task = context[:, self.obs_dim]
        bad = (task != task.round()) | (task < 0) | (task >= self.num_tasks)
        if bool(bad.any()):
            raise ValueError(f"task ids must be integers in [0, {self.num_tasks}), got {task[bad][:5].tolist()}")
        return obs, task.long()

    def _tensor(self, a: Any, name: str) -> Tensor:
        return to_tensor(a, name, dtype=self.data_loc.dtype, device=self.data_loc.device)

    def _obs_context(self, obs: Any, task: Any = None) -> Tensor:
        """Checked raw observation (+ task) -> context ``[B, C]``."""
        o = self._tensor(obs, "observation")
        if o.dim() == 1:
            o = o[None]
        if o.dim() != 2 or o.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation must have shape [B, {self.obs_dim}] or [{self.obs_dim}] (obs_dim={self.obs_dim}), "
                f"got {list(o.shape)}")
        check_finite(o, "observation")
        if not self.num_tasks:
            if task is not None:
                raise ValueError("a task was given but the policy is not task-conditioned (num_tasks=0)")
            return o
        if task is None:
            raise ValueError(f"this policy is task-conditioned (num_tasks={self.num_tasks}): pass task=")
        tk = self._tensor(task, "task").reshape(-1)
        if tk.numel() == 1:
            tk = tk.expand(o.shape[0])
        if tk.shape[0] != o.shape[0]:
            raise ValueError(f"task has {tk.shape[0]} entries but the observation batch has {o.shape[0]}")
        return torch.cat([o, tk[:, None]], 1)

    # ----------------------------------------------------------------- acting
    def act(self, obs: Any, task: Any = None, *, generator: torch.Generator | None = None,
            prefix: Any = None, **kwargs) -> Any:
        """A chunk of future actions for each observation, in raw units.

        Args:
            obs: ``[B, O]`` or ``[O]`` raw observations (Tensor or ndarray).
            task: task ids ``[B]`` or one int, for task-conditioned policies.
            generator: seeds the initial noise (reproducible acting).
            prefix: ``[B, d, A]`` raw actions the chunk must start with (real-time chunking:
                the not-yet-executed tail of the previous chunk), ``d < H``. Policies that
                cannot inpaint raise.
            **kwargs: sampler options of the policy (``steps``, ``solver``, ...).

        Returns:
            ``[B, H, A]`` actions (B = 1 for a 1-D observation), an ndarray if ``obs`` was one.

        Raises:
            ValueError: wrong observation size (naming ``obs_dim``) or NaN/inf observation.
        """
        context = self._obs_context(obs, task)
        pre = None
        if prefix is not None:
            p = self._tensor(prefix, "prefix")
            if p.dim() == 2:
                p = p[None]
            if p.dim() != 3 or p.shape[0] != context.shape[0] or p.shape[2] != self.action_dim or p.shape[1] >= self.horizon:
                raise ValueError(f"prefix must be [B={context.shape[0]}, d < {self.horizon}, {self.action_dim}], "
                                 f"got {list(p.shape)}")
            check_finite(p, "prefix")
            pre = (p - self.data_loc[: p.shape[1]]) / self.data_scale[: p.shape[1]]
        with torch.inference_mode():
            obs_n, tk = self._split_context(context)
            out = self.unstandardize(self._act_std(obs_n, tk, generator, prefix=pre, **kwargs))
        out = out.clone()  # an ordinary tensor (inference tensors cannot enter autograd later)
        return out.cpu().numpy() if isinstance(obs, np.ndarray) else out

    def _act_std(self, obs_n: Tensor, task: Tensor | None, generator: torch.Generator | None,
                 prefix: Tensor | None = None, **kwargs) -> Tensor:
        raise NotImplementedError

    def _policy_config(self, name: str, **options: Any) -> dict:
        """The ``pf.build`` config that recreates this policy (``pf.save``/``pf.load``).

        Every option default of the class registered as ``name`` is recorded, as ``build``
        records them, then overridden by the values this policy was constructed with.
        """
        defaults = entry(name).options(supplied=("obs_dim", "action_dim"))
        return {"name": name, "dim": self.action_dim, "context_dim": self.context_dim, "image_shape": None,
                **defaults, "horizon": self.horizon, "num_tasks": self.num_tasks, **options}
