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

    def forward_and_tangent(self, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """``(emb(t), d emb/dt * dt)`` ``[N, dim]`` each (the tangent without a graph); t, dt ``[N]``.

        ``d sin(w s t) = w s cos(w s t) dt``, ``d cos(w s t) = -w s sin(w s t) dt``.
        """
        w = self.scale * self.freqs.to(t.dtype)
        arg = t[..., None] * w
        sin, cos = torch.sin(arg), torch.cos(arg)
        with torch.no_grad():
            darg = dt[..., None] * w
            tangent = torch.cat([cos * darg, -sin * darg], dim=-1)
        return torch.cat([sin, cos], dim=-1), tangent


def embed_with_tangent(embed: SinusoidalEmbedding | None, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """A time input and its tangent ``[N, E]``: the embedding's, or raw ``t[:, None]`` without one."""
    if embed is None:
        return t[:, None], dt[:, None].detach()
    return embed.forward_and_tangent(t, dt)


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

    @property
    def has_jvp(self) -> bool:
        """Whether :meth:`forward_and_jvp` applies (an activation with a known derivative)."""
        return self._activation_name() is not None

    def _activation_name(self) -> str | None:
        mods = list(self.net)
        if len(mods) == 1:
            return "identity"
        act = mods[1]
        name = _TRACEABLE.get(type(act))
        return None if name is None or (name == "elu" and act.alpha != 1.0) else name

    def _trace_activation(self) -> str | None:
        return self._activation_name() if self.net[-1].out_features == self.dim else None

    def forward_and_jvp(self, x: Tensor, t: Tensor | float, context: Tensor | None, dx: Tensor,
                        dt: Tensor | float, dcontext: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f(x, t, c), J_f . (dx, dt, dc))``: the output ``[N, out]`` with its autograd graph and
        its forward-mode derivative along the tangent ``[N, out]`` without one, in one pass.

        Each layer carries the tangent as ``dh <- W dh`` and ``dh <- sigma'(a) * dh`` (a
        hand-written forward mode: ``torch.func.jvp`` runs this MLP's linear layers through
        Python decompositions, ~10x a forward pass on a CPU; this is ~2x). ``dcontext`` defaults
        to zero. The same numbers as ``torch.func.jvp`` (tested in float64).

        Raises:
            NotImplementedError: an activation without a known derivative (relu, gelu; ``has_jvp``).
        """
        name = self._activation_name()
        if name is None:
            raise NotImplementedError(f"no hand-written JVP for activation {type(self.net[1]).__name__}; "
                                      "use torch.func.jvp")
        # Imported here: pushforward.continuous imports the distributions, which import nets.
        from pushforward.continuous.divergence import activation_and_derivative

        t, dt = batch_times(t, x), batch_times(dt, x)
        te, dte = embed_with_tangent(self.embed, t, dt)
        parts, tangents = [x, te], [dx.detach(), dte]
        if context is not None:
            parts.append(context)
            tangents.append(torch.zeros_like(context) if dcontext is None else dcontext.detach())
        h, dh = torch.cat(parts, dim=-1), torch.cat(tangents, dim=-1)
        mods = list(self.net)
        for i in range(0, len(mods), 2):
            a = mods[i](h)
            with torch.no_grad():
                dh = dh @ mods[i].weight.t()
                if i + 1 < len(mods):
                    dh = activation_and_derivative(name, a.detach())[1] * dh
            h = mods[i + 1](a) if i + 1 < len(mods) else a
        return h, dh

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
