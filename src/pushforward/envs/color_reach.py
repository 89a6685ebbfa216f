"""A multi-task, language-conditioned reaching task seen from pixels (NumPy only).

:class:`ColorReachEnv`: three coloured discs (red, green, blue) lie at random places in the unit
square; the instruction names one of them, in one of several phrasings. The instruction decides
*what* to do (which colour), the image decides *where* (the discs move every episode; the state is
only the agent's position). The first disc the agent touches ends the episode: success if it is
the named one, so a policy that ignores the text succeeds by chance, 1 in 3.
:class:`ColorReachExpert` drives straight at the named disc.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
PHRASES = ("go to the {c} disc", "reach the {c} one", "move to {c}", "touch the {c} target")


def instruction(color: str, phrase: int = 0) -> str:
    """The instruction text for ``color`` in phrasing ``phrase`` (index into :data:`PHRASES`)."""
    return PHRASES[phrase].format(c=color)


class ColorReachEnv:
    """Observation ``{"image": uint8 [3, S, S], "state": agent position [2], "instruction": str}``.

    Action: a displacement ``[2]`` clipped to length ``max_step``. Discs of radius ``radius`` are at
    least ``3 radius`` apart and from the start. ``info``: ``success``, ``touched`` (colour or None),
    ``target`` (the named colour), ``phrase``.
    """

    state_dim, action_dim = 2, 2

    def __init__(self, size: int = 64, radius: float = 0.08, max_step: float = 0.06, max_steps: int = 40):
        self.size, self.radius, self.max_step, self.max_steps = size, radius, max_step, max_steps
        self.rng = np.random.default_rng()
        g = (np.arange(size) + 0.5) / size
        self._yy, self._xx = np.meshgrid(g, g, indexing="ij")

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:  # noqa: D102
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        while True:
            pts = self.rng.uniform(0.12, 0.88, size=(4, 2))
            d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + 10 * np.eye(4)
            if d.min() > 3 * self.radius:
                break
        self.pos, self.discs = pts[0], dict(zip(COLORS, pts[1:]))
        self.target = list(COLORS)[int(self.rng.integers(3))]
        self.phrase = int(self.rng.integers(len(PHRASES)))
        self.text = instruction(self.target, self.phrase)
        self.t, self.touched = 0, None
        return self._obs(), self._info()

    def _info(self) -> dict:
        return {"success": self.touched == self.target, "touched": self.touched, "target": self.target,
                "phrase": self.phrase}

    def render(self) -> np.ndarray:
        """``[3, S, S]`` uint8: light background, the discs, the agent as a dark dot."""
        img = np.full((self.size, self.size, 3), 235, np.uint8)
        for c, p in self.discs.items():
            img[(self._xx - p[0]) ** 2 + (self._yy - p[1]) ** 2 < self.radius ** 2] = COLORS[c]
        img[(self._xx - self.pos[0]) ** 2 + (self._yy - self.pos[1]) ** 2 < (0.5 * self.radius) ** 2] = (20, 20, 20)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def _obs(self) -> dict:
        return {"image": self.render(), "state": self.pos.astype(np.float32), "instruction": self.text}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:  # noqa: D102
        a = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.isfinite(a).all():
            raise ValueError(f"action must be finite, got {a}")
        n = np.linalg.norm(a)
        if n > self.max_step:
            a = a * (self.max_step / n)
        self.pos = np.clip(self.pos + a, 0.0, 1.0)
        self.t += 1
        for c, p in self.discs.items():
            if np.linalg.norm(self.pos - p) < self.radius:
                self.touched = c
                break
        done = self.touched is not None
        return self._obs(), float(self.touched == self.target), done, self.t >= self.max_steps, self._info()


class ColorReachExpert:
    """Scripted expert: full-speed steps straight at the named disc (it knows the disc positions).

    ``chunk(env, horizon) -> [horizon, 2]`` displacements (the last ones zero once there).
    Its path can cross another disc; :func:`collect` keeps successful episodes only.
    """

    def chunk(self, env: ColorReachEnv, horizon: int) -> np.ndarray:  # noqa: D102
        pos, goal, out = env.pos.copy(), env.discs[env.target], []
        for _ in range(horizon):
            d = goal - pos
            n = np.linalg.norm(d)
            a = d if n <= env.max_step else d * (env.max_step / n)
            out.append(a)
            pos = pos + a
        return np.array(out)


def collect(episodes: int, horizon: int, seed: int = 0, size: int = 64) -> dict:
    """Expert demonstrations: every step of every successful episode is one sample.

    Returns ``{"actions" [N, horizon, 2], "state" [N, 2], "images" uint8 [N, 3, S, S],
    "instructions" (N strings), "episode_index" [N]}`` (``pf.policy.Demonstrations(**out)``).
    """
    env, expert = ColorReachEnv(size=size), ColorReachExpert()
    acts, states, images, texts, eps = [], [], [], [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        rows = []
        for _ in range(env.max_steps):
            ch = expert.chunk(env, horizon)
            rows.append((ch, obs["state"], obs["image"], obs["instruction"]))
            obs, _, term, trunc, info = env.step(ch[0])
            if term or trunc:
                break
        if info["success"]:
            for ch, s, im, tx in rows:
                acts.append(ch)
                states.append(s)
                images.append(im)
                texts.append(tx)
                eps.append(e)
    return {"actions": np.array(acts, np.float32), "state": np.array(states, np.float32),
            "images": np.array(images, np.uint8), "instructions": texts, "episode_index": np.array(eps)}


def evaluate(policy: Any, episodes: int = 50, seed: int = 10_000, execute: int = 4, size: int = 64,
             instruction: str | None = None, **act_options: Any) -> dict:
    """Success of a :class:`~pushforward.policy.VLAPolicy` over seeded episodes.

    The policy acts every ``execute`` steps (the first ``execute`` actions of each chunk).
    ``instruction`` overrides the environment's (``""``: the policy is not told the task).
    Returns ``{"success": mean, "touched_any": share of episodes that reach some disc,
    "by_color": {colour: mean}, "by_phrase": {i: mean}}``.
    """
    import torch

    gens: dict[int, torch.Generator] = {}  # one noise stream per episode, seeded by it

    def chunk(env: ColorReachEnv, obs: dict, e: int) -> np.ndarray:
        if e not in gens:
            gens.clear()
            gens[e] = torch.Generator().manual_seed(seed + e)
        text = obs["instruction"] if instruction is None else instruction
        return policy.act(images=torch.from_numpy(obs["image"]), state=obs["state"][None], instruction=[text],
                          generator=gens[e], **act_options)[0]

    return _episodes(chunk, episodes, seed, execute, size)


def evaluate_expert(episodes: int = 50, seed: int = 10_000, execute: int = 4, size: int = 64,
                    horizon: int = 8) -> dict:
    """:func:`evaluate` for :class:`ColorReachExpert` on the same seeded episodes: the ceiling.

    The expert drives straight at the named disc, so it fails where that line crosses another
    disc first (about 5% of episodes); a policy imitating it cannot do better on average.
    """
    expert = ColorReachExpert()
    return _episodes(lambda env, obs, e: expert.chunk(env, horizon), episodes, seed, execute, size)


def _episodes(chunk: Any, episodes: int, seed: int, execute: int, size: int) -> dict:
    """Run ``chunk(env, obs, episode) -> [T, 2]`` closed loop, ``execute`` actions per chunk."""
    env, rows = ColorReachEnv(size=size), []
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        done = False
        while not done:
            for a in chunk(env, obs, e)[:execute]:
                obs, _, term, trunc, info = env.step(a)
                done = term or trunc
                if done:
                    break
        rows.append(info)
    out: dict[str, Any] = {"success": float(np.mean([r["success"] for r in rows])),
                           "touched_any": float(np.mean([r["touched"] is not None for r in rows]))}
    out["by_color"] = {c: float(np.mean([r["success"] for r in rows if r["target"] == c] or [np.nan])) for c in COLORS}
    out["by_phrase"] = {i: float(np.mean([r["success"] for r in rows if r["phrase"] == i] or [np.nan]))
                        for i in range(len(PHRASES))}
    return out
