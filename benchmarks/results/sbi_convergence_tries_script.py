"""Controlled tries behind benchmarks/results/sbi_convergence_tries.md (one thread).

Each try: build_posterior(name) on the benchmark's simulations (seed 0), pf.fit with the given
options, then (a) C2ST on the benchmark's 2 observations x 1000 samples (same observations as
sbi_quiet_10k.md) and (b) for linear-Gaussian, the held-out gap in nats
``E[log p(theta|x)] - E[log q(theta|x)]`` on 5000 fresh simulations (the expected KL from the
exact posterior to ours; 0 is perfect, low noise, unlike C2ST).

    python sbi_convergence_tries_script.py TAG TASK SIMS NAME '{"max_time": 60}' [--sbi]
"""
import json
import sys
import time

import torch

import pushforward as pf
from pushforward.data.simulators import get_simulator
from pushforward.metrics import c2st
from pushforward.posterior import build_posterior

torch.set_num_threads(1)
tag, task_name, sims, name, opts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
build_opts = opts.pop("build", {})
then_lr = opts.pop("then_lr", [])  # further convergence fits at these learning rates (lr decay on plateau)
task = get_simulator(task_name)
g = torch.Generator().manual_seed(0)
theta, x = task.sample_joint(sims, g)
g_obs = torch.Generator().manual_seed(1000)
obs = task.simulate(task.sample_prior(2, g_obs), g_obs)
refs = [task.posterior_sample(obs[i], 1000, torch.Generator().manual_seed(2000 + i)) for i in range(2)]
torch.manual_seed(0)
t0 = time.perf_counter()
if name.startswith("sbi_"):
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn as sbi_nn
    inf = NPE(task.prior, density_estimator=sbi_nn(name[4:]), show_progress_bars=False)
    inf.append_simulations(theta, x)
    est = inf.train(**opts)
    info = {"epochs": inf.summary["epochs_trained"][-1], "best_val": inf.summary["best_validation_loss"][-1]}

    class _Wrap:
        def eval(self):
            est.eval()

        def sample(self, n, x_o):
            return est.sample(torch.Size([n]), x_o[None])[:, 0]

        def log_prob(self, th, xx):
            return est.log_prob(th[None], xx)[0]
    post = _Wrap()
elif "--sbi" in sys.argv:
    from sbi.inference import NPE

    from pushforward.integrations.sbi import posterior_nn
    inf = NPE(task.prior, density_estimator=posterior_nn(name, **build_opts), show_progress_bars=False)
    inf.append_simulations(theta, x)
    est = inf.train(**opts)
    post = est.net
    info = {"epochs": inf.summary["epochs_trained"][-1], "best_val": inf.summary["best_validation_loss"][-1]}
else:
    post = build_posterior(name, task.theta_dim, task.x_dim, prior=task.prior, **build_opts)
    h = pf.fit(post, theta, context=x, seed=0, **opts)
    steps = h.steps
    for lr in then_lr:
        h = pf.fit(post, theta, context=x, seed=0, **dict(opts, lr=lr))
        steps += h.steps
    h["steps"] = steps
    info = {"steps": h.steps, "best_step": h.get("best_step"), "best_val": h.get("best_val_loss"),
            "stopped": h.get("stopped_reason"), "epochs": h.get("epochs")}
train_s = time.perf_counter() - t0
post.eval()
with torch.no_grad():
    scores = [c2st(post.sample(1000, obs[i]), refs[i], seed=i) for i in range(2)]
    row = {"tag": tag, "task": task_name, "sims": sims, "name": name, "opts": dict(opts, then_lr=then_lr) if then_lr else opts, "build": build_opts,
           "train_s": round(train_s, 1), "c2st": round(sum(scores) / 2, 4), "c2st_per_obs": [round(s, 4) for s in scores], **info}
    if task_name == "linear-gaussian":
        gt = torch.Generator().manual_seed(77)
        th_t, x_t = task.sample_joint(5000, gt)
        _, std = task.posterior_params(x_t[0])
        var = std ** 2
        m = var * x_t / task.noise_scale ** 2
        lp_exact = (-0.5 * ((th_t - m) ** 2).sum(1) / var - 0.5 * task.theta_dim * torch.log(torch.tensor(2 * torch.pi * var))).mean()
        lq = torch.cat([post.log_prob(th_t[i:i + 1000], x_t[i:i + 1000]) for i in range(0, 5000, 1000)]).mean()
        row["kl_nats"] = round(float(lp_exact - lq), 4)
print(json.dumps(row), flush=True)
with open("/work/wt/sbi/benchmarks/results/sbi_convergence_tries.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
