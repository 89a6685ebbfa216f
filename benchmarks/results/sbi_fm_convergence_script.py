"""The script behind ``sbi_fm_convergence.md``: one conditional-FM posterior trained to convergence
with an override of its convergence rule. Usage: ``python sbi_fm_convergence_script.py TASK LABEL
OVERRIDES_JSON``; ``SIMS`` (10000) simulations; appends one JSON line to
sbi_fm_convergence.jsonl next to it."""
import json
import os
import sys
import time

import torch

import pushforward as pf
from pushforward.data.simulators import get_simulator
from pushforward.metrics import c2st
from pushforward.posterior import CONVERGENCE, build_posterior

torch.set_num_threads(1)
taskname, label, over = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
task = get_simulator(taskname)
theta, x = task.sample_joint(int(os.environ.get("SIMS", 10000)), torch.Generator().manual_seed(0))
g = torch.Generator().manual_seed(1000)
obs = task.simulate(task.sample_prior(2, g), g)
refs = [task.posterior_sample(obs[i], 1000, torch.Generator().manual_seed(2000 + i)) for i in range(2)]
torch.manual_seed(0)
post = build_posterior("fm", theta.shape[1], x.shape[1], prior=task.prior)
post.default_convergence = {**CONVERGENCE, **over}
t0 = time.perf_counter()
hist = pf.fit(post, theta, context=x, seed=0)
ts = time.perf_counter() - t0
post.eval()
cs = []
with torch.no_grad():
    for i in range(2):
        s = post.sample(1000, obs[i].float())
        cs.append(float(c2st(s, refs[i], seed=i)))
row = {"task": taskname, "sims": int(os.environ.get("SIMS", 10000)), "label": label, "over": over, "train_s": round(ts, 1), "c2st": cs, "mean": sum(cs)/2,
       "steps": getattr(hist, "steps", None), "best_step": hist.get("best_step"), "stop": hist.get("stopped_reason"), "load": os.getloadavg()[0]}
print(json.dumps(row))
with open(os.path.join(os.path.dirname(__file__), "sbi_fm_convergence.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
