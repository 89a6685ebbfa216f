"""Flow matching benchmark: pushforward against Meta's flow_matching and TorchCFM, one run.

Every contender trains the *same* velocity network (``pushforward.nets.TimeMLP``, 3 x 128 SiLU,
sinusoidal time embedding) on the same standardized training set for the same CPU time budget,
with batch 256, Adam at lr 1e-3 and a cosine decay over the budget. What differs is the library
machinery: coupling, path, loss, training loop and ODE solvers.

- ``ours ot-fm``: ``pf.build("ot-fm")`` trained with ``pf.fit`` (exact minibatch OT in matched
  blocks of 32 rows), sampled with ``model.sample(steps=k, solver="euler")``.
- ``ours 2-rf``: 2-rectified flow by the ``rectified`` recipe: 1-RF (straight path, independent
  pairs) for 55 % of the budget, its own pairs by an adaptive solve (dopri5, 1e-4) in about 15 %,
  ``pf.matching.reflow`` (warm start) for the rest; everything inside the same budget.
- ``torchcfm ot-cfm``: ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)`` (exact OT on
  the whole batch, pairs drawn from the plan), solved with torchdiffeq (as its examples do).
- ``meta fm``: ``flow_matching`` ``AffineProbPath(CondOTScheduler())`` with independent pairs,
  sampled and evaluated with its ``ODESolver`` (``compute_likelihood``, exact divergence).

Measured: W2 (exact, POT) between 2 000 samples and 2 000 fresh target samples at 1, 2, 4, 8
Euler steps and with an adaptive solver (dopri5, atol = rtol = 1e-5); train steps/s, both from the
quality run and from separate timed loops (:func:`throughput`: interleaved, best of 5); sampling time
(2 000 points, 4 steps and adaptive); likelihood time (500 points, exact divergence, dopri5) and NLL.
Also: the coupling's cost against the network's forward/backward at batch 512, and reflow rounds
(straightness, few-step W2).

Usage::

    python benchmarks/matching.py --budget 30      # -> benchmarks/results/matching.md (+ .json)
    python benchmarks/matching.py --budget 3 --targets 8gaussians --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

import pushforward as pf
from pushforward.nets import TimeMLP

HIDDEN = (128, 128, 128)
BATCH = 256
LR = 1e-3
STEPS = (1, 2, 4, 8)
RF1_SHARE, PAIR_SHARE = 0.55, 0.15  # 2-RF contender: 1-RF training, pair generation; reflow gets the rest


def _net(dim: int) -> TimeMLP:
    return TimeMLP(dim, hidden=HIDDEN)


def _w2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return pf.metrics.w2(x.double(), ref.double())


def _lr_at(p: float) -> float:
    warm = 0.02
    if p < warm:
        return LR * p / warm
    return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (p - warm) / (1 - warm))))


def _anchor_loop(net, loss_fn, x_train: torch.Tensor, budget: float, seed: int = 0) -> dict:
    """The loop anchors' examples use (Adam, fixed batch), with the same schedule as pf.fit."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    n, steps, start = x_train.shape[0], 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = _lr_at(elapsed / budget)
        x1 = x_train[torch.randint(0, n, (BATCH,))]
        loss = loss_fn(x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return {"steps": steps, "elapsed": time.perf_counter() - start}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- contenders
def run_ours_otfm(x_train, budget, dim, loc, scale):
    model = pf.build("ot-fm", dim=dim, hidden=HIDDEN)
    hist = pf.fit(model, x_train, max_time=budget, batch_size=BATCH, lr=LR, seed=0, progress=False,
                  val_fraction=0.0)
    model.eval()
    return {"model": model, **_ours_eval(model), "steps": hist.steps, "elapsed": hist.elapsed}


def _ours_eval(model) -> dict:
    """``sample(n, steps or None (dopri5), generator)`` and ``nll(x)`` of one of our models."""

    def sample(n, steps, g):
        with torch.no_grad():
            if steps is None:
                return model.sample(n, solver="dopri5", generator=g)
            return model.sample(n, steps=steps, solver="euler", generator=g)

    def nll(x):
        with torch.no_grad():
            return -model.log_prob(x, exact=True).mean().item()

    return {"sample": sample, "nll": nll}


def run_ours_2rf(x_train, budget, dim, loc, scale):
    """The ``rectified`` recipe at an equal budget: 1-RF (straight path, independent pairs) for
    ``RF1_SHARE`` of the budget, its own noise/data pairs by an accurate adaptive solve (dopri5,
    1e-4), then ``pf.matching.reflow`` (warm start) on them for the rest."""
    start = time.perf_counter()
    model = pf.build("rectified", dim=dim, hidden=HIDDEN, reflow_rounds=0)  # the recipe by hand below
    hist = pf.fit(model, x_train, max_time=RF1_SHARE * budget, batch_size=BATCH, lr=LR, seed=0, progress=False,
                  val_fraction=0.0)
    model.eval()
    # Pair generation is part of the budget: time a small draw, then take as many pairs as fit in
    # PAIR_SHARE of the budget (at least 4 000, at most 20 000).
    t0 = time.perf_counter()
    pf.matching.generate_pairs(model, 500, generator=torch.Generator().manual_seed(0))
    per_pair = (time.perf_counter() - t0) / 500
    n_pairs = int(max(4000, min(20000, PAIR_SHARE * budget / per_pair)))
    left = budget - (time.perf_counter() - start) - n_pairs * per_pair
    new = pf.matching.reflow(model, n=n_pairs, steps=10**9, max_time=max(1.0, left), batch_size=BATCH, lr=LR,
                             generator=torch.Generator().manual_seed(1))
    new.eval()
    elapsed = time.perf_counter() - start
    return {"model": new, **_ours_eval(new), "steps": hist.steps + len(new.history), "elapsed": elapsed,
            "pairs": n_pairs, "first": model}


def _torchcfm_loss(net):
    """TorchCFM's OT-CFM loss (its README's loop): exact OT on the whole batch, pairs drawn from the plan."""
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)

    def loss_fn(x1):
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        return (net(xt, t) - ut).pow(2).mean()

    return loss_fn


def _meta_loss(net):
    """Meta flow_matching's CFM loss on its ``AffineProbPath(CondOTScheduler())``, independent pairs."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    path = AffineProbPath(scheduler=CondOTScheduler())

    def loss_fn(x1):
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0])
        ps = path.sample(t=t, x_0=x0, x_1=x1)
        return (net(ps.x_t, ps.t) - ps.dx_t).pow(2).mean()

    return loss_fn


def throughput(x_train, dim, loc, scale, rounds=5, seconds=1.0) -> dict:
    """Training steps/s measured apart from the quality runs: for each contender a fresh model
    runs a fixed number of steps (about ``seconds`` each, sized by a first probe) of its real
    training code; contenders are interleaved round by round and the best round counts, so a
    burst of load from other jobs on the shared machine hits every contender alike and is
    filtered out. Ours: the wall time of the whole ``pf.fit(steps=N)`` call (its set-up
    included); anchors: the loop of their examples (:func:`_anchor_loop` with a step budget)."""
    xs = (x_train - loc) / scale

    def ours(n):
        model = pf.build("ot-fm", dim=dim, hidden=HIDDEN)
        t0 = time.perf_counter()
        pf.fit(model, x_train, steps=n, max_time=None, batch_size=BATCH, lr=LR, seed=0, progress=False,
               val_fraction=0.0, checkpoint_every=None)
        return time.perf_counter() - t0

    def anchor(make_loss):
        def run(n):
            torch.manual_seed(0)
            net = _net(dim)
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            loss_fn = make_loss(net)
            t0 = time.perf_counter()
            for _ in range(n):
                x1 = xs[torch.randint(0, xs.shape[0], (BATCH,))]
                loss = loss_fn(x1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return time.perf_counter() - t0
        return run

    runs = {"ours ot-fm": ours, "torchcfm ot-cfm": anchor(_torchcfm_loss), "meta fm": anchor(_meta_loss)}
    sizes = {name: max(20, int(seconds * 20 / fn(20))) for name, fn in runs.items()}  # probe (also warm-up)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, fn in runs.items():
            best[name] = max(best[name], sizes[name] / fn(sizes[name]))
    return {"steps_per_s": best, "steps": sizes, "rounds": rounds}


def run_torchcfm(x_train, budget, dim, loc, scale):
    import torchdiffeq

    torch.manual_seed(0)
    net = _net(dim)
    xs = (x_train - loc) / scale
    info = _anchor_loop(net, _torchcfm_loss(net), xs, budget)
    net.eval()

    def sample(n, steps, g):
        x0 = torch.randn(n, dim, generator=g)
        f = lambda t, x: net(x, t)  # noqa: E731
        with torch.no_grad():
            if steps is None:
                out = torchdiffeq.odeint(f, x0, torch.tensor([0.0, 1.0]), method="dopri5", atol=1e-5, rtol=1e-5)
            else:
                out = torchdiffeq.odeint(f, x0, torch.tensor([0.0, 1.0]), method="euler",
                                         options={"step_size": 1.0 / steps})
        return out[-1] * scale + loc

    return {"sample": sample, "nll": None, **info}


def run_meta(x_train, budget, dim, loc, scale):
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    torch.manual_seed(0)
    net = _net(dim)
    xs = (x_train - loc) / scale
    info = _anchor_loop(net, _meta_loss(net), xs, budget)
    net.eval()

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(x, t)

    solver = ODESolver(velocity_model=Wrapped(net))

    def sample(n, steps, g):
        x0 = torch.randn(n, dim, generator=g)
        if steps is None:
            out = solver.sample(x_init=x0, step_size=None, method="dopri5", atol=1e-5, rtol=1e-5)
        else:
            out = solver.sample(x_init=x0, step_size=1.0 / steps, method="euler")
        return out * scale + loc

    normal = torch.distributions.Normal(0.0, 1.0)

    def nll(x):
        z = (x - loc) / scale
        _, lp = solver.compute_likelihood(x_1=z, log_p0=lambda y: normal.log_prob(y).sum(-1), step_size=None,
                                          method="dopri5", atol=1e-5, rtol=1e-5, exact_divergence=True)
        return -(lp - torch.log(scale).sum()).mean().item()

    return {"sample": sample, "nll": nll, **info}


CONTENDERS = {
    "ours ot-fm": run_ours_otfm,
    "ours 2-rf": run_ours_2rf,
    "torchcfm ot-cfm": run_torchcfm,
    "meta fm": run_meta,
}


# --------------------------------------------------------------------------- sections
def evaluate(name, res, target, ref, n_eval, x_lik):
    row = {"name": name, "steps_per_s": res["steps"] / res["elapsed"], "train_steps": res["steps"]}
    for k in (*STEPS, None):
        g = torch.Generator().manual_seed(123)
        s, dt = _timed(lambda k=k, g=g: res["sample"](n_eval, k, g))
        key = "adaptive" if k is None else str(k)
        row[f"w2_{key}"] = _w2(s, ref)
        if k in (4, None):
            row[f"sample_s_{key}"] = dt
    if res.get("nll") is not None:
        val, dt = _timed(lambda: res["nll"](x_lik))
        row["nll"], row["lik_s"] = val, dt
    if "pairs" in res:
        row["pairs"] = res["pairs"]
    return row


def coupling_costs(target, seed=0) -> list[dict]:
    """Coupling time vs the network's forward/backward at batch 512 (2 cores shared, 1 thread)."""
    from torchcfm.optimal_transport import OTPlanSampler

    from pushforward.matching import OTCoupling, transport_cost

    g = torch.Generator().manual_seed(seed)
    x1 = target.sample(512, generator=g).float()
    x1 = (x1 - x1.mean(0)) / x1.std(0)
    x0 = torch.randn(x1.shape, generator=g)
    dim = x1.shape[1]
    net = _net(dim)
    opt = torch.optim.Adam(net.parameters())
    t = torch.rand(512)

    def step():
        opt.zero_grad()
        (net(x0, t) - x1).pow(2).mean().backward()
        opt.step()

    def best(fn, r=15):
        fn()
        times = []
        for _ in range(r):
            s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - s)
        return float(np.median(times)) * 1e3

    sampler = OTPlanSampler(method="exact")
    rows = [{"what": "network fwd/bwd + Adam (3x128, batch 512)", "ms": best(step), "cost": None}]
    indep = float(transport_cost(x0, x1))
    rows.append({"what": "independent pairs", "ms": 0.0, "cost": indep})
    for label, c in (("ours: exact OT, matched blocks of 32 (default)", OTCoupling()),
                     ("ours: exact OT, matched blocks of 64", OTCoupling(block_size=64)),
                     ("ours: exact OT, whole batch (ot.emd)", OTCoupling(block_size=None, solver="emd"))):
        rows.append({"what": label, "ms": best(lambda c=c: c(x0, x1)), "cost": float(transport_cost(c(x0, x1), x1))})
    a, b = sampler.sample_plan(x0, x1)
    rows.append({"what": "torchcfm: OTPlanSampler('exact').sample_plan", "ms": best(lambda: sampler.sample_plan(x0, x1)),
                 "cost": float(transport_cost(a, b))})
    return rows


def reflow_rounds(target, budget, n_eval, ref) -> list[dict]:
    """1-, 2-, 3-rectified flow (independent coupling) and a distilled one-step model."""
    x_train = target.sample(20000, generator=torch.Generator().manual_seed(7)).float()
    model = pf.build("rectified", dim=x_train.shape[1], hidden=HIDDEN, reflow_rounds=0)
    pf.fit(model, x_train, max_time=budget, batch_size=BATCH, lr=LR, seed=0, progress=False, val_fraction=0.0)
    model.eval()
    x0 = torch.randn(1000, x_train.shape[1], generator=torch.Generator().manual_seed(3))
    rows = []
    models = [("1-rectified (fm)", model)]
    for k in (2, 3):
        models.append((f"{k}-rectified", pf.matching.reflow(models[-1][1], n=10000, steps=10**9, max_time=0.5 * budget,
                                                            batch_size=BATCH, lr=LR,
                                                            generator=torch.Generator().manual_seed(k))))
    models.append(("2-rectified, distilled (1 step)", pf.matching.distill(models[1][1], n=10000, steps=10**9,
                                                                          max_time=0.5 * budget, batch_size=BATCH,
                                                                          lr=LR, generator=torch.Generator().manual_seed(9))))
    for name, m in models:
        row = {"name": name, "straightness": pf.matching.straightness(m, x0=x0)}
        for k in (1, 2, 4):
            with torch.no_grad():
                s = m.sample(n_eval, steps=k, solver="euler", generator=torch.Generator().manual_seed(5))
            row[f"w2_{k}"] = _w2(s, ref)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def write_report(path, results, couplings, rounds, args, env):
    lines = ["# Flow matching benchmark", "",
             f"Run: `python benchmarks/matching.py --budget {args.budget}` ({env['when']}).",
             f"Machine: {env['machine']}; torch {env['torch']} on CPU with **1 thread**. The machine has 2 "
             "cores shared with other jobs running at the same time, so absolute times are noisy; all "
             "contenders ran in the same process, one after the other.",
             f"Budget: **{args.budget:.0f} s of training per contender per target** (equal CPU time), same "
             "network (TimeMLP 3x128 SiLU), batch 256, Adam lr 1e-3 with cosine decay. "
             f"W2: exact (POT) between {args.n_eval} samples and {args.n_eval} fresh target samples "
             "(`floor` = W2 between two target samples of that size: no model can be expected below it).",
             "", "Anchors: Meta `flow_matching` " + env["flow_matching"] + ", `torchcfm` " + env["torchcfm"] + ".", ""]
    for tname, rows in results.items():
        floor = rows[0]["floor"]
        lines += [f"## {tname} (dim {rows[0]['dim']}), floor W2 = {floor:.3f}", "",
                  "| contender | W2 1 step | 2 | 4 | 8 | adaptive | steps/s (timed loop) | steps/s (in run) | sample 4 steps (s) | sample adaptive (s) | NLL | likelihood time (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append("| " + " | ".join([r["name"], *[_fmt(r[f"w2_{k}"]) for k in ("1", "2", "4", "8", "adaptive")],
                                            _fmt(r.get("timed_steps_per_s"), 1),
                                            _fmt(r["steps_per_s"], 1), _fmt(r["sample_s_4"], 3),
                                            _fmt(r["sample_s_adaptive"], 2), _fmt(r.get("nll"), 3),
                                            _fmt(r.get("lik_s"), 2)]) + " |")
        lines.append("")
    lines += ["## Targets", "",
              "Throughput compares the timed loops (best of 5 interleaved rounds of about 1 s each, fresh models; ours "
              "is the whole `pf.fit(steps=N)` call). The 2-RF target is stated against both anchors' adaptive W2: "
              "TorchCFM OT-CFM (the issue's anchor for ot-fm) and Meta's independent FM (the strongest adaptive "
              "result in the table).", ""]
    for tname, rows in results.items():
        by = {r["name"]: r for r in rows}
        ours, rf, cfm, meta = by["ours ot-fm"], by["ours 2-rf"], by["torchcfm ot-cfm"], by["meta fm"]
        t1 = ours["w2_4"] <= cfm["w2_4"]
        t2 = rf["w2_1"] <= 1.25 * cfm["w2_adaptive"]
        t2m = rf["w2_1"] <= 1.25 * meta["w2_adaptive"]
        ratio = ours["timed_steps_per_s"] / cfm["timed_steps_per_s"]
        lines += [f"- **{tname}**: ot-fm 4-step W2 {ours['w2_4']:.3f} vs OT-CFM {cfm['w2_4']:.3f}: "
                  f"{'met' if t1 else 'NOT met'}; 2-RF 1-step W2 {rf['w2_1']:.3f} vs 1.25 x OT-CFM adaptive "
                  f"{1.25 * cfm['w2_adaptive']:.3f}: {'met' if t2 else 'NOT met'}, vs 1.25 x Meta FM adaptive "
                  f"{1.25 * meta['w2_adaptive']:.3f} ({rf['w2_1'] / meta['w2_adaptive']:.2f}x): "
                  f"{'met' if t2m else 'NOT met'}; throughput {ours['timed_steps_per_s']:.0f} vs "
                  f"{cfm['timed_steps_per_s']:.0f} steps/s ({ratio:.1f}x): {'met' if ratio >= 2 else 'NOT met'}."]
    lines += ["", "## Coupling cost at batch 512 (ms, median) and transport cost E||x0 - x1||^2", ""]
    for tname, rows in couplings.items():
        lines += [f"### {tname}", "", "| | ms | transport cost |", "|---|---|---|"]
        lines += [f"| {r['what']} | {r['ms']:.2f} | {_fmt(r['cost'])} |" for r in rows]
        lines.append("")
    if rounds:
        tname, rows = rounds
        lines += [f"## Reflow rounds on {tname} (independent coupling; each reflow {0.5 * args.budget:.0f} s on "
                  "10 000 own pairs)", "",
                  "Straightness: Liu et al. eq. 8, `E int ||(Z1 - Z0) - v(Zt, t)||^2 dt` (standardized units, "
                  "64 Euler steps, 1 000 trajectories); 0 = straight.", "",
                  "| model | straightness | W2 1 step | 2 steps | 4 steps |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['straightness']:.4f} | {r['w2_1']:.3f} | {r['w2_2']:.3f} | {r['w2_4']:.3f} |"
                  for r in rows]
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per contender per target")
    ap.add_argument("--targets", default="8gaussians,checkerboard,gmm10")
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="skip the reflow-rounds section")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "matching.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import flow_matching
    import torchcfm

    env = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, "flow_matching": getattr(flow_matching, "__version__", "?"),
           "torchcfm": getattr(torchcfm, "__version__", "?")}
    results, couplings = {}, {}
    for tname in args.targets.split(","):
        target = pf.data.get_target(tname)
        x_train = target.sample(20000, generator=torch.Generator().manual_seed(0)).float()
        ref = target.sample(args.n_eval, generator=torch.Generator().manual_seed(1)).float()
        floor = _w2(target.sample(args.n_eval, generator=torch.Generator().manual_seed(2)).float(), ref)
        x_lik = target.sample(500, generator=torch.Generator().manual_seed(3)).float()
        loc, scale = x_train.mean(0), x_train.std(0)
        dim = x_train.shape[1]
        couplings[tname] = coupling_costs(target)
        rows = []
        for name, fn in CONTENDERS.items():
            print(f"[{tname}] {name} ...", file=sys.stderr, flush=True)
            res = fn(x_train, args.budget, dim, loc, scale)
            row = evaluate(name, res, target, ref, args.n_eval, x_lik)
            row.update(floor=floor, dim=dim)
            rows.append(row)
            print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr)
        print(f"[{tname}] throughput ...", file=sys.stderr, flush=True)
        tp = throughput(x_train, dim, loc, scale)
        for r in rows:
            r["timed_steps_per_s"] = tp["steps_per_s"].get(r["name"])
        print("   ", tp, file=sys.stderr)
        results[tname] = rows
    rounds = None
    if not args.quick:
        tname = args.targets.split(",")[0]
        target = pf.data.get_target(tname)
        ref = target.sample(args.n_eval, generator=torch.Generator().manual_seed(1)).float()
        print(f"[{tname}] reflow rounds ...", file=sys.stderr, flush=True)
        rounds = (tname, reflow_rounds(target, args.budget, args.n_eval, ref))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_report(args.out, results, couplings, rounds, args, env)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"env": env, "budget": args.budget, "results": results, "couplings": couplings,
                   "rounds": rounds}, f, indent=1, default=float)
    print(open(args.out).read())


if __name__ == "__main__":
    main()
