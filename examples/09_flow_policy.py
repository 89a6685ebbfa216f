"""Tutorial 9: a π0-style flow policy: multimodal actions, 10-step chunk generation, latency.

A flow policy (Black et al. 2024, π0) is conditional flow matching over *action chunks*: given
an observation ``o``, it turns Gaussian noise ``[H, A]`` into the next H actions by integrating a
learned velocity field for a few Euler steps (time: t = 0 noise, t = 1 actions; π0's own code
runs time the other way). Because it models the whole conditional *distribution* of chunks, it
keeps distinct strategies apart where a regression policy (mean-squared error) averages them.

1. Demonstrations from a scripted expert that passes an obstacle on the left or the right at
   random (``pushforward.envs.TwoRouteEnv``). At the decision point the flow policy's chunks split
   into both routes; the regression policy's single answer heads into the obstacle.
2. Chunk quality against the number of Euler steps (1, 2, 5, 10) from the same noise.
3. Latency of ``policy.act`` per chunk, and closed-loop rollouts with a receding horizon.
4. Vision, language and state: a ``pf.policy.VLAPolicy`` on ColorReach
   (``pushforward.envs.color_reach``): three coloured discs at random places, an instruction in
   one of four phrasings names one of them. The image says *where* the discs are, the text *which*
   one; the state is only the agent's position. ``pf.policy.Demonstrations(actions=, state=,
   images=, instructions=)`` packs the samples for ``pf.fit``; ``policy.act(images=, state=,
   instruction=)`` encodes the image and instruction prefix once per chunk and reuses its
   keys/values for the 10 flow steps. Given the empty instruction ``""`` a policy can only guess
   (chance: 1/3). Binding the colour word takes thousands of steps: the loss sits on a plateau
   (the policy heads for *some* disc) and then drops. This tutorial's two minutes usually end
   on the plateau; ``python benchmarks/policy_vla.py language`` (3000 demonstrations, 10
   minutes) reaches 0.94 told against 0.36 untold, at the expert's own ceiling of 0.95.

Run: ``python examples/09_flow_policy.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pushforward as pf  # noqa: E402
from pushforward.envs import TwoRouteEnv, TwoRouteExpert, two_route_metrics  # noqa: E402
from pushforward.policy import (  # noqa: E402
    ChunkExecutor,
    FlowPolicy,
    RegressionPolicy,
    evaluate_policy,
    make_chunks,
    rollout,
)

H = 8


def demonstrations(n_episodes: int):
    env, expert = TwoRouteEnv(), TwoRouteExpert(seed=1)
    episodes = [rollout(env, expert, seed=i, max_steps=80) for i in range(n_episodes)]
    actions, obs = make_chunks([(e["obs"][:-1], e["actions"]) for e in episodes], horizon=H)
    return episodes, torch.tensor(actions, dtype=torch.float32), torch.tensor(obs, dtype=torch.float32)


def train(policy, actions, obs, seconds: float):
    policy.set_normalization(actions, obs)
    pf.fit(policy, actions, context=obs, max_time=seconds, val_fraction=0, progress=False, checkpoint_every=None)
    return policy.eval()


def _draw_obstacle(ax, env: TwoRouteEnv) -> None:
    ax.add_patch(plt.Circle((0, 0), env.radius, color="0.8"))
    ax.plot(*env.goal, "g*", ms=12)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_aspect("equal")


def main(out_dir: str = "tutorial_out/09", budget: float = 1.0) -> dict:
    """``budget`` scales the training (1: 40 s per policy, 0.05: a smoke test)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    episodes, actions, obs = demonstrations(200)
    seconds = max(3.0, 40.0 * budget)
    flow = train(FlowPolicy(obs_dim=2, action_dim=2, horizon=H, width=64, depth=2), actions, obs, seconds)
    reg = train(RegressionPolicy(obs_dim=2, action_dim=2, horizon=H), actions, obs, seconds)

    # 1. At the decision point both routes start from the same observation.
    o = np.array([[0.0, -0.68]], dtype=np.float32)
    n = 200
    with torch.no_grad():
        chunks = flow.act(np.repeat(o, n, 0), steps=10, generator=torch.Generator().manual_seed(0))
        mean_chunk = reg.act(o)
    paths = o[:, None, :] + np.cumsum(np.asarray(chunks), 1)  # [n, H, 2] positions
    reg_path = o[:, None, :] + np.cumsum(np.asarray(mean_chunk), 1)
    end_x = paths[:, -1, 0]
    left, right = float((end_x < -0.05).mean()), float((end_x > 0.05).mean())

    env = TwoRouteEnv()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.8))
    for e in episodes[:40]:
        ax[0].plot(e["obs"][:, 0], e["obs"][:, 1], lw=0.6, color="C0", alpha=0.6)
    ax[0].set_title("expert demonstrations (left or right at random)")
    for p in paths[:100]:
        ax[1].plot(p[:, 0], p[:, 1], lw=0.7, color="C2", alpha=0.6)
    ax[1].plot(reg_path[0, :, 0], reg_path[0, :, 1], "r-", lw=2.5, label="regression (MSE): the average")
    ax[1].plot(*o[0], "ko")
    ax[1].set_title(f"chunks at the decision point: left {left:.0%}, right {right:.0%}")
    ax[1].legend(fontsize=8, loc="upper right")

    # 2. Steps: the same noise, 1, 2, 5 and 10 Euler steps.
    step_list = [1, 2, 5, 10]
    spread = {}
    for k, c in zip(step_list, ("C3", "C1", "C4", "C2")):
        with torch.no_grad():
            ch = flow.act(np.repeat(o, 60, 0), steps=k, generator=torch.Generator().manual_seed(1))
        pk = o[:, None, :] + np.cumsum(np.asarray(ch), 1)
        spread[k] = float(np.abs(pk[:, -1, 0]).mean())
        for i, p in enumerate(pk[:30]):
            ax[2].plot(p[:, 0], p[:, 1], lw=0.7, color=c, alpha=0.7, label=f"{k} step(s)" if i == 0 else None)
    ax[2].set_title("the same noise, 1 to 10 Euler steps")
    ax[2].legend(fontsize=8, loc="upper right")
    for a in ax:
        _draw_obstacle(a, env)
    fig.tight_layout()
    fig.savefig(out / "09_multimodal_chunks.png", dpi=110)
    plt.close(fig)

    # 3. Latency per chunk (one observation), and closed-loop rollouts.
    latency = {}
    with torch.no_grad():
        for k in (1, 5, 10, 20):
            flow.act(o, steps=k)  # warm-up
            ts = []
            for _ in range(20):
                t1 = time.perf_counter()
                flow.act(o, steps=k)
                ts.append(time.perf_counter() - t1)
            latency[k] = 1e3 * float(np.median(ts))
    n_eval = 10 if budget < 0.5 else 40
    res_flow = evaluate_policy(TwoRouteEnv, ChunkExecutor(flow, execute=4, steps=10), episodes=n_eval, seed=100,
                        max_steps=80, metrics=two_route_metrics)["mean"]
    res_reg = evaluate_policy(TwoRouteEnv, ChunkExecutor(reg, execute=4), episodes=n_eval, seed=100, max_steps=80,
                       metrics=two_route_metrics)["mean"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(latency), list(latency.values()), "o-")
    ax.set_xlabel("Euler steps per chunk")
    ax.set_ylabel("ms per chunk (median, 1 CPU thread)")
    ax.set_title(f"act() latency; H = {H} actions per chunk")
    fig.tight_layout()
    fig.savefig(out / "09_latency.png", dpi=110)
    plt.close(fig)

    print(f"[1] decision point: flow policy chunks go left {left:.2f} / right {right:.2f}; "
          f"regression chunk ends at x = {float(reg_path[0, -1, 0]):+.3f}")
    print("[2] mean |x| at the chunk's end by steps: " + "  ".join(f"{k}: {v:.3f}" for k, v in spread.items()))
    print("[3] latency ms/chunk: " + "  ".join(f"{k} steps: {v:.2f}" for k, v in latency.items()))
    print(f"[3] rollouts ({n_eval}): flow success {res_flow['success']:.2f} collision {res_flow['collision']:.2f} "
          f"(left {res_flow['left']:.2f}, right {res_flow['right']:.2f}); regression success "
          f"{res_reg['success']:.2f} collision {res_reg['collision']:.2f}")
    vla = vla_section(budget)
    print(f"[4] VLA on ColorReach ({vla['samples']} samples, {vla['train_s']:.0f} s): success told the instruction "
          f"{vla['told']:.2f}, given '' {vla['untold']:.2f} (chance 0.33); act {vla['act_ms']:.1f} ms/chunk")
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return {"left": left, "right": right, "regression_end_x": float(reg_path[0, -1, 0]), "latency_ms": latency,
            "flow": res_flow, "regression": res_reg, "spread": spread, "vla": vla}


def vla_section(budget: float) -> dict:
    """Step 4: a vision-language-action policy on ColorReach, with and without its instruction."""
    from pushforward.envs import color_reach

    torch.manual_seed(0)
    size = 32
    # Many short episodes (about 7 steps each): few demonstrations are memorised, not generalised.
    demos = pf.policy.Demonstrations(**color_reach.collect(max(20, int(1500 * budget)), horizon=H, size=size),
                                     max_text=32)
    policy = pf.policy.VLAPolicy(image_shape=(3, size, size), state_dim=2, action_dim=2, horizon=H, max_text=32,
                                 patch=8, width=64, depth=2)
    policy.set_normalization(actions=demos.actions, state=demos.state)
    t = time.perf_counter()
    pf.fit(policy, demos, max_time=max(3.0, 120.0 * budget), val_fraction=0, progress=False, checkpoint_every=None,
           batch_size=32, lr=1e-3)  # the benchmark's recipe: many small steps
    train_s = time.perf_counter() - t
    policy.eval()
    n = 6 if budget < 0.5 else 30
    told = color_reach.evaluate(policy, episodes=n, size=size)["success"]
    untold = color_reach.evaluate(policy, episodes=n, size=size, instruction="")["success"]
    img = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    ts = []
    for _ in range(10):
        t1 = time.perf_counter()
        policy.act(images=img, state=torch.zeros(1, 2), instruction=["move to red"], steps=10)
        ts.append(time.perf_counter() - t1)
    return {"samples": len(demos), "train_s": train_s, "told": told, "untold": untold,
            "act_ms": 1e3 * float(np.median(ts))}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/09")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
