"""Invertible residual blocks: Behrmann et al. (2019) "Invertible Residual Networks" and
Chen et al. (2019) "Residual Flows for Invertible Generative Modeling".

A block maps data to latent by ``z = x + g(x)`` with ``Lip(g) < 1``, which makes it a bijection
(Banach's fixed-point theorem): the inverse is the limit of ``x <- z - g(x)``. ``g`` is an MLP
of spectrally normalised linear layers (each scaled to spectral norm <= ``c`` < 1, the norm found
by power iteration) and 1-Lipschitz LipSwish activations, so ``Lip(g) <= c^L``.

The log-determinant ``log|det(I + J_g)|`` is computed in one of two ways:

* exact: the full Jacobian ``J_g`` by forward-mode propagation through the MLP (``D`` columns
  per sample), then ``slogdet(I + J_g)`` (exact, differentiable; for small ``D``);
* estimate: the power series ``sum_k (-1)^(k+1) tr(J^k)/k`` with Hutchinson's trace estimator
  ``tr(A) = E[vᵀAv]`` (Rademacher ``v``) and Russian-roulette truncation: ``n = n_exact + G``
  terms, ``G ~ Geometric(p)``, term ``k`` reweighted by ``1/P(n >= k)``, an unbiased estimate
  (Chen et al., 2019, eq. 6). Its gradient is the memory-efficient Neumann series
  ``∂ log det(I+J) = E[vᵀ (sum_k (-1)^k J^k / P(n >= k+1)) (∂J) v]`` (Chen et al., eq. 8): the
  power-series vectors are built without a graph, and only one vector-Jacobian product keeps one.

In eval mode (``module.eval()``) the estimate is replaced by a deterministic one: exact when
``D <= eval_exact_max_dim``, otherwise a fixed-seed Hutchinson estimate of the series summed
until its terms vanish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.transforms.base import Transform

LOGDET_MODES = ("exact", "estimate", "auto")


class LipSwish(nn.Module):
    """``LipSwish(x) = x σ(βx) / 1.1`` (Chen et al., 2019): 1-Lipschitz for every ``β > 0``.

    ``β = softplus(raw)`` per feature, initialised to 1. Shapes: ``[N, H] -> [N, H]``.
    """

    def __init__(self, features: int):
        super().__init__()
        self.beta_raw = nn.Parameter(torch.full((features,), math.log(math.expm1(1.0))))

    @torch.no_grad()
    def set_beta(self, beta: Tensor | float) -> None:
        """Set ``β`` (positive, scalar or ``[H]``) through the inverse softplus."""
        beta = torch.as_tensor(beta, dtype=self.beta_raw.dtype).clamp_min(1e-6).expand_as(self.beta_raw)
        # softplus^{-1}(β) = β + log(1 - e^{-β}), stable for large β (log(expm1(β)) overflows).
        self.beta_raw.copy_(beta + torch.log(-torch.expm1(-beta)))

    def forward(self, x: Tensor) -> Tensor:
        # max_t d/dt[t σ(t)] ≈ 1.0998 and the derivative is a function of βx alone.
        return x * torch.sigmoid(F.softplus(self.beta_raw) * x) / 1.1

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(LipSwish(x), LipSwish'(x))``, elementwise; ``d/dx[x σ(βx)] = σ + βx σ(1 - σ)``."""
        bx = F.softplus(self.beta_raw) * x
        sig = torch.sigmoid(bx)
        s = sig * (1 / 1.1)
        return x * s, torch.addcmul(s, s * bx, 1 - sig)


class SpectralLinear(nn.Module):
    """Linear layer ``y = Ŵx + Vc + b`` with ``Ŵ = W / max(1, σ(W)/c)`` (Behrmann et al., 2019).

    ``σ(W)`` is the largest singular value, by power iteration warm-started from the stored
    left vector. In eval mode (and on a module's first training call) it runs until ``σ``
    stops changing (relative ``16 eps``), so the layer is a deterministic function of its
    weights (to rounding), whatever the stored vector. During training, where the weights move
    a little per step and the stored vector follows them, ``train_power_iter`` warm-started
    iterations per call suffice (as in Miyato et al. 2018 and Behrmann et al. 2019): converging
    every step cost more than the rest of a small block's training step. The estimate is
    a lower bound on ``σ`` with a second-order error, so ``Lip`` may exceed ``c`` by that error
    during training (still < 1 with the default ``c = 0.97``). The vector is updated in training
    mode only. Only the part acting on ``x`` is normalised: the context weight ``V`` is free,
    since invertibility needs Lipschitz continuity in ``x`` alone.

    Shapes: ``x [N, in]``, ``c [N, context]`` -> ``[N, out]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.97,
        context_features: int = 0,
        max_power_iter: int = 200,
        train_power_iter: int = 1,
    ):
        super().__init__()
        lin = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone())
        self.context = nn.Linear(context_features, out_features, bias=False) if context_features else None
        self.coeff = float(coeff)
        self.max_power_iter = int(max_power_iter)
        if train_power_iter < 1:
            raise ValueError(f"train_power_iter must be >= 1, got {train_power_iter!r}")
        self.train_power_iter = int(train_power_iter)
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))
        # Whether `u` has converged once for weights close to the current ones (not saved: a
        # reloaded or freshly built layer converges fully on its first training call).
        self._warm = False

    def _apply(self, fn, *args, **kwargs):
        # New dtype/device: converge again at the new precision before trusting the warm start.
        self._warm = False
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._warm = False
        super()._load_from_state_dict(*args, **kwargs)

    def sigma(self) -> Tensor:
        """Largest singular value of ``W`` (differentiable in ``W``; scalar)."""
        w = self.weight
        with torch.no_grad():
            wd = w.detach()
            u = self.u.to(wd.dtype)
            warm = self.training and self._warm
            if warm:
                for _ in range(self.train_power_iter):
                    wv = wd @ (wd.t() @ u)
                    u = wv / torch.linalg.vector_norm(wv).clamp_min(1e-30)
                self.u.copy_(u)
            else:
                u, v = self._converge(wd, u)
        # u, v are fresh tensors: the in-place buffer update above cannot touch the graph.
        if warm:
            # σ ≈ ||Wᵀu||, whose gradient u vᵀ (v = Wᵀu/σ) is the usual σ gradient.
            return torch.linalg.vector_norm(w.t() @ u)
        return u @ (w @ v)

    def _converge(self, wd: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Power iteration from ``u`` until ``σ`` stops changing; returns ``(u, v)``."""
        # Converged to rounding level, so that repeated calls agree to float precision.
        tol = 16 * torch.finfo(wd.dtype).eps
        prev = None
        v = F.normalize(wd.t() @ u, dim=0)
        for _ in range(self.max_power_iter):
            v = F.normalize(wd.t() @ u, dim=0)
            wv = wd @ v
            nrm = torch.linalg.vector_norm(wv)
            if float(nrm) == 0.0:  # W = 0 (or W v = 0): keep u, σ = 0 below
                break
            u = wv / nrm
            cur = float(nrm)
            if prev is not None and abs(cur - prev) <= tol * cur:
                break
            prev = cur
        # Not stored in eval mode: evaluation then has no side effects and is bitwise
        # reproducible (the same start vector gives the same σ).
        if self.training:
            self.u.copy_(u)
            self._warm = True
        return u, v

    def normalized_weight(self) -> Tensor:
        """``Ŵ = W / max(1, σ/c)``: spectral norm at most ``c``."""
        return self.weight / torch.clamp(self.sigma() / self.coeff, min=1.0)

    def forward(self, x: Tensor, context: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
        """``weight``: a precomputed :meth:`normalized_weight` (saves the power iteration)."""
        y = F.linear(x, self.normalized_weight() if weight is None else weight, self.bias)
        if self.context is not None:
            y = y + self.context(context)
        return y

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, coeff={self.coeff}"


class LipschitzMLP(nn.Module):
    """``g(x, c)``: spectrally normalised linear layers and LipSwish, ``Lip_x(g) <= coeff^L < 1``.

    The context enters the first layer only (unnormalised). The last layer is scaled by 0.1
    at init so a block starts close to the identity. Shapes: ``[N, D], [N, C] -> [N, D]``.

    Scale-matched init: the spectral bound leaves each hidden unit a small pre-activation range
    (for ``D = 2`` and 64 units, std about 0.17 for unit-variance inputs), far inside the
    default biases (``±1/sqrt(fan_in)``, ``±0.7`` here) and the width (about 1) of LipSwish's
    bend at ``β = 1``: every unit was nearly linear over the data, so ``g`` was nearly affine
    and training on whitened data stalled (no learning in 300 steps on 8 Gaussians). So each
    hidden layer's biases are drawn in ``±bias_range·std`` and its LipSwish ``β`` set to
    ``beta_range/std``, ``std`` the per-unit pre-activation std on a fixed standard-normal probe
    (the standardized data scale). This changes only the initial values, not the function class.
    """

    bias_range = 1.5  # biases ~ U(-1.5 std, 1.5 std): kinks spread over the units' range
    beta_range = 4.0  # LipSwish bend width 1/β = std/4: clearly nonlinear within that range

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        coeff: float = 0.97,
        context_dim: int = 0,
    ):
        super().__init__()
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(
            SpectralLinear(a, b, coeff, context_dim if i == 0 else 0)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.acts = nn.ModuleList(LipSwish(h) for h in hidden)
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.1)
            self._match_scales(dim)

    @torch.no_grad()
    def _match_scales(self, dim: int) -> None:
        # A private generator: the probe and bias draws do not shift the global RNG stream
        # more than the default init already did.
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(512, dim, generator=gen, dtype=self.layers[0].weight.dtype)
        for layer, act in zip(self.layers[:-1], self.acts):
            pre = F.linear(h, layer.normalized_weight())
            std = pre.std(0).clamp_min(1e-4)
            u = torch.rand(std.shape, generator=gen, dtype=std.dtype)
            layer.bias.copy_((2 * u - 1) * self.bias_range * std)
            act.set_beta(self.beta_range / std)
            h = act(pre + layer.bias)
        for layer in self.layers:
            layer._warm = False  # the first training call converges from scratch

    def normalized_weights(self) -> list[Tensor]:
        """Every layer's spectrally normalised weight (one power iteration run per layer)."""
        return [layer.normalized_weight() for layer in self.layers]

    def forward(self, x: Tensor, context: Tensor | None = None, weights: Sequence[Tensor] | None = None) -> Tensor:
        """``weights``: from :meth:`normalized_weights`, to reuse across many evaluations."""
        weights = self.normalized_weights() if weights is None else weights
        h = self.layers[0](x, context, weights[0])
        for act, layer, w in zip(self.acts, self.layers[1:], weights[1:]):
            h = layer(act(h), None, w)
        return h

    def jacobian(
        self, x: Tensor, context: Tensor | None = None, weights: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(g(x), J_g(x)ᵀ)``: ``[N, D] -> ([N, D], [N, D, D])`` by forward-mode propagation.

        Carries ``∂h/∂x`` through the layers (``D`` columns per sample, one batched matmul per
        layer), differentiable in ``x`` and the parameters; about ``D/3`` the cost of ``D``
        reverse-mode passes. Returned transposed (``[i, input, output]``): ``det`` is unchanged.
        """
        weights = self.normalized_weights() if weights is None else weights
        n, d = x.shape
        h = self.layers[0](x, context, weights[0])
        # [N, D, H]: ∂h/∂x transposed. Contiguous rows, so each layer is one [N·D, H] @ [H, H']
        # matmul on a view (an expanded/transposed operand made matmul copy it every layer).
        jt = weights[0].t().contiguous().unsqueeze(0)
        for act, layer, w in zip(self.acts, self.layers[1:], weights[1:]):
            a, da = act.value_and_derivative(h)
            h = layer(a, None, w)
            jt = (jt * da.unsqueeze(1)).reshape(n * d, -1).mm(w.t()).reshape(n, d, -1)
        return h, jt.expand(n, -1, -1)


def _log_det_identity_plus(j: Tensor) -> Tensor:
    """``log|det(I + J)|`` for a batch ``[N, D, D]`` -> ``[N]``.

    Closed form for ``D <= 2`` (batched LU in ``slogdet`` costs more than the rest of a small
    block's forward pass); ``slogdet`` otherwise.
    """
    d = j.shape[-1]
    if d == 1:
        return torch.log(torch.abs(1 + j[:, 0, 0]))
    if d == 2:
        det = (1 + j[:, 0, 0]) * (1 + j[:, 1, 1]) - j[:, 0, 1] * j[:, 1, 0]
        return torch.log(torch.abs(det))
    return torch.linalg.slogdet(j + torch.eye(d, dtype=j.dtype, device=j.device))[1]


class ResidualBlock(Transform):
    """Invertible residual block ``z = x + g(x, c)`` (Behrmann et al., 2019; Chen et al., 2019).

    Args:
        dim: event size D. Shapes: ``[N, D] -> ([N, D], [N])``.
        context_dim: size C of a context ``[N, C]`` fed to ``g``'s first layer (0: none).
        hidden: hidden widths of ``g``.
        lipschitz: spectral-norm bound ``c`` per layer, in (0, 1).
        logdet: ``"exact"`` (full Jacobian + slogdet), ``"estimate"`` (unbiased Russian-roulette
            power series in training), or ``"auto"`` (exact iff ``D <= exact_max_dim``).
        exact_max_dim: threshold of ``"auto"``.
        n_exact_terms: series terms always computed by the estimator.
        geom_p: success probability of the geometric number of extra terms (mean
            ``(1-p)/p``); the variance is finite when ``ρ(J)² < 1 - p``.
        n_probes: Hutchinson vectors per sample in training.
        eval_exact_max_dim: ``exact_max_dim`` of the deterministic estimate in eval mode.
        eval_probes: Hutchinson vectors of the deterministic estimate in eval mode.
        eval_max_terms: series terms of the deterministic estimate in eval mode.
        max_iter: iterations of the fixed-point inverse; it raises if it does not converge.
        tol: tolerance of the fixed-point inverse, relative to ``1 + max|x|`` (default
            ``64 eps`` of the dtype).
    """

    def __init__(
        self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), lipschitz: float = 0.97,
        logdet: str = "auto", exact_max_dim: int = 16, n_exact_terms: int = 2, geom_p: float = 0.5,
        n_probes: int = 1, eval_exact_max_dim: int = 128, eval_probes: int = 32, eval_max_terms: int = 200,
        max_iter: int = 2000, tol: float | None = None,
    ):
        super().__init__()
        if not 0.0 < lipschitz < 1.0:
            raise ValueError(f"lipschitz must be in (0, 1) for the block to be invertible, got {lipschitz!r}")
        if logdet not in LOGDET_MODES:
            raise ValueError(f"logdet must be one of {LOGDET_MODES}, got {logdet!r}")
        if not 0.0 < geom_p < 1.0:
            raise ValueError(f"geom_p must be in (0, 1), got {geom_p!r}")
        if n_exact_terms < 0 or n_probes < 1 or eval_probes < 1:
            raise ValueError(
                f"need n_exact_terms >= 0, n_probes >= 1, eval_probes >= 1; got "
                f"{n_exact_terms}, {n_probes}, {eval_probes}"
            )
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.net = LipschitzMLP(dim, hidden, lipschitz, context_dim)
        self.logdet = logdet
        self.exact_max_dim, self.eval_exact_max_dim = int(exact_max_dim), int(eval_exact_max_dim)
        self.n_exact_terms, self.geom_p, self.n_probes = int(n_exact_terms), float(geom_p), int(n_probes)
        self.eval_probes, self.eval_max_terms = int(eval_probes), int(eval_max_terms)
        self.max_iter, self.tol = int(max_iter), tol

    # ------------------------------------------------------------------ log-det
    def _mode(self) -> str:
        if self.logdet == "exact" or (self.logdet == "auto" and self.dim <= self.exact_max_dim):
            return "exact"
        if not self.training:
            return "exact" if self.dim <= self.eval_exact_max_dim else "series"
        return "estimate"

    def _sample_terms(self) -> int:
        # G ~ Geometric(p) failures: P(G >= j) = (1 - p)^j.
        u = float(torch.rand(()).clamp_min(1e-300))
        return self.n_exact_terms + int(math.floor(math.log(u) / math.log1p(-self.geom_p)))

    def _inv_tail(self, k: int) -> float:
        """``1 / P(n >= k)`` for ``n = n_exact + Geometric(p)``."""
        return (1.0 - self.geom_p) ** -max(0, k - self.n_exact_terms)

    def g_and_logdet(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mode: str | None = None,
        n_terms: int | None = None,
        reweight: bool = True,
        weights: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(g(x), log|det(I + J_g(x))|)``: ``[N, D] -> ([N, D], [N])``.

        ``mode`` overrides the block's choice (``"exact"``, ``"estimate"``, ``"series"``);
        ``n_terms`` fixes the estimator's number of terms and ``reweight=False`` drops the
        Russian-roulette weights (both only to study the estimator: they make it biased).
        """
        n, d = x.shape
        mode = mode or self._mode()
        if mode == "exact":
            gx, jt = self.net.jacobian(x, context, weights)
            return gx, _log_det_identity_plus(jt)
        grad_on = torch.is_grad_enabled()
        reps = self.n_probes if mode == "estimate" else self.eval_probes
        with torch.enable_grad():
            # Each sample's g depends on its own row only: one backward pass over `reps` copies
            # of the batch gives `reps` vector-Jacobian products per sample.
            xr = x.repeat(reps, 1)
            if not xr.requires_grad:
                xr.requires_grad_(True)
            cr = None if context is None else context.repeat(reps, 1)
            gr = self.net(xr, cr, weights)
            if mode == "estimate":
                ladj = self._roulette(gr, xr, n, grad_on, n_terms, reweight)
            elif mode == "series":
                ladj = self._series(gr, xr, n, grad_on)
            else:
                raise ValueError(f"unknown log-det mode {mode!r}")
        gx = gr[:n]
        if not grad_on:
            gx, ladj = gx.detach(), ladj.detach()
        return gx, ladj

    def _roulette(self, gr: Tensor, xr: Tensor, n: int, grad_on: bool, n_terms: int | None, reweight: bool) -> Tensor:
        n_terms = self._sample_terms() if n_terms is None else int(n_terms)
        v = torch.randint(0, 2, xr.shape, device=xr.device).to(xr.dtype) * 2 - 1
        w = v  # vᵀ J^k, built without a graph
        value = xr.new_zeros(xr.shape[0])
        neumann = torch.zeros_like(v)  # vᵀ sum_m (-1)^m J^m / P(n >= m+1)
        for k in range(1, n_terms + 1):
            weight = self._inv_tail(k) if reweight else 1.0
            neumann = neumann + ((-1) ** (k - 1) * weight) * w
            w = torch.autograd.grad(gr, xr, w, retain_graph=True)[0]
            value = value + ((-1) ** (k + 1) * weight / k) * (w * v).sum(-1)
        value = value.reshape(-1, n).mean(0)
        if not grad_on:
            return value
        # ∂/∂θ of this surrogate is vᵀ N (∂J) v: the Neumann-series gradient estimate.
        surrogate = (torch.autograd.grad(gr, xr, neumann, create_graph=True)[0] * v).sum(-1)
        surrogate = surrogate.reshape(-1, n).mean(0)
        return value.detach() + surrogate - surrogate.detach()

    def _series(self, gr: Tensor, xr: Tensor, n: int, grad_on: bool) -> Tensor:
        gen = torch.Generator(device=xr.device).manual_seed(0)
        v = torch.randint(0, 2, xr.shape, device=xr.device, generator=gen).to(xr.dtype) * 2 - 1
        w, value = v, xr.new_zeros(xr.shape[0])
        tol = 16 * torch.finfo(xr.dtype).eps
        for k in range(1, self.eval_max_terms + 1):
            w = torch.autograd.grad(gr, xr, w, retain_graph=True, create_graph=grad_on)[0]
            term = ((-1) ** (k + 1) / k) * (w * v).sum(-1)
            value = value + term
            if float(term.detach().abs().max()) <= tol * (1 + float(value.detach().abs().max())):
                break
        return value.reshape(-1, n).mean(0)

    # ------------------------------------------------------------------ maps
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        gx, ladj = self.g_and_logdet(x, context)
        return x + gx, ladj

    def _tol(self, dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else 64 * torch.finfo(dtype).eps

    def _solve(self, rhs: Tensor, step, what: str) -> Tensor:
        """Fixed point of ``a <- rhs - step(a)`` (a contraction), to ``tol``, or raise."""
        a, tol = rhs, self._tol(rhs.dtype)
        for _ in range(self.max_iter):
            a_new = rhs - step(a)
            delta = float((a_new - a).abs().max()) if a.numel() else 0.0
            a = a_new
            if not math.isfinite(delta):
                raise RuntimeError(f"ResidualBlock {what}: fixed-point iteration produced non-finite values")
            if delta <= tol * (1 + float(a.abs().max() if a.numel() else 0.0)):
                return a
        raise RuntimeError(
            f"ResidualBlock {what}: fixed-point iteration did not converge in max_iter={self.max_iter} "
            f"iterations (last step {delta:.3g} > tol {tol:.3g}); Lip(g) may be too close to 1: lower "
            f"`lipschitz`, or raise `max_iter`/`tol`"
        )

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` with ``x + g(x) = z`` by fixed-point iteration; log-det ``-log|det(I + J_g(x))|``.

        Gradients follow the implicit function theorem: ``∂x/∂z = (I + J_g)^{-1}``, applied by a
        second fixed-point iteration on the incoming gradient (as in deep equilibrium models).
        """
        weights = self.net.normalized_weights()
        with torch.no_grad():
            cd = None if context is None else context.detach()
            wd = [w.detach() for w in weights]
            x = self._solve(z.detach(), lambda a: self.net(a, cd, wd), "inverse")
        if torch.is_grad_enabled():
            with torch.enable_grad():
                x_leaf = x.detach().requires_grad_(True)
                gx = self.net(x_leaf, context, weights)
                x_out = z - gx  # equals x at the fixed point, differentiable in z, θ, c
                if x_out.requires_grad:

                    def adjoint(grad: Tensor | None) -> Tensor | None:
                        # a = (I + J)^{-T} grad, i.e. a = grad - Jᵀ a.
                        if grad is None:
                            return None
                        def vjp(a: Tensor) -> Tensor:
                            return torch.autograd.grad(gx, x_leaf, a, retain_graph=True)[0]

                        with torch.no_grad():
                            return self._solve(grad, vjp, "inverse (backward)")

                    x_out.register_hook(adjoint)
                x = x_out
        _, ladj = self.g_and_logdet(x, context, weights=weights)
        return x, -ladj

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, logdet={self.logdet!r}"


class ScaleShift(Transform):
    """Learnable elementwise affine ``z = x · exp(s) + t`` between residual blocks.

    ``s = 3 tanh(raw / 3)`` keeps the scales bounded; initialised at the identity.
    Shapes: ``[N, D] -> ([N, D], [N])``; log-det ``sum(s)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale_raw = nn.Parameter(torch.zeros(dim))

    def _log_scale(self) -> Tensor:
        return 3.0 * torch.tanh(self.log_scale_raw / 3.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self._log_scale()
        return x * torch.exp(s) + self.shift, s.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self._log_scale()
        return (z - self.shift) * torch.exp(-s), (-s.sum()).expand(z.shape[0])
