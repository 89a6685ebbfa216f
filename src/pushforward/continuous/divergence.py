"""Divergence of a vector field ``u: R^D -> R^D``: exact (autograd) and Hutchinson's estimator.

Both take the output ``u = f(x)`` already computed from an ``x`` that requires grad, so the
forward pass is shared with the velocity itself.

Exact divergence, three ways (the cost is D Jacobian-vector products in every case; what differs
is how many kernel launches and autograd nodes carry them):

- ``"loop"``: one vector-Jacobian product per dimension (the reference, and the fallback).
- ``"batched"``: the D VJPs in one vmapped backward pass (``torch.autograd.grad(...,
  is_grads_batched=True)``). Works for any velocity; on one CPU thread it is within +-30 % of the
  loop (benchmarks/results/continuous.md), so ``"auto"`` uses it only where no faster path exists.
- the MLP trace (:func:`mlp_divergence`): for ``u = W_L S_{L-1} ... S_1 W_1 x`` (``S_k`` the
  activation slopes). With one or two hidden layers the trace is cyclic: ``tr(W_3 S_2 W_2 S_1
  W_1) = s_2^T (W_2 * (W_1 W_3)^T) s_1``, one ``[N, H] x [H, H]`` GEMM whatever D, the cost of
  one VJP instead of D. Deeper fields assemble ``tr J`` from a left and a right partial product
  meeting in the middle layer, each one GEMM of ``[N, H]`` slopes by a fixed ``[H, D H]``
  matrix (the loop's multiply-add count, ``~2 D H^2`` per sample, but far fewer passes over
  memory and kernel launches). FFJORD's field and TimeMLP use it (``forward_with_divergence``);
  benchmarks/results/continuous.md has the speed-ups over the loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

EXACT_METHODS = ("auto", "batched", "loop")
_CHUNK_ELEMENTS = 1 << 17  # [rows, D, H] entries per row block of mlp_divergence (512 KiB in float32: L2)


def divergence_exact(u: Tensor, x: Tensor, create_graph: bool = False, method: str = "loop") -> Tensor:
    """``div u = sum_i du_i/dx_i`` from D vector-Jacobian products.

    Args:
        u: ``[N, ...]`` outputs computed from ``x``. x: same shape, with ``requires_grad``.
        create_graph: keep the graph (for training through the divergence).
        method: ``"loop"`` (one autograd call per dimension), ``"batched"`` (all D in one
            vmapped backward) or ``"auto"`` (batched, falling back to the loop with a warning if
            an operation of the field does not support batched gradients).
    Returns:
        ``[N]``.
    """
    if method not in EXACT_METHODS:
        raise ValueError(f"unknown exact-divergence method {method!r}; choose from {', '.join(EXACT_METHODS)}")
    if u.shape != x.shape:
        raise ValueError(f"divergence needs a field with the shape of its input: u {list(u.shape)} vs x {list(x.shape)}")
    n = x.shape[0]
    d = x[0].numel()
    if method != "loop" and d > 1:
        try:
            return _divergence_batched(u, x, create_graph)
        except RuntimeError as e:  # some custom autograd Functions cannot be vmapped
            if method == "batched":
                raise
            warnings.warn(f"batched exact divergence failed ({e}); using the per-dimension loop", stacklevel=2)
    flat_u = u.reshape(n, d)
    div = x.new_zeros(n)
    for i in range(d):
        g = torch.autograd.grad(flat_u[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
        div = div + g.reshape(n, d)[:, i]
    return div


def _divergence_batched(u: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    n, d = x.shape[0], x[0].numel()
    # Probe i is e_i for every row: grad_outputs [D, N, ...]; row i of the result is e_i^T J.
    basis = torch.eye(d, dtype=u.dtype, device=u.device)[:, None, :].expand(d, n, d).reshape(d, *u.shape)
    g = torch.autograd.grad(u, x, grad_outputs=basis, create_graph=create_graph, retain_graph=True,
                            is_grads_batched=True)[0]
    return torch.diagonal(g.reshape(d, n, d), dim1=0, dim2=2).sum(-1)


def divergence_hutchinson(u: Tensor, x: Tensor, eps: Tensor, create_graph: bool = False) -> Tensor:
    """Hutchinson's unbiased estimate ``eps^T (du/dx) eps`` with ``E[eps eps^T] = I``.

    Args:
        u: as in :func:`divergence_exact`.
        x: as in :func:`divergence_exact`.
        eps: ``[N, D]`` probe (Gaussian or Rademacher), fixed for a whole ODE solve (Grathwohl
            et al. 2019, FFJORD).
        create_graph: keep the graph for a backward pass through the estimate.
    Returns:
        ``[N]``.
    """
    g = torch.autograd.grad(u, x, grad_outputs=eps, create_graph=create_graph, retain_graph=True)[0]
    return (g * eps).reshape(x.shape[0], -1).sum(-1)


def make_probe(
    shape: torch.Size | tuple[int, ...],
    kind: str = "rademacher",
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
) -> Tensor:
    """A probe for :func:`divergence_hutchinson`: ``"rademacher"`` (±1) or ``"gaussian"``."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    raise ValueError(f"unknown probe kind {kind!r}; choose 'rademacher' or 'gaussian'")


# ---------------------------------------------------------------------------- forward-mode MLP
def activation(name: str, a: Tensor) -> Tensor:
    """``sigma(a)`` for the activations of :func:`activation_and_derivative` (value only)."""
    if name == "softplus":
        return F.softplus(a)
    if name == "tanh":
        return torch.tanh(a)
    if name == "silu":
        return F.silu(a)
    if name == "elu":
        return F.elu(a)
    if name == "identity":
        return a
    raise ValueError(f"unknown activation {name!r}; choose softplus, tanh, silu, elu or identity")


def activation_and_derivative(name: str, a: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma(a), sigma'(a))`` for a smooth elementwise activation, sharing intermediates.

    Supports ``softplus``, ``tanh``, ``silu``, ``elu`` and ``identity``.
    """
    if name == "softplus":
        return F.softplus(a), torch.sigmoid(a)
    if name == "tanh":
        h = torch.tanh(a)
        return h, torch.addcmul(h.new_ones(()), h, h, value=-1)  # 1 - h^2 in one pass
    if name == "silu":
        s = torch.sigmoid(a)
        return a * s, s * (1 + a * (1 - s))
    if name == "elu":
        e = torch.expm1(torch.clamp(a, max=0.0))
        return torch.where(a > 0, a, e), torch.where(a > 0, torch.ones_like(a), e + 1)
    if name == "identity":
        return a, torch.ones_like(a)
    raise ValueError(f"no derivative known for activation {name!r}")


def fold_modulation(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    gates: Sequence[Tensor | None] | None,
    shifts: Sequence[Tensor | None] | None,
) -> list[tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]]:
    """Fold row-vector modulation (``[1, H]`` gates/shifts) into the layers' weights and biases.

    ``(h W^T + b) * g + s = h (g W)^T + (g b + s)`` for a row vector ``g``: an ODE solve calls the
    field at one shared t, so the gate costs an ``[H, H_in]`` scaling instead of two ``[N, H]``
    passes, and the Jacobian products of :func:`mlp_divergence` see plain weights. Per-sample
    gates/shifts (context, per-sample t) are returned unchanged.

    Returns:
        per layer ``(W, b, g or None, s or None)``.
    """
    layers = []
    for k, w in enumerate(weights):
        b = biases[k]
        g = gates[k] if gates is not None else None
        s = shifts[k] if shifts is not None else None
        if g is not None and g.dim() == 2 and g.shape[0] == 1:
            gv = g.reshape(-1)
            w, b, g = w * gv[:, None], None if b is None else b * gv, None
        if s is not None and s.dim() == 2 and s.shape[0] == 1:
            b, s = s.reshape(-1) if b is None else b + s.reshape(-1), None
        layers.append((w, b, g, s))
    return layers


def modulated_linear(h: Tensor, w: Tensor, b: Tensor | None, g: Tensor | None, s: Tensor | None) -> Tensor:
    """``(h W^T + b) * g + s`` (a layer of :func:`fold_modulation`'s output; g, s optional)."""
    a = F.linear(h, w, b)
    if g is not None:
        a = a * g
    return a if s is None else a + s


def mlp_divergence(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    activation: str,
    gates: Sequence[Tensor | None] | None = None,
    shifts: Sequence[Tensor | None] | None = None,
    extra_input: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Output and exact divergence of an MLP ``R^D -> R^D`` in one pass, without autograd.

    Layer k computes ``a_k = (h_{k-1} W_k^T + b_k) * g_k + s_k`` and ``h_k = sigma(a_k)`` (no
    activation after the last layer, k = L), with optional per-layer gates ``g_k`` and shifts
    ``s_k`` that do not depend on ``x`` (time/context modulation, "ConcatSquash" layers of
    FFJORD). The input is ``h_0 = [x, extra_input]``. With ``S_k = diag(sigma'(a_k) g_k)`` the
    Jacobian is ``J = diag(g_L) W_L S_{L-1} W_{L-1} ... S_1 W_1x`` (``W_1x``: the x columns) and

        div u = tr J = sum_i g_L[i] sum_h (W_L ... W_{m+1})[i, h] S_m[h] (W_m ... W_1x)[h, i],

    evaluated "meet in the middle": the left product ``[D, H_m]`` and the right product
    ``[H_m, D]`` per sample, then one weighted inner product. The two products that touch the
    first and last layers cost one GEMM each with no per-sample scaling of a ``[N, D, H]`` tensor
    first: ``(W_2 S_1 W_1x)[h, i] = sum_h' s_1[h'] W_2[h, h'] W_1x[h', i]`` is ``s_1 [N, H_1]``
    times a fixed ``[H_1, D H_2]`` matrix (likewise on the left).

    Args:
        x: ``[N, D]``. weights: ``W_k`` ``[H_k, H_{k-1}]`` (the first has ``D + extra`` columns,
            the last ``D`` rows). biases: ``b_k`` ``[H_k]`` or None.
        activation: see :func:`activation_and_derivative`.
        gates: per layer ``[N or 1, H_k]`` or None.
        shifts: per layer ``[N or 1, H_k]`` or None.
        extra_input: ``[N, E]`` inputs the divergence does not differentiate (e.g. time).
    Returns:
        ``(u [N, D], div [N])``; differentiable w.r.t. the weights (training) when grad is on.
    """
    # Why this formulation (measured on one CPU thread, benchmarks/results/continuous.md): every
    # exact method costs the same ~2 D H^2 multiply-adds per sample for a 3-hidden-layer MLP (D
    # Jacobian columns through the two H x H layers), so beyond small batches only memory traffic
    # and kernel launches separate them. torch.func.vmap(jacfwd) and vmap(jvp) over the identity
    # basis were 1.3-3x *slower* than the per-dimension VJP loop (D = 2, 10; batch 256-5000); the
    # layer-by-layer forward mode (a [N, D, H] tangent scaled by the slopes before every GEMM,
    # about ten passes over N D H floats) was 2.8x faster at batch 256 but on par at 5000. Here
    # the two GEMMs read [N, H] slopes and the [N, D, H] products are touched three times, in row
    # blocks that stay in cache.
    if not weights:
        raise ValueError("mlp_divergence needs at least one layer")
    n, d = x.shape
    layers = fold_modulation(weights, biases, gates, shifts)
    ws = [lay[0] for lay in layers]
    w_x = ws[0][:, :d]
    nh = len(ws) - 1  # hidden layers; layer k < nh has the slope S_{k+1} (0-based: slopes[k])
    m = (nh - 1) // 2  # meet at slopes[m]: one GEMM on each side for 3 hidden layers
    # Only the trace is needed unless a per-sample output gate weights its terms: then one or two
    # hidden layers close into one fixed matrix (_cycle_matrix) and the column factors are unused.
    cycle = _cycle_matrix(ws, w_x) if nh in (1, 2) and layers[-1][2] is None else None
    k_right = k_left = None
    if cycle is None:  # fixed [H, D H] factors of the first/last two layers (see the docstring)
        if m >= 1:
            k_right = (w_x[:, :, None] * ws[1].T[:, None, :]).reshape(w_x.shape[0], -1)
        if nh >= 2 and m != nh - 1:
            k_left = (ws[nh].T[:, :, None] * ws[nh - 1][:, None, :]).reshape(ws[nh].shape[1], -1)
    rows = max(1, _CHUNK_ELEMENTS // (d * max(w.shape[0] for w in ws)))

    def block(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        def part(v):
            return v if v is None or v.shape[0] == 1 else v[lo:hi]

        h = x[lo:hi] if extra_input is None else torch.cat([x[lo:hi], extra_input[lo:hi]], dim=-1)
        slopes = []  # diag of S_k, [rows or 1, H_k]
        for k, (w, b, g, s) in enumerate(layers):
            g = part(g)
            a = modulated_linear(h, w, b, g, part(s))
            if k == nh:
                break
            h, dh = activation_and_derivative(activation, a)
            slopes.append(dh if g is None else dh * g)
        if cycle is not None:  # the trace alone: one GEMV / GEMM whatever D
            return a, _cycle_trace(slopes, cycle)
        if nh == 0:  # a linear map
            diag = w_x.diagonal().expand(hi - lo, d)
        elif nh == 1:  # sum_h W_2[i, h] s[h] W_1x[h, i]: one GEMM
            diag = slopes[0] @ (ws[1] * w_x.T).T
        else:
            diag = _meet(ws, w_x, slopes, m, k_right, k_left).expand(hi - lo, d)
        if g is not None:  # the last layer's gate scales row i of J
            diag = diag * g
        return a, diag.sum(-1)

    if n <= rows:
        return block(0, n)
    # Row blocks keep the [rows, D, H] products and the activations in cache.
    outs = [block(i, min(i + rows, n)) for i in range(0, n, rows)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _cycle_matrix(ws: list[Tensor], w_x: Tensor) -> Tensor:
    """The fixed factor of :func:`_cycle_trace`: ``[H_1]`` for one hidden layer, ``[H_2, H_1]`` for two."""
    if len(ws) == 2:  # tr(W_2 S_1 W_1x) = sum_h s_1[h] (W_1x W_2)[h, h]
        return (w_x * ws[1].T).sum(-1)
    # tr(W_3 S_2 W_2 S_1 W_1x) = tr(S_2 W_2 S_1 P), P = W_1x W_3 [H_1, H_2]:
    # sum_{a, b} s_2[a] W_2[a, b] s_1[b] P[b, a] = s_2^T (W_2 * P^T) s_1.
    return ws[1] * (w_x @ ws[2]).T


def _cycle_trace(slopes: list[Tensor], cycle: Tensor) -> Tensor:
    """``tr J`` [rows] of an MLP with one or two hidden layers and no per-sample output gate.

    The trace is cyclic, so the first and last layers close into one fixed matrix: the
    divergence costs one ``[N, H_1] x [H_1, H_2]`` GEMM (two hidden layers) or one GEMV (one),
    independently of D, instead of D Jacobian columns.
    """
    if cycle.dim() == 1:
        return slopes[0] @ cycle
    return ((slopes[0] @ cycle.T) * slopes[1]).sum(-1)


def _meet(ws: list[Tensor], w_x: Tensor, slopes: list[Tensor], m: int, k_right, k_left) -> Tensor:
    """``J[:, i, i]`` (before the last gate) from the left and right products meeting at ``slopes[m]``."""
    nh, d = len(slopes), w_x.shape[1]
    if k_right is None:
        right = w_x.T  # [D, H_1]: R[i, h] = W_1x[h, i]
    else:
        right = (slopes[0] @ k_right).view(-1, d, ws[1].shape[0])
        for k in range(2, m + 1):
            right = (right * slopes[k - 1][:, None, :]) @ ws[k].T
    if k_left is None:
        left = ws[nh]  # [D, H_nh]
    else:
        left = (slopes[nh - 1] @ k_left).view(-1, d, ws[nh - 1].shape[1])
        for k in range(nh - 2, m, -1):
            left = (left * slopes[k][:, None, :]) @ ws[k]
    prod = left * right
    # A broadcast multiply and a sum, not a batched matmul: bmm over N tiny [D, H] x [H, 1]
    # products has a per-sample backward (measured 3x slower in training).
    mid = slopes[m][:, None, :]
    prod = prod * mid if torch.is_grad_enabled() else prod.mul_(mid)
    return prod.sum(-1)


def network_divergence(net, context: Tensor | None = None):
    """A field network's exact fast path for one context, or None when it has none.

    A network ``net(x, t, context) -> u`` offers ``net.forward_with_divergence(x, t, context)
    -> (u [N, D], div u [N])`` when it can compute the trace without autograd (FFJORD's
    :class:`~pushforward.continuous.ConcatSquashField`, :class:`~pushforward.nets.TimeMLP` with
    a smooth activation); ``net.has_divergence = False`` switches it off for configurations it
    cannot trace. Returns ``(x, t) -> (u, div u)`` or None.
    """
    fwd = getattr(net, "forward_with_divergence", None)
    if fwd is None or not getattr(net, "has_divergence", True):
        return None

    def with_divergence(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return fwd(x, t, context)

    return with_divergence
