"""Tutorial 4: residual flows.

An invertible residual block is ``z = x + g(x)`` with ``Lip(g) < 1`` (Behrmann et al. 2019):

* Lipschitz constraint: spectral normalisation bounds each linear layer's largest singular
  value by ``c < 1``; 1-Lipschitz activations keep the composition's constant below ``c``.
* Fixed-point inverse: ``x = z - g(x)`` is a contraction, so ``x_{k+1} = z - g(x_k)`` converges
  geometrically, with rate at most ``Lip(g)``.
* Log-determinant: ``log det(I + J) = sum_k (-1)^{k+1} tr(J^k) / k``. Chen et al. (2019) make an
  *unbiased* estimate of this infinite series with a random number of terms ("Russian
  roulette", each term reweighted by 1 / P(N >= k)) and Hutchinson's trace estimator.

Run: ``python examples/04_residual_flows.py [--out DIR] [--quick]``.
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
from torch.autograd.functional import jacobian  # noqa: E402

import pushforward as pf  # noqa: E402
from pushforward.transforms import ResidualBlock  # noqa: E402


def random_block(dim: int, lipschitz: float, seed: int) -> ResidualBlock:
    torch.manual_seed(seed)
    block = ResidualBlock(dim, hidden=(32, 32), lipschitz=lipschitz).double()
    for p in block.parameters():
        # Large weights, zero biases: the spectral norm does the bounding, nothing saturates.
        torch.nn.init.normal_(p, std=1.0) if p.dim() > 1 else torch.nn.init.zeros_(p)
    return block.eval()


def part_lipschitz_and_inverse(out: Path) -> dict:
    D = 2
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(256, D, dtype=torch.float64, generator=g)
    res = {}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    th = torch.tensor(1.0, dtype=torch.float64)
    R = torch.stack([torch.stack([th.cos(), -th.sin()]), torch.stack([th.sin(), th.cos()])])
    for c, col in ((0.5, "C0"), (0.9, "C1"), (0.99, "C2")):
        # From scratch: g(x) = c R tanh(x) has Lip(g) = c exactly (attained at x = 0).
        def gfun(v, c=c):
            return c * torch.tanh(v) @ R.T

        z = x + gfun(x)
        xk, errs = z.clone(), []
        for _ in range(60):
            xk = z - gfun(xk)  # the fixed-point iteration
            errs.append(float((xk - x).abs().max()))
        # The library's block: spectral normalisation keeps every local Lipschitz constant <= c.
        block = random_block(D, c, 0)
        with torch.no_grad():
            _, jt = block.net.jacobian(x)
            lip = float(torch.linalg.matrix_norm(jt, ord=2).max())
            zb, _ = block(x)
            xb, _ = block.inverse(zb)
        res[c] = {"errors": errs, "block_max_lipschitz": lip, "block_inverse_error": float((xb - x).abs().max())}
        ax.semilogy(range(1, 61), [max(e, 1e-17) for e in errs], color=col, label=f"Lip(g) = {c}")
        ax.semilogy(range(1, 61), [errs[0] * c**k for k in range(60)], "--", color=col, lw=0.8)
        print(f"[1] Lip(g)={c}: inverse error after 10/30/60 iterations {errs[9]:.1e} / {errs[29]:.1e} / "
              f"{errs[59]:.1e}; library block (c={c}): max ||J_g|| {lip:.4f}, inverse error "
              f"{res[c]['block_inverse_error']:.1e}")
    ax.set_xlabel("fixed-point iterations")
    ax.set_ylabel("max |x_k - x|")
    ax.set_title("inverse of x + g(x): geometric convergence (dashed: c^k)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "04_fixed_point.png", dpi=110)
    plt.close(fig)
    return res


def roulette_logdet(J: torch.Tensor, g: torch.Generator, n_exact: int = 2, p: float = 0.5) -> float:
    """One Russian-roulette + Hutchinson draw of log det(I + J) (Chen et al. 2019, eq. 6)."""
    n = n_exact + int(math.floor(math.log(float(torch.rand((), generator=g, dtype=torch.float64))) / math.log1p(-p)))
    v = torch.randint(0, 2, (J.shape[0],), generator=g).to(J.dtype) * 2 - 1
    w, total = v, 0.0
    for k in range(1, n + 1):
        w = J @ w  # J^k v
        inv_tail = (1 - p) ** -max(0, k - n_exact)  # 1 / P(N >= k)
        total += (-1) ** (k + 1) / k * float(v @ w) * inv_tail
    return total


def part_roulette(out: Path, draws: int) -> dict:
    g = torch.Generator().manual_seed(1)
    D = 8
    A = torch.randn(D, D, dtype=torch.float64, generator=g)
    J = 0.85 * A / torch.linalg.matrix_norm(A, ord=2)  # ||J|| = 0.85 < 1
    exact = float(torch.linalg.slogdet(torch.eye(D, dtype=torch.float64) + J)[1])
    est = torch.tensor([roulette_logdet(J, g) for _ in range(draws)])
    mean, se = float(est.mean()), float(est.std() / math.sqrt(draws))
    # Truncating the series instead is biased: the first two terms only.
    trunc = float(torch.trace(J) - torch.trace(J @ J) / 2)

    # The library's block does the same on its own Jacobian in training mode.
    block = random_block(D, 0.9, 2)
    x = torch.randn(1, D, dtype=torch.float64, generator=g)
    with torch.no_grad():
        _, exact_block = block(x)
        exact_block = float(exact_block)
    block.logdet = "estimate"
    block.train()
    with torch.no_grad():
        lib = torch.tensor([float(block(x)[1]) for _ in range(draws)])
    lib_mean, lib_se = float(lib.mean()), float(lib.std() / math.sqrt(draws))
    J_auto = jacobian(lambda v: v + block.net(v[None])[0], x[0])
    auto = float(torch.linalg.slogdet(J_auto)[1])

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].hist(est.numpy(), bins=50, density=True, alpha=0.7)
    ax[0].axvline(exact, color="k", lw=2, label=f"exact {exact:.3f}")
    ax[0].axvline(mean, color="C1", ls="--", label=f"mean {mean:.3f} ± {se:.3f}")
    ax[0].axvline(trunc, color="C3", ls=":", label=f"2-term truncation {trunc:.3f}")
    ax[0].set_title("Russian roulette, from scratch (D = 8)")
    ax[0].legend(fontsize=8)
    ax[1].hist(lib.numpy(), bins=50, density=True, alpha=0.7, color="C2")
    ax[1].axvline(auto, color="k", lw=2, label=f"autograd {auto:.3f}")
    ax[1].axvline(lib_mean, color="C1", ls="--", label=f"mean {lib_mean:.3f} ± {lib_se:.3f}")
    ax[1].set_title("ResidualBlock(logdet='estimate'), training mode")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "04_russian_roulette.png", dpi=110)
    plt.close(fig)
    print(f"[2] roulette: {mean:.4f} ± {se:.4f} vs exact {exact:.4f} (2-term truncation {trunc:.4f})")
    print(f"[2] library block: {lib_mean:.4f} ± {lib_se:.4f} vs exact {exact_block:.4f} (autograd {auto:.4f})")
    return {"exact": exact, "mean": mean, "se": se, "truncated": trunc,
            "block_exact": exact_block, "block_autograd": auto, "block_mean": lib_mean, "block_se": lib_se}


def part_train(out: Path, seconds: float) -> dict:
    data = pf.data.load("moons", n=4000)
    torch.manual_seed(0)
    model = pf.build("residual", 2, blocks=4)
    hist = pf.fit(model, data.x, max_time=seconds, progress=False)
    nll = pf.metrics.nll(model, pf.data.load("moons", n=1000, seed=1).x)
    pf.viz.plot_density(model, out / "04_residual_density.png", data=data.x[:800], samples=400, n_grid=100,
                        title=f"residual flow, {hist.steps} steps: NLL {nll:.2f}")
    print(f"[3] residual flow on moons: {hist.steps} steps, test NLL {nll:.3f}")
    return {"nll": nll}


def main(out_dir: str = "tutorial_out/04", budget: float = 1.0) -> dict:
    """``budget`` scales the estimator draws and the training (1: about a minute, 0.05: smoke)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"inverse": part_lipschitz_and_inverse(out), "roulette": part_roulette(out, max(400, int(5000 * budget))),
           "train": part_train(out, max(2.0, 25.0 * budget))}
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/04")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
