"""Neural monotone maps for autoregressive flows: NAF's deep sigmoidal map, UNAF's integral.

* :class:`SigmoidalMap` (Huang et al. 2018, "Neural Autoregressive Flows", the DSF transformer)::

      z = logit( sum_j w_j sigmoid(a_j x + b_j) ),   a_j > 0,  w on the simplex

  strictly increasing from ``R`` onto ``R``. Everything is computed in log space
  (``log S = logsumexp(log w + logsigmoid(u))``, ``log(1 - S)`` likewise), so it neither
  saturates nor loses precision in the tails.
* :class:`MonotoneIntegral` (Wehenkel & Louppe 2019, "Unconstrained Monotonic Neural Networks")::

      z = beta + int_0^x g(t, h) dt,   g = softplus(net(t, h)) > 0

  with any (unconstrained) network ``g``; the integral is Clenshaw-Curtis quadrature on
  ``n + 1`` Chebyshev nodes and ``log dz/dx = log g(x, h)`` is exact in ``x`` (the quadrature
  error only moves ``z``).

Neither has a closed-form inverse: :func:`pushforward.transforms.monotone.bisect_inverse`
inverts them to a tolerance ``tol`` (with implicit gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward._validate import check_positive_float, check_positive_int, check_widths
from pushforward.nets.mlp import MLP
from pushforward.transforms.elementwise import ElementwiseMap
from pushforward.transforms.monotone import bisect_inverse

_SOFTPLUS_ONE = math.log(math.expm1(1.0))  # softplus(_SOFTPLUS_ONE) = 1


class SigmoidalMap(ElementwiseMap):
    """Deep sigmoidal flow transformer ``z = logit(sum_j w_j sigmoid(a_j x + b_j))`` (Huang et al. 2018).

    ``theta = [a_raw (K), b_raw (K), w_raw (K)]`` per dimension with ``a = softplus(a_raw + c)``
    (``c``: zero gives ``a = 1``), ``b = b_raw + o_j`` where the fixed offsets ``o_j`` spread over
    ``[-2, 2]`` (so that units that start equal do not stay equal: with a zero-initialised
    conditioner they would receive identical gradients forever), ``w = softmax(w_raw)``.

    Args:
        hidden: number of sigmoid units ``K`` per dimension.
        tol: absolute tolerance of the bisection inverse.

    Shapes: ``x [..., D]``, ``theta [..., D, 3K]`` -> ``(z [..., D], ladj [..., D])``.

    Example:
        >>> f = SigmoidalMap(hidden=4)
        >>> x = torch.linspace(-3, 3, 5, dtype=torch.float64)[:, None]
        >>> theta = torch.randn(5, 1, f.num_params, dtype=torch.float64)
        >>> z, _ = f(x, theta)
        >>> bool(torch.allclose(f.inverse(z, theta)[0], x, atol=1e-5))
        True
    """

    def __init__(self, hidden: int = 8, tol: float = 1e-6):
        self.hidden = check_positive_int(hidden, "hidden")
        self.tol = check_positive_float(tol, "tol")
        self.num_params = 3 * self.hidden

    def _parts(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.hidden
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"SigmoidalMap with {k} units needs {self.num_params} parameters per dimension, "
                             f"got theta of shape {list(theta.shape)}")
        offsets = torch.linspace(-2.0, 2.0, k, dtype=theta.dtype, device=theta.device) if k > 1 else theta.new_zeros(1)
        a = F.softplus(theta[..., :k] + _SOFTPLUS_ONE)
        b = theta[..., k : 2 * k] + offsets
        log_w = torch.log_softmax(theta[..., 2 * k :], dim=-1)
        return a, b, log_w

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        a, b, log_w = self._parts(theta)
        u = a * x[..., None] + b
        ls, lms = F.logsigmoid(u), F.logsigmoid(-u)
        log_s = torch.logsumexp(log_w + ls, -1)
        log_1ms = torch.logsumexp(log_w + lms, -1)
        # dS/dx = sum_j w_j a_j s_j (1 - s_j);  d logit(S)/dS = 1 / (S (1 - S)).
        log_ds = torch.logsumexp(log_w + torch.log(a) + ls + lms, -1)
        return log_s - log_1ms, log_ds - log_s - log_1ms

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        x = bisect_inverse(lambda v: self.forward(v, theta), z, self.tol)
        return x, -self.forward(x, theta)[1]

    def __repr__(self) -> str:
        return f"SigmoidalMap(hidden={self.hidden}, tol={self.tol})"


def clenshaw_curtis(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Clenshaw-Curtis nodes ``s_k = cos(k pi / n)`` and weights on ``[-1, 1]``, ``k = 0..n`` (``n`` even).

    Exact for polynomials of degree ``n`` (Waldvogel 2006's closed form of the weights):
    ``w_k = (c_k / n) (1 - sum_{j=1}^{n/2} b_j cos(2 j k pi / n) / (4 j^2 - 1))`` with
    ``c_0 = c_n = 1``, else 2, and ``b_{n/2} = 1``, else 2.
    """
    if n < 2 or n % 2:
        raise ValueError(f"Clenshaw-Curtis needs an even number of intervals n >= 2, got {n!r}")
    k = np.arange(n + 1)
    theta = k * np.pi / n
    j = np.arange(1, n // 2 + 1)
    b = np.where(j == n // 2, 1.0, 2.0)
    w = 1.0 - (b[None, :] * np.cos(2 * j[None, :] * theta[:, None]) / (4 * j[None, :] ** 2 - 1)).sum(-1)
    c = np.where((k == 0) | (k == n), 1.0, 2.0)
    return np.cos(theta), c * w / n


class MonotoneIntegral(ElementwiseMap, nn.Module):
    """UMNN transformer ``z = beta + int_0^x g(t, h) dt`` with a positive network ``g`` (Wehenkel & Louppe 2019).

    ``theta = [beta, h (embed)]`` per dimension comes from the conditioner; the integrand
    ``g(t, h) = softplus(net([t, h]) + c)`` is a small MLP owned by this map (its last layer
    starts at zero, so ``g = 1`` and the map is the identity at initialisation). The integral is
    ``(x / 2) sum_k w_k g(x (1 + s_k) / 2, h)`` on the Clenshaw-Curtis rule of ``nodes``
    intervals; gradients flow through the quadrature (no custom backward).

    Args:
        embed: size ``E`` of the per-dimension embedding ``h``.
        hidden: widths of the integrand MLP. activation: its nonlinearity (smooth ones keep the
            quadrature spectrally accurate).
        nodes: even number of quadrature intervals ``n`` (``n + 1`` evaluations of ``g``).
        tol: absolute tolerance of the bisection inverse.

    Shapes: ``x [..., D]``, ``theta [..., D, 1 + E]`` -> ``(z [..., D], ladj [..., D])``.
    """

    def __init__(self, embed: int = 8, hidden: Sequence[int] = (32, 32), activation: str = "silu",
                 nodes: int = 20, tol: float = 1e-6):
        nn.Module.__init__(self)
        self.embed = check_positive_int(embed, "embed")
        self.hidden = check_widths(hidden, "integrand hidden")
        self.nodes = check_positive_int(nodes, "nodes")
        self.tol = check_positive_float(tol, "tol")
        self.num_params = 1 + self.embed
        s, w = clenshaw_curtis(self.nodes)
        self.register_buffer("_s", torch.as_tensor(s, dtype=torch.get_default_dtype()), persistent=False)
        self.register_buffer("_w", torch.as_tensor(w, dtype=torch.get_default_dtype()), persistent=False)
        self.net = MLP(1 + self.embed, 1, self.hidden, activation, zero_last=True)

    def _g(self, t: Tensor, h: Tensor) -> Tensor:
        """``g(t, h)`` for ``t [..., D, Q]``, ``h [..., D, E]`` -> ``[..., D, Q]`` (positive)."""
        hq = h[..., None, :].expand(*t.shape, self.embed)
        out = self.net(torch.cat([t[..., None], hq], -1).reshape(-1, 1 + self.embed)).reshape(t.shape)
        return F.softplus(out + _SOFTPLUS_ONE)

    def forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"MonotoneIntegral with embed={self.embed} needs {self.num_params} parameters "
                             f"per dimension, got theta of shape {list(theta.shape)}")
        beta, h = theta[..., 0], theta[..., 1:]
        s, w = self._s.to(x.dtype), self._w.to(x.dtype)
        # One network call: the quadrature nodes on [0, x] and the point x itself (for log g(x)).
        t = torch.cat([x[..., None] * (1 + s) / 2, x[..., None]], -1)
        g = self._g(t, h)
        z = beta + 0.5 * x * (g[..., :-1] * w).sum(-1)
        return z, torch.log(g[..., -1])

    def inverse(self, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        x = bisect_inverse(lambda v: self.forward(v, theta), z, self.tol)
        return x, -self.forward(x, theta)[1]

    # nn.Module identity semantics (ElementwiseMap compares plain option objects by value).
    __eq__ = object.__eq__
    __hash__ = object.__hash__
    __call__ = ElementwiseMap.__call__

    def extra_repr(self) -> str:
        return f"embed={self.embed}, nodes={self.nodes}, tol={self.tol}"

    __repr__ = nn.Module.__repr__
