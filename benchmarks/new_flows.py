"""Neural autoregressive and polynomial flows against zuko, and TarFlow against Glow on digits.

Part 1 (``--targets``): pushforward ``naf``/``unaf``/``bernstein`` vs zuko ``NAF``/``UNAF``/``BPF``
on the library's closed-form targets (2-D and 10-D), interleaved (ours, theirs, ours, ...), each
trained for the same wall-clock budget with batch 512 and Adam at lr 1e-3 (ours through
``pf.fit`` with its defaults, zuko with the loop its docs show). Measured: KL(p || q) in nats on
fresh target samples, train steps/s, log_prob and sample throughput (points/s).

Part 2 (``--digits``): ``tarflow`` vs ``glow`` on sklearn's 8x8 digits (17 levels) at equal
training time: test bits/dim (dequantized, mean of 4 draws); as a sample-quality proxy for these
unconditional models, the mean max-probability that a logistic regression trained on real
digits assigns to 500 samples; TarFlow's sampling time with and without the KV cache.

Usage::

    python benchmarks/new_flows.py --budget 20 --targets ring,gmm10
    python benchmarks/new_flows.py --targets "" --digits 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

import pushforward as pf

sys.path.insert(0, os.path.dirname(__file__))
from density import Contender, _ours, _plain_loop, _throughput  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _zuko(kind: str) -> Contender | None:
    try:
        import zuko
    except ImportError:
        return None
    cls = {"NAF": zuko.flows.NAF, "UNAF": zuko.flows.UNAF, "BPF": zuko.flows.BPF}[kind]

    def train(flow, x, budget, seed):
        return _plain_loop(lambda b: -flow().log_prob(b).mean(), flow.parameters(), x, budget, seed)

    return Contender(f"zuko {kind}", lambda dim: cls(dim), train, lambda f, x: f().log_prob(x),
                     lambda f, n: f().sample((n,)))


def run_one(c: Contender, target, x_train, budget: float, seed: int, n_eval: int, n_sample: int) -> dict:
    torch.manual_seed(seed)
    model = c.make(target.dim)
    t0 = time.perf_counter()
    steps = c.train(model, x_train, budget, seed)
    elapsed = time.perf_counter() - t0
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x_test = target.sample(n_eval, generator=g)
    with torch.no_grad():
        lq = torch.cat([c.log_prob(model, b) for b in x_test.split(5000)])
        lp = target.log_prob(x_test)
        kl = float((lp - lq).mean()) if torch.isfinite(lq).all() else float("inf")
        xb = x_test[:10000]
        lp_tp = _throughput(lambda: c.log_prob(model, xb), xb.shape[0])
        s_tp = _throughput(lambda: c.sample(model, n_sample), n_sample, repeats=1)
    return {"model": c.name, "kl": kl, "steps": steps, "steps_per_s": steps / elapsed,
            "log_prob_per_s": lp_tp, "sample_per_s": s_tp, "train_s": elapsed}


def digits(budget: float, seed: int) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    train, test = x[perm[:1500]], x[perm[1500:]]
    clf = LogisticRegression(max_iter=2000).fit(train.reshape(-1, 64).numpy(), d.target[perm[:1500].numpy()])
    rows = []
    for name, opts in (("tarflow", dict(patch_size=2, blocks=4, layers=2, width=64, heads=4)), ("glow", {})):
        torch.manual_seed(seed)
        model = pf.build(name, image_shape=(1, 8, 8), num_bins=17, **opts)
        t0 = time.perf_counter()
        hist = pf.fit(model, train, max_time=budget, seed=seed, progress=False)
        elapsed = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            bpd = float(torch.stack([model.bits_per_dim(test, dequantize=True, generator=torch.Generator().manual_seed(k))
                                     for k in range(4)]).mean())
        t1 = time.perf_counter()
        s = model.sample(500, generator=torch.Generator().manual_seed(seed + 1)).detach()
        sample_s = time.perf_counter() - t1
        conf = float(clf.predict_proba(s.reshape(-1, 64).numpy()).max(1).mean())
        row = {"model": name, "test_bpd": bpd, "steps": int(hist.steps), "train_s": elapsed,
               "sample_500_s": sample_s, "classifier_confidence": conf}
        if name == "tarflow":
            with torch.no_grad():
                for cache in (True, False):
                    t1 = time.perf_counter()
                    model.sample(500, generator=torch.Generator().manual_seed(0), cache=cache, denoise=False)
                    row[f"sample_500_s_cache_{cache}"] = time.perf_counter() - t1
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=20.0, help="training seconds per model and target")
    p.add_argument("--targets", default="ring,gmm10")
    p.add_argument("--digits", type=float, default=0.0, help="training seconds for tarflow and glow (0: skip)")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-eval", type=int, default=20_000)
    p.add_argument("--n-sample", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", default="naf,unaf,bernstein", help="which of ours-vs-zuko pairs to run")
    p.add_argument("--out", default=os.path.join(RESULTS, "new_flows"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # pay torch._dynamo's import before timing
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    zuko_name = {"naf": "NAF", "unaf": "UNAF", "bernstein": "BPF"}
    pairs = [(_ours(n), _zuko(zuko_name[n])) for n in args.pairs.split(",") if n]
    for tname in [t for t in args.targets.split(",") if t]:
        target = pf.data.get_target(tname)
        x_train = target.sample(args.n_train, generator=torch.Generator().manual_seed(args.seed))
        for pair in pairs:
            for c in pair:
                if c is None:
                    continue
                r = run_one(c, target, x_train, args.budget, args.seed, args.n_eval, args.n_sample)
                r["target"] = tname
                rows.append(r)
                print(json.dumps(r), flush=True)
    img = digits(args.digits, args.seed) if args.digits else []
    meta = {"budget_s": args.budget, "digits_budget_s": args.digits, "threads": args.threads, "load_before": load,
            "load_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "density": rows, "digits": img}, f, indent=1)
    lines = ["# New flows: NAF / UNAF / Bernstein vs zuko, TarFlow vs Glow", "",
             f"`python benchmarks/new_flows.py --budget {args.budget:g} --targets {args.targets} --digits {args.digits:g} "
             f"--pairs {args.pairs}`"
             f", {meta['date']}, torch {meta['torch']}, {args.threads} thread(s). Load before: `{load}`; "
             f"after: `{meta['load_after']}` (the 2-core machine was shared with other jobs: throughputs are noisy).", ""]
    if rows:
        lines += ["| target | model | KL (nats) | steps/s | log_prob /s | sample /s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['target']} | {r['model']} | {r['kl']:.3f} | {r['steps_per_s']:.1f} | {r['log_prob_per_s']:.3g} | "
                  f"{r['sample_per_s']:.3g} |" for r in rows]
    if img:
        lines += ["", f"8x8 digits, {args.digits:g} s of training each (1500 train / 297 test images):", "",
                  "| model | test bits/dim | steps | sample 500 (s) | classifier confidence |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['test_bpd']:.3f} | {r['steps']} | {r['sample_500_s']:.2f} | "
                  f"{r['classifier_confidence']:.3f} |" for r in img]
        t = [r for r in img if r["model"] == "tarflow"]
        if t:
            lines += ["", f"TarFlow sampling of 500 digits without denoising: KV cache "
                      f"{t[0]['sample_500_s_cache_True']:.3f} s, no cache {t[0]['sample_500_s_cache_False']:.3f} s."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
