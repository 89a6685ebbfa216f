"""Continuous-normalizing-flow benchmark: FFJORD against the CNFs users pick today.

Three parts, results to ``benchmarks/results/continuous.{md,jsonl}``:

1. Training at equal wall-clock budget on the density benchmark's closed-form targets
   (``pf.data.get_target``): pushforward ``ffjord`` (``pf.fit`` defaults; and with the RNODE
   regularisers), zuko's ``CNF`` and the minimal CNF of torchdiffeq's published example
   (``examples/cnf.py``: a hypernetwork of t gives the weights of a width-64 tanh field, exact
   trace by a per-dimension autograd loop, base N(0, 0.1 I), t from 0 to 10, dopri5 with
   ``odeint_adjoint`` at atol = rtol = 1e-5, Adam lr 1e-3, 512 points per step; rewritten here
   from its description). Measured: KL(p || q) in nats on fresh target points (exact
   likelihoods), W2 between 2000 model and 2000 target samples, NFE per likelihood and per
   sample solve, training steps, wall times.
2. NFE vs accuracy of each solver on the trained FFJORD: fixed-grid Euler/midpoint/RK4 at
   several step counts and dopri5 at several tolerances; errors against a dopri5 solve at
   atol = rtol = 1e-9 (log-likelihood and sample positions from the same noise) and W2 to the target.
3. Exact-divergence likelihood speed: the per-dimension autograd loop (reference) vs the batched
   VJP and the MLP trace of ``mlp_divergence`` (FFJORD's default), D = 2, 5, 10, batches 256,
   1000, 5000, inference and training.

Usage::

    python benchmarks/continuous.py --budget 60              # full run
    python benchmarks/continuous.py --budget 3 --quick       # smoke run (seconds)
    python benchmarks/continuous.py --skip train,solvers     # only the divergence table, spliced
                                                             # into the existing report
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import pushforward as pf
from pushforward.continuous import ode_log_prob
from pushforward.metrics import w2

RESULTS = os.path.join(os.path.dirname(__file__), "results")


@dataclass
class Contender:
    name: str
    make: Callable[[int], nn.Module]
    train: Callable  # (model, x_train, budget_s, seed) -> steps
    log_prob: Callable  # (model, x) -> ([N], nfe)
    sample: Callable  # (model, n, generator) -> ([n, D], nfe)


def _plain_loop(loss_fn, params, x, budget, seed, batch=512, lr=1e-3):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(x[idx]).backward()
        opt.step()
        steps += 1
    return steps


# ------------------------------------------------------------------ ours
def _ours(label: str, **opts) -> Contender:
    def train(model, x, budget, seed):
        return int(pf.fit(model, x, max_time=budget, seed=seed, progress=False).steps)

    def log_prob(m, x):
        lp = m.log_prob(x)
        return lp, m.nfe

    def sample(m, n, g):
        s = m.sample(n, generator=g)
        return s, m.nfe

    return Contender(label, lambda dim: pf.build("ffjord", dim, **opts), train, log_prob, sample)


# ------------------------------------------------------------------ zuko
class _Counter:
    """Counts forward calls of a module (zuko's field) as NFE."""

    def __init__(self, module: nn.Module):
        self.n = 0
        module.register_forward_hook(lambda *_: self._hit())

    def _hit(self):
        self.n += 1


def _zuko() -> Contender | None:
    try:
        import zuko
    except ImportError:
        return None

    def make(dim):
        flow = zuko.flows.CNF(dim)
        flow.counter = _Counter(flow.transform.ode)
        return flow

    def train(flow, x, budget, seed):
        return _plain_loop(lambda b: -flow().log_prob(b).mean(), flow.parameters(), x, budget, seed)

    def counted(flow, fn):
        before = flow.counter.n
        out = fn()
        return out, flow.counter.n - before

    return Contender(
        "zuko CNF", make, train,
        lambda f, x: counted(f, lambda: f().log_prob(x)),
        lambda f, n, g: counted(f, lambda: f().sample((n,))),
    )


# ------------------------------------------------------------------ torchdiffeq's example CNF
class HyperCNF(nn.Module):
    """The CNF of torchdiffeq's ``examples/cnf.py`` (Chen et al. 2018), written from its description.

    ``dz/dt = mean_w U_w(t) tanh(W_w(t)^T z + B_w(t))`` where a 3-layer tanh hypernetwork of t
    outputs ``W, U, G, B`` (``U <- U * sigmoid(G)``); the trace of the Jacobian is taken by one
    autograd call per dimension. Base N(0, 0.1 I); data at t = 10, noise at t = 0.
    """

    def __init__(self, dim: int, hidden: int = 32, width: int = 64):
        super().__init__()
        self.dim, self.width = dim, width
        self.block = width * dim
        self.hyper = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, 3 * self.block + width))
        self.nfe = 0

    def field(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p = self.hyper(t.reshape(1, 1)).reshape(-1)
        b = self.block
        w = p[:b].reshape(self.width, self.dim, 1)
        u = p[b:2 * b].reshape(self.width, 1, self.dim) * torch.sigmoid(p[2 * b:3 * b].reshape(self.width, 1, self.dim))
        bias = p[3 * b:].reshape(self.width, 1, 1)
        h = torch.tanh(z.unsqueeze(0).expand(self.width, -1, -1) @ w + bias)  # [width, N, 1]
        return (h @ u).mean(0)

    def forward(self, t, state):
        self.nfe += 1
        z = state[0]
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_(True)
            dz = self.field(t, z)
            tr = z.new_zeros(z.shape[0])
            for i in range(self.dim):
                tr = tr + torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
        return dz, -tr

    def base_log_prob(self, z):
        var = 0.1
        return -0.5 * (z * z).sum(-1) / var - 0.5 * self.dim * math.log(2 * math.pi * var)

    def log_prob(self, x, adjoint=True):
        import torchdiffeq

        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        t = torch.tensor([10.0, 0.0], dtype=x.dtype)
        z, dlogp = solve(self, (x, x.new_zeros(x.shape[0])), t, atol=1e-5, rtol=1e-5, method="dopri5",
                         **({"adjoint_params": tuple(self.parameters())} if adjoint else {}))
        # d log p / dt = -tr: integrating 10 -> 0 gives log p_10(x) - log p_0(z_0) = dlogp[-1] flipped
        return self.base_log_prob(z[-1]) - dlogp[-1]

    def sample(self, n, generator=None):
        import torchdiffeq

        z0 = torch.randn(n, self.dim, generator=generator) * math.sqrt(0.1)
        zs = torchdiffeq.odeint(lambda t, z: self.field(t, z), z0, torch.tensor([0.0, 10.0]), atol=1e-5, rtol=1e-5,
                                method="dopri5")
        return zs[-1]


def _torchdiffeq_example() -> Contender:
    def train(m, x, budget, seed):
        return _plain_loop(lambda b: -m.log_prob(b).mean(), m.parameters(), x, budget, seed)

    def log_prob(m, x):
        m.nfe = 0
        lp = m.log_prob(x, adjoint=False)
        return lp, m.nfe

    def sample(m, n, g):
        calls = [0]
        field = m.field

        def counted(t, z):
            calls[0] += 1
            return field(t, z)

        m.field = counted
        try:
            s = m.sample(n, g)
        finally:
            del m.field
        return s, calls[0]

    return Contender("torchdiffeq example CNF", HyperCNF, train, log_prob, sample)


# ------------------------------------------------------------------ part 1: training
def run_one(c: Contender, target, x_train, budget: float, seed: int, n_eval: int) -> tuple[dict, nn.Module]:
    torch.manual_seed(seed)
    model = c.make(target.dim)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    steps = c.train(model, x_train, budget, seed)
    train_s = time.perf_counter() - t0
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x_test = target.sample(n_eval, generator=g)
    with torch.no_grad():
        t0 = time.perf_counter()
        parts = [c.log_prob(model, b) for b in x_test.split(2500)]
        lp_s = time.perf_counter() - t0
        lq = torch.cat([p[0] for p in parts])
        nfe_lp = max(p[1] for p in parts)
        kl = float((target.log_prob(x_test) - lq).mean()) if torch.isfinite(lq).all() else float("inf")
        t0 = time.perf_counter()
        s, nfe_s = c.sample(model, 2000, torch.Generator().manual_seed(seed + 2))
        s_s = time.perf_counter() - t0
        w = w2(s, target.sample(2000, generator=g)) if torch.isfinite(s).all() else float("inf")
    return {
        "model": c.name, "kl": kl, "w2": w, "steps": steps, "train_s": train_s, "nfe_log_prob": nfe_lp,
        "nfe_sample": nfe_s, "log_prob_s_per_1k": lp_s / n_eval * 1000, "sample_s_per_1k": s_s / 2,
        "load": round((load0 + os.getloadavg()[0]) / 2, 2),
    }, model


def contenders(names: list[str] | None = None) -> list[Contender]:
    cs = [
        _ours("pushforward ffjord"),
        _ours("pushforward ffjord +RNODE", kinetic=0.01, jacobian=0.01),
        _zuko(),
        _torchdiffeq_example(),
    ]
    cs = [c for c in cs if c is not None]
    if names:
        cs = [c for c in cs if any(n.lower() in c.name.lower() for n in names)]
    return cs


# ------------------------------------------------------------------ part 2: solvers
def solver_table(model, target, quick: bool) -> list[dict]:
    model.eval()
    n = 500 if quick else 2000
    g = torch.Generator().manual_seed(123)
    x = target.sample(n, generator=g)
    ref_t = target.sample(n, generator=g)
    with torch.no_grad():
        lp_ref = model.log_prob(x, atol=1e-9, rtol=1e-9)
        s_ref = model.sample(n, generator=torch.Generator().manual_seed(7), atol=1e-9, rtol=1e-9)
        rows = []
        configs = [(s, k, None) for s in ("euler", "midpoint", "rk4") for k in ((2, 8) if quick else (2, 4, 8, 16, 32))]
        configs += [("dopri5", None, tol) for tol in ((1e-3,) if quick else (1e-2, 1e-3, 1e-4, 1e-5, 1e-7))]
        for solver, steps, tol in configs:
            kw = {"solver": solver, "steps": steps}
            if tol is not None:
                kw.update(atol=tol, rtol=tol)
            t0 = time.perf_counter()
            lp = model.log_prob(x, **kw)
            lp_s = time.perf_counter() - t0
            nfe_lp = model.nfe
            s = model.sample(n, generator=torch.Generator().manual_seed(7), **kw)
            rows.append({
                "solver": solver, "steps": steps, "tol": tol, "nfe_log_prob": nfe_lp, "nfe_sample": model.nfe,
                "lp_err": float((lp - lp_ref).abs().mean()), "sample_err": float((s - s_ref).norm(dim=-1).mean()),
                "w2": w2(s, ref_t), "log_prob_s": lp_s,
            })
            print(json.dumps(rows[-1]), flush=True)
    rows.append({"solver": "reference dopri5 1e-9", "w2": w2(s_ref, ref_t)})
    return rows


# ------------------------------------------------------------------ part 3: divergence speed
def _likelihood_call(model, x, method: str, mode: str) -> Callable[[], None]:
    fast = model.velocity_field().with_divergence if method == "auto" else None

    def go():
        kw = dict(solver="rk4", steps=5, exact_method=method, velocity_divergence=fast)
        if mode == "inference":
            with torch.no_grad():
                ode_log_prob(lambda y, t: model.velocity(y, t), x, model.base.log_prob, **kw)
        else:
            model.zero_grad()
            lp, _ = ode_log_prob(lambda y, t: model.velocity(y, t), x, model.base.log_prob, **kw)
            lp.mean().backward()

    return go


def _forward_only_call(model, x) -> Callable[[], None]:
    """The same RK4 solve with the velocity alone: a floor for any exact-divergence method."""

    def go():
        with torch.no_grad():
            pf.continuous.odeint(lambda t, y: model.velocity(y, t), x, [1.0, 0.0], solver="rk4", steps=5)

    return go


def _interleaved_best(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Best CPU time of each call over ``rounds`` rounds, the calls taking turns within a round:
    on a shared machine a burst of load then hits every method alike."""
    for fn in calls.values():
        fn()  # warm-up
    best = dict.fromkeys(calls, math.inf)
    for _ in range(rounds):
        for key, fn in calls.items():
            t0 = time.process_time()
            fn()
            best[key] = min(best[key], time.process_time() - t0)
    return best


def divergence_speed(quick: bool) -> list[dict]:
    rows = []
    dims = (2, 10) if quick else (2, 5, 10)
    batches = (256,) if quick else (256, 1000, 5000)
    rounds = 2 if quick else 5
    # The default field (two hidden layers: the trace is cyclic, one GEMM whatever D) and FFJORD's
    # three layers of 64 at about the same forward cost (D Jacobian columns meeting in the middle).
    fields = {"2x96": (96, 96)} if quick else {"3x64": (64, 64, 64), "2x96": (96, 96)}
    for (fname, hidden), d in itertools.product(fields.items(), dims):
        torch.manual_seed(0)
        model = pf.build("ffjord", d, hidden=hidden)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        for n in batches:
            x = torch.randn(n, d)
            row = {"field": fname, "dim": d, "batch": n}
            calls = {"forward_only": _forward_only_call(model, x)}
            for mode in ("inference", "training"):
                for method in ("loop", "batched", "auto"):
                    calls[f"{mode}_{method}"] = _likelihood_call(model, x, method, mode)
            row.update({f"{k}_ms": 1000 * v for k, v in _interleaved_best(calls, rounds).items()})
            for mode in ("inference", "training"):
                row[f"{mode}_speedup_fast"] = row[f"{mode}_loop_ms"] / row[f"{mode}_auto_ms"]
                row[f"{mode}_speedup_batched"] = row[f"{mode}_loop_ms"] / row[f"{mode}_batched_ms"]
            # No exact method can beat the loop by more than loop / (forward alone).
            row["inference_bound"] = row["inference_loop_ms"] / row["forward_only_ms"]
            row["load"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per model and target")
    p.add_argument("--targets", default="ring,spiral")
    p.add_argument("--models", default="", help="comma-separated substrings of contender names")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-eval", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smaller evaluation sets and tables (smoke run)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: train,solvers,divergence")
    p.add_argument("--out", default=os.path.join(RESULTS, "continuous"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.n_eval = min(args.n_eval, 1000)
    rows, solver_rows, div_rows = [], {}, []
    for tname in args.targets.split(","):
        target = pf.data.get_target(tname)
        x_train = target.sample(args.n_train, generator=torch.Generator().manual_seed(args.seed))
        for c in contenders([m for m in args.models.split(",") if m]) if "train" not in skip else []:
            r, model = run_one(c, target, x_train, args.budget, args.seed, args.n_eval)
            r["target"] = tname
            rows.append(r)
            print(json.dumps(r), flush=True)
            if c.name == "pushforward ffjord" and "solvers" not in skip:
                solver_rows[tname] = solver_table(model, target, args.quick)
    if "divergence" not in skip:
        div_rows = divergence_speed(args.quick)
    if {"train", "solvers"} <= skip and div_rows and os.path.exists(args.out + ".md"):
        write_divergence_only(div_rows, args.out)
        return
    write_results(rows, solver_rows, div_rows, args)


def write_results(rows, solver_rows, div_rows, args) -> None:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".jsonl", "w") as f:
        for kind, rs in (("train", rows), ("divergence", div_rows)):
            for r in rs:
                f.write(json.dumps({"part": kind, **r}) + "\n")
        for tname, rs in solver_rows.items():
            for r in rs:
                f.write(json.dumps({"part": "solvers", "target": tname, **r}) + "\n")
    lines = [
        f"# Continuous normalizing flows ({args.budget:g} s training budget per model and target)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (the `load` column is the "
        f"1-minute load average during training: wall-clock budgets buy fewer steps under load), torch "
        f"{torch.__version__}, {args.threads} thread(s); python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d')}.",
        f"Training set {args.n_train} points; KL on {args.n_eval} fresh target points (exact likelihoods, each "
        "model's default solver); W2 on 2000 vs 2000 samples. NFE: field evaluations of one likelihood solve "
        "(a batch of 2500) and of one sampling solve. Generated by `python benchmarks/continuous.py "
        f"--budget {args.budget:g}`.",
        "",
        "## Equal-budget training",
        "",
        "| target | model | KL (nats) | W2 | train steps | NFE log_prob | NFE sample | log_prob s/1k | sample s/1k | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['model']} | {r['kl']:.4f} | {r['w2']:.3f} | {r['steps']} | {r['nfe_log_prob']} | "
            f"{r['nfe_sample']} | {r['log_prob_s_per_1k']:.3f} | {r['sample_s_per_1k']:.3f} | {r['load']} |"
        )
    for tname, rs in solver_rows.items():
        lines += [
            "",
            f"## NFE vs accuracy of each solver (trained `ffjord`, target {tname})",
            "",
            "Errors against dopri5 at atol = rtol = 1e-9: mean |log p error| and mean sample displacement "
            "(same noise); W2 to fresh target samples.",
            "",
            "| solver | steps / tol | NFE log_prob | NFE sample | mean abs log p error | sample error | W2 | log_prob s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rs:
            if "nfe_log_prob" not in r:
                lines.append(f"| {r['solver']} | | | | 0 | 0 | {r['w2']:.3f} | |")
                continue
            knob = r["steps"] if r["steps"] is not None else f"{r['tol']:g}"
            lines.append(
                f"| {r['solver']} | {knob} | {r['nfe_log_prob']} | {r['nfe_sample']} | {r['lp_err']:.2e} | "
                f"{r['sample_err']:.2e} | {r['w2']:.3f} | {r['log_prob_s']:.3f} |"
            )
    if div_rows:
        lines += _divergence_section(div_rows)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


DIVERGENCE_HEADING = "## Exact-divergence likelihood: speed-up over the per-dimension autograd loop"


def _divergence_section(div_rows: list[dict]) -> list[str]:
    lines = [
        "",
        DIVERGENCE_HEADING,
        "",
        "One `ode_log_prob` solve (RK4, 5 steps = 20 field evaluations) of an `ffjord` field (ConcatSquash, "
        "tanh, the same module for every method): `2x96` is the default (two hidden layers of 96), `3x64` "
        "FFJORD's published toy field (three of 64, about the same forward cost); exact trace, float32, one thread. "
        "`fast` = `velocity_with_divergence` (the MLP trace of `mlp_divergence`, what `ffjord` uses "
        "by default: D Jacobian columns meeting in the middle for 3x64, the cyclic one-GEMM trace for 2x96); `batched` = all D VJPs in one vmapped backward (any field); `loop` = one "
        "autograd VJP per dimension. `fwd only` = the same solve with the velocity alone, so "
        "`bound` = loop / fwd only is the most any exact method could gain. Training = the solve plus "
        "`backward()` of the mean log-likelihood. Best CPU time (`time.process_time`) of 5 rounds in which the methods take turns; `load` = "
        "1-minute load average on the 2-CPU machine at the end of the row.",
        "",
        "| field | D | batch | fwd only ms | inference loop ms | batched | fast | speed-up fast | bound | "
        "training loop ms | batched | fast | speed-up fast | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in div_rows:
        lines.append(
            f"| {r.get('field', '3x64')} | {r['dim']} | {r['batch']} | {r['forward_only_ms']:.1f} | {r['inference_loop_ms']:.1f} | "
            f"{r['inference_batched_ms']:.1f} | {r['inference_auto_ms']:.1f} | "
            f"{r['inference_speedup_fast']:.2f}x | {r['inference_bound']:.2f}x | {r['training_loop_ms']:.1f} | "
            f"{r['training_batched_ms']:.1f} | {r['training_auto_ms']:.1f} | {r['training_speedup_fast']:.2f}x | "
            f"{r['load']} |"
        )
    return lines


def write_divergence_only(div_rows: list[dict], out: str) -> None:
    """Replace only the divergence table of an existing report (``--skip train,solvers``): the
    training and solver tables and the hand-written reading stay as they are."""
    with open(out + ".md") as f:
        text = f.read()
    start = text.index(DIVERGENCE_HEADING) - 1  # the blank line before the heading
    end = text.find("\n## ", start + len(DIVERGENCE_HEADING) + 1)
    section = "\n".join(_divergence_section(div_rows)) + "\n"
    text = text[:start] + section + (text[end:] if end >= 0 else "")
    with open(out + ".md", "w") as f:
        f.write(text)
    kept = []
    if os.path.exists(out + ".jsonl"):
        with open(out + ".jsonl") as f:
            kept = [line for line in f if json.loads(line).get("part") != "divergence"]
    with open(out + ".jsonl", "w") as f:
        f.writelines(kept)
        for r in div_rows:
            f.write(json.dumps({"part": "divergence", **r}) + "\n")
    print(section)


if __name__ == "__main__":
    main()
