"""Probe (issue #14): FlowPolicy (36-d obs, 16 x 2, default transformer) act latency at batch 1,
10 Euler steps: eager, set_fast_path("default"), and inductor's C++ GEMM template
(freezing + max-autotune, backends CPP,ATEN), with and without cpp_wrapper; interleaved.
Run: PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/results/policy_latency_probe.py [reps]"""
import os
import sys
import time

import numpy as np
import torch
import torch._inductor.config as ic

from pushforward.policy import FlowPolicy

torch.set_num_threads(1)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["cpp_gemm", "cpp_gemm_wrapper"]
torch.manual_seed(0)
o = torch.zeros(1, 36)
base = FlowPolicy(36, 2, 16).eval()
PATCH = {"cpp_gemm": dict(freezing=True, max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"),
         "cpp_gemm_wrapper": dict(freezing=True, max_autotune=True, max_autotune_gemm_backends="CPP,ATEN",
                                  cpp_wrapper=True)}


def clone(mode):
    p = FlowPolicy(36, 2, 16).eval()
    p.load_state_dict(base.state_dict())
    return p.set_fast_path(mode)


def act(p):
    torch.manual_seed(1)
    with torch.no_grad():
        return p.act(o, steps=10)


calls = {"eager": base, "default": clone("default")}
for v in variants:
    calls[v] = clone("max-autotune")
ref = act(base)
for k, p in calls.items():
    t = time.perf_counter()
    if k in PATCH:
        with ic.patch(PATCH[k]):
            out = act(p)
    else:
        out = act(p)
    print(k, "first call", round(time.perf_counter() - t, 1), "s; max |diff| vs eager",
          float((out - ref).abs().max()), flush=True)
for p in calls.values():
    for _ in range(5):
        act(p)
times = {k: [] for k in calls}
for _ in range(reps):
    for k, p in calls.items():
        t = time.perf_counter()
        act(p)
        times[k].append(1e3 * (time.perf_counter() - t))
print(os.popen("uptime").read().strip())
for k, v in times.items():
    print(f"{k}: median {np.median(v):.2f} ms, min {np.min(v):.2f} ms", flush=True)
