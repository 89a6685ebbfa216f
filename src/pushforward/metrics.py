"""Evaluation metrics for any model with ``log_prob`` / ``sample``, and :func:`evaluate`.

- :func:`nll` (nats) and :func:`bits_per_dim`.
- Two-sample distances between sample sets ``[N, D]``: :func:`w2` (POT, exact up to 5 000
  points, sliced beyond), :func:`mmd` (unbiased MMD² with a sum of RBF kernels),
  :func:`energy_distance`.
- :func:`kl` ``KL(p || q)`` against a closed-form target.
- :func:`c2st`: classifier two-sample test (0.5: indistinguishable), the SBI benchmark metric.
- :func:`evaluate`: all of the above as a JSON-serialisable dict.

Sample-based metrics work in float64 on CPU (inputs are copied there), so they never depend on
the model's device or dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pushforward._utils import batched, module_like, to_tensor


# --------------------------------------------------------------------------- helpers
def _flat64(x: Any, name: str) -> Tensor:
    """``[N, ...]`` -> ``[N, D]`` float64 on CPU, finite."""
    x = to_tensor(x, name, dtype=torch.float64, device="cpu").detach()
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] sample set, got shape {list(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s)")
    return x


def _pair(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    x, y = _flat64(x, "x"), _flat64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _subsample(x: Tensor, m: int | None, g: torch.Generator) -> Tensor:
    if m is None or x.shape[0] <= m:
        return x
    return x[torch.randperm(x.shape[0], generator=g)[:m]]


# --------------------------------------------------------------------------- likelihood
@torch.no_grad()
def nll(model: nn.Module, x: Any, context: Tensor | None = None, batch_size: int = 4096) -> float:
    """Mean negative log-likelihood ``-1/N sum_i log q(x_i)`` in nats.

    Args:
        model: anything with ``log_prob(x, context=None) -> [N]``.
        x: data ``[N, ...]`` in the user's units (cast to the model's device and dtype).
        context: ``[N, C]`` or None.
        batch_size: rows per ``log_prob`` call (memory bound).

    ``log_prob`` runs under ``torch.no_grad()``; models that need autograd inside it (exact
    trace of a CNF) must enable it themselves.
    """
    lp = _log_probs(model, x, context, batch_size)
    if lp.shape[0] == 0:
        raise ValueError("nll needs at least one data point")
    return -float(lp.sum()) / lp.shape[0]


@torch.no_grad()
def _log_probs(model: Any, x: Any, context: Any, batch_size: int) -> Tensor:
    """``log q(x_i)`` for the rows of ``x [N, ...]`` (context ``[N, C]``, one shared row, or
    None) in blocks on the model's device: ``[N]`` float64 on CPU."""
    like = module_like(model)
    x = to_tensor(x, "x").to(**like)
    if context is not None:
        context = to_tensor(context, "context").to(**like)
    fn = model.log_prob if context is None else (lambda xb, cb: model.log_prob(xb, context=cb))
    return batched(lambda *a: fn(*a).detach().to("cpu", torch.float64), x, context, batch_size)


def bits_per_dim(nll: float, dim: int) -> float:
    """Bits per dimension ``nll / (D ln 2)`` from a mean NLL in nats over ``D``-dimensional data.

    For integer-valued data with uniform dequantization in the same units (e.g. 8x8 digits with
    values 0..16), this is the discrete model's bits/dim.
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim!r}")
    return float(nll) / (dim * math.log(2))


# --------------------------------------------------------------------------- sample distances
def w2(
    x: Any,
    y: Any,
    max_exact: int = 5000,
    n_projections: int = 200,
    seed: int = 0,
) -> float:
    """2-Wasserstein distance between the empirical distributions of ``x [N, D]`` and ``y [M, D]``.

    ``W2 = (min_P sum_ij P_ij ||x_i - y_j||^2)^{1/2}`` over couplings ``P`` of the uniform
    weights. When both sets have at most ``max_exact`` points it is solved exactly with POT's
    network simplex (``ot.emd2`` on squared Euclidean costs, then the square root; about 10 s
    for 5 000 x 5 000 points on one CPU core). Beyond that it returns the *sliced* W2
    (:func:`sliced_w2`, ``n_projections`` random directions, each 1-D W2 exact by sorting) on
    all points, not exact W2 on a subsample. Sliced W2 is a different, smaller distance
    (``SW2 <= W2``); in 1-D the exact 1-D formula is used at any size. Images are flattened.
    """
    x, y = _pair(x, y)
    if x.shape[1] == 1:
        return float(_w2sq_1d(x, y).sqrt()[0])
    if x.shape[0] <= max_exact and y.shape[0] <= max_exact:
        import ot

        a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64).numpy()
        b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64).numpy()
        cost = ot.dist(x.numpy(), y.numpy(), metric="sqeuclidean")
        val = ot.emd2(a, b, cost, numItermax=max(100_000, 50 * x.shape[0] * y.shape[0] // 1000))
        return float(math.sqrt(max(float(val), 0.0)))
    return sliced_w2(x, y, n_projections=n_projections, seed=seed)


def _w2sq_1d(xs: Tensor, ys: Tensor) -> Tensor:
    """Exact squared W2 between 1-D empirical measures, column-wise: ``[N, P], [M, P] -> [P]``.

    ``W2^2 = int_0^1 (F^{-1}(u) - G^{-1}(u))^2 du``: both quantile functions are step functions,
    constant between the merged levels ``{i/N} U {j/M}``.
    """
    n, m = xs.shape[0], ys.shape[0]
    # sorting along the contiguous last axis is several times faster than along dim 0
    xs, ys = xs.t().contiguous().sort(-1).values.t(), ys.t().contiguous().sort(-1).values.t()
    levels = torch.cat([torch.arange(1, n + 1, dtype=xs.dtype) / n, torch.arange(1, m + 1, dtype=xs.dtype) / m]).sort().values
    prev = torch.cat([levels.new_zeros(1), levels[:-1]])
    width, mid = levels - prev, 0.5 * (levels + prev)
    i = (mid * n).long().clamp_max(n - 1)
    j = (mid * m).long().clamp_max(m - 1)
    return (width[:, None] * (xs[i] - ys[j]).pow(2)).sum(0)


def sliced_w2(x: Any, y: Any, n_projections: int = 200, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (Bonneel et al., 2015).

    ``SW2 = (E_theta W2^2(theta^T x, theta^T y))^{1/2}`` over ``n_projections`` directions
    uniform on the sphere (seeded); each 1-D W2 is exact (sorted quantile functions, sizes may
    differ). ``SW2 <= W2``; equal to W2 in 1-D.
    """
    x, y = _pair(x, y)
    d = x.shape[1]
    if d == 1:
        return float(_w2sq_1d(x, y).sqrt()[0])
    theta = torch.randn(d, n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return float(_w2sq_1d(x @ theta, y @ theta).mean().sqrt())


def _median_sq_dist(z: Tensor, g: torch.Generator, m: int = 1000) -> float:
    z = _subsample(z, m, g)
    d2 = torch.cdist(z, z).pow(2)
    off = d2[~torch.eye(z.shape[0], dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 1.0
    return med if med > 0 else 1.0


def mmd(
    x: Any,
    y: Any,
    kernel: str = "rbf",
    bandwidths: Sequence[float] | None = None,
    max_points: int = 5000,
    seed: int = 0,
) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al., 2012, eq. 3).

    ``MMD² = E k(x, x') + E k(y, y') - 2 E k(x, y)`` with the diagonal terms left out of the
    within-set means (so it can be slightly negative when the sets match). The kernel is a sum
    of Gaussian RBF kernels ``k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))``; by default
    ``h in {0.5, 1, 2} * h_med`` with ``h_med^2`` the median squared pairwise distance of the
    pooled sample (median heuristic). Sets larger than ``max_points`` are subsampled (seeded).
    Images are flattened.
    """
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}; only 'rbf' (a sum of Gaussian kernels) is implemented")
    x, y = _pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("mmd needs at least 2 points in each set")
    g = torch.Generator().manual_seed(seed)
    x, y = _subsample(x, max_points, g), _subsample(y, max_points, g)
    if bandwidths is None:
        h_med = math.sqrt(_median_sq_dist(torch.cat([x, y]), g))
        bandwidths = [0.5 * h_med, h_med, 2 * h_med]
    hs = [float(h) for h in bandwidths]
    if not hs or any(h <= 0 for h in hs):
        raise ValueError(f"bandwidths must be positive, got {bandwidths!r}")

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = x.shape[0], y.shape[0]
    kxx = (k(x, x).sum() - n * len(hs)) / (n * (n - 1))  # exp(0) = 1 per kernel on the diagonal
    kyy = (k(y, y).sum() - m * len(hs)) / (m * (m - 1))
    kxy = k(x, y).mean()
    return float(kxx + kyy - 2 * kxy)


def energy_distance(x: Any, y: Any, max_points: int = 5000, seed: int = 0) -> float:
    """Energy distance ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` (Székely & Rizzo, 2013).

    Unbiased U-statistic estimate (within-set means leave out the diagonal); zero in expectation
    iff the distributions match. Sets larger than ``max_points`` are subsampled (seeded).
    """
    x, y = _pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("energy_distance needs at least 2 points in each set")
    g = torch.Generator().manual_seed(seed)
    x, y = _subsample(x, max_points, g), _subsample(y, max_points, g)
    n, m = x.shape[0], y.shape[0]
    dxy = torch.cdist(x, y).mean()
    dxx = torch.cdist(x, x).sum() / (n * (n - 1))
    dyy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * dxy - dxx - dyy)


@torch.no_grad()
def kl(target: Any, model: nn.Module, n: int = 10_000, context: Tensor | None = None, seed: int = 0,
       batch_size: int = 4096) -> float:
    """Forward KL ``KL(p || q) = E_{x~p}[log p(x) - log q(x)]`` in nats, by Monte Carlo.

    Args:
        target: closed-form ``p`` with ``sample(n, generator)`` and exact ``log_prob``
            (:mod:`pushforward.data.targets`).
        model: ``q`` with ``log_prob``.
        n: number of samples from ``p``.
        context: for conditional models, one ``[C]`` row (shared) or ``[n, C]``.
    """
    g = torch.Generator().manual_seed(seed)
    x = target.sample(n, generator=g)
    log_p = target.log_prob(x.double()).double()
    log_q = _log_probs(model, x, context, batch_size)
    keep = torch.isfinite(log_p)
    return float((log_p[keep] - log_q[keep]).mean())


# --------------------------------------------------------------------------- evaluate
def _sample(model: Any, n: int, context: Tensor | None, seed: int) -> Tensor:
    like = module_like(model)
    g = torch.Generator(device=like["device"]).manual_seed(seed)
    kwargs: dict[str, Any] = {} if context is None else {"context": context.to(**like)}
    try:
        return model.sample(n, generator=g, **kwargs)
    except TypeError:  # models whose sample() takes no generator: seed the global RNG instead
        with torch.random.fork_rng(devices=[like["device"]] if like["device"].type == "cuda" else []):
            torch.manual_seed(seed)
            return model.sample(n, **kwargs)


def evaluate(
    model: nn.Module,
    data: Any,
    context: Tensor | None = None,
    n_samples: int = 2000,
    seed: int = 0,
    target: Any = None,
    n_nll: int | None = None,
    max_exact: int = 5000,
) -> dict[str, float]:
    """Evaluate a model against data: likelihood and sample quality in one dict.

    Args:
        model: anything with ``sample(n, ...)`` and (optionally) ``log_prob``.
        data: a Tensor/array ``[N, ...]`` or a :class:`pushforward.data.Dataset` (its
            ``context`` and ``target`` are used unless given here).
        context: ``[N, C]`` conditioning for the data rows (conditional models).
        n_samples: size of the generated set and of the data subset for W2/MMD/energy.
            Conditional models get one sample per context row of that data subset.
        seed: seeds subsetting and sampling.
        target: closed-form density of the data (for ``kl``); default ``data.target``.
        n_nll: evaluate the NLL on a seeded subset of this many rows (None: all rows).
        max_exact: W2 is exact up to this many points (see :func:`w2`).

    Returns:
        ``{"nll": nats, "bpd": bits/dim, "w2", "mmd", "energy", "kl" (if a target is known),
        "nfe" (if the model has an ``nfe`` counter after sampling), "sample_time_s"}``, all
        Python floats. Models whose ``log_prob`` raises NotImplementedError get no
        ``nll``/``bpd``/``kl``. Image data are flattened for the sample distances.
    """
    from pushforward.data import Dataset

    if isinstance(data, Dataset):
        context = data.context if context is None else context
        target = data.target if target is None else target
        x = data.x
    else:
        x = to_tensor(data, "data")
    if x.dim() == 1:
        x = x[:, None]
    if context is not None:
        context = context if isinstance(context, Tensor) else to_tensor(context, "context", dtype=torch.float32)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context has {context.shape[0]} rows but data has {x.shape[0]}")
    # one generator, drawn in a fixed order (NLL subset, then the reference subset): same seed, same rows
    g = torch.Generator().manual_seed(seed)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        out = _likelihood_metrics(model, x, context, target, n_nll, max(n_samples, 1000), seed, g)
        out.update(_sample_metrics(model, x, context, min(n_samples, x.shape[0]), seed, g, max_exact))
    finally:
        if was_training is not None:
            model.train(was_training)
    return {k: float(v) for k, v in out.items()}


def _likelihood_metrics(model, x: Tensor, context: Tensor | None, target: Any, n_nll: int | None, n_kl: int,
                        seed: int, g: torch.Generator) -> dict[str, float]:
    """``nll``, ``bpd`` and (with a target and no context) ``kl`` on a seeded subset of rows;
    nothing for models without a density."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=g)[:n_nll] if n_nll is not None and n_nll < n else None
    xs = x if idx is None else x[idx]
    cs = None if context is None else (context if idx is None else context[idx])
    out: dict[str, float] = {}
    try:
        out["nll"] = nll(model, xs, cs)
        out["bpd"] = bits_per_dim(out["nll"], int(np.prod(x.shape[1:])))
        if target is not None and context is None:
            out["kl"] = kl(target, model, n=n_kl, seed=seed)
    except NotImplementedError:
        pass
    return out


def _sample_metrics(model, x: Tensor, context: Tensor | None, m: int, seed: int, g: torch.Generator,
                    max_exact: int) -> dict[str, float]:
    """``m`` model samples against ``m`` seeded data rows (at their contexts): ``w2``, ``mmd``,
    ``energy``, ``sample_time_s``, ``nfe`` and, for a diverged model, ``nonfinite_frac``."""
    ref_idx = torch.randperm(x.shape[0], generator=g)[:m]
    ref = x[ref_idx]
    ref_ctx = None if context is None else context[ref_idx]
    if hasattr(model, "nfe"):
        try:
            model.nfe = 0
        except (AttributeError, TypeError):
            pass
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = _sample(model, m, ref_ctx, seed)
    if samples.is_cuda:
        torch.cuda.synchronize(samples.device)
    out["sample_time_s"] = time.perf_counter() - t0
    if hasattr(model, "nfe") and model.nfe is not None:
        out["nfe"] = float(model.nfe)
    flat = samples.detach().reshape(m, -1)
    finite = torch.isfinite(flat).all(-1)
    if not bool(finite.all()):
        # A diverged model should yield a report, not a crash: score its finite samples only.
        out["nonfinite_frac"] = 1.0 - float(finite.double().mean())
        samples, ref = samples[finite.to(samples.device)], ref[finite.cpu()]
    if samples.shape[0] >= 2:
        out["w2"] = w2(samples, ref, max_exact=max_exact, seed=seed)
        out["mmd"] = mmd(samples, ref, seed=seed)
        out["energy"] = energy_distance(samples, ref, seed=seed)
    else:
        out["w2"] = out["mmd"] = out["energy"] = math.nan
    return out

# --------------------------------------------------------------------------- classifier test
def c2st(x: Any, y: Any, seed: int = 0, folds: int = 5, max_points: int | None = 10_000,
         hidden: int | None = None, max_iter: int = 1000) -> float:
    """Classifier two-sample test: cross-validated accuracy of a classifier telling ``x`` from ``y``.

    0.5 means the classifier cannot tell the sets apart (same distribution); 1.0 that they are
    disjoint. As in sbi's benchmark (Lueckmann et al. 2021, "Benchmarking simulation-based
    inference"): both sets z-scored with the statistics of ``x``, an MLP with two hidden layers of
    ``10 D`` ReLU units (scikit-learn, Adam), ``folds``-fold stratified cross-validation.

    Args:
        x, y: sample sets ``[N, D]`` and ``[M, D]`` (each subsampled to ``max_points``).
    Returns:
        mean held-out accuracy, a float in [0, 1].
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x, y = _pair(x, y)
    g = torch.Generator().manual_seed(seed)
    x, y = _subsample(x, max_points, g), _subsample(y, max_points, g)
    if min(x.shape[0], y.shape[0]) < folds:
        raise ValueError(f"c2st needs at least folds={folds} points in each set, got {x.shape[0]} and {y.shape[0]}")
    loc, scale = x.mean(0), x.std(0).clamp_min(1e-12)
    data = torch.cat([(x - loc) / scale, (y - loc) / scale]).numpy()
    labels = np.concatenate([np.zeros(x.shape[0]), np.ones(y.shape[0])])
    width = hidden if hidden is not None else 10 * x.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(width, width), max_iter=max_iter, solver="adam",
                        random_state=seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, data, labels, cv=cv, scoring="accuracy")))


__all__ = ["bits_per_dim", "c2st", "energy_distance", "evaluate", "kl", "mmd", "nll", "sliced_w2", "w2"]
