"""Embedding networks for conditioning data (summary statistics learned jointly with the flow).

Each maps a batch of observations ``[N, *obs_shape]`` to features ``[N, out_dim]``; a model that
conditions on ``out_dim`` features is then trained through it (see
:class:`pushforward.posterior.Posterior`).

- :class:`MLPEmbedding`: flat vectors ``[N, X]``.
- :class:`Conv1dEmbedding`: time series ``[N, T]`` or ``[N, channels, T]`` (1-D convolutions with
  stride-2 downsampling, then global average pooling, so any length ``T`` works).
- :class:`SetEmbedding`: sets of i.i.d. trials ``[N, M, X]``, permutation invariant: DeepSets
  (Zaheer et al. 2017), ``rho(mean_m phi(x_m))``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pushforward._validate import check_int_range, check_widths
from pushforward.nets.mlp import MLP


class MLPEmbedding(nn.Module):
    """``[N, in_dim] -> [N, out_dim]`` through an MLP with ``hidden`` widths (SiLU)."""

    def __init__(self, in_dim: int, out_dim: int = 16, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.in_dim, self.out_dim = check_int_range(in_dim, "in_dim"), check_int_range(out_dim, "out_dim")
        self.net = MLP(in_dim, out_dim, check_widths(hidden), activation="silu")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPEmbedding expects [N, {self.in_dim}], got {list(x.shape)}")
        return self.net(x)


class Conv1dEmbedding(nn.Module):
    """Time series ``[N, T]`` (one channel) or ``[N, channels, T]`` -> ``[N, out_dim]``.

    ``layers`` blocks of ``Conv1d(kernel, padding same) -> SiLU -> stride-2 Conv1d``, global
    average pooling over time, then a linear head: translation-equivariant features, any ``T``.
    """

    def __init__(self, channels: int = 1, out_dim: int = 16, width: int = 32, layers: int = 3, kernel: int = 5):
        super().__init__()
        self.channels = check_int_range(channels, "channels")
        self.out_dim = check_int_range(out_dim, "out_dim")
        check_int_range(width, "width")
        check_int_range(layers, "layers")
        if check_int_range(kernel, "kernel") % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {kernel}")
        blocks: list[nn.Module] = []
        c = channels
        for _ in range(layers):
            blocks += [nn.Conv1d(c, width, kernel, padding=kernel // 2), nn.SiLU(),
                       nn.Conv1d(width, width, 3, stride=2, padding=1), nn.SiLU()]
            c = width
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and self.channels == 1:
            x = x[:, None, :]
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"Conv1dEmbedding expects [N, T] (one channel) or [N, {self.channels}, T], "
                             f"got {list(x.shape)}")
        return self.head(self.body(x).mean(-1))


class SetEmbedding(nn.Module):
    """Permutation-invariant set encoder (DeepSets): ``[N, M, in_dim] -> [N, out_dim]``.

    ``rho(1/M sum_m phi(x_m))``; the mean (not the sum) keeps features on one scale for any
    number of trials ``M``.
    """

    def __init__(self, in_dim: int, out_dim: int = 16, hidden: Sequence[int] = (64, 64), set_dim: int = 64):
        super().__init__()
        self.in_dim, self.out_dim = check_int_range(in_dim, "in_dim"), check_int_range(out_dim, "out_dim")
        hidden = check_widths(hidden)
        self.phi = MLP(in_dim, check_int_range(set_dim, "set_dim"), hidden, activation="silu")
        self.rho = MLP(set_dim, out_dim, hidden, activation="silu")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.in_dim:
            raise ValueError(f"SetEmbedding expects [N, M, {self.in_dim}], got {list(x.shape)}")
        return self.rho(self.phi(x).mean(1))


EMBEDDINGS = {"mlp": MLPEmbedding, "conv1d": Conv1dEmbedding, "set": SetEmbedding}
