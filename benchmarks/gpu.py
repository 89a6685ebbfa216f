"""GPU path check and figures: training throughput with and without bf16 autocast, log_prob and
sample throughput, for one model per family. Needs CUDA; writes benchmarks/results/gpu.md.

``--fast`` measures the opt-in fast paths instead, eager against fast in one run: ``pf.fit``
steps/s with ``compile=True`` for ``nsf`` (10-D, batch 4096) and ``FlowPolicy.act`` latency with
``set_fast_path`` (transformer, PushT-sized, 10 Euler steps). Runs on CPU too (``--device cpu``).

Usage: ``python benchmarks/gpu.py [--seconds 5]``; ``python benchmarks/gpu.py --fast [--device cpu]``
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import pushforward as pf

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rate(fn, n, repeats=3):
    fn()
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return n / best


def cases():
    digits = pf.data.load("digits8x8").x
    moons = pf.data.load("moons", n=50_000).x
    gmm = pf.data.get_target("gmm10").sample(50_000, generator=torch.Generator().manual_seed(0))
    return [
        ("nsf", dict(dim=2), moons, 4096),
        ("nsf", dict(dim=10), gmm, 4096),
        ("realnvp", dict(dim=10), gmm, 4096),
        ("glow", dict(image_shape=(1, 8, 8), num_bins=17), digits.reshape(-1, 1, 8, 8), 256),
        ("ot-fm", dict(dim=2), moons, 4096),
        ("ffjord", dict(dim=2), moons, 1024),
    ]


def _fit_rate(dev, x, batch, seconds, compile):
    torch.manual_seed(0)
    model = pf.build("nsf", dim=x.shape[1]).to(dev)
    t0 = time.perf_counter()
    pf.fit(model, x, steps=3, batch_size=batch, progress=False, val_fraction=0.0, compile=compile)
    warm = time.perf_counter() - t0  # includes compilation
    h = pf.fit(model, x, max_time=seconds, batch_size=batch, progress=False, val_fraction=0.0, compile=compile)
    return h.steps / max(h.elapsed, 1e-9), warm, h["loss"][-1]


def _act_ms(policy, obs, reps):
    for _ in range(3):
        policy.act(obs)
    _sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        policy.act(obs)
        _sync()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def fast_paths(dev, seconds, modes, reps=50) -> list[str]:
    """Rows for the fast-path table: fit steps/s eager vs compile, act latency per fast-path mode."""
    gmm = pf.data.get_target("gmm10").sample(50_000, generator=torch.Generator().manual_seed(0))
    lines = ["| what | path | figure | first call (s) |", "|---|---|---:|---:|"]
    for compile in (False, True):
        sps, warm, _ = _fit_rate(dev, gmm, 4096, seconds, compile)
        lines.append(f"| nsf fit, 10-D, batch 4096 | {'compile=True' if compile else 'eager'} | {sps:.1f} steps/s | {warm:.1f} |")
        print(lines[-1], flush=True)
    from pushforward.policy import FlowPolicy

    torch.manual_seed(0)
    policy = FlowPolicy(36, 2, 16, width=128, depth=3).to(dev).eval()
    for batch in (1, 64):
        obs = torch.randn(batch, 36, device=dev)
        for mode in (None, *modes):
            policy.set_fast_path(mode)
            t0 = time.perf_counter()
            policy.act(obs)
            _sync()
            first = time.perf_counter() - t0
            ms = _act_ms(policy, obs, reps)
            lines.append(f"| act, transformer, batch {batch} | {mode or 'default (eager)'} | {ms:.2f} ms | {first:.1f} |")
            print(lines[-1], flush=True)
    policy.set_fast_path(None)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--fast", action="store_true", help="eager vs compile / fast-path figures (prints a table)")
    p.add_argument("--modes", default="reduce-overhead", help="fast-path modes for act, comma-separated")
    p.add_argument("--out", default=os.path.join(RESULTS, "gpu.md"))
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only for a smoke run")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU smoke run"
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    if args.fast:
        print(f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print("\n".join(fast_paths(dev, args.seconds, [m for m in args.modes.split(",") if m])))
        return
    lines = [
        f"# GPU figures ({name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')})",
        "",
        f"`pf.fit` for {args.seconds:g} s per row (steps/s), then log_prob and sample throughput (fp32).",
        "",
        "| model | data | batch | amp | fit steps/s | final loss | log_prob pts/s | sample pts/s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for mname, kw, x, batch in cases():
        for amp in (False, "bf16"):
            torch.manual_seed(0)
            model = pf.build(mname, **kw).to(dev)
            try:
                h = pf.fit(model, x, max_time=args.seconds, batch_size=batch, amp=amp, progress=False,
                           val_fraction=0.0)
                sps, loss = h.steps / max(h.elapsed, 1e-9), h["loss"][-1]
            except Exception as e:  # report, don't hide, a failing GPU path
                lines.append(f"| {mname} | {tuple(x.shape[1:])} | {batch} | {amp} | FAILED: {type(e).__name__}: {e} | | | |")
                continue
            model.eval()
            xb = x[:8192].to(dev)
            n = 8192 if mname not in ("ffjord",) else 1024
            with torch.no_grad():
                lp = rate(lambda m=model, b=xb[:n]: m.log_prob(b), n)
                sp = rate(lambda m=model, k=n: m.sample(k), n)
            lines.append(f"| {mname} | {tuple(x.shape[1:])} | {batch} | {amp or 'fp32'} | {sps:.1f} | {loss:.3f} | {lp:.3g} | {sp:.3g} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
