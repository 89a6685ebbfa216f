"""PushT (Florence et al. 2021; Chi et al. 2023) with state observations, and a scripted expert.

Needs ``gym-pusht`` (``pip install 'pushforward[policy]'``). Observation used here:
``[agent_x, agent_y, 16 keypoint coordinates of the T]`` (``obs_type =
"environment_state_agent_pos"`` flattened; 18 numbers, pixels of the 512 x 512 arena); action:
the target position of the agent ``[2]``. Metrics as Diffusion Policy / LeRobot report them:
per-episode maximum coverage of the goal, success = coverage >= 0.95.

The expert (:class:`PushTExpert`) is a push planner on the environment's own physics: at each
decision it simulates candidate pushes (contact point on the T's outline x push length) from
a saved copy of the state, picks the one that most reduces the distance between the T's
keypoints and the goal's (minus a small travel cost), walks around the block to the
pre-contact point, and pushes. Its success rate is measured, not assumed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import gym_pusht  # noqa: F401  (registers the environment)
    import gymnasium as gym
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("pushforward.policy.pusht needs gym-pusht: pip install 'pushforward[policy]'") from e

OBS_DIM, ACTION_DIM = 18, 2
SUCCESS_COVERAGE = 0.95

# Body-frame points on the T's outline and their outward normals (bar 120 x 30, stem 30 x 90).
_CONTACTS = (
    [((x, 0.0), (0.0, -1.0)) for x in (-50.0, -25.0, 0.0, 25.0, 50.0)]
    + [((-60.0, 15.0), (-1.0, 0.0)), ((60.0, 15.0), (1.0, 0.0))]
    + [((-45.0, 30.0), (0.0, 1.0)), ((45.0, 30.0), (0.0, 1.0))]
    + [((-15.0, y), (-1.0, 0.0)) for y in (50.0, 80.0, 110.0)]
    + [((15.0, y), (1.0, 0.0)) for y in (50.0, 80.0, 110.0)]
    + [((0.0, 120.0), (0.0, 1.0))]
)
_KEYPOINTS = np.array([(-60, 30), (60, 30), (60, 0), (-60, 0), (-15, 30), (15, 30), (15, 120), (-15, 120)], float)


class FlatObs:
    """Wrap a PushT env so observations are flat ``[18]`` arrays (agent, then keypoints) and
    actions are clipped to the action space (as every method is evaluated the same way)."""

    def __init__(self, env: Any):
        self.env = env
        self.unwrapped = env.unwrapped

    @staticmethod
    def flatten(obs: dict) -> np.ndarray:  # noqa: D102
        return np.concatenate([obs["agent_pos"], obs["environment_state"]]).astype(np.float64)

    def reset(self, seed: int | None = None, options: Any = None):  # noqa: D102
        obs, info = self.env.reset(seed=seed, options=options)
        return self.flatten(obs), info

    def step(self, action: Any):
        """Step with the target clipped to the arena ``[0, 512]^2`` (the action space)."""
        obs, r, term, trunc, info = self.env.step(np.clip(np.asarray(action, dtype=np.float64), 0.0, 512.0))
        return self.flatten(obs), r, term, trunc, info

    def render(self):  # noqa: D102
        return self.env.render()

    def close(self):  # noqa: D102
        self.env.close()


def make_env(**kwargs: Any) -> FlatObs:
    """``gym_pusht/PushT-v0`` (300 steps) with flat 18-d state observations."""
    kwargs.setdefault("obs_type", "environment_state_agent_pos")
    return FlatObs(gym.make("gym_pusht/PushT-v0", **kwargs))


def pusht_metrics(ep: dict) -> dict:
    """Per-episode max coverage and success (coverage >= 0.95), as Diffusion Policy reports."""
    cov = [info.get("coverage", 0.0) for info in ep["infos"][1:]] or [0.0]
    m = float(max(cov))
    return {"max_coverage": m, "success": float(m >= SUCCESS_COVERAGE), "steps": float(ep["steps"])}


def _rot(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


class PushTExpert:
    """Scripted push planner for PushT (see the module docstring); a controller ``obs -> action``.

    Args:
        env: the :class:`FlatObs` environment it acts in (it reads and simulates the physics).
        angles: push directions relative to the inward normal (degrees).
        push_steps, push_speed: longest push (control steps) and its speed (pixels per step);
            every prefix of it is a candidate push length.
        travel_cost: cost per pixel of walking to a pre-contact point (keypoint-distance units).
        speed: maximum move of the target per control step when walking (pixels).
    """

    def __init__(self, env: FlatObs, angles: tuple[float, ...] = (-25.0, 0.0, 25.0), push_steps: int = 10,
                 push_speed: float = 7.0, travel_cost: float = 0.03, speed: float = 40.0, margin: float = 6.0):
        self.env, self.u = env, env.unwrapped
        self.angles, self.push_steps, self.push_speed = angles, push_steps, push_speed
        self.travel_cost, self.speed, self.margin = travel_cost, speed, margin
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self.plan: list[np.ndarray] = []
        self.pre: np.ndarray | None = None
        self.walk = 0

    # ----------------------------------------------------------------- physics helpers
    def _save(self) -> tuple:
        a, b = self.u.agent, self.u.block
        return (a.position, a.velocity, b.position, b.angle, b.velocity, b.angular_velocity)

    def _restore(self, s: tuple) -> None:
        a, b = self.u.agent, self.u.block
        # Angle before position: pymunk rotates about the centre of gravity, which moves the origin.
        b.angle = s[3]
        a.position, a.velocity, b.position, b.velocity, b.angular_velocity = s[0], s[1], s[2], s[4], s[5]
        self.u.space.reindex_shapes_for_body(b)
        self.u.space.reindex_shapes_for_body(a)

    def _sim_step(self, target: np.ndarray) -> None:
        # The environment's PD controller and physics step (gym_pusht PushTEnv.step), in floats.
        u, agent = self.u, self.u.agent
        tx, ty = float(target[0]), float(target[1])
        kp, kv, dt = u.k_p, u.k_v, u.dt
        for _ in range(int(1 / (dt * u.control_hz))):
            (px, py), (vx, vy) = agent.position, agent.velocity
            agent.velocity = (vx + (kp * (tx - px) - kv * vx) * dt, vy + (kp * (ty - py) - kv * vy) * dt)
            u.space.step(dt)

    def _cost(self) -> float:
        b, g = self.u.block, self.u.goal_pose
        kp = _KEYPOINTS @ _rot(b.angle).T + np.asarray(b.position)
        kg = _KEYPOINTS @ _rot(g[2]).T + g[:2]
        return float(np.linalg.norm(kp - kg, axis=1).mean())

    def _world(self, p: tuple, n: tuple) -> tuple[np.ndarray, np.ndarray]:
        r = _rot(self.u.block.angle)
        return r @ np.asarray(p) + np.asarray(self.u.block.position), r @ np.asarray(n)

    # ----------------------------------------------------------------- planning
    def _choose(self) -> None:
        """Simulate the longest push from every contact and direction once, scoring every prefix
        of it (push lengths in steps of ``push_speed``), and keep the best (contact, length)."""
        saved = self._save()
        agent = np.asarray(self.u.agent.position)
        best, best_cost = None, math.inf
        for p, n in _CONTACTS:
            c, nw = self._world(p, n)
            pre = c + nw * (15.0 + self.margin)
            if not ((25 < pre) & (pre < 487)).all():
                continue  # the agent cannot stand there (walls)
            travel = self.travel_cost * float(np.linalg.norm(pre - agent))
            for ang in self.angles:
                d = -(_rot(math.radians(ang)) @ nw)
                self.u.agent.position, self.u.agent.velocity = tuple(pre), (0.0, 0.0)
                targets = []
                for i in range(self.push_steps):
                    targets.append(pre + d * self.push_speed * (i + 1))
                    self._sim_step(targets[-1])
                    cost = self._cost() + travel
                    if cost < best_cost:
                        best, best_cost = (pre, list(targets)), cost
                self._restore(saved)
        self.pre, self.plan, self.walk = best[0], list(best[1]), 0

    def _clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the agent can move straight from a to b without touching the T."""
        import shapely.geometry as sg
        from gym_pusht.envs.pusht import pymunk_to_shapely

        geom = pymunk_to_shapely(self.u.block, self.u.block.shapes)
        return geom.distance(sg.LineString([tuple(a), tuple(b)])) > 15.0 + 2.0

    def _walk_target(self, agent: np.ndarray) -> np.ndarray:
        d = self.pre - agent
        dist = float(np.linalg.norm(d))
        if self._clear(agent, self.pre):
            return self.pre if dist <= self.speed else agent + d * (self.speed / dist)
        # Go around the block on a circle of safe radius, toward the pre-contact point's bearing.
        com = np.asarray(self.u.block.local_to_world(self.u.block.center_of_gravity))
        radius = 110.0
        va, vt = agent - com, self.pre - com
        pa, pt = math.atan2(va[1], va[0]), math.atan2(vt[1], vt[0])
        dphi = (pt - pa + math.pi) % (2 * math.pi) - math.pi
        phi = pa + math.copysign(min(abs(dphi), self.speed / radius), dphi)
        target = com + radius * np.array([math.cos(phi), math.sin(phi)])
        return np.clip(target, 25.0, 487.0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:  # noqa: D102
        agent = np.asarray(obs[:2], dtype=np.float64)
        if self.pre is None or (not self.plan) or self.walk > 40:
            self._choose()
        if self.walk >= 0 and np.linalg.norm(agent - self.pre) > 4.0 and self.walk <= 40:
            self.walk += 1
            return self._walk_target(agent)
        self.walk = -1  # arrived: push
        target = self.plan.pop(0)
        if not self.plan:
            self.pre = None
        return target


def collect_demos(n_success: int, seed: int = 0, max_episodes: int | None = None, max_steps: int = 300,
                  verbose: bool = False, on_demo: Any = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Run the expert on seeded episodes until ``n_success`` successes (or ``max_episodes``).

    Returns ``(demos, stats)``: the successful episodes as ``(obs [T, 18], actions [T, 2])``
    and the expert's own success rate / mean max coverage over every episode tried.
    """
    from pushforward.policy.execution import rollout

    env = make_env()
    expert = PushTExpert(env)
    demos, rows, i = [], [], 0
    max_episodes = max_episodes or 3 * n_success
    while len(demos) < n_success and i < max_episodes:
        ep = rollout(env, expert, seed=seed + i, max_steps=max_steps)
        m = pusht_metrics(ep)
        rows.append(m)
        if m["success"]:
            demos.append((ep["obs"][:-1], ep["actions"]))
            if on_demo is not None:
                on_demo(demos)  # e.g. save progress
        if verbose:
            print(f"episode {i}: max coverage {m['max_coverage']:.3f} steps {ep['steps']} "
                  f"({len(demos)} demos)", flush=True)
        i += 1
    stats = {"episodes": len(rows), "success_rate": float(np.mean([r["success"] for r in rows])),
             "mean_max_coverage": float(np.mean([r["max_coverage"] for r in rows])), "demos": len(demos)}
    return demos, stats
