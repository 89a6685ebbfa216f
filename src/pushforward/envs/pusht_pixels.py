"""PushT from pixels: gym-pusht's rendered image plus the agent position, as Diffusion Policy's
image task (Chi et al. 2023: 96 x 96 RGB and the agent position).

Observation (:class:`PixelObs`): one flat float vector ``[agent_x, agent_y, C H W pixel values
0..255]``, the first columns of :class:`~pushforward.policy.VLAPolicy`'s packed context, so the
receding-horizon :class:`~pushforward.policy.ChunkExecutor` and ``evaluate_policy`` run a VLA
unchanged (:class:`PixelPolicy` unpacks it). The image is the environment's own observation
rendering (``PushTEnv._render``: the 512 x 512 arena drawn by pygame, resized by OpenCV to
``size``), used both here and for the demonstrations: :func:`render_states` sets the agent and
the block to a recorded state and calls the same function, so a policy is trained on exactly the
images it sees when evaluated (tests/test_pusht.py checks pixel equality).

Demonstrations: the scripted expert's episodes (:func:`~pushforward.envs.pusht.collect_demos`,
state observations ``[agent (2), keypoints (16)]``) rendered to images by :func:`pixel_demos`;
the block pose is recovered exactly from the keypoints (:func:`block_pose`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pushforward._validate import check_int_range
from pushforward.envs.pusht import _KEYPOINTS, FlatObs, gym, pusht_metrics
from pushforward.policy.execution import ChunkExecutor, evaluate_policy, make_chunks

STATE_DIM = 2  # the agent position
IMAGE_SIZE = 96  # Diffusion Policy's


class PixelObs(FlatObs):
    """A PushT env whose observations are ``[agent (2), pixels (3 H W)]`` float64 rows (see the
    module docstring); actions are clipped to the arena as :class:`FlatObs` does."""

    @staticmethod
    def flatten(obs: dict) -> np.ndarray:  # noqa: D102
        return np.concatenate([obs["agent_pos"], obs["pixels"].transpose(2, 0, 1).ravel()]).astype(np.float64)


def make_pixel_env(size: int = IMAGE_SIZE, **kwargs: Any) -> PixelObs:
    """``gym_pusht/PushT-v0`` (300 steps) observed as a ``size x size`` image plus the agent position."""
    check_int_range(size, "size", 8)
    return PixelObs(gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos", observation_width=size,
                             observation_height=size, **kwargs))


def block_pose(keypoints: np.ndarray) -> np.ndarray:
    """The block pose ``[N, 3]`` (x, y, angle) whose 8 keypoints (gym-pusht's ``get_keypoints``)
    are ``keypoints [N, 16]``: the least-squares rigid fit (exact for exact keypoints)."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 8, 2)
    local = _KEYPOINTS - _KEYPOINTS.mean(0)
    world = kp - kp.mean(1, keepdims=True)
    # Rotation angle of the 2-D Procrustes fit: atan2(sum cross, sum dot).
    cross = (local[None, :, 0] * world[..., 1] - local[None, :, 1] * world[..., 0]).sum(1)
    dot = (local[None] * world).sum((1, 2))
    angle = np.arctan2(cross, dot)
    c, s = np.cos(angle), np.sin(angle)
    m = _KEYPOINTS.mean(0)
    origin = kp.mean(1) - np.stack([c * m[0] - s * m[1], s * m[0] + c * m[1]], -1)
    return np.concatenate([origin, angle[:, None]], 1)


def _set_pose(u: Any, agent: np.ndarray, pose: np.ndarray) -> None:
    # Angle before position: pymunk rotates about the centre of gravity, which moves the origin;
    # the reindex updates the shapes' world vertices that the renderer draws.
    u.agent.position = (float(agent[0]), float(agent[1]))
    u.block.angle = float(pose[2])
    u.block.position = (float(pose[0]), float(pose[1]))
    u.space.reindex_shapes_for_body(u.block)
    u.space.reindex_shapes_for_body(u.agent)


def render_states(obs: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Images ``[N, 3, size, size]`` uint8 of PushT states ``obs [N, 18]`` (agent, keypoints), drawn
    by the environment's observation renderer, exactly as :class:`PixelObs` sees them."""
    obs = np.asarray(obs, np.float64)
    if obs.ndim != 2 or obs.shape[1] != 18:
        raise ValueError(f"obs must be [N, 18] (agent position, 16 keypoint coordinates), got {list(obs.shape)}")
    env = make_pixel_env(size)
    env.reset(seed=0)
    u = env.unwrapped
    poses = block_pose(obs[:, 2:])
    out = np.empty((len(obs), 3, size, size), np.uint8)
    for i, (o, p) in enumerate(zip(obs, poses)):
        _set_pose(u, o[:2], p)
        out[i] = u._render().transpose(2, 0, 1)
    env.close()
    return out


def pixel_demos(demos: list[tuple[np.ndarray, np.ndarray]], horizon: int = 16, size: int = IMAGE_SIZE,
                instruction: str = "", max_text: int = 48):
    """Expert episodes ``[(obs [T, 18], actions [T, 2]), ...]`` -> ``pf.policy.Demonstrations``.

    Every step is one sample: the chunk of the next ``horizon`` actions (:func:`make_chunks`,
    padded with the last action), the agent position ``[2]`` as the state, the rendered image
    ``[3, size, size]`` uint8 and ``instruction`` (one fixed string; ``""`` by default).
    """
    from pushforward.policy.demos import Demonstrations

    actions, obs = make_chunks(demos, horizon)
    episode = np.repeat(np.arange(len(demos)), [len(a) for _, a in demos])
    return Demonstrations(actions=actions.astype(np.float32), state=obs[:, :STATE_DIM].astype(np.float32),
                          images=render_states(obs, size), instructions=[instruction] * len(actions),
                          max_text=max_text, episode_index=episode)


class PixelPolicy:
    """A :class:`~pushforward.policy.VLAPolicy` as a policy of :class:`PixelObs` rows
    ``[B, 2 + 3 H W]``, for :class:`~pushforward.policy.ChunkExecutor` (``act(obs, task, ...)``)."""

    def __init__(self, policy: Any, instruction: str = ""):
        self.policy, self.instruction = policy, instruction
        self.horizon = policy.horizon

    def act(self, obs: np.ndarray, task: Any = None, **kwargs: Any) -> np.ndarray:  # noqa: D102
        s = self.policy.state_dim
        # The pixel columns hold integers 0..255 exactly, so the uint8 cast is lossless.
        images = torch.from_numpy(obs[:, s:].reshape(-1, *self.policy.image_shape).astype(np.uint8))
        return self.policy.act(images=images, state=np.ascontiguousarray(obs[:, :s]), instruction=self.instruction,
                               **kwargs)


def evaluate_pixels(policy: Any, episodes: int = 50, seed: int = 0, execute: int = 8, instruction: str = "",
                    max_steps: int = 300, **act_kwargs: Any) -> dict:
    """A VLA policy on seeded pixel PushT episodes ``seed .. seed + episodes - 1``.

    Receding horizon: ``execute`` of each chunk's actions, then re-plan; the initial noise of
    every chunk comes from one generator seeded 0. Returns ``{"mean_max_coverage",
    "success_rate", "episodes": [per-episode metrics], "act_ms_median", "eval_s"}`` (success:
    max coverage >= 0.95, as :func:`~pushforward.envs.pusht.pusht_metrics`).
    """
    size = policy.image_shape[1]
    ex = ChunkExecutor(PixelPolicy(policy, instruction), execute=execute, generator=torch.Generator().manual_seed(0),
                       **act_kwargs)
    t = time.time()
    res = evaluate_policy(lambda: make_pixel_env(size), ex, episodes=episodes, seed=seed, max_steps=max_steps,
                          metrics=pusht_metrics)
    return {"mean_max_coverage": res["mean"]["max_coverage"], "success_rate": res["mean"]["success"],
            "episodes": res["episodes"], "act_ms_median": 1e3 * float(np.median(ex.plan_times)),
            "eval_s": round(time.time() - t, 1)}
