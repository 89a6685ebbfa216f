"""A bimodal navigation task with a scripted expert (NumPy only, Gymnasium-like API).

:class:`TwoRouteEnv`: a point starts below a round obstacle and must reach a goal above it.
Both ways around are equally good; the expert (:class:`TwoRouteExpert`) picks one at random
per episode. A policy that regresses the mean action averages "left" and "right" into
"straight ahead" and hits the obstacle; a generative policy must pick one route and stick to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TwoRouteEnv:
    """Point navigation around a disc; observation = position ``[2]``, action = displacement ``[2]``.

    Start ``(U(-0.05, 0.05), -1)``, goal ``(0, 1)`` (success within ``goal_radius``), obstacle:
    the disc of radius ``radius`` at the origin (touching it ends the episode as a collision).
    Actions are clipped to length ``max_step``. ``info``: ``success``, ``collision``, ``side``
    (-1 left, +1 right, 0 not yet committed: ``|x| > commit``), ``switches`` (route changes).
    """

    obs_dim, action_dim = 2, 2

    def __init__(self, radius: float = 0.35, max_step: float = 0.08, goal_radius: float = 0.1,
                 commit: float = 0.15, max_steps: int = 80):
        self.radius, self.max_step, self.goal_radius = radius, max_step, goal_radius
        self.commit, self.max_steps = commit, max_steps
        self.goal = np.array([0.0, 1.0])
        self.rng = np.random.default_rng()

    def _info(self) -> dict:
        return {"success": self.success, "collision": self.collision, "side": self.side, "switches": self.switches}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:  # noqa: D102
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.pos = np.array([self.rng.uniform(-0.05, 0.05), -1.0])
        self.t, self.side, self.switches = 0, 0, 0
        self.success = self.collision = False
        self.path = [self.pos.copy()]
        return self.pos.copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:  # noqa: D102
        a = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.isfinite(a).all():
            raise ValueError(f"action must be finite, got {a}")
        n = np.linalg.norm(a)
        if n > self.max_step:
            a = a * (self.max_step / n)
        # Collision is checked along the segment (no tunnelling through the disc).
        p0, p1 = self.pos, self.pos + a
        s = np.clip(-(p0 @ a) / max(a @ a, 1e-12), 0.0, 1.0)
        self.collision = bool(np.linalg.norm(p0 + s * a) < self.radius)
        self.pos = p1
        self.path.append(p1.copy())
        self.t += 1
        if abs(p1[0]) > self.commit and abs(p1[1]) < self.radius + 0.2:
            side = int(np.sign(p1[0]))
            if self.side and side != self.side:
                self.switches += 1
            self.side = side
        self.success = bool(np.linalg.norm(p1 - self.goal) < self.goal_radius) and not self.collision
        terminated = self.success or self.collision
        truncated = self.t >= self.max_steps and not terminated
        return p1.copy(), float(self.success), terminated, truncated, self._info()


class TwoRouteExpert:
    """Scripted expert: heads straight for the obstacle to ``(x_0, -decide)``, then turns left or
    right (probability 1/2 per episode) through ``(s w, -h), (s w, h)`` to the goal, at ``speed``
    with small Gaussian action noise. The choice is made where both routes start from the same
    observation, so no observation feature predicts it."""

    def __init__(self, seed: int = 0, speed: float = 0.06, width: float = 0.55, height: float = 0.25,
                 decide: float = 0.65, noise: float = 0.005):
        self.rng = np.random.default_rng(seed)
        self.speed, self.width, self.height, self.decide, self.noise = speed, width, height, decide, noise
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self.side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.k = 0
        self.x0: float | None = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:  # noqa: D102
        if self.x0 is None:
            self.x0 = float(obs[0])
        wps = [np.array([self.x0, -self.decide]), np.array([self.side * self.width, -self.height]),
               np.array([self.side * self.width, self.height]), np.array([0.0, 1.0])]
        while self.k < 3 and np.linalg.norm(wps[self.k] - obs) < self.speed:
            self.k += 1
        d = wps[self.k] - obs
        n = np.linalg.norm(d)
        step = d if n <= self.speed else d * (self.speed / n)
        return step + self.noise * self.rng.standard_normal(2)


def two_route_metrics(ep: dict) -> dict:
    """Per-episode metrics of a :class:`TwoRouteEnv` rollout."""
    info = ep["infos"][-1]
    return {"success": float(info["success"]), "collision": float(info["collision"]),
            "left": float(info["side"] < 0), "right": float(info["side"] > 0),
            "switches": float(info["switches"]), "steps": float(ep["steps"])}
