"""Density-estimation benchmark: pushforward against the flows users pick today.

Every contender trains for the same wall-clock budget, on the same machine, in one run, on the
same training set drawn from a target with a closed-form density, then is measured on:

- KL(p || q) = E_p[log p - log q] in nats on fresh target samples (0 is the limit);
- W2 between model samples and target samples (exact, POT);
- train steps/s; log_prob and sample throughput (points/s).

Anchors: zuko NSF/MAF/RealNVP and normflows RealNVP/NSF (``pip install -e '.[bench]'``).
Anchors train with the loop their documentation shows (Adam, lr 1e-3, batch 512); ours train with
``pf.fit`` and its defaults, which is what a user gets.

Usage::

    python benchmarks/density.py --budget 60            # full table -> benchmarks/results/density.md
    python benchmarks/density.py --budget 5 --targets ring --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import pushforward as pf
from pushforward.metrics import w2

RESULTS = os.path.join(os.path.dirname(__file__), "results")


@dataclass
class Contender:
    name: str
    make: Callable[[int], torch.nn.Module]
    train: Callable  # (model, x_train, budget_s, seed) -> steps
    log_prob: Callable  # (model, x) -> [N]
    sample: Callable  # (model, n) -> [n, D]


# ------------------------------------------------------------------ ours
def _ours(name: str, label: str | None = None, **opts) -> Contender:
    def make(dim):
        return pf.build(name, dim=dim, **opts)

    def train(model, x, budget, seed):
        hist = pf.fit(model, x, max_time=budget, seed=seed, progress=False)
        return int(hist.steps)

    return Contender(f"pushforward {label or name}", make, train, lambda m, x: m.log_prob(x), lambda m, n: m.sample(n))


# ------------------------------------------------------------------ anchors
def _plain_loop(loss_fn, params, x, budget, seed, batch=512, lr=1e-3):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x[idx])
        loss.backward()
        opt.step()
        steps += 1
    return steps


def _zuko(kind: str, **opts) -> Contender | None:
    try:
        import zuko
    except ImportError:
        return None
    cls = {"NSF": zuko.flows.NSF, "MAF": zuko.flows.MAF, "RealNVP": zuko.flows.RealNVP}[kind]

    def train(flow, x, budget, seed):
        return _plain_loop(lambda b: -flow().log_prob(b).mean(), flow.parameters(), x, budget, seed)

    return Contender(
        f"zuko {kind}",
        lambda dim: cls(dim, **opts),
        train,
        lambda f, x: f().log_prob(x),
        lambda f, n: f().sample((n,)),
    )


def _normflows(kind: str, blocks: int = 8, hidden: int = 64) -> Contender | None:
    try:
        import normflows as nf
    except ImportError:
        return None

    def make(dim):
        flows = []
        for i in range(blocks):
            if kind == "RealNVP":
                mask = torch.tensor([(j + i) % 2 for j in range(dim)], dtype=torch.float32)
                s = nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True)
                t = nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True)
                flows += [nf.flows.MaskedAffineFlow(mask, t, s), nf.flows.ActNorm(dim)]
            else:  # autoregressive rational-quadratic spline, as in normflows' examples
                flows += [nf.flows.AutoregressiveRationalQuadraticSpline(dim, 2, hidden), nf.flows.LULinearPermute(dim)]
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)

    def train(m, x, budget, seed):
        return _plain_loop(lambda b: m.forward_kld(b), m.parameters(), x, budget, seed)

    return Contender(f"normflows {kind}", make, train, lambda m, x: m.log_prob(x), lambda m, n: m.sample(n)[0])


# ------------------------------------------------------------------ heavy-tailed targets
class StudentTMixture(pf.data.targets.Target):
    """Equal mixture of product Student-t components (``df`` dof, scale ``scale``) at ``means [K, D]``.

    ``log p(x) = logsumexp_k sum_i log t_df((x_i - m_ki) / scale) - D log scale - log K``.
    """

    def __init__(self, means: torch.Tensor, df: float, scale: float, name: str):
        self.means, self.df, self.scale, self.name = means.float(), float(df), float(scale), name
        self.dim = int(means.shape[1])

    def log_prob(self, x):
        x = self._check(x)
        t = torch.distributions.StudentT(self.df)
        lp = t.log_prob((x[:, None, :] - self.means) / self.scale).sum(-1) - self.dim * math.log(self.scale)
        return torch.logsumexp(lp, -1) - math.log(self.means.shape[0])

    def sample(self, n, generator=None):
        k = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        z = torch.randn(n, self.dim, generator=generator)
        # t = z / sqrt(chi2_df / df); chi2_df / df = Gamma(df/2) / (df/2). torch's gamma sampler
        # takes no generator, so a forked global RNG is seeded from the generator.
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            w = torch._standard_gamma(torch.full((n, self.dim), self.df / 2)) / (self.df / 2)
        return self.means[k] + self.scale * z / torch.sqrt(w)


def extra_targets() -> dict:
    """Heavy-tailed targets of this benchmark: funnels in 5-D / 10-D, Student-t mixtures."""
    return {
        "funnel5": lambda: pf.data.targets.FunnelTarget(5, name="funnel5"),
        "student2": lambda: StudentTMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 2.0, 0.5, "student2"),
        "student3-5d": lambda: StudentTMixture(
            torch.stack([torch.full((5,), -1.5), torch.full((5,), 1.5)]), 3.0, 0.5, "student3-5d"),
    }


def get_target(name: str):
    extra = extra_targets()
    return extra[name]() if name in extra else pf.data.get_target(name)


# ------------------------------------------------------------------ measurement
def _throughput(fn, n: int, repeats: int = 3) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def run_one(c: Contender, target, x_train, budget: float, seed: int, n_eval: int) -> dict:
    torch.manual_seed(seed)
    model = c.make(target.dim)
    t0 = time.perf_counter()
    steps = c.train(model, x_train, budget, seed)
    elapsed = time.perf_counter() - t0
    if hasattr(model, "eval"):
        model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x_test = target.sample(n_eval, generator=g)
    with torch.no_grad():
        lq = torch.cat([c.log_prob(model, b) for b in x_test.split(5000)])
        lp = target.log_prob(x_test)
        finite = torch.isfinite(lq)
        kl = float((lp - lq)[finite].mean()) if finite.all() else float("inf")
        s = c.sample(model, 2000)
        w = w2(s, target.sample(2000, generator=g)) if torch.isfinite(s).all() else float("inf")
        xb = x_test[:10000]
        lp_tp = _throughput(lambda: c.log_prob(model, xb), xb.shape[0])
        s_tp = _throughput(lambda: c.sample(model, 10000), 10000)
    return {
        "model": c.name, "kl": kl, "w2": w, "steps": steps, "steps_per_s": steps / elapsed,
        "log_prob_per_s": lp_tp, "sample_per_s": s_tp, "train_s": elapsed,
    }


def contenders(names: list[str] | None = None) -> list[Contender]:
    cs = [
        _ours("nsf"), _ours("nsf", "nsf tails=False", tails=False), _ours("maf"), _ours("realnvp"),
        _zuko("NSF"), _zuko("MAF"), _zuko("RealNVP"),
        _normflows("RealNVP"), _normflows("NSF"),
    ]
    cs = [c for c in cs if c is not None]
    if names:
        cs = [c for c in cs if any(n.lower() in c.name.lower() for n in names)]
    return cs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per model and target")
    p.add_argument("--targets", default="ring,spiral,checkerboard,gmm10,funnel10")
    p.add_argument("--models", default="", help="comma-separated substrings of contender names")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-eval", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(RESULTS, "density"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The first optimizer built in a process imports torch._dynamo (~5 s): pay it before timing.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows = []
    for tname in args.targets.split(","):
        target = get_target(tname)
        x_train = target.sample(args.n_train, generator=torch.Generator().manual_seed(args.seed))
        for c in contenders([m for m in args.models.split(",") if m]):
            r = run_one(c, target, x_train, args.budget, args.seed, args.n_eval)
            r["target"] = tname
            rows.append(r)
            print(json.dumps(r), flush=True)
    write_table(rows, args)


def write_table(rows: list[dict], args) -> None:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = [
        f"# Density benchmark ({args.budget:g} s training budget per model and target)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads; python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d')}.",
        f"Training set {args.n_train} points; KL on {args.n_eval} fresh target points; W2 on 2000 vs 2000.",
        "",
        "| target | model | KL (nats) | W2 | steps/s | log_prob pts/s | sample pts/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['model']} | {r['kl']:.4f} | {r['w2']:.3f} | {r['steps_per_s']:.0f} | "
            f"{r['log_prob_per_s']:.3g} | {r['sample_per_s']:.3g} |"
        )
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
