"""Flow-matching action policies, pi0-style (Black et al. 2024), with baselines and benchmarks.

>>> import pushforward as pf
>>> policy = pf.policy.FlowPolicy(obs_dim=18, action_dim=2, horizon=16)     # doctest: +SKIP
>>> pf.fit(policy, actions, context=obs, max_time=300)                      # doctest: +SKIP
>>> policy.act(obs[:1], steps=10).shape                                     # doctest: +SKIP
torch.Size([1, 16, 2])

Time convention: t = 0 is noise, t = 1 is the action chunk (pi0's code runs t = 1 -> 0).
Actions and observations are normalised per dimension inside the policy: ``act`` takes and
returns raw units. :mod:`pushforward.policy.pusht` (needs ``gym-pusht``) holds the PushT
wrappers and scripted expert.
"""

from pushforward.policy.base import ChunkPolicyMixin, column_stats, pooled_stats
from pushforward.policy.baselines import DiffusionPolicy, RegressionPolicy, cosine_alpha_bar
from pushforward.policy.envs import TwoRouteEnv, TwoRouteExpert, two_route_metrics
from pushforward.policy.execution import ChunkExecutor, ObsHistory, evaluate, make_chunks, relabel, rollout
from pushforward.policy.flow import FlowPolicy, HierarchicalFlowPolicy
from pushforward.policy.nets import ActionMLP, ActionTransformer, ObsEncoder

__all__ = [
    "ActionMLP",
    "ActionTransformer",
    "ChunkExecutor",
    "ChunkPolicyMixin",
    "DiffusionPolicy",
    "FlowPolicy",
    "HierarchicalFlowPolicy",
    "ObsEncoder",
    "ObsHistory",
    "RegressionPolicy",
    "TwoRouteEnv",
    "TwoRouteExpert",
    "column_stats",
    "cosine_alpha_bar",
    "evaluate",
    "make_chunks",
    "pooled_stats",
    "relabel",
    "rollout",
    "two_route_metrics",
]
