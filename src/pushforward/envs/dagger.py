"""DAgger data collection (Ross et al. 2011): roll out a learner, let an expert label the states it visits.

The labelled pairs are stacked like :func:`pushforward.policy.make_chunks` output, so they extend
a demonstration set directly; docs/policy.md shows the loop and its results on PushT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pushforward._validate import check_int_range
from pushforward.policy.execution import ObsHistory, episode_metrics, rollout


class _Labelling:
    """Controller wrapper of :func:`relabel`: records the stacked observation and the labeler's
    chunk every ``every`` steps, then lets the wrapped controller act."""

    def __init__(self, controller: Callable, env: Any, labeler: Callable, every: int, k: int):
        self.controller, self.env, self.labeler, self.every = controller, env, labeler, every
        self.stack = ObsHistory(lambda stacked: stacked, k)  # the same stacking as make_chunks
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def reset(self) -> None:
        self.t = 0
        self.stack.reset()
        if hasattr(self.controller, "reset"):
            self.controller.reset()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        stacked = self.stack(obs)
        if self.t % self.every == 0:
            self.obs.append(stacked)
            self.actions.append(np.asarray(self.labeler(self.env), np.float64))
        self.t += 1
        return self.controller(obs)


def relabel(env: Any, controller: Callable[[np.ndarray], np.ndarray], labeler: Callable[[Any], np.ndarray],
            episodes: int, seed: int = 0, every: int = 1, obs_history: int = 1, max_steps: int = 300,
            metrics: Callable[[dict], dict] | None = None) -> dict:
    """DAgger data (Ross et al. 2011): roll out ``controller`` and label the states it visits.

    Every ``every`` control steps of each seeded episode (seeds ``seed ..``), before the
    controller acts, ``labeler(env)`` gives the expert's chunk ``[H, A]`` from the current state
    (e.g. :meth:`pushforward.envs.pusht.PushTExpert.chunk`; it must leave ``env`` as it was).
    The controller takes one observation ``[O]`` per step (wrap a chunk policy in
    :class:`~pushforward.policy.ChunkExecutor` and :class:`~pushforward.policy.ObsHistory`); the
    recorded observations are stacked as in :func:`~pushforward.policy.make_chunks`, so the
    result extends a demonstration set directly.

    Returns:
        ``{"actions": [N, H, A], "obs": [N, obs_history * O], "episodes": [per-episode metrics]}``
        (metrics from ``metrics(rollout_dict)``, default
        :func:`~pushforward.policy.execution.episode_metrics`).
    """
    check_int_range(every, "every")
    wrapper = _Labelling(controller, env, labeler, every, obs_history)
    metrics = metrics or episode_metrics
    rows = [metrics(rollout(env, wrapper, seed=seed + i, max_steps=max_steps)) for i in range(episodes)]
    if not wrapper.actions:
        raise ValueError("relabel recorded no states (episodes = 0?)")
    return {"actions": np.stack(wrapper.actions), "obs": np.stack(wrapper.obs), "episodes": rows}
