"""Receding-horizon execution of chunk policies, rollouts, evaluation and demonstration chunking.

Environments follow Gymnasium's API: ``reset(seed=) -> (obs, info)`` and
``step(action) -> (obs, reward, terminated, truncated, info)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pushforward._validate import check_int_range


class ChunkExecutor:
    """Execute ``execute`` of the ``H`` actions of each chunk, then re-plan (receding horizon).

    Chunking with a horizon (Zhao et al. 2023, ACT; Chi et al. 2023; pi0 executes 50 of 50, or
    fewer with re-planning). With ``inpaint > 0`` every new chunk starts with the next
    ``inpaint`` still-planned actions of the previous one (real-time chunking by inpainting,
    Black et al. 2025), which keeps chunk boundaries smooth and the chosen mode consistent.

    Call it with one observation ``[O]`` (or a batch ``[B, O]`` of parallel environments) per
    control step; it returns ``[A]`` (or ``[B, A]``) in raw units. ``reset()`` between episodes.
    """

    def __init__(self, policy: Any, execute: int | None = None, inpaint: int = 0, task: Any = None,
                 generator: torch.Generator | None = None, **act_kwargs: Any):
        h = policy.horizon
        execute = h if execute is None else execute
        check_int_range(execute, "execute", 1, h, high_text=f"horizon={h}")
        check_int_range(inpaint, "inpaint", 0, h - execute, high_text=f"horizon - execute = {h - execute}")
        self.policy, self.execute, self.inpaint, self.task = policy, execute, inpaint, task
        self.generator, self.act_kwargs = generator, act_kwargs
        self.plan_times: list[float] = []
        self.reset()

    def reset(self) -> None:
        """Forget the current plan (start of an episode)."""
        self.chunk: np.ndarray | None = None
        self.i = 0

    def __call__(self, obs: Any) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        if self.chunk is None or self.i >= self.execute:
            prefix = None
            if self.inpaint and self.chunk is not None:
                prefix = self.chunk[:, self.i:self.i + self.inpaint]
            t0 = time.perf_counter()
            self.chunk = self.policy.act(obs[None] if single else obs, self.task, generator=self.generator,
                                         prefix=prefix, **self.act_kwargs)
            self.plan_times.append(time.perf_counter() - t0)
            self.i = 0
        a = self.chunk[:, self.i]
        self.i += 1
        return a[0] if single else a


def rollout(env: Any, controller: Callable[[np.ndarray], np.ndarray], seed: int | None = None,
            max_steps: int = 300, render: bool = False) -> dict:
    """Run one episode; returns ``{"obs" [T+1, O], "actions" [T, A], "rewards" [T], "infos",
    "frames" (if render), "terminated", "steps"}``. ``controller`` may have a ``reset()``.

    A non-finite observation from the environment ends the episode (``"nonfinite_obs": True``,
    the step is dropped) rather than reaching the controller.
    """
    if hasattr(controller, "reset"):
        controller.reset()
    obs, info = env.reset(seed=seed)
    out: dict[str, Any] = {"obs": [obs], "actions": [], "rewards": [], "infos": [info], "frames": []}
    if render:
        out["frames"].append(env.render())
    terminated = truncated = False
    for _ in range(max_steps):
        a = controller(obs)
        obs, r, terminated, truncated, info = env.step(a)
        if not np.isfinite(np.asarray(obs, dtype=np.float64)).all():
            # The simulator blew up (e.g. a body squeezed into a wall): the episode ends as a
            # failure here instead of feeding NaN to the controller.
            out["nonfinite_obs"] = True
            break
        out["obs"].append(obs)
        out["actions"].append(np.asarray(a))
        out["rewards"].append(float(r))
        out["infos"].append(info)
        if render:
            out["frames"].append(env.render())
        if terminated or truncated:
            break
    out["obs"], out["actions"] = np.asarray(out["obs"]), np.asarray(out["actions"])
    out["rewards"] = np.asarray(out["rewards"])
    out["terminated"], out["steps"] = bool(terminated), len(out["actions"])
    return out


def episode_metrics(ep: dict) -> dict:
    """Default per-episode metrics of a :func:`rollout` dict: ``{"return", "success"}``
    (success = the episode terminated)."""
    return {"return": float(ep["rewards"].sum()), "success": float(ep["terminated"])}


def evaluate_policy(make_env: Callable[[], Any], controller: Callable[[np.ndarray], np.ndarray],
                    episodes: int = 50, seed: int = 0, max_steps: int = 300,
                    metrics: Callable[[dict], dict] | None = None) -> dict:
    """Roll out ``episodes`` seeded episodes (seeds ``seed .. seed + episodes - 1``).

    (Named apart from :func:`pushforward.evaluate`, which scores a density model on data.)

    Returns ``{"episodes": [per-episode metric dicts], "mean": {metric: mean}}``; per-episode
    metrics come from ``metrics(rollout_dict)`` (default :func:`episode_metrics`).
    """
    env = make_env()
    metrics = metrics or episode_metrics
    rows = [metrics(rollout(env, controller, seed=seed + i, max_steps=max_steps)) for i in range(episodes)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    return {"episodes": rows, "mean": mean}


def make_chunks(episodes: Sequence[tuple[np.ndarray, np.ndarray]], horizon: int,
                obs_history: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Demonstrations -> training pairs ``(actions [N, H, A], obs [N, obs_history * O])``.

    Each episode is ``(obs [T, O], actions [T, A])`` (``obs[t]`` seen before ``actions[t]``).
    Every step t gives the chunk ``actions[t : t + H]``, padded past the end with the last
    action (Diffusion Policy's convention: the robot holds still), and the observations
    ``obs[t - obs_history + 1 .. t]`` (padded at the start with the first one), concatenated.
    """
    acts, obss = [], []
    for obs, act in episodes:
        obs, act = np.asarray(obs, np.float64), np.asarray(act, np.float64)
        t_len = len(act)
        if t_len == 0:
            continue
        idx = np.clip(np.arange(t_len)[:, None] + np.arange(horizon)[None], 0, t_len - 1)
        acts.append(act[idx])
        hist = np.clip(np.arange(t_len)[:, None] + np.arange(-obs_history + 1, 1)[None], 0, None)
        obss.append(obs[:t_len][hist].reshape(t_len, -1))
    return np.concatenate(acts), np.concatenate(obss)


class ObsHistory:
    """Wrap a controller taking stacked observations ``[k * O]`` so it can be fed one ``[O]``
    per step (the first observation of an episode is repeated, as in :func:`make_chunks`)."""

    def __init__(self, controller: Callable[[np.ndarray], np.ndarray], k: int):
        self.controller, self.k = controller, k
        self.buf: list[np.ndarray] = []

    def reset(self) -> None:  # noqa: D102
        self.buf = []
        if hasattr(self.controller, "reset"):
            self.controller.reset()

    def __call__(self, obs: np.ndarray) -> np.ndarray:  # noqa: D102
        obs = np.asarray(obs, np.float64)
        self.buf = self.buf[1:] + [obs] if self.buf else [obs] * self.k
        return self.controller(np.concatenate(self.buf, -1))
