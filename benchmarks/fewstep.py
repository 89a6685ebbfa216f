"""Few-step benchmark: pushforward's rectified recipe, meanflow, shortcut, consistency vs anchors, one run.

Every contender trains the same network size (a TimeMLP 3 x 128 SiLU with a 32-d sinusoidal time
embedding; the few-step models add a 32-d embedding of the step length d as extra input) on the
same standardized training set for the same CPU time budget, batch 256, Adam lr 1e-3, cosine decay.
Contenders are interleaved per target (one after the other in one process).

- ``ours rectified``: ``pf.build("rectified", distill=True)`` + ``pf.fit`` (1-RF 50 %, reflow 25 %
  including its pair solve, one-step distillation 25 % of the budget); 2/4 steps are Euler.
- ``ours meanflow`` (``loss="meanflow"``), ``ours meanflow imf`` (``loss="imf"``),
  ``ours shortcut``: ``pf.fit`` with the model defaults; ``ours consistency`` (``method="cfm"``,
  consistency flow matching) and ``ours consistency-sct`` (``method="sct"``, continuous-time
  consistency training; k steps are multistep consistency sampling), each with its defaults, plus
  three sCT settings (``warmup=0``, ``sigma_d=0.5``, ``time_scale=100``).
- ``lucidrains meanflow``: ``rectified_flow_pytorch.mean_flow.MeanFlow`` (its defaults: adaptive
  weight p = 0.5, logit-normal times, 50 % flow-matching batches) around the same StepNet,
  trained with the anchors' loop; 1 step is its ``sample``, 2/4 its ``slow_sample``.
- ``torchcfm ot-cfm`` and ``meta fm``: flow matching as in ``benchmarks/matching.py``; k steps
  are k Euler steps, ``adaptive`` dopri5 (1e-5).

W2: exact (POT) between 2000 samples and 2000 fresh target samples. ``adaptive`` for ours is the
ODE of the instantaneous velocity (``sample(solver="dopri5")``): the density view of the model.

Usage::

    PYTHONPATH=src:/path/to/anchors python benchmarks/fewstep.py --budget 10   # -> results/fewstep.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import pushforward as pf
from pushforward.matching.fewstep import StepNet
from pushforward.nets import TimeMLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matching as fm_bench  # noqa: E402  (the anchors' loop, TorchCFM and Meta contenders)

HIDDEN, BATCH, LR = (128, 128, 128), 256, 1e-3
STEPS = (1, 2, 4)


def _ours(name, **options):
    def run(x_train, budget, dim, loc, scale):
        torch.manual_seed(0)
        model = pf.build(name, dim=dim, hidden=HIDDEN, **options)
        hist = pf.fit(model, x_train, max_time=budget, batch_size=BATCH, lr=LR, seed=0, progress=False,
                      val_fraction=0.0)
        model.eval()

        def sample(n, steps, g):
            with torch.no_grad():
                if steps is None:
                    return model.sample(n, solver="dopri5", generator=g)
                if name == "rectified":
                    return model.sample(n, steps=steps, solver="euler", generator=g) if steps > 1 else \
                        model.sample(n, generator=g)
                return model.sample(n, steps=steps, generator=g)

        return {"sample": sample, "steps": hist.steps, "elapsed": hist.elapsed}

    return run


def run_lucidrains_meanflow(x_train, budget, dim, loc, scale):
    import importlib.util

    # The package's __init__ imports torchvision (not installed here); mean_flow.py needs only einops.
    spec = importlib.util.find_spec("rectified_flow_pytorch")
    if spec is None:
        raise ImportError("rectified_flow_pytorch")
    path = Path(next(iter(spec.submodule_search_locations))) / "mean_flow.py"
    mod_spec = importlib.util.spec_from_file_location("lucid_mean_flow", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    LucidMeanFlow = mod.MeanFlow

    torch.manual_seed(0)
    net = StepNet(TimeMLP(dim, context_dim=32, hidden=HIDDEN), 32)

    class Wrapped(torch.nn.Module):
        """Its time runs data (0) -> noise (1) and it predicts noise - data: ours reversed."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, tau, delta):
            return -self.net(x, 1 - tau, delta)

    mf = LucidMeanFlow(Wrapped(), data_shape=(dim,))
    xs = (x_train - loc) / scale
    info = fm_bench._anchor_loop(mf, lambda x1: mf(x1), xs, budget)
    mf.eval()

    def sample(n, steps, g):
        if steps is None:
            return None
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
        with torch.no_grad():
            return mf.sample(batch_size=n, steps=steps) * scale + loc

    return {"sample": sample, **info}


CONTENDERS = {
    "ours rectified": _ours("rectified", distill=True),
    "ours rectified ot": _ours("rectified", distill=True, coupling="ot", ot_block=None),
    "ours rectified ot32": _ours("rectified", distill=True, coupling="ot"),
    "ours meanflow": _ours("meanflow"),
    "ours meanflow imf": _ours("meanflow", loss="imf"),
    # The adaptive loss weight's power (default p = 1, the paper's): plain MSE and half-way.
    "ours meanflow p0": _ours("meanflow", adaptive_p=0.0),
    "ours meanflow p0.5": _ours("meanflow", adaptive_p=0.5),
    "ours shortcut": _ours("shortcut"),
    # The two methods of `consistency`, named explicitly (the default is whichever measured better:
    # results/fewstep_consistency.md); sCT with its tangent warm-up off and with the paper's sigma_d.
    "ours consistency": _ours("consistency", method="cfm"),
    "ours consistency-sct": _ours("consistency", method="sct"),
    "ours consistency-sct warmup0": _ours("consistency", method="sct", warmup=0),
    "ours consistency-sct sd0.5": _ours("consistency", method="sct", sigma_d=0.5),
    # sCT with the embedding scale the other ODE models use (its default is 1).
    "ours consistency-sct scale100": _ours("consistency", method="sct", time_scale=100.0),
    "lucidrains meanflow": run_lucidrains_meanflow,
    "torchcfm ot-cfm": fm_bench.run_torchcfm,
    "meta fm": fm_bench.run_meta,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=10.0, help="training seconds per contender per target")
    ap.add_argument("--targets", default="8gaussians,spiral")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fewstep"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    results = {}
    for tname in args.targets.split(","):
        target = pf.data.get_target(tname)
        x_train = target.sample(20000, generator=torch.Generator().manual_seed(0)).float()
        ref = target.sample(args.n_eval, generator=torch.Generator().manual_seed(1)).float()
        floor = fm_bench._w2(target.sample(args.n_eval, generator=torch.Generator().manual_seed(2)).float(), ref)
        loc, scale = x_train.mean(0), x_train.std(0)
        rows = {}
        for cname in args.contenders.split(","):
            print(f"[{tname}] {cname} ...", file=sys.stderr, flush=True)
            try:
                res = CONTENDERS[cname](x_train, args.budget, x_train.shape[1], loc, scale)
            except ImportError as e:
                rows[cname] = {"error": f"not installed: {e}"}
                continue
            row = {"train_steps": res["steps"], "steps_per_s": res["steps"] / max(res["elapsed"], 1e-9)}
            for k in (*STEPS, None):
                s = res["sample"](args.n_eval, k, torch.Generator().manual_seed(3))
                row[str(k) if k else "adaptive"] = None if s is None else fm_bench._w2(s.float(), ref)
            rows[cname] = row
            print(f"   {row}", file=sys.stderr, flush=True)
        results[tname] = {"floor": floor, "rows": rows}
    env = {"load_before": load_before, "load_after": os.getloadavg(), "torch": torch.__version__,
           "machine": platform.machine(), "cores": os.cpu_count(),
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    Path(args.out + ".json").write_text(json.dumps({"args": vars(args), "env": env, "results": results}, indent=1))
    run = shlex.join(["python", "benchmarks/fewstep.py", *(argv if argv is not None else sys.argv[1:])])
    lines = ["# Few-step benchmark", "",
             f"Run: `{run}` ({time.strftime('%Y-%m-%d %H:%M')}).",
             f"Machine: {env['machine']}, {env['cores']} cores shared with other jobs; torch {env['torch']} CPU, "
             f"1 thread. Load average before {load_before[0]:.1f}, after {env['load_after'][0]:.1f} "
             f"(`{env['uptime']}`).",
             f"Budget: **{args.budget} s of training per contender per target**, same network size, batch {BATCH}, "
             f"Adam lr {LR}. W2 exact (POT), {args.n_eval} samples vs {args.n_eval} fresh target samples.", ""]
    for tname, r in results.items():
        lines += [f"## {tname}, floor W2 = {r['floor']:.3f}", "",
                  "| contender | W2 1 step | 2 steps | 4 steps | adaptive (ODE) | train steps | steps/s |",
                  "|---|---|---|---|---|---|---|"]
        for cname, row in r["rows"].items():
            if "error" in row:
                lines.append(f"| {cname} | {row['error']} | | | | | |")
                continue
            f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {cname} | {f(row['1'])} | {f(row['2'])} | {f(row['4'])} | {f(row['adaptive'])} | "
                         f"{row['train_steps']} | {row['steps_per_s']:.1f} |")
        lines.append("")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
