"""Environments, scripted experts and data collection for the policy benchmarks and tutorials.

Experiment code, kept apart from the policy core (:mod:`pushforward.policy`):

* :mod:`pushforward.envs.two_route`: :class:`TwoRouteEnv`, a bimodal navigation task (NumPy
  only), its scripted expert :class:`TwoRouteExpert` and :func:`two_route_metrics`.
* :mod:`pushforward.envs.pusht`: PushT (needs ``gym-pusht``: ``pip install 'pushforward[policy]'``;
  imported only on request) with flat state observations, a scripted push planner, its metrics
  and demonstration collection.
* :mod:`pushforward.envs.color_reach`: ColorReach, a multi-task language-conditioned task from
  pixels (the instruction names which of three coloured discs to reach, the image shows where),
  its scripted expert, demonstration collection and evaluation of a ``VLAPolicy``.
* :mod:`pushforward.envs.dagger`: :func:`relabel`, DAgger data collection (Ross et al. 2011).

>>> from pushforward.envs import TwoRouteEnv, TwoRouteExpert, two_route_metrics
>>> from pushforward.policy import evaluate_policy
>>> res = evaluate_policy(TwoRouteEnv, TwoRouteExpert(seed=0), episodes=2, max_steps=80,
...                       metrics=two_route_metrics)
>>> mean = res["mean"]
>>> mean["success"]
1.0
"""

from pushforward.envs.dagger import relabel
from pushforward.envs.two_route import TwoRouteEnv, TwoRouteExpert, two_route_metrics

__all__ = ["TwoRouteEnv", "TwoRouteExpert", "relabel", "two_route_metrics"]
