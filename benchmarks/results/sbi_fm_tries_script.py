"""The script behind ``sbi_fm_tries.md``: one conditional-FM (or any name) posterior try on two-moons.

Usage: ``python sbi_fm_tries_script.py LABEL NAME OPTIONS_JSON [FIT_KWARGS_JSON]``; environment:
``SIMS`` (10000), ``BUDGET`` seconds (60), ``SAMP`` a JSON list of ``sample`` keyword sets.
Appends one JSON line to ``sbi_fm_tries.jsonl`` next to this file.
"""

import json
import os
import sys
import time

import numpy as np
import torch

import pushforward as pf
from pushforward.data.simulators import get_simulator
from pushforward.metrics import c2st
from pushforward.posterior import build_posterior


def main() -> None:
    torch.set_num_threads(1)
    label, name, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    fitkw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    budget = float(os.environ.get("BUDGET", 60))
    task = get_simulator("two-moons")
    theta, x = task.sample_joint(int(os.environ.get("SIMS", 10000)), torch.Generator().manual_seed(0))
    g_obs = torch.Generator().manual_seed(1000)
    obs = task.simulate(task.sample_prior(2, g_obs), g_obs)
    refs = [task.posterior_sample(obs[i], 1000, torch.Generator().manual_seed(2000 + i)) for i in range(2)]
    torch.manual_seed(0)
    post = build_posterior(name, 2, 2, prior=task.prior, **opts)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    hist = pf.fit(post, theta, context=x, max_time=budget, seed=0, **fitkw)
    res = {"label": label, "steps": getattr(hist, "steps", None), "train_s": round(time.perf_counter() - t0, 1),
           "load": load}
    post.eval()
    for sk in json.loads(os.environ.get("SAMP", "[{}]")):
        with torch.no_grad():
            sc = [c2st(post.sample(1000, obs[i].float(), **sk), refs[i], seed=i) for i in range(2)]
        res[json.dumps(sk)] = [round(s, 3) for s in sc] + [round(float(np.mean(sc)), 3)]
    print(json.dumps(res), flush=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sbi_fm_tries.jsonl"), "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
