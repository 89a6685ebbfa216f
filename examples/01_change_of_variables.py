"""Tutorial 1: the change of variables, in 1-D and 2-D.

A flow is a bijection ``f`` from data ``x`` to latent ``z`` with a simple base density; then

    log p_X(x) = log p_Z(f(x)) + log |det df/dx|.

Three small exact experiments next to the library call that does each at scale:

1. A linear map ``x -> A x`` scales every area by ``|det A|`` (we measure the area of the
   image of the unit square and compare), and the density of ``A z`` is ``p_Z / |det A|``.
2. The 1-D CDF flow: ``z = F(x)`` sends data to Uniform(0, 1) when ``F`` is the data's CDF;
   sampling is the inverse, ``x = F^{-1}(u)`` (``pf.build("cdf", 1)``).
3. Why a Gaussian mixture samples badly in high dimension: a product of D bimodal coordinates
   has 2^D modes. Once 2^D outgrows the K components, each component must straddle several
   modes, so the mixture's samples land between modes and its likelihood falls behind, while a
   flow built from 1-D CDF flows (one per coordinate) has every mode whatever D.

Run: ``python examples/01_change_of_variables.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pushforward as pf  # noqa: E402


def shoelace_area(poly: np.ndarray) -> float:
    """Area of a simple polygon ``[K, 2]`` (vertices in order)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def linear_volume(out: Path) -> dict:
    """Part 1: a linear map's volume change is |det A|, and p_X(x) = p_Z(A^-1 x) / |det A|."""
    A = np.array([[1.5, 0.8], [-0.3, 0.7]])
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    image = square @ A.T
    ratio = shoelace_area(image) / shoelace_area(square)
    det = abs(np.linalg.det(A))

    # The same statement as densities, with the library: a flow whose one layer is x -> A^-1 x.
    At = torch.tensor(A, dtype=torch.float64)
    flow = pf.NormalizingFlow([LinearMap(torch.linalg.inv(At))], pf.distributions.StandardNormal(2)).double()
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ At.T
    logp_lib = flow.log_prob(x)
    # Exact: x = A z with z ~ N(0, I) is N(0, A A^T).
    logp_exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                        At @ At.T).log_prob(x)
    density_err = float((logp_lib - logp_exact).abs().max())

    fig, ax = plt.subplots(1, 2, figsize=(8, 4))
    g = np.linspace(0, 1, 11)
    for v in g:
        for seg in (np.stack([np.full_like(g, v), g], 1), np.stack([g, np.full_like(g, v)], 1)):
            ax[0].plot(seg[:, 0], seg[:, 1], color="0.6", lw=0.7)
            s2 = seg @ A.T
            ax[1].plot(s2[:, 0], s2[:, 1], color="0.6", lw=0.7)
    ax[0].fill(*square.T, alpha=0.3, color="C0")
    ax[1].fill(*image.T, alpha=0.3, color="C1")
    ax[0].set_title("unit square, area 1")
    ax[1].set_title(f"A · square, area {ratio:.4f} = |det A| {det:.4f}")
    for a in ax:
        a.set_aspect("equal")
        a.set_xlim(-0.6, 2.6)
        a.set_ylim(-0.6, 1.6)
    fig.tight_layout()
    fig.savefig(out / "01_linear_volume.png", dpi=110)
    plt.close(fig)
    print(f"[1] area ratio {ratio:.10f}  |det A| {det:.10f}  density max error {density_err:.2e}")
    return {"area_ratio": ratio, "abs_det": det, "density_error": density_err}


class LinearMap(pf.transforms.Transform):
    """``z = W x`` (data -> latent) with ``log|det dz/dx| = log|det W|``, the same for every x."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.register_buffer("W", W)

    def forward(self, x, context=None):
        return x @ self.W.T, torch.linalg.slogdet(self.W)[1].expand(x.shape[0]).to(x.dtype)

    def inverse(self, z, context=None):
        Winv = torch.linalg.inv(self.W)
        return z @ Winv.T, torch.linalg.slogdet(Winv)[1].expand(z.shape[0]).to(z.dtype)


def bimodal(n: int, g: torch.Generator, dim: int = 1) -> torch.Tensor:
    """Each coordinate: 0.5 N(-1.5, 0.5^2) + 0.5 N(1.5, 0.5^2)."""
    signs = torch.randint(0, 2, (n, dim), generator=g).float() * 2 - 1
    return 1.5 * signs + 0.5 * torch.randn(n, dim, generator=g)


def bimodal_log_prob(x: torch.Tensor) -> torch.Tensor:
    comp = torch.distributions.Normal(torch.tensor([-1.5, 1.5]), 0.5)
    lp = torch.logsumexp(comp.log_prob(x[..., None]) + math.log(0.5), -1)
    return lp.sum(-1)


def cdf_flow(out: Path, steps: int) -> dict:
    """Part 2: learn F with pf.build("cdf", 1); F(data) is uniform, F^-1(uniform) is the data."""
    g = torch.Generator().manual_seed(1)
    x = bimodal(4000, g)
    model = pf.build("cdf", 1, components=4)
    pf.fit(model, x, steps=steps, lr=3e-2, progress=False)
    with torch.no_grad():
        # The layer's forward is F on standardized data: z = F((x - loc) / scale).
        z = model.transform(model.standardize(x))[0]
        u = torch.sort(z.squeeze(1)).values.double()
        # Kolmogorov-Smirnov distance of F(x) to Uniform(0, 1).
        n = u.shape[0]
        ks = float(torch.maximum(torch.arange(1, n + 1) / n - u, u - torch.arange(n) / n).max())
        xs = model.sample(4000, generator=torch.Generator().manual_seed(2))
        grid = torch.linspace(-4, 4, 400)[:, None]
        p_model = model.log_prob(grid).exp()
    p_true = bimodal_log_prob(grid).exp()

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
    ax[0].hist(x.squeeze(1).numpy(), bins=60, density=True, alpha=0.5, label="data")
    ax[0].plot(grid.squeeze(1), p_true, "k--", lw=1, label="true p(x)")
    ax[0].plot(grid.squeeze(1), p_model, "C1", lw=2, label="CDF flow p(x) = F'(x)")
    ax[0].legend(fontsize=8)
    ax[0].set_title("density")
    ax[1].hist(z.squeeze(1).numpy(), bins=40, range=(0, 1), density=True, color="C2", alpha=0.7)
    ax[1].axhline(1.0, color="k", ls="--", lw=1)
    ax[1].set_title(f"z = F(x): uniform (KS {ks:.3f})")
    ax[2].hist(xs.squeeze(1).numpy(), bins=60, density=True, alpha=0.6, color="C1", label="F⁻¹(u) samples")
    ax[2].plot(grid.squeeze(1), p_true, "k--", lw=1, label="true p(x)")
    ax[2].legend(fontsize=8)
    ax[2].set_title("sampling by the inverse CDF")
    fig.tight_layout()
    fig.savefig(out / "01_cdf_flow.png", dpi=110)
    plt.close(fig)
    print(f"[2] CDF flow: KS distance of F(data) to Uniform(0,1) = {ks:.4f}")
    return {"ks_uniform": ks}


def mixture_in_high_dim(out: Path, dims: list[int], components: int = 8) -> dict:
    """Part 3: a K-component Gaussian mixture covers at most K of the 2^D modes."""
    from sklearn.mixture import GaussianMixture

    g = torch.Generator().manual_seed(3)
    gap_gmm, off_gmm, off_true = [], [], []
    for d in dims:
        x = bimodal(3000, g, d)
        test = bimodal(3000, g, d)
        gmm = GaussianMixture(components, covariance_type="diag", random_state=0).fit(x.numpy())
        true_nll = float(-bimodal_log_prob(test).mean()) / d
        gap_gmm.append(float(-gmm.score_samples(test.numpy()).mean()) / d - true_nll)
        s = torch.as_tensor(gmm.sample(3000)[0], dtype=torch.float32)
        # A sample is "off the data" when some coordinate falls in the gap |x_d| < 0.5 between
        # the two modes, where the true density is small. Exact rate: 1 - (1 - q)^D.
        off_gmm.append(float((s.abs() < 0.5).any(1).float().mean()))
        q = float(torch.distributions.Normal(1.5, 0.5).cdf(torch.tensor(0.5))
                  - torch.distributions.Normal(1.5, 0.5).cdf(torch.tensor(-0.5)))
        off_true.append(1 - (1 - q) ** d)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(dims, gap_gmm, "o-", label=f"GMM, K={components}")
    ax[0].axhline(0.0, color="k", ls="--", lw=1, label="a flow with every mode (the truth)")
    ax[0].set_xlabel("dimension D")
    ax[0].set_ylabel("test NLL gap to the truth (nats / dim)")
    ax[0].legend(fontsize=8)
    ax[1].plot(dims, off_gmm, "o-", label=f"GMM, K={components}")
    ax[1].plot(dims, off_true, "k--", label="exact")
    ax[1].set_xlabel("dimension D")
    ax[1].set_ylabel("fraction of samples between modes")
    ax[1].set_ylim(0, 1.05)
    ax[1].legend(fontsize=8)
    fig.suptitle(f"2^D modes, {components} components: the mixture smears mass into the gaps")
    fig.tight_layout()
    fig.savefig(out / "01_mixture_high_dim.png", dpi=110)
    plt.close(fig)
    for d, gg, o, t in zip(dims, gap_gmm, off_gmm, off_true):
        print(f"[3] D={d:2d}: GMM NLL gap {gg:.3f} nats/dim, samples between modes {o:.2f} (exact {t:.2f})")
    return {"dims": dims, "gmm_gap": gap_gmm, "gmm_off_mode": off_gmm, "true_off_mode": off_true}


def main(out_dir: str = "tutorial_out/01", budget: float = 1.0) -> dict:
    """Run all three parts; ``budget`` scales the training (1: the full run, 0.1: a smoke test).

    Returns the key numbers (also printed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    res = {"linear": linear_volume(out), "cdf": cdf_flow(out, max(50, int(2000 * budget)))}
    dims = [1, 2, 4, 8] if budget < 0.5 else [1, 2, 3, 4, 5, 6, 8, 10, 12]
    res["mixture"] = mixture_in_high_dim(out, dims)
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/01")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.15 if a.quick else 1.0)
