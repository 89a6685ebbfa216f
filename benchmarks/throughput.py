"""Throughput at matched architectures: pushforward vs zuko, and one-pass vs sequential sampling.

1. ``log_prob`` points/s and a training step's time for the same architecture (3 transforms,
   hidden (64, 64), 8 spline bins) in pushforward and zuko: MAF, autoregressive NSF, RealNVP.
2. Sampling points/s of MAF (D sequential MADE passes per layer) against IAF (its inverse: one
   pass) and coupling flows (one pass), all with the same depth and width, at several D.

Usage: ``python benchmarks/throughput.py [--threads 1] [--batch 10000]``
-> ``benchmarks/results/throughput.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import pushforward as pf

RESULTS = os.path.join(os.path.dirname(__file__), "results")


REPEATS = 7


def best_times(fns: dict, repeats: int = REPEATS) -> dict:
    """Best wall time of each callable over ``repeats`` rounds, the callables interleaved
    (round-robin, one call each per round) so that load drifting on a shared machine hits
    every side alike instead of favouring whichever ran in the quiet minute."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def matched(dim: int, batch: int) -> list[tuple]:
    import zuko

    arch = dict(transforms=3, hidden=(64, 64))
    pairs = [
        ("MAF", pf.build("maf", dim=dim, **arch), zuko.flows.MAF(dim, transforms=3, hidden_features=(64, 64))),
        (
            "NSF (autoregressive)",
            pf.build("nsf", dim=dim, kind="autoregressive", bins=8, affine=False, **arch),
            zuko.flows.NSF(dim, bins=8, transforms=3, hidden_features=(64, 64)),
        ),
        ("RealNVP", pf.build("realnvp", dim=dim, **arch), zuko.flows.RealNVP(dim, transforms=3, hidden_features=(64, 64))),
    ]
    x = torch.randn(batch, dim)
    xb = x[:512]
    rows = []
    for name, ours, theirs in pairs:
        with torch.no_grad():
            t = best_times({"ours": lambda m=ours: m.log_prob(x), "zuko": lambda f=theirs: f().log_prob(x)})

        def step_ours(m=ours):
            m.zero_grad()
            m.loss(xb).backward()

        def step_zuko(f=theirs):
            f.zero_grad()
            (-f().log_prob(xb).mean()).backward()

        s = best_times({"ours": step_ours, "zuko": step_zuko})
        rows.append((dim, name, batch / t["ours"], batch / t["zuko"], s["ours"] * 1e3, s["zuko"] * 1e3))
    return rows


def sampling(dim: int, n: int) -> list[tuple]:
    arch = dict(transforms=5, hidden=(64, 64))
    models = {
        "maf": pf.build("maf", dim=dim, **arch),
        "iaf": pf.build("iaf", dim=dim, **arch),
        "realnvp": pf.build("realnvp", dim=dim, **arch),
        "nsf (coupling)": pf.build("nsf", dim=dim, kind="coupling", **arch),
        "nsf (autoregressive)": pf.build("nsf", dim=dim, kind="autoregressive", **arch),
    }
    with torch.no_grad():
        t = best_times({k: (lambda m=m: m.sample(n)) for k, m in models.items()})
    rates = {k: n / v for k, v in t.items()}
    return [(dim, k, r, r / rates["maf"]) for k, r in rates.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--dims", default="2,10,32")
    p.add_argument("--out", default=None, help="default: benchmarks/results/throughput.md (full runs only)")
    p.add_argument("--only", choices=("all", "matched", "sampling"), default="all",
                   help="run one table (quick checks); writes a file only with an explicit --out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = [int(d) for d in args.dims.split(",")]
    lines = [
        "# Throughput at matched architectures",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s); {time.strftime('%Y-%m-%d')}. Best of {REPEATS} timings, the compared "
        "models interleaved round by round; load average at the start "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        f"## log_prob and training step vs zuko (3 transforms, hidden (64, 64); log_prob batch {args.batch}, step batch 512)",
        "",
        "| D | flow | ours log_prob pts/s | zuko log_prob pts/s | ratio | ours step ms | zuko step ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for d in dims if args.only != "sampling" else []:
        for dim, name, o, z, so, sz in matched(d, args.batch):
            lines.append(f"| {dim} | {name} | {o:.3g} | {z:.3g} | {o / z:.2f} | {so:.2f} | {sz:.2f} |")
    lines += [
        "",
        "## Sampling: one-pass flows vs MAF (5 transforms, hidden (64, 64), 10 000 samples)",
        "",
        "| D | flow | samples/s | × MAF |",
        "|---:|---|---:|---:|",
    ]
    for d in dims if args.only != "matched" else []:
        for dim, name, r, ratio in sampling(d, 10_000):
            lines.append(f"| {dim} | {name} | {r:.3g} | {ratio:.1f} |")
    text = "\n".join(lines) + "\n"
    out = args.out if args.out is not None else (os.path.join(RESULTS, "throughput.md") if args.only == "all" else None)
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
