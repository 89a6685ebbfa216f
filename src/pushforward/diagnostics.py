"""Calibration diagnostics for amortized posteriors ``q(theta | x)`` (simulation-based inference).

All take pairs ``(theta_i, x_i)`` drawn from the joint ``p(theta) p(x | theta)`` (a "test set" of
simulations) and a posterior: a model with ``sample(n, context)`` (and ``log_prob(theta,
context)`` for HPD coverage), e.g. :class:`pushforward.posterior.Posterior`.

- :func:`sbc_ranks`, :func:`sbc_uniformity`, :func:`plot_sbc`: simulation-based calibration
  (Talts et al. 2018): for a calibrated posterior the rank of ``theta_i`` among ``L`` posterior
  samples given ``x_i`` is uniform on ``{0, ..., L}`` in each coordinate.
- :func:`expected_coverage`: highest-posterior-density coverage (Hermans et al. 2022, "A trust
  crisis in simulation-based inference?"): the fraction of ``theta_i`` inside the ``level``-HPD
  region of ``q(. | x_i)``; calibrated: equal to ``level``; over-confident: below it.
- :func:`tarp`: Tests of Accuracy with Random Points (Lemos et al. 2023): expected coverage of
  balls around random reference points; necessary and sufficient for calibration.
- :func:`posterior_predictive`: simulations from posterior draws, and where ``x_o`` falls in them.

Posterior draws for all ``N`` observations are made in one batched ``sample`` call (``N L``
rows). Results are float64 NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._validate import check_int_range


def _as2d(a: Any, name: str) -> Tensor:
    t = torch.as_tensor(a)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() < 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be [N, ...] with N >= 1, got shape {list(t.shape)}")
    return t


def _pairs(theta: Any, x: Any) -> tuple[Tensor, Tensor]:
    theta, x = _as2d(theta, "theta"), _as2d(x, "x")
    if theta.shape[0] != x.shape[0]:
        raise ValueError(f"theta has {theta.shape[0]} rows but x has {x.shape[0]}")
    return theta, x


def _like(posterior) -> dict:
    p = next(posterior.parameters(), None) if hasattr(posterior, "parameters") else None
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


@torch.no_grad()
def posterior_draws(posterior, x: Any, n_samples: int, seed: int = 0, batch: int = 100_000) -> Tensor:
    """``L = n_samples`` posterior draws for each observation: ``x`` ``[N, ...]`` -> ``[N, L, P]``.

    ``posterior.sample(m, context)`` gets the observations repeated ``L`` times each (row
    ``i L + l`` is observation ``i``), in chunks of at most ``batch`` rows.
    """
    check_int_range(n_samples, "n_samples")
    x = _as2d(x, "x")
    like = _like(posterior)
    g = torch.Generator(device=like.get("device", "cpu")).manual_seed(seed)
    ctx = x.to(**like).repeat_interleave(n_samples, 0)
    out = []
    dev = like.get("device", torch.device("cpu"))
    # samplers without a generator argument draw from the global RNG: seed it inside a fork, so
    # the caller's random state is left as it was
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for lo in range(0, ctx.shape[0], batch):
            c = ctx[lo: lo + batch]
            try:
                out.append(posterior.sample(c.shape[0], c, generator=g).cpu())
            except TypeError:
                out.append(posterior.sample(c.shape[0], c).cpu())
    s = torch.cat(out)
    return s.reshape(x.shape[0], n_samples, -1).double()


def sbc_ranks(posterior, theta: Any, x: Any, n_samples: int = 100, seed: int = 0,
              draws: Tensor | None = None) -> np.ndarray:
    """SBC ranks ``[N, P]``: ``r_ij = #{l : theta^(l)_j < theta_ij}`` over ``L`` draws of ``q(. | x_i)``.

    Args:
        theta, x: ``[N, P]`` and ``[N, ...]`` from the joint (``theta_i`` from the prior).
        n_samples: ``L``; ranks lie in ``{0, ..., L}``.
        draws: precomputed :func:`posterior_draws` ``[N, L, P]`` (then ``posterior`` is unused).
    """
    theta, x = _pairs(theta, x)
    d = posterior_draws(posterior, x, n_samples, seed) if draws is None else torch.as_tensor(draws).double()
    return (d < theta.double().reshape(theta.shape[0], 1, -1)).sum(1).numpy()


def sbc_uniformity(ranks: np.ndarray, n_samples: int, bins: int | None = None) -> dict[str, np.ndarray]:
    """Chi-square test of uniform SBC ranks per coordinate.

    The ranks ``[N, P]`` (values in ``{0..L}``) are pooled into ``bins`` equal bins (default
    ``min(L + 1, N // 10, 20)``); under calibration the counts are multinomial with equal cell
    probabilities. Returns ``{"chi2": [P], "pvalue": [P]}``; a small p-value rejects calibration.
    """
    from scipy.stats import chisquare

    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n = ranks.shape[0]
    bins = bins if bins is not None else max(2, min(n_samples + 1, n // 10, 20))
    edges = np.linspace(-0.5, n_samples + 0.5, bins + 1)
    # cell probabilities: how many of the L + 1 equally likely rank values each bin holds
    probs = np.histogram(np.arange(n_samples + 1), bins=edges)[0] / (n_samples + 1)
    chi2, pvals = [], []
    for j in range(ranks.shape[1]):
        counts = np.histogram(ranks[:, j], bins=edges)[0]
        c, p = chisquare(counts, probs * n)
        chi2.append(c)
        pvals.append(p)
    return {"chi2": np.asarray(chi2), "pvalue": np.asarray(pvals)}


def plot_sbc(ranks: np.ndarray, n_samples: int, bins: int = 20, names: list[str] | None = None, ax=None):
    """Rank histograms, one panel per coordinate, with the 99% band of a uniform histogram.

    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from scipy.stats import binom

    ranks = np.asarray(ranks)
    ranks = ranks[:, None] if ranks.ndim == 1 else ranks
    n, p = ranks.shape
    if ax is None:
        fig, axes = plt.subplots(1, p, figsize=(3 * p, 2.5), squeeze=False)
        axes = axes[0]
    else:
        axes, fig = np.atleast_1d(ax), np.atleast_1d(ax)[0].figure
    lo, hi = binom.ppf([0.005, 0.995], n, 1.0 / bins)
    for j, a in enumerate(axes[:p]):
        a.axhspan(lo, hi, color="0.85", zorder=0)
        a.hist(ranks[:, j], bins=np.linspace(-0.5, n_samples + 0.5, bins + 1), color="C0", zorder=1)
        a.set_title(names[j] if names else f"theta[{j}]")
        a.set_xlabel("rank")
    fig.tight_layout()
    return fig


@torch.no_grad()
def expected_coverage(posterior, theta: Any, x: Any, n_samples: int = 200, seed: int = 0,
                      levels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """HPD expected coverage: ``c(level) = mean_i 1[alpha_i <= level]`` with
    ``alpha_i = #{l : log q(theta^(l) | x_i) > log q(theta_i | x_i)} / L``.

    ``alpha_i`` is the smallest credibility level whose highest-density region contains
    ``theta_i``; a calibrated posterior has ``c(level) = level``, an over-confident one lies below.
    Needs ``posterior.log_prob``. Returns ``{"level": [K], "coverage": [K], "alpha": [N]}``.
    """
    theta, x = _pairs(theta, x)
    like = _like(posterior)
    d = posterior_draws(posterior, x, n_samples, seed)
    n, p = theta.shape[0], theta.shape[1]
    ctx = x.to(**like).repeat_interleave(n_samples, 0)
    lp_draws = posterior.log_prob(d.reshape(n * n_samples, p).to(**like), ctx).reshape(n, n_samples).double().cpu()
    lp_true = posterior.log_prob(theta.to(**like), x.to(**like)).double().cpu()
    alpha = (lp_draws > lp_true[:, None]).double().mean(1).numpy()
    levels = np.linspace(0, 1, 21) if levels is None else np.asarray(levels, dtype=float)
    return {"level": levels, "coverage": (alpha[None, :] <= levels[:, None]).mean(1), "alpha": alpha}


def tarp(posterior, theta: Any, x: Any, n_samples: int = 200, seed: int = 0, levels: np.ndarray | None = None,
         draws: Tensor | None = None) -> dict[str, np.ndarray]:
    """TARP expected coverage (Lemos et al. 2023, "Sampling-based accuracy testing of posterior
    estimators for general inference").

    Coordinates are z-scored with the statistics of ``theta``; one reference point per
    observation is drawn uniformly in the bounding box of the (z-scored) ``theta``; ``f_i`` is
    the fraction of posterior draws closer to the reference than ``theta_i``. Calibrated:
    ``mean_i 1[f_i <= level] = level`` at every level. Returns ``{"level", "coverage", "f",
    "atc"}``; ``atc`` is the area between the curve and the diagonal (signed: > 0 under-confident,
    < 0 over-confident) and ``max_dev`` its largest absolute deviation.
    """
    theta, x = _pairs(theta, x)
    d = posterior_draws(posterior, x, n_samples, seed) if draws is None else torch.as_tensor(draws).double()
    t = theta.double()
    loc, scale = t.mean(0), t.std(0).clamp_min(1e-12)
    t, d = (t - loc) / scale, (d - loc) / scale
    g = torch.Generator().manual_seed(seed + 1)
    lo, hi = t.min(0).values, t.max(0).values
    ref = lo + (hi - lo) * torch.rand(t.shape, generator=g, dtype=torch.float64)
    dist_true = (t - ref).norm(dim=-1)
    dist_draw = (d - ref[:, None, :]).norm(dim=-1)
    f = (dist_draw < dist_true[:, None]).double().mean(1).numpy()
    levels = np.linspace(0, 1, 21) if levels is None else np.asarray(levels, dtype=float)
    cov = (f[None, :] <= levels[:, None]).mean(1)
    return {"level": levels, "coverage": cov, "f": f, "atc": float(np.trapezoid(cov - levels, levels)),
            "max_dev": float(np.abs(cov - levels).max())}


@torch.no_grad()
def posterior_predictive(posterior, simulator: Callable[[Tensor], Tensor], x_o: Any, n: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Posterior predictive check: ``x^(l) = simulator(theta^(l))``, ``theta^(l) ~ q(. | x_o)``.

    Returns ``{"theta": [n, P], "x": [n, X], "quantile": [X]}``: ``quantile`` is the fraction of
    predictive simulations below ``x_o`` per coordinate (values near 0 or 1 flag a misfit).
    """
    x_o = torch.as_tensor(x_o).reshape(1, -1)
    th = posterior_draws(posterior, x_o, n, seed)[0]
    sims = torch.as_tensor(simulator(th.float())).reshape(n, -1).double()
    q = (sims < x_o.double()).double().mean(0).numpy()
    return {"theta": th, "x": sims, "quantile": q}


__all__ = ["expected_coverage", "plot_sbc", "posterior_draws", "posterior_predictive", "sbc_ranks",
           "sbc_uniformity", "tarp"]
