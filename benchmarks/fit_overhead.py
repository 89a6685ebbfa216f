"""Training-step overhead of ``pf.fit`` against a bare PyTorch loop, same network, same batch.

Contenders (interleaved, ``--rounds`` rounds of ``--steps`` steps each, one thread):

- ``bare loop``: the anchors' loop (TorchCFM / Meta ``flow_matching`` READMEs): sample, CFM loss,
  ``zero_grad``, ``backward``, ``Adam.step``; nothing else.
- ``pf.fit``: ``pf.fit(pf.build(name), x, steps=...)`` with its defaults (gradient clipping at 10,
  divergence checks, step-boundary state for exact resume, cosine schedule, checkpoints off).
- ``pf.fit, per-tensor Adam + torch clip``: the same with the loop's optimizer and clipping of
  before this benchmark (``torch.optim.Adam`` per-tensor, ``torch.nn.utils.clip_grad_norm_``),
  patched in, to measure what the fused optimizer and the norm-first clipping bought.

Run: ``python benchmarks/fit_overhead.py [--steps 2000 --rounds 3]``; writes
``benchmarks/results/fit_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import pushforward as pf
import pushforward.train.loop as loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matching as fm_bench  # noqa: E402  (the anchors' network)

RESULTS = Path(__file__).parent / "results"
BATCH = 256


def bare_loop(x: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    net = fm_bench._net(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x1 = x[torch.randint(0, len(x), (BATCH,))]
        x0, t = torch.randn_like(x1), torch.rand(BATCH)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (net(xt, t) - (x1 - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def ours(x: torch.Tensor, steps: int, legacy: bool = False) -> float:
    saved = loop.make_optimizer, loop.clip_gradients
    if legacy:
        loop.make_optimizer = lambda params, lr, wd, adamw: torch.optim.Adam(params, lr=lr, weight_decay=wd)
        loop.clip_gradients = lambda params, max_norm: float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    try:
        torch.manual_seed(0)
        model = pf.build("fm", dim=x.shape[1], hidden=(128, 128, 128))
        h = pf.fit(model, x, steps=steps, batch_size=BATCH, lr=1e-3, seed=0, progress=False, val_fraction=0.0)
    finally:
        loop.make_optimizer, loop.clip_gradients = saved
    return steps / h.elapsed


CONTENDERS = {"bare loop": bare_loop, "pf.fit": ours,
              "pf.fit, per-tensor Adam + torch clip": lambda x, s: ours(x, s, legacy=True)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = pf.data.get_target("spiral").sample(20000, generator=torch.Generator().manual_seed(0)).float()
    ours(x, 20)  # imports and first-call costs out of the timed rounds
    up_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rates: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    for _ in range(args.rounds):
        for name, fn in CONTENDERS.items():
            rates[name].append(fn(x, args.steps))
            print(f"{name}: {rates[name][-1]:.0f} steps/s", file=sys.stderr, flush=True)
    up_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = {"args": vars(args), "torch": torch.__version__, "cores": os.cpu_count(), "uptime_before": up_before,
           "uptime_after": up_after, "steps_per_s": rates}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_overhead.json").write_text(json.dumps(out, indent=1))
    bare = statistics.median(rates["bare loop"])
    lines = ["# pf.fit overhead per training step", "",
             f"`python benchmarks/fit_overhead.py --steps {args.steps} --rounds {args.rounds}`: flow matching on the "
             f"2-D spiral, TimeMLP 3 x 128, batch {BATCH}, Adam lr 1e-3, one thread, torch {torch.__version__}, "
             f"{os.cpu_count()} cores; contenders interleaved round by round. Before: `{up_before}`; after: "
             f"`{up_after}`.", "",
             "| contender | steps/s (median of rounds) | rounds | ms per step | vs bare loop |", "|---|---|---|---|---|"]
    for name, r in rates.items():
        med = statistics.median(r)
        lines.append(f"| {name} | {med:.0f} | {' / '.join(f'{v:.0f}' for v in r)} | {1e3 / med:.2f} | "
                     f"{med / bare:.2f}x |")
    (RESULTS / "fit_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
