"""Policy benchmarks: flow policy vs MSE regression vs DDPM/DDIM diffusion, same network.

    python benchmarks/policy.py collect   # PushT expert demonstrations -> benchmarks/data/pusht_demos.npz
    python benchmarks/policy.py tworoute  # bimodal task: success, collisions, mode use, switches
    python benchmarks/policy.py pusht     # PushT: mean max coverage, success over seeded episodes
    python benchmarks/policy.py dagger    # one DAgger round from the pusht checkpoints (expert relabels)
    python benchmarks/policy.py latency   # CPU latency of one act (batch 1)

Results go to benchmarks/results/policy_*.json / .md / .png / .gif. CPU budgets are small (the
machine is shared): every training run is bounded by ``--train-steps`` optimizer steps (batch 256).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import pushforward as pf
from pushforward.envs import TwoRouteEnv, TwoRouteExpert, relabel, two_route_metrics
from pushforward.policy import (
    ChunkExecutor,
    DiffusionPolicy,
    FlowPolicy,
    ObsHistory,
    RegressionPolicy,
    evaluate_policy,
    make_chunks,
    rollout,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT / "data" / "pusht_demos.npz"


def _save_json(name: str, obj: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(obj, indent=1))


def _train(policy, actions, obs, steps: int, seed: int = 0, lr: float | None = None):
    # A step budget, not a time budget: the machine is shared, and equal steps keep the
    # comparison between methods fair whatever the load.
    policy.set_normalization(actions, obs)
    t = time.time()
    h = pf.fit(policy, torch.as_tensor(actions, dtype=torch.float32), context=torch.as_tensor(obs, dtype=torch.float32),
               steps=steps, max_time=None, seed=seed, val_fraction=0, progress=False, checkpoint_every=None, lr=lr)
    return {"train_s": round(time.time() - t, 1), "train_steps": h.steps, "final_loss": float(h.loss[-1])}


def _latency(policy, obs_dim: int, reps: int = 50, stat: str = "median", **kw) -> float:
    """Seconds of one ``act`` at batch 1: the median (or ``stat="min"``, the least disturbed run
    on a shared machine) over ``reps`` calls."""
    o = torch.zeros(1, obs_dim)
    for _ in range(5):
        policy.act(o, **kw)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        policy.act(o, **kw)
        ts.append(time.perf_counter() - t)
    return float(np.min(ts) if stat == "min" else np.median(ts))


# ============================================================================ bimodal task
def _entropy(p_left: float) -> float:
    ps = [q for q in (p_left, 1 - p_left) if q > 0]
    return float(-sum(q * np.log2(q) for q in ps))


def _two_route_policies(net: dict, horizon: int):
    return {
        "flow (10 Euler)": (FlowPolicy(2, 2, horizon, **net), {}),
        "MSE regression": (RegressionPolicy(2, 2, horizon, **net), {}),
        "DDPM (100 steps)": (DiffusionPolicy(2, 2, horizon, **net), {"sampler": "ddpm"}),
    }


def tworoute(args) -> None:
    horizon, execute = 8, 4
    env = TwoRouteEnv()
    expert = TwoRouteExpert(seed=1)
    eps = [rollout(env, expert, seed=10_000 + i, max_steps=80) for i in range(200)]
    expert_eval = evaluate_policy(TwoRouteEnv, TwoRouteExpert(seed=2), episodes=args.episodes, seed=0, max_steps=80,
                           metrics=two_route_metrics)["mean"]
    actions, obs = make_chunks([(e["obs"][:-1], e["actions"]) for e in eps], horizon)
    print(f"two-route: {len(eps)} expert episodes, {len(actions)} chunks", flush=True)
    net = {"width": 64, "depth": 2, "heads": 4}
    rows = {"expert": {**expert_eval, "mode_entropy_bits": _entropy(expert_eval["left"])}}
    trajs = {}
    trained = _two_route_policies(net, horizon)
    for name, (policy, kw) in trained.items():
        info = _train(policy, actions, obs, args.train_steps, seed=0)
        variants = [(name, kw, 0)]
        if isinstance(policy, FlowPolicy):
            variants.append(("flow + RTC inpainting (2)", kw, 2))
        if isinstance(policy, DiffusionPolicy):
            variants.append(("DDIM (10 steps)", {"sampler": "ddim", "steps": 10}, 0))
        for vname, vkw, inpaint in variants:
            ex = ChunkExecutor(policy, execute=execute, inpaint=inpaint, generator=torch.Generator().manual_seed(0), **vkw)
            res = evaluate_policy(TwoRouteEnv, ex, episodes=args.episodes, seed=0, max_steps=80, metrics=two_route_metrics)
            m = res["mean"]
            committed = m["left"] + m["right"]
            m["mode_entropy_bits"] = _entropy(m["left"] / committed) if committed else 0.0
            m["clean_success"] = float(np.mean([r["success"] * (r["switches"] == 0) for r in res["episodes"]]))
            m["act_ms"] = 1e3 * _latency(policy, 2, **vkw)
            rows[vname] = {**m, **info}
            trajs[vname] = [rollout(TwoRouteEnv(), ex, seed=i, max_steps=80) for i in range(20)]
            print(vname, {k: round(v, 3) for k, v in rows[vname].items()}, flush=True)
    _save_json("policy_tworoute.json", {"horizon": horizon, "execute": execute, "episodes": args.episodes,
                                         "train_steps": args.train_steps, "net": net, "results": rows})
    _plot_tworoute(trajs)


def _plot_tworoute(trajs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(trajs), figsize=(3.2 * len(trajs), 3.4), sharey=True)
    for ax, (name, eps) in zip(np.atleast_1d(axes), trajs.items()):
        ax.add_patch(plt.Circle((0, 0), 0.35, color="0.7"))
        ax.add_patch(plt.Circle((0, 1), 0.1, color="tab:green", alpha=0.3))
        for e in eps:
            o = e["obs"]
            bad = e["infos"][-1]["collision"]
            ax.plot(o[:, 0], o[:, 1], color="tab:red" if bad else "tab:blue", lw=0.8, alpha=0.7)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-0.9, 0.9)
        ax.set_ylim(-1.1, 1.15)
        ax.set_aspect("equal")
    fig.suptitle("TwoRoute: 20 rollouts each (red: collision)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "policy_tworoute.png", dpi=110)


# ============================================================================ PushT demos
def collect(args) -> None:
    from pushforward.envs.pusht import collect_demos

    t = time.time()
    demos, stats = collect_demos(args.demos, seed=100_000, max_episodes=4 * args.demos, verbose=True,
                                 on_demo=lambda d: _write_demos(d) if len(d) % 10 == 0 else None,
                                 workers=args.workers)
    stats["seeds"] = "100000 + w * 100000 + i for worker w" if args.workers > 1 else "100000 + i"
    stats["seconds"] = round(time.time() - t, 1)
    _write_demos(demos)
    _save_json("policy_pusht_expert.json", stats)
    print(stats)


def _write_demos(demos: list) -> None:
    DATA.parent.mkdir(parents=True, exist_ok=True)
    ends = np.cumsum([len(a) for _, a in demos])
    np.savez_compressed(DATA, obs=np.concatenate([o for o, _ in demos]).astype(np.float32),
                        actions=np.concatenate([a for _, a in demos]).astype(np.float32), episode_ends=ends)


def load_demos() -> list[tuple[np.ndarray, np.ndarray]]:
    d = np.load(DATA)
    starts = np.concatenate([[0], d["episode_ends"][:-1]])
    return [(d["obs"][s:e].astype(np.float64), d["actions"][s:e].astype(np.float64))
            for s, e in zip(starts, d["episode_ends"])]


# ============================================================================ PushT
HORIZON, EXECUTE, HIST = 16, 8, 2  # chunk length, actions executed per chunk, stacked observations
CKPT = Path("/tmp/policy")
# Result rows of each method and the act() options that produce them (the first also drives
# the method's DAgger rollouts).
VARIANTS = {"flow": [("flow (10 Euler)", {})], "mse": [("MSE regression", {})],
            "diffusion": [("DDIM (10 steps)", {"sampler": "ddim", "steps": 10}), ("DDPM (100 steps)", {"sampler": "ddpm"})]}


def _pusht_score(policy, episodes: int, **act_kwargs) -> dict:
    """Mean max coverage and success over the seeded evaluation episodes 0..episodes-1."""
    from pushforward.envs.pusht import make_env, pusht_metrics

    ex = ChunkExecutor(policy, execute=EXECUTE, generator=torch.Generator().manual_seed(0), **act_kwargs)
    m = evaluate_policy(make_env, ObsHistory(ex, HIST), episodes=episodes, seed=0, max_steps=300, metrics=pusht_metrics)["mean"]
    return {"mean_max_coverage": m["max_coverage"], "success_rate": m["success"]}


def pusht(args) -> None:
    from pushforward.envs.pusht import OBS_DIM

    horizon, execute, hist = HORIZON, EXECUTE, HIST
    demos = load_demos()
    actions, obs = make_chunks(demos, horizon, obs_history=hist)
    print(f"PushT: {len(demos)} demos, {len(actions)} chunks", flush=True)
    net = {"net": args.net, "width": args.width, "depth": args.depth}
    if args.net == "transformer":
        net["heads"] = 4
    models = {
        "flow": FlowPolicy(hist * OBS_DIM, 2, horizon, **net),
        "mse": RegressionPolicy(hist * OBS_DIM, 2, horizon, **net),
        "diffusion": DiffusionPolicy(hist * OBS_DIM, 2, horizon, **net),
    }
    models = {k: m.to(args.device) for k, m in models.items() if k in args.methods.split(",")}
    rows = {}
    expert_file = RESULTS / "policy_pusht_expert.json"
    if expert_file.exists():
        rows["scripted expert (all episodes tried)"] = json.loads(expert_file.read_text())
    CKPT.mkdir(parents=True, exist_ok=True)
    if args.reuse and (RESULTS / f"policy_pusht{args.tag}.json").exists():
        rows.update(json.loads((RESULTS / f"policy_pusht{args.tag}.json").read_text())["results"])
    for key, policy in models.items():
        path = CKPT / f"pusht{args.tag}_{key}.pt"
        if args.reuse and all(v in rows for v, _ in VARIANTS[key]):
            models[key] = pf.load(path).to(args.device)
            continue
        if args.reuse and path.exists():
            policy = models[key] = pf.load(path).to(args.device)
            info = json.loads(path.with_suffix(".json").read_text())
        else:
            info = _train(policy, actions, obs, args.train_steps, seed=0, lr=args.lr)
            pf.save(policy, path)
            path.with_suffix(".json").write_text(json.dumps(info))
        for vname, kw in VARIANTS[key]:
            t = time.time()
            rows[vname] = {**_pusht_score(policy, args.episodes, **kw),
                           "act_ms": 1e3 * _latency(policy, hist * OBS_DIM, **kw), "eval_s": round(time.time() - t, 1),
                           **info}
            print(vname, {k: round(v, 3) for k, v in rows[vname].items()}, flush=True)
            out = RESULTS / f"policy_pusht{args.tag}.json"
            if out.exists():  # several processes may share one results file (--methods)
                done = json.loads(out.read_text())
                if done.get("train_steps") == args.train_steps and done.get("demos") == len(demos):
                    rows = {**done["results"], **rows}
            _save_json(out.name, {"demos": len(demos), "chunks": len(actions), "horizon": horizon,
                                             "execute": execute, "obs_history": hist, "episodes": args.episodes,
                                             "eval_seeds": f"0..{args.episodes - 1}", "train_steps": args.train_steps,
                                             "lr": args.lr or "default (3e-4)", "net": net, "results": rows})
    if "flow" in models:
        _pusht_gif(models["flow"], hist, execute, tag=args.tag)


def dagger(args) -> None:
    """One DAgger round on PushT: roll out a trained policy, label the states it reaches with the
    expert's chunk, and fine-tune on demonstrations + labels (same seeds/metrics as ``pusht``).

    Starts from the ``pusht{--from-tag}_{method}`` checkpoints (a ``dagger`` run's tag chains
    rounds; the labels of every round are kept, as DAgger aggregates). Round r's rollouts use
    seeds ``4000 + 1000 r ..``, disjoint from the evaluation seeds 0..49 and the demonstrations'
    100000...
    """
    from pushforward.envs.pusht import PushTExpert, make_env, pusht_metrics

    horizon, execute, hist = HORIZON, EXECUTE, HIST
    demos = load_demos()
    actions, obs = make_chunks(demos, horizon, obs_history=hist)
    tag = args.tag or f"{args.from_tag}_dagger"
    out = RESULTS / f"policy_pusht{tag}.json"
    for key in args.methods.split(","):
        policy = pf.load(CKPT / f"pusht{args.from_tag}_{key}.pt")
        base = json.loads((CKPT / f"pusht{args.from_tag}_{key}.json").read_text())
        data_file = CKPT / f"pusht{tag}_{key}_labels.npz"
        rnd = base.get("dagger_rounds", 0) + 1
        seed = 4000 + 1000 * rnd
        t = time.time()
        if args.reuse and data_file.exists():
            d = dict(np.load(data_file))
        else:
            env = make_env()
            expert = PushTExpert(env)
            ex = ChunkExecutor(policy, execute=execute, generator=torch.Generator().manual_seed(seed), **VARIANTS[key][0][1])
            r = relabel(env, ObsHistory(ex, hist), lambda e, x=expert: x.chunk(horizon), episodes=args.dagger_episodes,
                        seed=seed, every=args.every, obs_history=hist, metrics=pusht_metrics)
            d = {"actions": r["actions"], "obs": r["obs"],
                 "max_coverage": np.array([m["max_coverage"] for m in r["episodes"]])}
            np.savez_compressed(data_file, **d)
        label_s = time.time() - t
        print(f"{key}: {len(d['actions'])} labelled states from {args.dagger_episodes} rollouts "
              f"(their mean max coverage {d['max_coverage'].mean():.3f}), {label_s:.0f} s", flush=True)
        files = [*base.get("dagger_label_files", []), str(data_file)]
        labels = [d] + [dict(np.load(f)) for f in files[:-1]]
        all_a = torch.as_tensor(np.concatenate([actions, *[x["actions"] for x in labels]]), dtype=torch.float32)
        all_o = torch.as_tensor(np.concatenate([obs, *[x["obs"] for x in labels]]), dtype=torch.float32)
        done = CKPT / f"pusht{tag}_{key}.pt"
        if args.reuse and done.exists() and done.with_suffix(".json").exists():
            policy, info = pf.load(done), json.loads(done.with_suffix(".json").read_text())
        else:
            t = time.time()
            # Fine-tuning keeps the normalisation the policy was trained with (its weights assume it).
            h = pf.fit(policy, all_a, context=all_o, steps=args.train_steps, max_time=None, seed=1, val_fraction=0,
                       progress=False, checkpoint_every=None, lr=args.lr)
            info = {"train_s": round(base["train_s"] + time.time() - t, 1),
                    "train_steps": base["train_steps"] + h.steps, "final_loss": float(h.loss[-1]),
                    "dagger_rounds": rnd, "dagger_labels": len(all_a) - len(actions),
                    "dagger_rollout_coverage": float(d["max_coverage"].mean()), "dagger_label_files": files,
                    "label_s": round(base.get("label_s", 0.0) + label_s, 1)}
            pf.save(policy, done)
            done.with_suffix(".json").write_text(json.dumps(info))
        for vname, kw in VARIANTS[key]:
            row = {**_pusht_score(policy, args.episodes, **kw), **info}
            print(vname, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            # Re-read just before writing: other methods' processes share the file.
            rows = {**(json.loads(out.read_text())["results"] if out.exists() else {}), vname: row}
            _save_json(out.name, {
                "demos": len(demos), "chunks": len(actions), "horizon": horizon, "execute": execute,
                "obs_history": hist, "episodes": args.episodes, "eval_seeds": f"0..{args.episodes - 1}",
                "train_steps": f"pusht{args.from_tag} checkpoint + {args.train_steps} fine-tuning",
                "lr": args.lr or "default (3e-4)",
                "net": json.loads((RESULTS / f"policy_pusht{args.from_tag}.json").read_text())["net"],
                "dagger": f"{rnd} round(s), each: {args.dagger_episodes} rollouts of the method's own current policy "
                          f"(seeds 5000.. in round 1, +1000 per round), expert chunk every {args.every} steps, "
                          f"all labels added to the demos",
                "results": rows})
        if key == "flow":
            _pusht_gif(policy, hist, execute, tag=tag)


def _pusht_gif(policy, hist: int, execute: int, seed: int = 0, tag: str = "") -> None:
    from PIL import Image

    from pushforward.envs.pusht import make_env

    env = make_env(visualization_width=192, visualization_height=192)
    ex = ObsHistory(ChunkExecutor(policy, execute=execute, generator=torch.Generator().manual_seed(0)), hist)
    ep = rollout(env, ex, seed=seed, max_steps=300, render=True)
    frames = [Image.fromarray(f) for f in ep["frames"][::2]]
    frames[0].save(RESULTS / f"policy_pusht{tag}_flow.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)


# ============================================================================ latency
def latency(args) -> None:
    """CPU latency of one act (batch 1) for the PushT-sized state policy (36-d obs, 16 x 2)."""
    rows = {}
    for name, net in (("transformer w128 d3", {"width": 128, "depth": 3}), ("transformer w64 d2", {"width": 64, "depth": 2}),
                      ("mlp w256 d3", {"net": "mlp", "width": 256, "depth": 3})):
        fp = FlowPolicy(36, 2, 16, **net)
        dp = DiffusionPolicy(36, 2, 16, **net)
        f_ms = 1e3 * _latency(fp, 36, steps=10)
        d_ms = 1e3 * _latency(dp, 36, reps=10, sampler="ddpm")
        rows[name] = {"flow_10_euler_ms": f_ms, "flow_hz": 1e3 / f_ms, "ddpm_100_ms": d_ms,
                      "ddim_10_ms": 1e3 * _latency(dp, 36, sampler="ddim", steps=10), "speedup_vs_ddpm": d_ms / f_ms,
                      "flow_10_euler_min_ms": 1e3 * _latency(fp, 36, reps=200, stat="min", steps=10),
                      "ddpm_100_min_ms": 1e3 * _latency(dp, 36, reps=20, stat="min", sampler="ddpm"),
                      "params": sum(p.numel() for p in fp.parameters())}
        print(name, {k: round(v, 2) for k, v in rows[name].items()}, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    _save_json("policy_latency.json", {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                                        "load_average_1min": load, "results": rows})


# ============================================================================ report
def report(args) -> None:
    """benchmarks/results/policy.md from the JSON results."""
    out = ["# Policy benchmarks (CPU, shared 2-core machine)", ""]
    f = RESULTS / "policy_tworoute.json"
    if f.exists():
        d = json.loads(f.read_text())
        out += [f"## TwoRoute (bimodal), {d['episodes']} seeded episodes, H = {d['horizon']}, execute {d['execute']}, "
                f"{d.get('train_steps', '?')} training steps, net {d['net']}", "",
                "| method | success | collision | left | right | mode entropy (bits) | switches/episode | act ms (batch 1) |",
                "|---|---|---|---|---|---|---|---|"]
        for k, r in d["results"].items():
            out.append(f"| {k} | {r['success']:.2f} | {r['collision']:.2f} | {r['left']:.2f} | {r['right']:.2f} | "
                       f"{r['mode_entropy_bits']:.2f} | {r['switches']:.2f} | {r.get('act_ms', float('nan')):.1f} |")
        out.append("")
    for f in sorted(RESULTS.glob("policy_pusht*.json")):
        if f.name == "policy_pusht_expert.json":
            continue
        d = json.loads(f.read_text())
        out += [f"## PushT ({f.name}): state = agent + 16 keypoint coordinates, 2 observation steps; {d['episodes']} "
                f"seeded episodes (seeds {d['eval_seeds']}), {d['demos']} scripted demos, H = {d['horizon']}, execute "
                f"{d['execute']}, {d['train_steps']} training steps (batch 256, lr {d.get('lr', 'default (3e-4)')}), "
                f"net {d['net']}" + (f"; DAgger: {d['dagger']}" if "dagger" in d else ""), "",
                "| method | mean max coverage | success (>= 0.95) | act ms (batch 1) | training s |", "|---|---|---|---|---|"]
        for k, r in d["results"].items():
            out.append(f"| {k} | {r['mean_max_coverage']:.3f} | {r['success_rate']:.2f} | "
                       f"{r.get('act_ms', float('nan')):.1f} | {r.get('train_s', float('nan')):.0f} |")
        out.append("")
    f = RESULTS / "policy_latency.json"
    if f.exists():
        d = json.loads(f.read_text())
        out += [f"## act latency, batch 1, PushT-sized policy (36-d obs, 16 x 2 chunk), {d['threads']} thread, "
                f"load average {d['load_average_1min']:.1f} on {d['cpu_count']} cores", "",
                "| network | params | flow 10 Euler ms (median / min) | Hz (median) | DDPM 100 ms (median / min) | DDIM 10 ms | "
                "DDPM / flow |", "|---|---|---|---|---|---|---|"]
        for k, r in d["results"].items():
            out.append(f"| {k} | {r['params']} | {r['flow_10_euler_ms']:.2f} / {r['flow_10_euler_min_ms']:.2f} | "
                       f"{r['flow_hz']:.0f} | {r['ddpm_100_ms']:.1f} / {r['ddpm_100_min_ms']:.1f} | {r['ddim_10_ms']:.2f} | "
                       f"{r['speedup_vs_ddpm']:.1f}x |")
        out.append("")
    (RESULTS / "policy.md").write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["collect", "tworoute", "pusht", "dagger", "latency", "report"])
    p.add_argument("--demos", type=int, default=200)
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=1, help="collect: expert processes")
    p.add_argument("--methods", default="flow,mse,diffusion", help="pusht: which policies to train and evaluate")
    p.add_argument("--reuse", action="store_true", help="pusht: reuse finished results and /tmp/policy checkpoints")
    p.add_argument("--tag", default="", help="pusht: suffix of the result/checkpoint names")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the policy's)")
    p.add_argument("--device", default="cpu", help="pusht: train/act on this device (e.g. cuda)")
    p.add_argument("--net", choices=["transformer", "mlp"], default="transformer")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--from-tag", default="_60k", help="dagger: the pusht run whose checkpoints start the round")
    p.add_argument("--dagger-episodes", type=int, default=60, help="dagger: rollouts of the policy to label")
    p.add_argument("--every", type=int, default=4, help="dagger: label every k-th visited state")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # network initialisation (fit's seed covers only the training stream)
    {"collect": collect, "tworoute": tworoute, "pusht": pusht, "latency": latency,
     "dagger": dagger, "report": report}[a.what](a)
