"""Planar and radial flows (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows").

Both are defined *generatively* (latent -> data) with a closed-form log-determinant::

    planar:  x = f(z) = z + û tanh(wᵀz + b)
    radial:  x = f(z) = z + β (z - z0) / (α + ‖z - z0‖)

Our :class:`~pushforward.transforms.Transform` convention is data -> latent, so here
``inverse`` is the closed-form generative map and ``forward`` (density evaluation) solves a
scalar equation: along ``w`` for planar (bracketed, safeguarded Newton to float precision), in
the radius for radial (the equation is a quadratic: solved in closed form, cancellation-free).
Gradients of the solve are exact: planar's last Newton step is taken with autograd on, from the
detached root, which reproduces the implicit-function-theorem derivative; radial's closed form
is differentiated directly.

Invertibility is enforced by the parametrisation, for any raw parameter values:

* planar: ``wᵀû = m(wᵀu) > -1`` with ``m(a) = log(1 + σ_c (eᵃ - 1))``, a softplus-type map
  onto ``(-1 + ε, ∞)`` shifted so that ``m(0) = 0`` (``u = 0`` is the identity, and
  ``‖û‖ <= 2‖u‖`` even as ``w -> 0``, unlike the paper's ``m(a) = -1 + softplus(a)``);
* radial: ``α > 0`` and ``β >= -α (1 - ε)`` (``α + β = εα + softplus(raw)``), so the radial
  profile ``r -> r (1 + β/(α + r))`` is strictly increasing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets import MLP
from pushforward.transforms.base import Transform

# Smallest allowed slope of the scalar maps (1 + wᵀû h' and the radial profile): keeps the
# log-determinant bounded below (>= log 1e-4) and the root finds well conditioned.
_MARGIN = 1e-4
# m(a) = log1p(_SIG_C * expm1(a)) has m(0) = 0 and m(-inf) = -1 + _MARGIN.
_SIG_C = 1.0 - math.exp(-(1.0 - _MARGIN))
_SHIFT = math.log(math.expm1(1.0 - _MARGIN))  # softplus(a + _SHIFT) = 1 + m(a) - _MARGIN


def monotone_root(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 100,
) -> Tensor:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` on a bracket ``[lo, hi]``.

    Safeguarded Newton: a Newton step is taken when it stays inside the current bracket,
    otherwise the bracket is bisected; the bracket shrinks on the sign of the residual every
    iteration, so it converges for any monotone ``fn`` and reaches the float precision of the
    inputs (quadratically near the root). Runs without autograd; callers attach gradients by
    taking one differentiable Newton step from the returned root.

    Args:
        fn: ``x -> (fn(x), fn'(x))``, elementwise, increasing.
        target, lo, hi: tensors of one shape, with ``fn(lo) <= target <= fn(hi)``.
        x0: starting point (default the bracket's midpoint).
        max_iter: cap on iterations (bisection alone gains one bit per iteration).

    Returns:
        The root, same shape as ``target`` (detached).
    """
    with torch.no_grad():
        lo, hi, target = lo.detach(), hi.detach(), target.detach()
        x = (lo + hi) / 2 if x0 is None else torch.minimum(torch.maximum(x0.detach(), lo), hi)
        eps = torch.finfo(x.dtype).eps
        for _ in range(max_iter):
            f, df = fn(x)
            r = f - target
            hi = torch.where(r > 0, x, hi)
            lo = torch.where(r < 0, x, lo)
            newton = x - r / df
            ok = (newton >= lo) & (newton <= hi) & torch.isfinite(newton)
            x_new = torch.where(ok, newton, (lo + hi) / 2)
            x_new = torch.where(r == 0, x, x_new)
            tol = 16 * eps * (1 + x_new.abs())
            done = ((x_new - x).abs() <= tol) | ((hi - lo) <= tol)
            x = x_new
            if bool(done.all()):
                break
        return x


def _planar_slope(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(m(a), 1 + m(a))`` of the planar constraint, each computed without cancellation."""
    # log1p form is exact near a = 0 (where m(a) ≈ σ_c a); softplus form for large a.
    small = torch.log1p(_SIG_C * torch.expm1(a.clamp(max=1.0)))
    large = F.softplus(a + _SHIFT) - 1.0 + _MARGIN
    m = torch.where(a <= 1.0, small, large)
    one_plus_m = _MARGIN + F.softplus(a + _SHIFT)
    return m, one_plus_m


def _context_net(context_dim: int, n_out: int, hidden: Sequence[int]) -> MLP | None:
    # Zero last layer: a conditional layer starts as its unconditional counterpart.
    return MLP(context_dim, n_out, hidden, zero_last=True) if context_dim else None


class Planar(Transform):
    """Planar flow layer (Rezende & Mohamed, 2015, eq. 10-12), optionally conditional.

    Generative map (``inverse``, latent -> data)::

        x = z + û tanh(wᵀz + b),   log|det ∂x/∂z| = log(1 + wᵀû (1 - tanh²(wᵀz + b)))

    with ``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` so that ``wᵀû = m(wᵀu) > -1`` (invertible for any
    raw ``u, w, b``). ``forward`` (data -> latent) solves ``a + wᵀû tanh(a) = wᵀx + b`` for
    ``a = wᵀz + b`` by bracketed Newton, then ``z = x - û tanh(a)``.

    Args:
        dim: event size D. Shapes: ``[N, D] -> ([N, D], [N])``.
        context_dim: size C of a context ``[N, C]``; if > 0, an MLP of the context adds offsets
            to ``(u, w, b)`` (zero-initialised: starts as the unconditional layer).
        hidden: hidden widths of that MLP.

    Initialised at the identity (``u = 0``).
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.u = nn.Parameter(torch.zeros(dim))
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(()))
        self.context_net = _context_net(context_dim, 2 * dim + 1, hidden)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(û, w, b, s = wᵀû, 1 + s)``: ``[D] or [N, D]`` vectors, ``[] or [N]`` scalars."""
        u, w, b = self.u, self.w, self.b
        if self.context_net is not None:
            if context is None:
                raise ValueError(f"Planar was built with context_dim={self.context_dim}: pass a context")
            du, dw, db = self.context_net(context).split([self.dim, self.dim, 1], dim=-1)
            u, w, b = u + du, w + dw, b + db.squeeze(-1)
        wu = (w * u).sum(-1)
        ww = (w * w).sum(-1)
        s, one_plus_s = _planar_slope(wu)
        # |m(a) - a| <= |a| <= ‖w‖‖u‖, so the correction stays bounded as w -> 0.
        scale = (s - wu) / ww.clamp_min(torch.finfo(ww.dtype).tiny)
        u_hat = u + scale.unsqueeze(-1) * w
        return u_hat, w, b, s, one_plus_s

    @staticmethod
    def _log_slope(a: Tensor, one_plus_s: Tensor) -> Tensor:
        # 1 + s sech²(a) = tanh²(a) + (1 + s) sech²(a): a sum of non-negative terms.
        th2 = torch.tanh(a).pow(2)
        return torch.log(th2 + one_plus_s * (1 - th2))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, s, one_plus_s = self._params(context)
        y = (w * x).sum(-1) + b
        s_b, opb = s.expand_as(y), one_plus_s.expand_as(y)

        def phi(a: Tensor) -> tuple[Tensor, Tensor]:
            th = torch.tanh(a)
            return a + s_b * th, th * th + opb * (1 - th * th)

        # |tanh| <= 1 brackets the root within |s| of y.
        a_star = monotone_root(phi, y, y - s_b.abs(), y + s_b.abs(), x0=y)
        # One Newton step with autograd on: exact implicit-function gradients at the root.
        f, df = phi(a_star)
        a = a_star - (f - y) / df
        z = x - u_hat * torch.tanh(a).unsqueeze(-1)
        return z, -self._log_slope(a, one_plus_s)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, _, one_plus_s = self._params(context)
        a = (w * z).sum(-1) + b
        x = z + u_hat * torch.tanh(a).unsqueeze(-1)
        return x, self._log_slope(a, one_plus_s).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"


class Radial(Transform):
    """Radial flow layer (Rezende & Mohamed, 2015, eq. 14), optionally conditional.

    Generative map (``inverse``, latent -> data), with ``r = ‖z - z0‖``::

        x = z + β (z - z0) / (α + r)
        log|det ∂x/∂z| = (D - 1) log(1 + β/(α + r)) + log(1 + β α / (α + r)²)

    with ``α = softplus(·) + 1e-4 > 0`` and ``α + β = εα + softplus(·) > 0``. ``forward``
    (data -> latent) needs ``r`` from ``ρ = ‖x - z0‖ = r (α + β + r)/(α + r)``, i.e. the positive
    root of ``r² + (α + β - ρ) r - ρα = 0``, computed in the cancellation-free form.

    Args:
        dim: event size D. Shapes: ``[N, D] -> ([N, D], [N])``.
        context_dim: size C of a context; if > 0 an MLP adds offsets to ``(z0, α, β)``.
        hidden: hidden widths of that MLP.

    Initialised at the identity (``β = 0``) with ``α = 1`` and a random centre ``z0``.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.z0 = nn.Parameter(torch.randn(dim))
        alpha = 1.0
        self.alpha_raw = nn.Parameter(torch.tensor(math.log(math.expm1(alpha))))
        # α + β = εα + softplus(raw) = α  <=>  β = 0.
        self.beta_raw = nn.Parameter(torch.tensor(math.log(math.expm1(alpha * (1 - _MARGIN)))))
        self.context_net = _context_net(context_dim, dim + 2, hidden)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z0, α, α + β)`` as ``[D] or [N, D]``, ``[] or [N]``, ``[] or [N]``."""
        z0, a_raw, b_raw = self.z0, self.alpha_raw, self.beta_raw
        if self.context_net is not None:
            if context is None:
                raise ValueError(f"Radial was built with context_dim={self.context_dim}: pass a context")
            dz, da, db = self.context_net(context).split([self.dim, 1, 1], dim=-1)
            z0, a_raw, b_raw = z0 + dz, a_raw + da.squeeze(-1), b_raw + db.squeeze(-1)
        alpha = F.softplus(a_raw) + 1e-4
        apb = _MARGIN * alpha + F.softplus(b_raw)
        return z0, alpha, apb

    def _log_det(self, r: Tensor, alpha: Tensor, apb: Tensor) -> Tensor:
        # 1 + β/(α+r) = (α+β+r)/(α+r);  (α+r)² + βα = α(α+β) + 2αr + r²: all terms positive.
        lar = torch.log(alpha + r)
        radial = torch.log(apb + r) - lar
        normal = torch.log(alpha * apb + 2 * alpha * r + r * r) - 2 * lar
        return (self.dim - 1) * radial + normal

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, apb = self._params(context)
        diff = x - z0
        rho = torch.linalg.vector_norm(diff, dim=-1)
        big_b = apb - rho
        disc = torch.sqrt(big_b * big_b + 4 * rho * alpha)
        # Two algebraically equal forms of the positive root; pick the one without cancellation.
        den = torch.where(big_b > 0, disc + big_b, torch.ones_like(disc))
        r = torch.where(big_b > 0, 2 * rho * alpha / den, (disc - big_b) / 2)
        z = z0 + diff * ((alpha + r) / (apb + r)).unsqueeze(-1)
        return z, -self._log_det(r, alpha, apb).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, apb = self._params(context)
        diff = z - z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        x = z0 + diff * ((apb + r) / (alpha + r)).unsqueeze(-1)
        return x, self._log_det(r, alpha, apb).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"
