"""Simulation-based inference benchmark: posterior estimators against exact posteriors.

Protocol (Lueckmann et al. 2021, "Benchmarking simulation-based inference", scaled to the
machine): for each task (``pushforward.data.simulators``: two-moons with a grid posterior,
linear-Gaussian 10-D with its conjugate posterior, a Gaussian mixture) and each simulation
budget, every contender is trained on the same simulations; for ``--n-obs`` fixed observations
(simulated from prior draws under a fixed seed) it draws ``--n-post`` posterior samples and C2ST
(``pf.metrics.c2st``, 0.5 is perfect) is measured against as many exact posterior samples.
SBC (``pf.diagnostics``): chi-square p-value of the rank histograms on ``--n-sbc`` test
simulations with 100 draws each (the smallest over coordinates).

Contenders, interleaved in one run:

- ``pf:<name>``: pushforward's own API, ``build_posterior(name, ...)`` + ``pf.fit`` with its
  defaults: ``--budget converge`` (default) gives no budget, so a posterior trains to
  convergence (validation once per epoch, stop after 20 epochs without improvement, best
  weights, 600 s cap; ``pf.fit``'s "Training to convergence"); ``--budget S`` caps it at S
  seconds instead (cosine over S, still early stopping);
- ``pf-sbi:<name>``: the same model through sbi's ``NPE(density_estimator=posterior_nn(name))``,
  trained by sbi's loop with sbi's defaults (early stopping after 20 epochs without improvement);
- ``sbi:<maf|nsf|zuko_nsf>``: sbi's NPE with its own flows, sbi defaults;
- ``sbi:fmpe``: sbi's flow-matching estimator, defaults.

sbi's loop trains to convergence (``--sbi-max-epochs`` caps it on slow machines; the results
say when a cap was hit). Results: ``benchmarks/results/sbi.{jsonl,md}``.

Usage::

    python benchmarks/sbi.py --tasks two-moons --sims 1000,10000              # pf converges
    python benchmarks/sbi.py --tasks two-moons --sims 1000,10000 --budget 60  # pf capped at 60 s
    python benchmarks/sbi.py --quick          # smoke run (a minute)
    python benchmarks/sbi.py --coupling       # conditional OT-FM: cross-condition OT vs within
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
# This file is named sbi.py: drop its folder from the path so `import sbi` finds the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pushforward as pf  # noqa: E402
from pushforward.data.simulators import get_simulator  # noqa: E402
from pushforward.diagnostics import sbc_ranks, sbc_uniformity  # noqa: E402
from pushforward.metrics import c2st  # noqa: E402
from pushforward.posterior import build_posterior  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


class _SbiSampler:
    """Our diagnostics' sampler interface (``sample(n, context)``) over an sbi posterior."""

    def __init__(self, estimator, posterior=None):
        self.est, self.posterior = estimator, posterior

    @torch.no_grad()
    def sample(self, n, context, generator=None):
        # one draw per context row: sample_shape (1,), batch of conditions
        if not hasattr(self.est, "sample"):
            # sbi 0.27's FlowMatchingEstimator has no sample: its posterior's batched sampler (an
            # SDE), raw like the other estimators' (no prior rejection: with it, an SBC
            # simulation whose posterior leaks out of the prior never returns)
            return self.posterior.sample_batched((1,), x=context.float(), show_progress_bars=False,
                                                 reject_outside_prior=False)[0]
        return self.est.sample(torch.Size([1]), context.float())[0]


# Named variants: (pf.build name, options). ot-fm-cross pairs noise with parameters across
# different observations (the old behaviour); ot-fm-within only within equal observations.
VARIANTS = {"ot-fm-cross": ("ot-fm", {"by_context": False}), "ot-fm-within": ("ot-fm", {"by_context": True})}


def train_contender(kind: str, task, theta, x, budget: float | None, sbi_max_epochs: int | None, seed: int):
    """Train one contender; returns ``(sample_fn(x_o, n) -> [n, P], sampler for SBC, info)``."""
    torch.manual_seed(seed)
    family, _, name = kind.partition(":")
    name, options = VARIANTS.get(name, (name, {}))
    t0 = time.perf_counter()
    info: dict = {}
    if family == "pf":
        post = build_posterior(name, task.theta_dim, task.x_dim, prior=task.prior, **options)
        hist = pf.fit(post, theta, context=x, seed=seed, **({} if budget is None else {"max_time": budget}))
        info["steps"] = getattr(hist, "steps", None)
        info["stopped"] = hist.get("stopped_reason")
        info["best_step"] = hist.get("best_step")
        info["pf_epochs"] = hist.get("epochs")
        post.eval()

        def sample(x_o, n):
            with torch.no_grad():
                return post.sample(n, x_o.float())

        info["train_s"] = time.perf_counter() - t0
        return sample, post, info
    from sbi.inference import FMPE, NPE
    from sbi.neural_nets import posterior_nn as sbi_posterior_nn

    if family == "pf-sbi":
        from pushforward.integrations.sbi import posterior_nn

        inf = NPE(task.prior, density_estimator=posterior_nn(name, **options), show_progress_bars=False)
    elif name == "fmpe":
        inf = FMPE(task.prior, show_progress_bars=False)
    else:
        inf = NPE(task.prior, density_estimator=sbi_posterior_nn(name), show_progress_bars=False)
    inf.append_simulations(theta, x)
    kw = {} if sbi_max_epochs is None else {"max_num_epochs": sbi_max_epochs}
    est = inf.train(**kw)
    info["train_s"] = time.perf_counter() - t0
    info["epochs"] = inf.summary.get("epochs_trained", [None])[-1] if hasattr(inf, "summary") else None
    info["capped"] = sbi_max_epochs is not None and info["epochs"] is not None and info["epochs"] >= sbi_max_epochs
    posterior = inf.build_posterior()
    est.eval()

    def sample(x_o, n):
        with torch.no_grad():
            return posterior.sample((n,), x=x_o.float(), show_progress_bars=False)

    return sample, _SbiSampler(est, posterior), info


def run_budget(task_name: str, n_sims: int, contenders: list[str], args, out) -> list[dict]:
    task = get_simulator(task_name)
    g = torch.Generator().manual_seed(args.seed)
    theta, x = task.sample_joint(n_sims, g)
    g_obs = torch.Generator().manual_seed(1000 + args.seed)
    obs = task.simulate(task.sample_prior(args.n_obs, g_obs), g_obs)
    refs = [task.posterior_sample(obs[i], args.n_post, torch.Generator().manual_seed(2000 + i)) for i in range(args.n_obs)]
    g_sbc = torch.Generator().manual_seed(3000 + args.seed)
    th_sbc, x_sbc = task.sample_joint(args.n_sbc, g_sbc) if args.n_sbc else (None, None)
    rows = []
    for kind in contenders:
        row = {"task": task_name, "sims": n_sims, "contender": kind, "load": _uptime()}
        try:
            sample, sampler, info = train_contender(kind, task, theta, x, args.budget, args.sbi_max_epochs,
                                                    args.seed)
            row.update(info)
            t0 = time.perf_counter()
            scores = [c2st(sample(obs[i], args.n_post), refs[i], seed=i) for i in range(args.n_obs)]
            row["sample_and_c2st_s"] = time.perf_counter() - t0
            row["c2st"] = float(np.mean(scores))
            row["c2st_per_obs"] = scores
            if args.n_sbc:
                ranks = sbc_ranks(sampler, th_sbc, x_sbc, n_samples=100, seed=args.seed)
                row["sbc_min_p"] = float(sbc_uniformity(ranks, 100)["pvalue"].min())
        except Exception as err:  # a failing contender is a result, not a crash of the run
            row["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()
        rows.append(row)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| task | sims | contender | C2ST (mean) | C2ST per obs | SBC min p | train s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("error", "")
        if r.get("capped"):
            note = f"epoch cap {r.get('epochs')} hit"
        elif r.get("epochs") is not None:
            note = f"{r['epochs']} epochs"
        elif r.get("steps") is not None:
            note = f"{r['steps']} steps"
            if r.get("stopped"):
                note += f" ({r.get('pf_epochs', 0):.0f} epochs, {r['stopped']}, best at step {r.get('best_step')})"
        if r.get("error") and note != r["error"]:
            note += f"; SBC not measured ({r['error'][:60]})"
        per = ", ".join(f"{s:.3f}" for s in r.get("c2st_per_obs", []))
        lines.append(f"| {r['task']} | {r['sims']} | {r['contender']} | {r.get('c2st', float('nan')):.3f} | {per} | "
                     f"{r.get('sbc_min_p', float('nan')):.3f} | {r.get('train_s', float('nan')):.0f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="two-moons")
    p.add_argument("--sims", default="1000,10000")
    p.add_argument("--contenders", default="pf:nsf,pf:fm,pf-sbi:nsf,sbi:maf,sbi:nsf,sbi:zuko_nsf,sbi:fmpe")
    p.add_argument("--budget", default="converge",
                   help="pf: contenders: 'converge' (no budget: to convergence, 600 s cap) or a cap in seconds")
    p.add_argument("--sbi-max-epochs", type=int, default=None)
    p.add_argument("--n-obs", type=int, default=3)
    p.add_argument("--n-post", type=int, default=2000)
    p.add_argument("--n-sbc", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--coupling", action="store_true",
                   help="conditional ot-fm: OT across conditions (by_context=False) vs within (True)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.budget = None if args.budget == "converge" else float(args.budget)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.quick:
        args.sims, args.budget, args.n_obs, args.n_post, args.n_sbc = "500", 5.0, 1, 500, 0
        args.sbi_max_epochs = 5
    contenders = args.contenders.split(",")
    stem = "sbi_coupling" if args.coupling else "sbi"
    if args.coupling:
        contenders = ["pf:ot-fm-cross", "pf:ot-fm-within", "pf:fm"]
    out_path = args.out or os.path.join(RESULTS, f"{stem}{'_quick' if args.quick else ''}.jsonl")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    rows: list[dict] = []
    with open(out_path, "w") as out:
        for task_name in args.tasks.split(","):
            for n in (int(s) for s in args.sims.split(",")):
                rows += run_budget(task_name, n, contenders, args, out)
    header = (f"# SBI benchmark ({'coupling' if args.coupling else 'estimators'})\n\n"
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, one thread; load at start: {rows[0]['load'] if rows else 'n/a'}. "
              f"pf: {'to convergence (600 s cap)' if args.budget is None else f'budget {args.budget:.0f} s'}; sbi: defaults"
              f"{'' if args.sbi_max_epochs is None else f', max_num_epochs={args.sbi_max_epochs}'}; "
              f"{args.n_obs} observations x {args.n_post} posterior samples; SBC on {args.n_sbc} simulations.\n\n"
              f"Command: `python benchmarks/{os.path.basename(__file__)} {' '.join(argv or sys.argv[1:])}`")
    with open(out_path.replace(".jsonl", ".md"), "w") as f:
        f.write(markdown(rows, header))


if __name__ == "__main__":
    main()
