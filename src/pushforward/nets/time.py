"""Time-conditioned networks for velocity, score and noise fields."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward.nets.mlp import _ACTIVATIONS

# Activations whose derivative continuous.divergence.mlp_divergence knows (nn.ELU at its alpha = 1).
_TRACEABLE = {nn.SiLU: "silu", nn.Tanh: "tanh", nn.ELU: "elu"}


def batch_times(t: Tensor | float, ref: Tensor) -> Tensor:
    """Times as ``[N]`` in ``ref``'s dtype/device (``ref`` ``[N, ...]``; a float or 0-d ``t`` is
    broadcast, a ``[N]`` one passed through)."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    return t.expand(ref.shape[0]) if t.dim() == 0 else t


class SinusoidalEmbedding(nn.Module):
    """``t -> [sin(w_k t), cos(w_k t)]`` with log-spaced frequencies (Vaswani et al. 2017).

    Shapes: ``t`` ``[N]`` or ``[]`` -> ``[N, dim]``. ``scale`` multiplies ``t`` first (t in [0, 1]
    needs a large scale, e.g. 1000, for the high frequencies to matter).
    """

    def __init__(self, dim: int = 32, scale: float = 100.0, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        arg = (self.scale * t)[..., None] * self.freqs.to(t.dtype)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class TimeMLP(nn.Module):
    """A field ``f(x, t, context) -> R^out`` for vector data: an MLP on ``[x, emb(t), context]``.

    Args:
        dim: data dimension D. out_dim: output size (default D).
        context_dim: conditioning size C (0: none). hidden: hidden widths.
        time_embed: size of the sinusoidal time embedding (0: feed ``t`` raw).
        time_scale: the embedding's ``scale`` (:class:`SinusoidalEmbedding`; default 100: fast
            frequencies for t in [0, 1]; a small scale keeps ``d emb / dt`` small, which
            objectives that differentiate the network in t need).
        activation: silu (default), relu, gelu, tanh, elu; smooth activations keep divergence
            well-defined for likelihoods.
    Shapes: x ``[N, D]``, t ``[]`` or ``[N]``, context ``[N, C]`` -> ``[N, out_dim]``.

    With ``out_dim = D`` and a silu, tanh or elu activation (``has_divergence``),
    :meth:`forward_with_divergence` gives the exact divergence in one forward pass
    (:func:`~pushforward.continuous.divergence.mlp_divergence`).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        context_dim: int = 0,
        hidden: Sequence[int] = (128, 128, 128),
        time_embed: int = 32,
        activation: str = "silu",
        time_scale: float = 100.0,
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.dim, self.context_dim = dim, context_dim
        self.embed = SinusoidalEmbedding(time_embed, scale=time_scale) if time_embed else None
        widths = [dim + (time_embed or 1) + context_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], out_dim or dim))
        self.net = nn.Sequential(*layers)

    def _condition(self, x: Tensor, t: Tensor | float, context: Tensor | None) -> Tensor:
        """The inputs besides x: ``[emb(t), context]`` ``[N, E]``."""
        t = batch_times(t, x)
        te = self.embed(t) if self.embed is not None else t[:, None]
        return te if context is None else torch.cat([te, context], dim=-1)

    def forward(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:  # noqa: D102
        return self.net(torch.cat([x, self._condition(x, t, context)], dim=-1))

    @property
    def has_divergence(self) -> bool:
        """Whether :meth:`forward_with_divergence` applies (square output, traceable activation)."""
        return self._trace_activation() is not None

    def _trace_activation(self) -> str | None:
        mods = list(self.net)
        if mods[-1].out_features != self.dim:
            return None
        if len(mods) == 1:
            return "identity"
        act = mods[1]
        name = _TRACEABLE.get(type(act))
        return None if name is None or (name == "elu" and act.alpha != 1.0) else name

    def forward_with_divergence(self, x: Tensor, t: Tensor | float,
                                context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f [N, D], div_x f [N])`` exactly, without autograd (Jacobian trace of the MLP).

        Raises:
            NotImplementedError: ``out_dim != D`` or an activation without a known derivative.
        """
        name = self._trace_activation()
        if name is None:
            raise NotImplementedError(
                f"no exact trace for this TimeMLP (out_dim={self.net[-1].out_features}, dim={self.dim}, "
                f"activation {type(self.net[1]).__name__ if len(self.net) > 1 else None}); use autograd")
        # Imported here: pushforward.continuous imports the distributions, which import nets.
        from pushforward.continuous.divergence import mlp_divergence

        lins = list(self.net)[0::2]
        return mlp_divergence(x, [m.weight for m in lins], [m.bias for m in lins], name,
                              extra_input=self._condition(x, t, context))
