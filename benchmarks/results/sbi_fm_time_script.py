"""The script behind ``sbi_fm_time.md``: one conditional-FM posterior with model options (e.g. its
training-time density) and fit options. Usage: ``python sbi_fm_time_script.py TASK LABEL
MODEL_OPTIONS_JSON FIT_OPTIONS_JSON``; ``SIMS`` (10000) simulations; the same simulations,
observations and exact references as ``benchmarks/sbi.py``. Time samplers are given as
``{"time_sampler": ["power", {"a": 3}]}``; ``CONV`` (JSON) overrides entries of the posterior's
convergence rule (``posterior.MATCHING_CONVERGENCE``). Appends one JSON line to sbi_fm_time.jsonl."""
import json
import os
import sys
import time

import torch

import pushforward as pf
from pushforward.data.simulators import get_simulator
from pushforward.matching import get_time_sampler
from pushforward.metrics import c2st
from pushforward.posterior import build_posterior

torch.set_num_threads(1)
taskname, label = sys.argv[1], sys.argv[2]
opts, fit_opts = json.loads(sys.argv[3]), json.loads(sys.argv[4])
if isinstance(opts.get("time_sampler"), list):
    name, kw = opts["time_sampler"]
    opts["time_sampler"] = get_time_sampler(name, **kw)
task = get_simulator(taskname)
sims = int(os.environ.get("SIMS", 10000))
theta, x = task.sample_joint(sims, torch.Generator().manual_seed(0))
g = torch.Generator().manual_seed(1000)
obs = task.simulate(task.sample_prior(2, g), g)
refs = [task.posterior_sample(obs[i], 1000, torch.Generator().manual_seed(2000 + i)) for i in range(2)]
torch.manual_seed(0)
post = build_posterior("fm", theta.shape[1], x.shape[1], prior=task.prior, **opts)
conv = json.loads(os.environ.get("CONV", "{}"))
post.default_convergence = {**post.default_convergence, **conv}
t0 = time.perf_counter()
hist = pf.fit(post, theta, context=x, seed=0, **fit_opts)
ts = time.perf_counter() - t0
post.eval()
cs = []
with torch.no_grad():
    for i in range(2):
        s = post.sample(1000, obs[i].float())
        cs.append(float(c2st(s, refs[i], seed=i)))
row = {"task": taskname, "sims": sims, "label": label, "options": sys.argv[3], "fit": fit_opts, "conv": conv,
       "train_s": round(ts, 1), "c2st": cs, "mean": sum(cs) / 2, "steps": getattr(hist, "steps", None),
       "best_step": hist.get("best_step"), "stop": hist.get("stopped_reason"), "load": os.getloadavg()[0]}
print(json.dumps(row))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sbi_fm_time.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
