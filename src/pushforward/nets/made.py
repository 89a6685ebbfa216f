"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP whose weight matrices are multiplied by fixed binary masks so that output ``i`` depends
only on the inputs that come before ``i`` in an *ordering*. With input degrees
``m(x_i) = rank of i in the ordering`` (1..D), hidden degrees ``m(h) in {1..D-1}``
(``{0..D-1}`` with a context), the masks
are ``M[h, x] = [m(h) >= m(x)]`` between hidden layers and ``M[o, h] = [m(o) > m(h)]`` to the
outputs, so the Jacobian ``d out_i / d x_j`` is zero unless ``m(x_j) < m(x_i)``.
Context inputs get degree 0 and connect to every hidden unit, so every output may depend on
the context (conditional MADE, as in Papamakarios et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets.mlp import _ACTIVATIONS, run_layers


def make_order(dim: int, order: str | Sequence[int] | Tensor = "natural", seed: int = 0) -> Tensor:
    """An ordering of ``range(dim)`` as a long tensor ``[dim]``: ``order[r]`` is the r-th input.

    Args:
        order: ``"natural"`` (0..D-1), ``"reversed"``, ``"random"`` (seeded by ``seed``), or a
            permutation of ``range(dim)``.
    """
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(dim)
        if order == "reversed":
            return torch.arange(dim - 1, -1, -1)
        if order == "random":
            return torch.randperm(dim, generator=torch.Generator().manual_seed(int(seed)))
        raise ValueError(f"order must be 'natural', 'reversed', 'random' or a permutation, got {order!r}")
    perm = torch.as_tensor(order, dtype=torch.long).flatten()
    if perm.numel() != dim or not torch.equal(torch.sort(perm).values, torch.arange(dim)):
        raise ValueError(f"order must be a permutation of range({dim}), got {perm.tolist()}")
    return perm


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)^T + b`` with a fixed binary mask buffer ``M [out, in]``."""

    def __init__(self, mask: Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive MLP ``[N, D] (+ context [N, C]) -> [N, D, P]`` (Germain et al. 2015).

    Output ``[:, i, :]`` (the ``P`` parameters of dimension ``i``) depends only on inputs that
    precede ``i`` in ``order`` and on the context. The last layer is zero-initialised, so the
    output starts at 0 (flows built on it start at the identity).

    Args:
        dim: D, number of autoregressive inputs.
        num_params: P, outputs per input dimension.
        context_dim: C, inputs every output may depend on.
        hidden: widths of the hidden layers (at least one).
        order: input ordering (see :func:`make_order`).
        seed: seed for ``order="random"``.
        activation: relu, silu, gelu, tanh or elu.

    Example:
        >>> made = MADE(3, num_params=2, hidden=(16,), order="reversed")
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self, dim: int, num_params: int = 1, context_dim: int = 0, hidden: Sequence[int] = (64, 64),
        order: str | Sequence[int] | Tensor = "natural", seed: int = 0, activation: str = "relu",
    ):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"MADE needs at least one hidden layer of positive width, got hidden={hidden}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        if num_params < 1:
            raise ValueError(f"num_params must be >= 1, got {num_params}")
        self.dim, self.num_params, self.context_dim = int(dim), int(num_params), int(context_dim)
        perm = make_order(self.dim, order, seed)
        self.register_buffer("order", perm)

        # degree of input i = its rank in the ordering (1..D); context has degree 0.
        deg_in = torch.empty(self.dim, dtype=torch.long)
        deg_in[perm] = torch.arange(1, self.dim + 1)
        deg_in = torch.cat([deg_in, torch.zeros(self.context_dim, dtype=torch.long)])
        degrees = [deg_in]
        # Hidden degrees cycle through 1..D-1 (Germain et al.'s deterministic variant) so every
        # degree is represented. With a context they cycle through 0..D-1: degree-0 units see
        # only the context, and they are the only path from the context to the first output in
        # the ordering. With D = 1 and no context, all units get degree 0 (biases only).
        low = 0 if (self.context_dim or self.dim == 1) else 1
        for h in hidden:
            degrees.append(torch.arange(h) % max(self.dim - low, 1) + low)

        layers: list[nn.Module] = []
        for d_prev, d_next in zip(degrees[:-1], degrees[1:]):
            layers += [MaskedLinear(d_next[:, None] >= d_prev[None, :]), _ACTIVATIONS[activation]()]
        deg_out = deg_in[: self.dim].repeat_interleave(self.num_params)  # output (i, p) -> row i*P + p
        last = MaskedLinear(deg_out[:, None] > degrees[-1][None, :])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``[N, D]`` (and ``[N, C]``) -> parameters ``[N, D, P]``."""
        if self.context_dim:
            if context is None:
                raise ValueError(f"this MADE is conditional: context of shape [N, {self.context_dim}] is required")
            x = torch.cat([x, context], dim=-1)
        return run_layers(self.net, x).unflatten(-1, (self.dim, self.num_params))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_params={self.num_params}, context_dim={self.context_dim}"
