"""Discrete flow matching: pushforward `discrete-fm` vs Meta flow_matching's mixture path, generalized-KL
loss and MixtureDiscreteEulerSolver, on three kinds of sequence data.

Targets (``--target``): ``markov`` (a Markov chain with an exact likelihood, L = 8, K = 4),
``digits`` (scikit-learn's 8x8 digits binarized: L = 64, K = 2; 1500 train / 297 test images) and
``text`` (32-character windows of standard-library docstrings, ``docstring_text``; the last 10 % of
the text held out). Same denoiser network (pushforward's CategoricalDenoiser, same widths), same masked
source, same wall-clock budget, trained in interleaved 1 s rounds, batch 256, Adam 2e-3.

Metrics, one evaluator for every contender (each on its own path's schedule, the known-token
carry-over and the mask removed from the denoiser's output): the negative path ELBO on held-out
sequences in nats per token (an upper bound on the model's NLL; on ``markov`` minus the target's
entropy, an upper bound on KL(target || model)), and the total-variation distance of sample
statistics from the reference: exact bigram frequencies (markov), per-pixel marginals of the test
images (digits), character-bigram frequencies of the held-out text pooled over positions (text).

Run: python benchmarks/discrete.py --target markov|digits|text [--budget 20]  (needs flow_matching).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import torch
import torch.nn.functional as F

import pushforward as pf
from pushforward.data.sequences import MarkovChainTarget, docstring_text, quantized_digits
from pushforward.discrete import MixturePath, path_elbo
from pushforward.discrete.models import CategoricalDenoiser

CONTENDERS = ("ours", "ours-linear", "meta")


def pair_tv(s: torch.Tensor, ref: torch.Tensor, K: int) -> float:
    """Mean over adjacent positions of the TV between the pair frequencies of ``s`` and ``ref``
    (``ref``: ``[L-1, K, K]`` probabilities)."""
    tv = 0.0
    for i in range(s.shape[1] - 1):
        emp = torch.zeros(K * K, dtype=torch.float64).index_add_(0, s[:, i] * K + s[:, i + 1],
                                                                   torch.ones(len(s), dtype=torch.float64))
        tv += 0.5 * float((emp.view(K, K) / len(s) - ref[i]).abs().sum())
    return tv / (s.shape[1] - 1)


def pair_freqs(x: torch.Tensor, K: int) -> torch.Tensor:
    """``[L-1, K, K]`` empirical adjacent-pair frequencies of ``x`` ``[N, L]``."""
    out = torch.zeros(x.shape[1] - 1, K * K, dtype=torch.float64)
    for i in range(x.shape[1] - 1):
        out[i].index_add_(0, x[:, i] * K + x[:, i + 1], torch.ones(len(x), dtype=torch.float64))
    return (out / len(x)).view(-1, K, K)


def pooled_pair_tv(s: torch.Tensor, ref: torch.Tensor, K: int) -> float:
    """TV between the adjacent-pair frequencies of ``s`` pooled over positions and ``ref`` ``[K, K]``."""
    return 0.5 * float((pair_freqs(s, K).mean(0) - ref).abs().sum())


def markov_pairs(target: MarkovChainTarget) -> torch.Tensor:
    marg, rows = target.initial, []
    for _ in range(target.length - 1):
        rows.append(marg[:, None] * target.transition)
        marg = marg @ target.transition
    return torch.stack(rows)


def marginal_tv(s: torch.Tensor, ref: torch.Tensor, K: int) -> float:
    """Mean over positions of the TV between per-position category frequencies."""
    f = lambda x: F.one_hot(x, K).double().mean(0)  # noqa: E731
    return 0.5 * float((f(s) - f(ref)).abs().sum(-1).mean())


def load_target(name: str):
    """``(train [N, L], test [M, L], K, description, quality_fn(samples) -> float, quality name, H or None)``."""
    if name == "markov":
        target = MarkovChainTarget(8, 4, seed=0)
        train = target.sample(20000, torch.Generator().manual_seed(0))
        test = target.sample(2000, torch.Generator().manual_seed(1))
        ref = markov_pairs(target)
        return (train, test, 4, f"Markov chain, L = 8, K = 4, entropy H = {target.entropy():.3f} nats",
                lambda s: pair_tv(s, ref, 4), "bigram TV (exact)", target.entropy())
    if name == "digits":
        x, _ = quantized_digits(2)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        train, test = x[perm[:1500]], x[perm[1500:]]
        return (train, test, 2, "8x8 digits binarized (L = 64, K = 2), 1500 train / 297 test",
                lambda s: marginal_tv(s, test, 2), "pixel-marginal TV (test)", None)
    if name == "text":
        train, test, vocab = docstring_text(32, 8)
        K = len(vocab)
        ref = pair_freqs(test, K).mean(0)
        floor = pooled_pair_tv(train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:5000]],
                               ref, K)
        return (train, test, K, f"standard-library docstrings (`pf.data.sequences.docstring_text`), 32-character "
                f"windows, K = {K}, {len(train)} train / {len(test)} held-out windows (the held-out tail of the "
                f"text); 5000 training windows are at pooled char-bigram TV {floor:.4f} from the held-out text",
                lambda s: pooled_pair_tv(s, ref, K), "char-bigram TV (held-out)", None)
    raise SystemExit(f"unknown target {name!r}: markov, digits or text")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="markov", choices=["markov", "digits", "text"])
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--elbo-samples", type=int, default=16)
    args = ap.parse_args()
    from flow_matching.loss import MixturePathGeneralizedKL
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data, test, K, desc, quality, quality_name, H = load_target(args.target)
    L = data.shape[1]

    ours = {"ours": pf.build("discrete-fm", dim=L, num_categories=K, hidden=(256, 256)),
            "ours-linear": pf.build("discrete-fm", dim=L, num_categories=K, hidden=(256, 256), scheduler="linear")}
    meta_net = CategoricalDenoiser(L, K + 1, K + 1, 0, (256, 256), 16, 32, "silu")
    meta_path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=1.0))
    meta_loss = MixturePathGeneralizedKL(path=meta_path)
    params = {**{k: m.parameters() for k, m in ours.items()}, "meta": meta_net.parameters()}
    opts = {k: torch.optim.Adam(p, lr=2e-3) for k, p in params.items()}
    steps = dict.fromkeys(CONTENDERS, 0)
    spent = dict.fromkeys(CONTENDERS, 0.0)

    def step(name):
        x1 = data[torch.randint(0, len(data), (256,))]
        opts[name].zero_grad()
        if name != "meta":
            loss = ours[name].loss(x1)
        else:
            t = torch.rand(len(x1)) * (1 - 1e-3)
            ps = meta_path.sample(t=t, x_0=torch.full_like(x1, K), x_1=x1)
            loss = meta_loss(logits=meta_net(ps.x_t, ps.t), x_1=x1, x_t=ps.x_t, t=ps.t)
        loss.backward()
        opts[name].step()
        steps[name] += 1

    while min(spent.values()) < args.budget:  # interleaved 1 s rounds
        for name in CONTENDERS:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                step(name)
            spent[name] += time.perf_counter() - t0

    def evaluator(logit_fn):
        def den(xt, t):
            lp = F.log_softmax(logit_fn(xt, t)[..., :K], -1)
            known = xt < K
            keep = F.one_hot(xt.clamp(max=K - 1), K).bool()
            fixed = torch.where(keep, torch.zeros_like(lp), torch.full_like(lp, float("-inf")))
            return torch.where(known[..., None], fixed, lp)
        return den

    class MetaWrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return torch.softmax(self.model(x, t.expand(x.shape[0]).float()), -1)

    rows = []
    with torch.no_grad():
        for name in CONTENDERS:
            if name == "meta":
                fn, path = (lambda xt, t: meta_net(xt, t.float())), MixturePath(K, "mask", "linear")
            else:
                fn, path = (lambda xt, t, m=ours[name]: m.denoiser(xt, t.float())), ours[name].path
            g = torch.Generator().manual_seed(2)
            elbo = path_elbo(path, evaluator(fn), test, times=16, samples=args.elbo_samples, generator=g).mean()
            for nsteps in (16, 64):
                t0 = time.perf_counter()
                if name != "meta":
                    s = ours[name].sample(5000, steps=nsteps, generator=torch.Generator().manual_seed(3))
                else:
                    torch.manual_seed(3)
                    solver = MixtureDiscreteEulerSolver(MetaWrapped(meta_net), meta_path, vocabulary_size=K + 1)
                    s = solver.sample(x_init=torch.full((5000, L), K), step_size=1.0 / nsteps,
                                      time_grid=torch.tensor([0.0, 1.0 - 1e-3]))
                dt = time.perf_counter() - t0
                masked_left = float((s == K).double().mean())
                nll = float(-elbo) if H is None else float(-elbo - H)
                rows.append((name, steps[name], spent[name], nll / (1 if H is not None else L), nsteps,
                             quality(s.clamp(max=K - 1)), masked_left, dt))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    metric = "-ELBO - H (>= KL, nats)" if H is not None else "test -ELBO (nats/token)"
    lines = [
        f"# Discrete flow matching vs Meta flow_matching ({args.target})", "",
        f"Target: {desc}.",
        f"Budget {args.budget:g} s of training each, interleaved 1 s rounds, batch 256, Adam 2e-3, same denoiser "
        "(MLP 256x256 on token+position embeddings). Machine: CPU, 1 thread; load: `" + load + "`. "
        f"Command: `python benchmarks/discrete.py --target {args.target} --budget {args.budget:g}`.", "",
        "ours = `pf.build('discrete-fm')` (defaults: masked source, kinetic scheduler, cross-entropy on masked "
        "tokens, scheduler-exact jump sampler); ours-linear = the same with `scheduler='linear'`; meta = "
        "flow_matching 1.0.10 `MixtureDiscreteProbPath(PolynomialConvexScheduler(1))` + `MixturePathGeneralizedKL` "
        "+ `MixtureDiscreteEulerSolver` (its time grid stops at 1 - 1e-3). ELBO: 16 Gauss-Legendre nodes x "
        f"{args.elbo_samples} draws per held-out sequence.", "",
        f"| model | train steps | s | {metric} | sampler steps | {quality_name} | masks left | sample s (5k) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.4f} | {r[4]} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.2f} |")
    name = "discrete.md" if args.target == "markov" else f"discrete_{args.target}.md"
    out = os.path.join(os.path.dirname(__file__), "results", name)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
