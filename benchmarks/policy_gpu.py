"""GPU latency of one FlowPolicy.act (10 Euler steps) for the PushT-sized state policy.

    python benchmarks/policy_gpu.py

Prints median milliseconds (and Hz) on cuda for batch 1 and 64, fp32 and bf16 autocast, for the
flow policy and the 100-step DDPM / 10-step DDIM baselines on the same network. Writes nothing.
"""

from __future__ import annotations

import time

import torch

from pushforward.policy import DiffusionPolicy, FlowPolicy

OBS, ACT, H = 36, 2, 16  # PushT: 2 stacked 18-d observations, chunks of 16 x 2


def bench(policy, batch: int, dtype: str, reps: int = 50, **kw) -> float:
    obs = torch.randn(batch, OBS, device="cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cuda", enabled=False)
    with ctx:
        for _ in range(10):
            policy.act(obs, **kw)
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            policy.act(obs, **kw)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for net in ({"width": 128, "depth": 3}, {"net": "mlp", "width": 256, "depth": 3}):
        flow = FlowPolicy(OBS, ACT, H, **net).cuda().eval()
        diff = DiffusionPolicy(OBS, ACT, H, **net).cuda().eval()
        for batch in (1, 64):
            for dtype in ("fp32", "bf16"):
                f = bench(flow, batch, dtype, steps=10)
                d = bench(diff, batch, dtype, reps=10, sampler="ddpm")
                i = bench(diff, batch, dtype, sampler="ddim", steps=10)
                print(f"{net.get('net', 'transformer'):11s} batch {batch:3d} {dtype}: flow 10-Euler {f:7.2f} ms "
                      f"({1e3 / f:7.0f} Hz) | DDPM-100 {d:8.2f} ms | DDIM-10 {i:7.2f} ms | speed-up vs DDPM {d / f:5.1f}x")


if __name__ == "__main__":
    main()
