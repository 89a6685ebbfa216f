"""Builders for action-chunk policies: ``flow-policy``, ``hierarchical-flow-policy``,
``regression-policy``, ``diffusion-policy``.

``dim`` is the action dimension A and ``context_dim`` the observation size O (plus 1 for the
task id when ``num_tasks > 0``); ``horizon`` is the chunk length H. Policies constructed
directly record the same config, so ``pf.save``/``pf.load`` rebuild them without a config file.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward.policy.baselines import DiffusionPolicy, RegressionPolicy
from pushforward.policy.flow import FlowPolicy, HierarchicalFlowPolicy
from pushforward.registry import register


def _obs_dim(context_dim: int, num_tasks: int, image_shape: Sequence[int] | None, name: str) -> int:
    if image_shape is not None:
        raise ValueError(f"{name} takes state observations (context_dim), not image_shape={tuple(image_shape)}")
    obs_dim = context_dim - (1 if num_tasks else 0)
    if obs_dim < 1:
        raise ValueError(f"{name} needs context_dim = obs_dim{' + 1 (task id)' if num_tasks else ''} >= "
                         f"{2 if num_tasks else 1}, got context_dim={context_dim}")
    return obs_dim


@register("flow-policy", "pi0-style flow-matching policy over action chunks [horizon, dim] given observations")
def flow_policy(dim, context_dim=0, image_shape=None, *, horizon: int = 16, num_tasks: int = 0,
                **options) -> FlowPolicy:
    """:class:`~pushforward.policy.FlowPolicy` with ``action_dim=dim``, ``obs_dim=context_dim``."""
    return FlowPolicy(_obs_dim(context_dim, num_tasks, image_shape, "flow-policy"), dim, horizon,
                      num_tasks=num_tasks, **options)


@register("hierarchical-flow-policy", "coarse-to-fine flow policy: sub-sampled chunk, then the full chunk")
def hierarchical_flow_policy(dim, context_dim=0, image_shape=None, *, horizon: int = 16, num_tasks: int = 0,
                             **options) -> HierarchicalFlowPolicy:
    """:class:`~pushforward.policy.HierarchicalFlowPolicy`."""
    return HierarchicalFlowPolicy(_obs_dim(context_dim, num_tasks, image_shape, "hierarchical-flow-policy"), dim,
                                  horizon, num_tasks=num_tasks, **options)


@register("regression-policy", "baseline: mean-squared-error regression of the action chunk")
def regression_policy(dim, context_dim=0, image_shape=None, *, horizon: int = 16, num_tasks: int = 0,
                      **options) -> RegressionPolicy:
    """:class:`~pushforward.policy.RegressionPolicy`."""
    return RegressionPolicy(_obs_dim(context_dim, num_tasks, image_shape, "regression-policy"), dim, horizon,
                            num_tasks=num_tasks, **options)


@register("diffusion-policy", "baseline: DDPM diffusion policy over action chunks (Chi et al. 2023)")
def diffusion_policy(dim, context_dim=0, image_shape=None, *, horizon: int = 16, num_tasks: int = 0,
                     **options) -> DiffusionPolicy:
    """:class:`~pushforward.policy.DiffusionPolicy`."""
    return DiffusionPolicy(_obs_dim(context_dim, num_tasks, image_shape, "diffusion-policy"), dim, horizon,
                           num_tasks=num_tasks, **options)
