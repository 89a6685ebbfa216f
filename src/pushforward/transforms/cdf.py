"""One-dimensional CDF flows: ``z = F(x)`` with ``F`` a learnable mixture CDF, onto Uniform(0, 1).

The change of variables through a CDF gives ``p(x) = p_U(F(x)) F'(x) = f(x)``: the model *is*
the mixture density, and sampling is inverse-transform sampling. This is the 1-D building block
of Flow++'s mixture-of-logistics coupling (Ho et al., 2019) and of the "CDF flows" view of
univariate density estimation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets import MLP
from pushforward.transforms.base import Transform
from pushforward.transforms.planar import monotone_root

_KINDS = ("logistic", "gaussian")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_SCALE_BOUND = 7.0


class MixtureCDF(Transform):
    """``z = F(x) = sum_k π_k F_0((x - μ_k)/s_k)``, ``F_0`` the logistic or normal CDF.

    ``forward``: ``[N, 1] -> ([N, 1] in [0, 1], log f(x) [N])`` with ``f = F'`` the mixture
    density (computed by log-sum-exp, finite far into the tails). ``inverse``: the inverse CDF,
    by bracketed Newton on ``logit F(x) = logit z`` (accurate in both tails) from the bracket
    ``[min_k, max_k] (μ_k + s_k F_0^{-1}(z))``; ``z`` is clamped to ``[tiny, 1 - eps/2]`` and
    ``z = 0`` is read as ``eps/2`` (the resolution of uniform draws), so ``z = 0`` or ``1`` maps
    to a finite ``x`` symmetrically placed in the tails. The last Newton step is differentiable, which
    gives the exact implicit-function gradients ``∂x/∂z = 1/f(x)``.

    Args:
        components: number K of mixture components.
        kind: ``"logistic"`` or ``"gaussian"``.
        context_dim: size C of a context; if > 0 an MLP adds offsets to the ``3K`` mixture
            parameters (zero-initialised: starts as the unconditional mixture).
        hidden: hidden widths of that MLP.

    Log-scales are bounded to ``±7`` (soft, by tanh); initialised with means spread over
    ``[-2, 2]``, unit scales and equal weights (a broad density for standardized data).
    """

    def __init__(
        self, components: int = 8, kind: str = "logistic", context_dim: int = 0, hidden: Sequence[int] = (64, 64)
    ):
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be a positive integer, got {components!r}")
        self.kind, self.components, self.context_dim = kind, components, int(context_dim)
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.linspace(-2.0, 2.0, components) if components > 1 else torch.zeros(1))
        self.log_scale_raw = nn.Parameter(torch.zeros(components))
        self.context_net = MLP(context_dim, 3 * components, hidden, zero_last=True) if context_dim else None

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(log π, μ, log s)``, each ``[K]`` or ``[N, K]``."""
        logits, loc, raw = self.logits, self.loc, self.log_scale_raw
        if self.context_net is not None:
            if context is None:
                raise ValueError(f"MixtureCDF was built with context_dim={self.context_dim}: pass a context")
            dl, dm, ds = self.context_net(context).chunk(3, dim=-1)
            logits, loc, raw = logits + dl, loc + dm, raw + ds
        log_scale = _LOG_SCALE_BOUND * torch.tanh(raw / _LOG_SCALE_BOUND)
        return F.log_softmax(logits, dim=-1), loc, log_scale

    def _log_cdfs(self, x: Tensor, params) -> tuple[Tensor, Tensor, Tensor]:
        """``(log F(x), log(1 - F(x)), log f(x))`` for ``x [N]``, each ``[N]``."""
        log_w, loc, log_scale = params
        u = (x.unsqueeze(-1) - loc) * torch.exp(-log_scale)
        if self.kind == "logistic":
            lcdf, lsf = F.logsigmoid(u), F.logsigmoid(-u)
            lpdf = lcdf + lsf - log_scale
        else:
            lcdf, lsf = torch.special.log_ndtr(u), torch.special.log_ndtr(-u)
            lpdf = -0.5 * u * u - _HALF_LOG_2PI - log_scale
        return (
            torch.logsumexp(log_w + lcdf, -1),
            torch.logsumexp(log_w + lsf, -1),
            torch.logsumexp(log_w + lpdf, -1),
        )

    def _check(self, x: Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != 1:
            raise ValueError(f"MixtureCDF is one-dimensional: {name} must be [N, 1], got {list(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        lcdf, _, lpdf = self._log_cdfs(x[:, 0], self._params(context))
        # F(x) <= 1 up to rounding of the weights; the uniform base rejects anything above.
        return torch.exp(lcdf).clamp(max=1.0).unsqueeze(-1), lpdf

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, "z")
        params = self._params(context)
        log_w, loc, log_scale = params
        fi = torch.finfo(z.dtype)
        # z = 0 (a uniform draw at the grid's bottom) is read as the grid's resolution, eps/2,
        # mirroring the top clamp; other small z (far-tail forward outputs) are kept exactly.
        zc = torch.where(z[:, 0] > 0, z[:, 0], fi.eps / 2).clamp(fi.tiny, 1 - fi.eps / 2)
        target = torch.log(zc) - torch.log1p(-zc)  # logit z
        q = target if self.kind == "logistic" else torch.special.ndtri(zc)
        # Each component's own quantile brackets the mixture's (F is an average of CDFs).
        quantiles = loc + torch.exp(log_scale) * q.unsqueeze(-1)
        lo, hi = quantiles.min(-1).values, quantiles.max(-1).values
        x0 = (log_w.exp() * quantiles).sum(-1)

        def logit_cdf(xv: Tensor, p=params) -> tuple[Tensor, Tensor]:
            lcdf, lsf, lpdf = self._log_cdfs(xv, p)
            # d/dx logit F = f / (F (1 - F)).
            return lcdf - lsf, torch.exp(lpdf - lcdf - lsf)

        detached = tuple(p.detach() for p in params)
        x_star = monotone_root(lambda xv: logit_cdf(xv, detached), target, lo, hi, x0=x0)
        # Differentiable Newton step from the root (implicit-function gradients).
        lval, dl = logit_cdf(x_star)
        x = x_star - (lval - target) / dl
        _, _, lpdf = self._log_cdfs(x, params)
        return x.unsqueeze(-1), -lpdf

    def extra_repr(self) -> str:
        return f"components={self.components}, kind={self.kind!r}, context_dim={self.context_dim}"
