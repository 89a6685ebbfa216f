"""Couplings of noise and data in a minibatch: which ``x_0`` is paired with which ``x_1``.

A coupling here *reorders the noise*: ``coupling(x_0, x_1, context) -> x_0'`` where row i of
``x_0'`` is paired with row i of ``x_1`` (and of ``context``). The data and its context never
move, so conditioning stays attached to its data point, and any permutation keeps both
marginals exactly (sampling with replacement, used by Sinkhorn, keeps the data marginal exactly).

- :class:`IndependentCoupling`: ``q(x_0) q(x_1)`` (Lipman et al. 2023).
- :class:`OTCoupling`: minibatch optimal transport (Tong et al. 2024, "Improving and
  generalizing flow-based generative models with minibatch optimal transport"; Pooladian et al.
  2023, "Multisample flow matching"): the exact assignment minimising ``sum ||x_0 - x_1||^2``
  (POT's network simplex, ``ot.emd``), solved in blocks of ``block_size`` rows so it stays
  cheaper than the network's step, or entropic (Sinkhorn) for large batches.
- :class:`SinkhornCoupling`: entropic OT in torch (log domain, runs on the data's device); with
  ``reg = 2 sigma^2`` it is the Schrödinger-bridge coupling of SB-CFM.
- ``by_context=True`` (both OT couplings): pairs only within rows sharing the same context
  (class-conditional OT), so conditional models learn ``p(x | c)`` and not a mixture. With
  continuous contexts (every row distinct, e.g. simulations in SBI) this is the independent
  coupling: pairing noise with data across conditions would break the conditional law.

Exact OT on a whole batch costs more than a network step, so :class:`OTCoupling` solves it in
matched blocks: cells of a recursive median bisection of both sets along the data's principal
axes (costs and transport costs: docs/matching.md, ``benchmarks/results/matching.md``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pushforward._validate import resolve_named


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def transport_cost(x_0: Tensor, x_1: Tensor) -> Tensor:
    """Mean squared distance of the pairs ``(x_0[i], x_1[i])``: ``mean_i ||x_0[i] - x_1[i]||^2``."""
    return (_flat(x_0) - _flat(x_1)).pow(2).sum(-1).mean()


def _groups(context: Tensor | None, n: int, device) -> list[Tensor]:
    """Row indices of each distinct context row (one group of all rows without context)."""
    if context is None:
        return [torch.arange(n, device=device)]
    _, inv = torch.unique(_flat(context), dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)
    counts = torch.bincount(inv).tolist()
    return list(torch.split(order, counts))


class PairCoupling:
    """Base class of the pairings of noise and data: ``coupling(x_0, x_1, context=None,
    generator=None) -> x_0`` reordered (not a coupling *layer*, see
    :mod:`pushforward.transforms.coupling`)."""

    by_context: bool = False

    def __call__(self, x_0: Tensor, x_1: Tensor, context: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        if x_0.shape != x_1.shape:
            raise ValueError(f"x_0 {list(x_0.shape)} and x_1 {list(x_1.shape)} must have the same shape")
        groups = _groups(context if self.by_context else None, x_0.shape[0], x_0.device)
        if len(groups) == x_0.shape[0]:
            # Every context distinct (continuous conditions, as in SBI): nothing to pair within a
            # condition, so the coupling is the independent one; skip n one-row solves.
            return x_0
        idx = torch.empty(x_0.shape[0], dtype=torch.long, device=x_0.device)
        for rows in groups:
            idx[rows] = rows[self.match(x_0[rows], x_1[rows], generator)]
        return x_0[idx]

    def match(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None) -> Tensor:
        """Indices ``j[i]``: noise row ``j[i]`` is paired with data row ``i``. Shapes ``[n, ...] -> [n]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class IndependentCoupling(PairCoupling):
    """``pi(x_0, x_1) = q(x_0) q(x_1)``: the pairs as drawn."""

    def __call__(self, x_0, x_1, context=None, generator=None):
        return x_0

    def match(self, x_0, x_1, generator=None):
        return torch.arange(x_0.shape[0], device=x_0.device)


def _assignment(cost: np.ndarray, solver: str = "auto") -> np.ndarray:
    """Exact assignment for a square cost ``[k_data, k_noise]`` (uniform weights): ``j[i]`` for data row i.

    ``emd``: POT's network simplex (``ot.emd``), fastest for large k (512: ~50 ms, 2-D, one core);
    ``hungarian``: scipy's ``linear_sum_assignment`` (shortest augmenting paths), fastest for small
    k (64: 0.07 ms vs 0.26 ms). Both return an optimal assignment; ``auto`` picks by size.
    """
    k = cost.shape[0]
    if solver == "hungarian" or (solver == "auto" and k <= 128):
        from scipy.optimize import linear_sum_assignment

        return linear_sum_assignment(cost)[1]
    import ot

    w = np.full(k, 1.0 / k)
    plan = ot.emd(w, w, np.ascontiguousarray(cost), numItermax=max(100_000, 100 * k * k))
    # With uniform square marginals the simplex returns a vertex: a scaled permutation matrix.
    j = plan.argmax(1)
    if np.unique(j).size != k:  # a degenerate plan split mass: fall back to the Hungarian method
        from scipy.optimize import linear_sum_assignment

        j = linear_sum_assignment(cost)[1]
    return j


class OTCoupling(PairCoupling):
    """Minibatch optimal transport with squared Euclidean cost (Tong et al. 2024, OT-CFM).

    Args:
        method: ``"exact"`` (the optimal assignment) or ``"sinkhorn"`` (entropic OT,
            :class:`SinkhornCoupling`).
        solver: exact solver: ``"emd"`` (POT's network simplex), ``"hungarian"`` (scipy) or
            ``"auto"`` (Hungarian for blocks of <= 128 rows, where it is ~4x faster, else POT).
        block_size: exact OT is solved on blocks of at most this many rows (None: the whole
            batch at once). Blocks come from recursive median bisection of noise and data
            along the data's principal axes (a matched k-d tree: block i of the noise and of
            the data hold the same quantile cell), so the blocked assignment stays close to the
            full one: on 8 Gaussians / checkerboard at batch 512, transport cost 0.45 / 0.22
            with blocks of 64 against 0.37 / 0.19 exact and 3.8 / 4.0 independent. A block of 64
            costs ~0.3 ms, the full 512 batch ~50 ms (one CPU core).
        reg: Sinkhorn regularisation, relative to the mean cost.
        by_context: pair only rows with identical context (class-conditional OT).
    """

    def __init__(self, method: str = "exact", block_size: int | None = 32, reg: float = 0.05,
                 by_context: bool = False, solver: str = "auto"):
        if solver not in ("auto", "emd", "hungarian"):
            raise ValueError(f"OT solver must be 'auto', 'emd' or 'hungarian', got {solver!r}")
        self.solver = solver
        if method not in ("exact", "sinkhorn"):
            raise ValueError(f"OT method must be 'exact' or 'sinkhorn', got {method!r}")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2):
            raise ValueError(f"block_size must be an integer >= 2 or None, got {block_size!r}")
        self.method, self.block_size, self.reg, self.by_context = method, block_size, float(reg), bool(by_context)
        self._sinkhorn = SinkhornCoupling(reg=reg, relative=True) if method == "sinkhorn" else None

    def match(self, x_0, x_1, generator=None):
        if self._sinkhorn is not None:
            return self._sinkhorn.match(x_0, x_1, generator)
        n = x_0.shape[0]
        # Small per-call arrays: NumPy's per-operation overhead is a fraction of torch's, and the
        # assignment solvers need NumPy anyway (one transfer each way).
        a = _flat(x_0).detach().cpu().double().numpy()
        b = _flat(x_1).detach().cpu().double().numpy()
        if self.block_size is None or n <= self.block_size:
            return torch.as_tensor(_assignment(_sq_dists(b, a), self.solver), device=x_0.device)
        levels = math.ceil(math.log2(n / self.block_size))
        axes = _principal_axes(b, levels)
        oa, ob = _bisection_order(a @ axes.T, n), _bisection_order(b @ axes.T, n)
        cells = 2**levels
        if n % cells == 0:  # equal cells: one batched cost computation
            k = n // cells
            costs = _sq_dists(b[ob].reshape(cells, k, -1), a[oa].reshape(cells, k, -1))
            blocks = [(i * k, (i + 1) * k, costs[i]) for i in range(cells)]
        else:
            bounds = [(i * n) // cells for i in range(cells + 1)]
            blocks = [(lo, hi, _sq_dists(b[ob[lo:hi]], a[oa[lo:hi]])) for lo, hi in zip(bounds[:-1], bounds[1:])]
        j = np.empty(n, dtype=np.int64)
        for lo, hi, cost in blocks:
            j[ob[lo:hi]] = oa[lo:hi][_assignment(cost, self.solver)]
        return torch.from_numpy(j).to(x_0.device)


def _sq_dists(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Squared distances ``[..., n_b, n_a]`` of the rows of ``b`` ``[..., n_b, d]`` and ``a`` ``[..., n_a, d]``."""
    c = (b * b).sum(-1)[..., :, None] + (a * a).sum(-1)[..., None, :] - 2.0 * (b @ np.swapaxes(a, -1, -2))
    return np.maximum(c, 0.0)


def _principal_axes(x: np.ndarray, levels: int) -> np.ndarray:
    """Directions to split along: the principal axes of ``x`` [n, d], cycled to ``levels`` rows."""
    v = np.linalg.svd(x - x.mean(0), full_matrices=False)[2]
    return v[np.arange(levels) % v.shape[0]]


def _bisection_order(proj: np.ndarray, n: int) -> np.ndarray:
    """Row order of recursive median bisection, from the projections ``proj`` [n, levels] of the
    rows on the split axes: at level l every cell is sorted along axis l and halved, so position
    ranges ``[k n / 2^L, (k+1) n / 2^L)`` are compact cells. Noise and data ordered with the same
    axes have cells of identical sizes holding matching quantiles."""
    order = np.arange(n)
    pos = np.arange(n)
    for level in range(proj.shape[1]):
        key = proj[:, level]
        cells = 2**level
        if n % cells == 0:  # equal cells: sort each row of a [cells, n / cells] view
            blocks = order.reshape(cells, -1)
            order = np.take_along_axis(blocks, np.argsort(key[blocks], axis=1), 1).reshape(-1)
        else:
            cell = (pos * cells) // n
            o1 = np.argsort(key[order], kind="stable")
            order = order[o1[np.argsort(cell[o1], kind="stable")]]
    return order


class SinkhornCoupling(PairCoupling):
    """Entropic OT coupling: ``pi = argmin <pi, C> - eps H(pi)`` by log-domain Sinkhorn (Cuturi 2013).

    For each data row ``i`` a noise row is drawn from ``pi[i, :] / pi[i, :].sum()`` (with
    replacement), so the data marginal is kept exactly. Runs in torch on the data's device.

    Args:
        reg: ``eps``; relative to the mean cost when ``relative`` (default), else absolute.
            Schrödinger-bridge CFM (Tong et al. 2024) uses ``relative=False, reg = 2 sigma^2``.
        iters: maximum Sinkhorn iterations; stops early when the marginal error < ``tol``.
        by_context: pair only rows with identical context.
    """

    def __init__(self, reg: float = 0.05, relative: bool = True, iters: int = 100, tol: float = 1e-3,
                 by_context: bool = False):
        if not reg > 0:
            raise ValueError(f"Sinkhorn reg must be > 0, got {reg!r}")
        self.reg, self.relative, self.iters, self.tol = float(reg), bool(relative), int(iters), float(tol)
        self.by_context = bool(by_context)

    def plan(self, x_0: Tensor, x_1: Tensor) -> Tensor:
        """Entropic plan ``[n_data, n_noise]`` with uniform marginals (rows: data, sums 1/n)."""
        b, a = _flat(x_1).detach(), _flat(x_0).detach()
        c = torch.cdist(b, a).pow(2)
        eps = self.reg * (c.mean() if self.relative else 1.0)
        n, m = c.shape
        logk = -c / eps
        f = c.new_zeros(n)
        g = c.new_zeros(m)
        log_a, log_b = -math.log(n), -math.log(m)
        for it in range(self.iters):
            f = log_a - torch.logsumexp(logk + g[None, :], dim=1)
            g = log_b - torch.logsumexp(logk + f[:, None], dim=0)
            if it % 10 == 9:
                row = torch.logsumexp(logk + f[:, None] + g[None, :], dim=1).exp()
                if float((row - 1.0 / n).abs().sum()) < self.tol:
                    break
        return torch.exp(logk + f[:, None] + g[None, :])

    def match(self, x_0, x_1, generator=None):
        p = self.plan(x_0, x_1)
        p = p / p.sum(1, keepdim=True)
        if generator is not None and generator.device != p.device:
            return torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(p.device)
        return torch.multinomial(p, 1, generator=generator).squeeze(1)


COUPLINGS = {"independent": IndependentCoupling, "ot": OTCoupling, "sinkhorn": SinkhornCoupling}


def get_coupling(name: str | PairCoupling, **kwargs) -> PairCoupling:
    """A coupling by name (``independent``, ``ot``, ``sinkhorn``) or pass one through."""
    return resolve_named(name, COUPLINGS, PairCoupling, "coupling", **kwargs)
