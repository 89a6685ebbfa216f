"""Tutorial 6: score-based models: forward SDE, reverse SDE, probability-flow ODE.

Song et al. (2021) noise data by a forward SDE ``dx = f(x, s) ds + g(s) dW`` (diffusion time
``s``: 0 data, 1 noise; the library's time is ``t = 1 - s``). Time reversal gives the reverse SDE

    dx = [f(x, s) - g(s)^2 ∇ log p_s(x)] ds + g(s) dW̄,

and the deterministic *probability-flow ODE* ``dx/ds = f - g^2 ∇ log p_s / 2`` has the same
marginals p_s. Both need only the score ``∇ log p_s``, which denoising score matching learns.

1. On a 1-D Gaussian mixture the perturbed marginals of the VP SDE are Gaussian mixtures, so the
   score is exact: we run the forward SDE, the reverse SDE and the PF ODE by hand on the same
   data and check that both reverse processes give the data back.
2. ``pf.build("score-vp", 2)`` learns the score of a 2-D data set; its Euler-Maruyama,
   predictor-corrector and PF-ODE samplers are compared on the same data.

Run: ``python examples/06_score_based.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pushforward as pf  # noqa: E402

BMIN, BMAX = 0.1, 20.0
MEANS, STD = torch.tensor([-2.0, 2.0], dtype=torch.float64), 0.3


def beta(s):
    return BMIN + s * (BMAX - BMIN)


def mean_coef(s):
    """m(s) = exp(-B(s)/2), B(s) = int_0^s beta."""
    return math.exp(-0.5 * (BMIN * s + 0.5 * s**2 * (BMAX - BMIN)))


def exact_score(x: torch.Tensor, s: float) -> torch.Tensor:
    """∇ log p_s(x) of 0.5 N(-2, 0.3^2) + 0.5 N(2, 0.3^2) pushed through the VP SDE to time s."""
    m = mean_coef(s)
    var = m**2 * STD**2 + 1 - m**2
    logw = -0.5 * (x[:, None] - m * MEANS) ** 2 / var  # equal weights and variances
    r = torch.softmax(logw, 1)
    return (r * (m * MEANS - x[:, None])).sum(1) / var


def data_1d(n: int, g: torch.Generator) -> torch.Tensor:
    return MEANS[torch.randint(0, 2, (n,), generator=g)] + STD * torch.randn(n, generator=g, dtype=torch.float64)


def mixture_cdf(x: torch.Tensor) -> torch.Tensor:
    nrm = torch.distributions.Normal(torch.tensor(0.0, dtype=x.dtype), torch.tensor(1.0, dtype=x.dtype))
    return 0.5 * (nrm.cdf((x - MEANS[0]) / STD) + nrm.cdf((x - MEANS[1]) / STD))


def ks(x: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance of the sample ``x [n]`` to a CDF."""
    u = cdf(torch.sort(x).values)
    n = x.shape[0]
    i = torch.arange(1, n + 1, dtype=u.dtype)
    return float(torch.maximum(i / n - u, u - (i - 1) / n).max())


def part_exact(out: Path, steps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n = 2000
    x0 = data_1d(n, g)
    ds = 1.0 / steps
    s_eps = 1e-3
    grid = [i * ds for i in range(steps + 1)]
    # Forward SDE (Euler-Maruyama), data -> noise.
    fwd = [x0]
    x = x0
    for s in grid[:-1]:
        b = beta(s)
        x = x - 0.5 * b * x * ds + math.sqrt(b * ds) * torch.randn(n, generator=g, dtype=torch.float64)
        fwd.append(x)
    # Reverse SDE and PF ODE from the prior N(0, 1), noise -> data, with the exact score.
    rev_grid = torch.linspace(1.0, s_eps, steps + 1).tolist()
    xs = torch.randn(n, generator=g, dtype=torch.float64)
    xo = xs.clone()
    rev, ode = [xs], [xo]
    for s, s_next in zip(rev_grid[:-1], rev_grid[1:]):
        h = s - s_next
        b = beta(s)
        xs = xs + (0.5 * b * xs + b * exact_score(xs, s)) * h + math.sqrt(b * h) * torch.randn(
            n, generator=g, dtype=torch.float64)
        # PF ODE by Heun (second order): dx/ds = -b x / 2 - b score / 2, run backwards in s.
        def f(v, s):
            return -0.5 * beta(s) * v - 0.5 * beta(s) * exact_score(v, s)

        k1 = f(xo, s)
        pred = xo - h * k1
        xo = xo - 0.5 * h * (k1 + f(pred, s_next))
        rev.append(xs)
        ode.append(xo)
    # Kolmogorov-Smirnov distances to the exact CDFs (W2 in 1-D is dominated by the random
    # split of mass between the two far-apart modes; KS is not). Noise level ~ 1 / sqrt(n).
    w2_sde = ks(rev[-1], mixture_cdf)
    w2_ode = ks(ode[-1], mixture_cdf)
    w2_noise = ks(fwd[-1], lambda v: torch.distributions.Normal(0.0, 1.0).cdf(v))

    fig, ax = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for a, traj, times, title in ((ax[0], fwd, grid, "forward SDE: data → noise"),
                                  (ax[1], rev, rev_grid, f"reverse SDE: noise → data (KS {w2_sde:.3f})"),
                                  (ax[2], ode, rev_grid, f"probability-flow ODE (KS {w2_ode:.3f})")):
        tr = torch.stack(traj)[:, :60]
        a.plot(times, tr.numpy(), lw=0.5, color="C0", alpha=0.7)
        a.set_xlabel("diffusion time s (0 = data, 1 = noise)")
        a.set_title(title)
    ax[1].invert_xaxis()
    ax[2].invert_xaxis()
    ax[0].set_ylabel("x")
    fig.tight_layout()
    fig.savefig(out / "06_sde_vs_ode_exact.png", dpi=110)
    plt.close(fig)
    print(f"[1] exact score, {steps} steps: KS distance to the data law: reverse SDE {w2_sde:.4f}, "
          f"PF ODE {w2_ode:.4f}; forward SDE end vs N(0,1): {w2_noise:.4f} (noise level ~{1 / math.sqrt(n):.3f})")
    return {"ks_sde": w2_sde, "ks_ode": w2_ode, "ks_forward_noise": w2_noise}


def part_learned(out: Path, seconds: float, sde_steps: int) -> dict:
    data = pf.data.load("moons", n=6000)
    ref = pf.data.load("moons", n=1000, seed=1).x
    torch.manual_seed(0)
    model = pf.build("score-vp", 2)
    hist = pf.fit(model, data.x, max_time=seconds, progress=False)
    res, samples = {}, {}
    with torch.no_grad():
        for name, kw in (("em", {"sampler": "em", "steps": sde_steps}),
                         ("pc", {"sampler": "pc", "steps": sde_steps}),
                         ("ode", {"sampler": "ode"})):
            t0 = time.perf_counter()
            s = model.sample(1000, generator=torch.Generator().manual_seed(1), **kw)
            res[name] = {"w2": pf.metrics.w2(s, ref), "seconds": time.perf_counter() - t0}
            samples[name] = s
    fig, ax = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
    ax[0].scatter(ref[:, 0], ref[:, 1], s=2, color="0.4")
    ax[0].set_title("data")
    for a, (name, s) in zip(ax[1:], samples.items()):
        a.scatter(s[:, 0], s[:, 1], s=2, color="C3")
        label = {"em": "reverse SDE (Euler-Maruyama)", "pc": "predictor-corrector", "ode": "PF ODE (dopri5)"}[name]
        a.set_title(f"{label}\nW2 {res[name]['w2']:.3f}, {res[name]['seconds']:.2f} s", fontsize=9)
    fig.suptitle(f"score-vp on two moons, {hist.steps} training steps")
    fig.tight_layout()
    fig.savefig(out / "06_samplers.png", dpi=110)
    plt.close(fig)
    for name, r in res.items():
        print(f"[2] score-vp sampler {name}: W2 {r['w2']:.3f} in {r['seconds']:.2f} s")
    return res


def main(out_dir: str = "tutorial_out/06", budget: float = 1.0) -> dict:
    """``budget`` scales the steps and the training (1: about a minute, 0.05: a smoke test)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"exact": part_exact(out, max(200, int(1000 * budget))),
           "learned": part_learned(out, max(2.0, 25.0 * budget), sde_steps=max(50, int(500 * budget)))}
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/06")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
