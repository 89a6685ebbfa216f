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
pre-contact point, and pushes. Its measured success rate and the policies trained on its
demonstrations are in docs/policy.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pushforward._validate import check_int_range
from pushforward.policy.execution import rollout

try:
    import gym_pusht  # noqa: F401  (registers the environment)
    import gymnasium as gym
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("pushforward.envs.pusht needs gym-pusht: pip install 'pushforward[policy]'") from e

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


_T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)


def _poses_to_world(points: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Body-frame ``points [P, 2]`` at ``poses [N, 3]`` (x, y, angle) -> world ``[N, P, 2]``."""
    c, s = np.cos(poses[:, 2]), np.sin(poses[:, 2])
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # [N, 2, 2]
    return np.einsum("nij,pj->npi", rot, points) + poses[:, None, :2]


def keypoint_distance(poses: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Mean distance (pixels) between the T's 8 keypoints at ``poses [N, 3]`` and at ``goal [3]``."""
    kp = _poses_to_world(_KEYPOINTS, poses)
    kg = _poses_to_world(_KEYPOINTS, np.asarray(goal, float)[None])
    return np.linalg.norm(kp - kg, axis=-1).mean(-1)


def coverage(poses: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Fraction of the goal T covered by the block at ``poses [N, 3]`` (the environment's
    reward, computed for many poses at once with shapely's vectorised operations)."""
    import shapely

    blocks = shapely.polygons(_poses_to_world(_T_OUTLINE, poses))
    g = shapely.polygons(_poses_to_world(_T_OUTLINE, np.asarray(goal, float)[None]))[0]
    return shapely.area(shapely.intersection(blocks, g)) / shapely.area(g)


class PushTExpert:
    """Scripted push planner for PushT (see the module docstring); a controller ``obs -> action``.

    Every ``replan`` control steps it plans afresh from the current state (it keeps no other
    memory, so what it does is a function of what a policy observes): it simulates candidate
    pushes on a saved copy of the physics, scores every prefix of each, and follows the best
    (walking around the block to the pre-contact point first if needed). Candidates are pushes
    from points on the T's outline (``angles`` off the inward normal) and, when the agent already
    touches the block, pushes from where it stands (towards the block's centre and along its
    current motion). Far from the goal a push is scored by the mean keypoint distance to the goal;
    near it (``fine_below`` pixels) by the coverage itself, with slower ``fine_speed`` pushes added.

    Args:
        env: the :class:`FlatObs` environment it acts in (it reads and simulates the physics).
        replan: control steps between plans (the policies are evaluated executing 8 of 16).
        angles: push directions relative to the inward normal (degrees).
        push_steps, push_speed, fine_speed: longest push (control steps) and its speeds (pixels
            per step); every prefix of a push is a candidate length.
        travel_cost, walk_penalty: cost per pixel walked and per control step spent walking
            (keypoint-distance units).
        speed: maximum move of the target per control step when walking (pixels).
    """

    def __init__(self, env: FlatObs, replan: int = 8, angles: tuple[float, ...] = (-25.0, 0.0, 25.0),
                 push_steps: int = 10, push_speed: float = 7.0, fine_speed: float = 2.5, fine_below: float = 15.0,
                 travel_cost: float = 0.03, walk_penalty: float = 1.0, speed: float = 40.0, margin: float = 6.0):
        self.env, self.u = env, env.unwrapped
        self.replan, self.angles, self.push_steps = replan, angles, push_steps
        self.push_speed, self.fine_speed, self.fine_below = push_speed, fine_speed, fine_below
        self.travel_cost, self.walk_penalty, self.speed, self.margin = travel_cost, walk_penalty, speed, margin
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self.plan: list[np.ndarray] = []
        self.pre: np.ndarray | None = None
        self.walking, self.t = False, 0

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

    def _pose(self) -> tuple[float, float, float]:
        b = self.u.block
        return (b.position[0], b.position[1], b.angle)

    def _cost(self, poses: np.ndarray) -> np.ndarray:
        k = keypoint_distance(poses, self.u.goal_pose)
        if self.fine:
            return 100.0 * (1.0 - coverage(poses, self.u.goal_pose)) + 0.2 * k
        return k

    def _geom(self):
        from gym_pusht.envs.pusht import pymunk_to_shapely

        return pymunk_to_shapely(self.u.block, self.u.block.shapes)

    # ----------------------------------------------------------------- planning
    def _choose(self) -> None:
        """Simulate every candidate push once, score each prefix, keep the best (start, targets)."""
        import shapely.geometry as sg

        saved = self._save()
        agent = np.asarray(self.u.agent.position)
        self.fine = bool(keypoint_distance(np.array([self._pose()]), self.u.goal_pose)[0] < self.fine_below)
        speeds = (self.push_speed, self.fine_speed) if self.fine else (self.push_speed,)
        starts, dirs, extra, teleport = [], [], [], []
        rot, origin = _rot(self.u.block.angle), np.asarray(self.u.block.position)
        for p, n in _CONTACTS:
            nw = rot @ np.asarray(n)
            pre = rot @ np.asarray(p) + origin + nw * (15.0 + self.margin)
            if not ((25 < pre) & (pre < 487)).all():
                continue  # the agent cannot stand there (walls)
            dist = float(np.linalg.norm(pre - agent))
            walk = self.travel_cost * dist + (self.walk_penalty * (2.0 + dist / self.speed) if dist > 4.0 else 0.0)
            for ang in self.angles:
                starts.append(pre), dirs.append(-(_rot(math.radians(ang)) @ nw)), extra.append(walk), teleport.append(True)
        # Touching: keep pushing from here. Also when no pre-contact point fits in the arena (the
        # block jammed in a corner, as a poor learner leaves it): pushing from here is all there is.
        if not starts or self._geom().distance(sg.Point(*agent)) < 15.0 + 12.0:
            com = np.asarray(self.u.block.local_to_world(self.u.block.center_of_gravity))
            to = (com - agent) / max(float(np.linalg.norm(com - agent)), 1e-6)
            here = [_rot(math.radians(a)) @ to for a in (-40.0, -20.0, 0.0, 20.0, 40.0)]
            vel = np.asarray(self.u.agent.velocity)
            if np.linalg.norm(vel) > 5.0:
                here += [_rot(math.radians(a)) @ (vel / np.linalg.norm(vel)) for a in (-15.0, 0.0, 15.0)]
            for d in here:
                starts.append(agent), dirs.append(d), extra.append(0.0), teleport.append(False)
        poses, index = [], []
        for i, (s, d) in enumerate(zip(starts, dirs)):
            for v in speeds:
                if teleport[i]:
                    self.u.agent.position, self.u.agent.velocity = tuple(s), (0.0, 0.0)
                for k in range(self.push_steps):
                    self._sim_step(s + d * v * (k + 1))
                    poses.append(self._pose())
                    index.append((i, v, k + 1))
                self._restore(saved)
        cost = self._cost(np.asarray(poses)) + np.asarray([extra[i] for i, _, _ in index])
        i, v, k = index[int(np.argmin(cost))]
        self.pre = starts[i]
        self.plan = [starts[i] + dirs[i] * v * (j + 1) for j in range(k)]

    def _clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the agent can move straight from a to b without touching the T."""
        import shapely.geometry as sg

        return self._geom().distance(sg.LineString([tuple(a), tuple(b)])) > 15.0 + 2.0

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

    def chunk(self, horizon: int) -> np.ndarray:
        """The next ``horizon`` actions ``[H, 2]`` the expert would take from the current state.

        Planned afresh (as at the start of an episode) and simulated on the environment's own
        physics, which is then restored, as is the expert's own plan: the environment is left
        exactly as it was. This labels states that a learner visits (DAgger, Ross et al. 2011).
        """
        check_int_range(horizon, "horizon")
        saved, memory = self._save(), (list(self.plan), self.pre, self.walking, self.t)
        self.reset()
        actions = []
        try:
            for _ in range(horizon):
                a = np.clip(self(np.asarray(self.u.agent.position, dtype=np.float64)), 0.0, 512.0)
                actions.append(a)
                self._sim_step(a)
        finally:
            self._restore(saved)
            self.plan, self.pre, self.walking, self.t = memory
        return np.asarray(actions)

    def __call__(self, obs: np.ndarray) -> np.ndarray:  # noqa: D102
        agent = np.asarray(obs[:2], dtype=np.float64)
        if self.t % self.replan == 0 or not self.plan:
            self._choose()
            self.walking = bool(np.linalg.norm(agent - self.pre) > 4.0)
        self.t += 1
        if self.walking and np.linalg.norm(agent - self.pre) > 4.0:
            return self._walk_target(agent)
        self.walking = False
        return self.plan.pop(0) if len(self.plan) > 1 else self.plan[-1]


def _collect(n_success: int, seed: int, max_episodes: int, max_steps: int, verbose: bool, on_demo: Any = None,
             tag: str = "") -> tuple[list, list]:
    env = make_env()
    expert = PushTExpert(env)
    demos, rows, i = [], [], 0
    while len(demos) < n_success and i < max_episodes:
        ep = rollout(env, expert, seed=seed + i, max_steps=max_steps)
        m = pusht_metrics(ep)
        rows.append(m)
        if m["success"]:
            demos.append((ep["obs"][:-1], ep["actions"]))
            if on_demo is not None:
                on_demo(demos)  # e.g. save progress
        if verbose:
            print(f"{tag}episode {seed + i}: max coverage {m['max_coverage']:.3f} steps {ep['steps']} "
                  f"({len(demos)} demos)", flush=True)
        i += 1
    return demos, rows


def _collect_star(args: tuple) -> tuple[list, list]:
    return _collect(*args)


def collect_demos(n_success: int, seed: int = 0, max_episodes: int | None = None, max_steps: int = 300,
                  verbose: bool = False, on_demo: Any = None,
                  workers: int = 1) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Run the expert on seeded episodes until ``n_success`` successes (or ``max_episodes``).

    With ``workers > 1`` the work is split between processes: worker ``w`` runs seeds
    ``seed + w * 100_000 + i`` until it has its share of the successes (``on_demo`` is then not
    called). Returns ``(demos, stats)``: the successful episodes as ``(obs [T, 18], actions [T, 2])``
    and the expert's own success rate / mean max coverage over every episode tried.
    """
    max_episodes = max_episodes or 3 * n_success
    if workers <= 1:
        demos, rows = _collect(n_success, seed, max_episodes, max_steps, verbose, on_demo)
    else:
        import multiprocessing as mp

        share = [n_success // workers + (w < n_success % workers) for w in range(workers)]
        jobs = [(share[w], seed + w * 100_000, -(-max_episodes // workers), max_steps, verbose, None, f"[{w}] ")
                for w in range(workers)]
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_collect_star, jobs)
        demos = [d for part, _ in parts for d in part]
        rows = [r for _, part in parts for r in part]
    stats = {"episodes": len(rows), "success_rate": float(np.mean([r["success"] for r in rows])),
             "mean_max_coverage": float(np.mean([r["max_coverage"] for r in rows])), "demos": len(demos),
             "mean_demo_steps": float(np.mean([len(a) for _, a in demos])) if demos else 0.0}
    return demos, stats
