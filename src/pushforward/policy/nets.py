"""Action experts for chunk policies: a pi0-style transformer and an MLP for tiny problems.

Both split the field into ``encode(obs, task) -> cache`` (run once per chunk) and
``decode(x, t, cache) -> [B, H, A]`` (run at every integration step), so ``act`` encodes the
observation once and reuses it across the solver's steps (pi0's prefix KV cache; Black et al.
2024, sec. 3 and B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets.time import SinusoidalEmbedding, batch_times


class ObsEncoder(nn.Module):
    """State vector (+ task id) -> observation tokens.

    ``obs [B, O]`` (normalized) -> ``[B, K, W]``: an MLP maps the state to ``K`` tokens; with
    ``num_tasks > 0`` a learned task embedding ``[B] -> [B, 1, W]`` is appended as one more token
    (task-conditioned policies, as pi0's language prefix in miniature).
    """

    def __init__(self, obs_dim: int, width: int, tokens: int = 2, num_tasks: int = 0):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.mlp = nn.Sequential(nn.Linear(obs_dim, 2 * width), nn.SiLU(), nn.Linear(2 * width, tokens * width))
        self.task = nn.Embedding(num_tasks, width) if num_tasks else None

    def forward(self, obs: Tensor, task: Tensor | None = None) -> Tensor:  # noqa: D102
        tok = self.mlp(obs).view(obs.shape[0], self.tokens, self.width)
        if self.task is not None:
            tok = torch.cat([tok, self.task(task)[:, None]], dim=1)
        return tok


class _Block(nn.Module):
    """Pre-LayerNorm transformer block whose attention may also read cached keys/values."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, kv_only: bool = False):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        # The last observation block is only read through its keys/values: no update to learn.
        self.kv_only = kv_only
        if not kv_only:
            self.proj = nn.Linear(width, width)
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                     nn.Linear(mlp_ratio * width, width))

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, w = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each [B, heads, n, w / heads]

    def forward(self, h: Tensor, prefix: tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``h [B, n, W]``; ``prefix`` = (k, v) of tokens this block may also attend to;
        ``mask`` (bool, broadcasting to ``[B, heads, n, keys]``, True = may attend) hides keys
        (padding of an instruction).

        Returns the new tokens and this block's own (k, v) (what a later reader caches).
        """
        q, k, v = self._split(h)
        if self.kv_only:
            return h, (k, v)
        kk, vv = (k, v) if prefix is None else (torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2))
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        h = h + self.proj(a.transpose(1, 2).reshape(h.shape))
        h = h + self.mlp(self.ln2(h))
        return h, (k, v)

    def step(self, h: Tensor, prefix: tuple[Tensor, Tensor], mask: Tensor | None = None,
             buffers: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``forward(h, prefix, mask)[0]`` written with functional calls only (no submodule calls,
        no returned keys/values): the decoder runs this at every flow step, where at batch 1 the
        framework overhead is most of the time. Equal to :meth:`forward` up to rounding order.

        ``buffers``: key/value tensors ``[B, heads, P + n, d]`` already holding the prefix in their
        first P positions; this step's keys/values are written after it (no concatenation)."""
        b, n, w = h.shape
        ln1, ln2, fc1, fc2 = self.ln1, self.ln2, self.mlp[0], self.mlp[2]
        qkv = F.linear(F.layer_norm(h, (w,), ln1.weight, ln1.bias, ln1.eps), self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if buffers is not None and buffers[0].shape[0] == b and buffers[0].shape[2] == prefix[0].shape[2] + n:
            p = prefix[0].shape[2]
            kk, vv = buffers
            kk[:, :, p:].copy_(k)
            vv[:, :, p:].copy_(v)
        else:
            kk, vv = torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2)
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        h = h + F.linear(a.transpose(1, 2).reshape(b, n, w), self.proj.weight, self.proj.bias)
        u = F.gelu(F.linear(F.layer_norm(h, (w,), ln2.weight, ln2.bias, ln2.eps), fc1.weight, fc1.bias))
        return h + F.linear(u, fc2.weight, fc2.bias)


def fused_action_embedding(in_action: nn.Linear, action_time: nn.Sequential, embed_t: nn.Module, pos: Tensor,
                           x: Tensor, t: Tensor | float) -> Tensor:
    """Action tokens ``W_3 swish(W_2 [W_1 x_h, phi(t)] + b_2) + b_3 + pos_h`` (pi0, sec. B), ``[B, H, W]``.

    The same function as ``action_time(cat([in_action(x), phi(t)])) + pos`` with the per-step work
    fused (the decoder runs at every flow step, at batch 1 mostly framework overhead): ``W_2``
    is split into its action and time columns, the action part folded into ``W_1``
    (``W_2a (W_1 x + b_1) = (W_2a W_1) x + W_2a b_1``), and the time part computed once per
    batch row instead of once per action token, so no ``[B, H, W + E]`` concatenation is built.
    """
    first = action_time[0]
    w = in_action.out_features
    wa, wt = first.weight[:, :w], first.weight[:, w:]
    h = F.linear(x, wa @ in_action.weight, torch.addmv(first.bias, wa, in_action.bias))
    h = h + F.linear(embed_t(batch_times(t, x)), wt)[:, None]
    return action_time[2](action_time[1](h)) + pos[: x.shape[1]]


def action_embedder(in_action: nn.Linear, action_time: nn.Sequential, embed_t: nn.Module, pos: Tensor):
    """``(x, t) -> fused_action_embedding(in_action, action_time, embed_t, pos, x, t)`` with the
    folded weights computed once (per chunk, not per flow step); for frozen weights (acting)."""
    first, last = action_time[0], action_time[2]
    w = in_action.out_features
    wa, wt = first.weight[:, :w], first.weight[:, w:]
    w_x, b_x = wa @ in_action.weight, torch.addmv(first.bias, wa, in_action.bias)
    act = action_time[1]
    times: dict = {}  # the time term per step time (a Runge-Kutta solve revisits its stage times)

    def embed(x: Tensor, t: Tensor | float) -> Tensor:
        key = None
        # Under torch.compile the whole solve is one graph: a host-side cache would only break it.
        if not torch.compiler.is_compiling() and x.device.type == "cpu" and (not isinstance(t, Tensor) or t.dim() == 0):
            key = (float(t), x.shape[0])  # no host sync on CPU
        te = times.get(key) if key is not None else None
        if te is None:
            te = F.linear(embed_t(batch_times(t, x)), wt)[:, None]
            if key is not None and len(times) < 64:
                times[key] = te
        h = F.linear(x, w_x, b_x) + te
        return F.linear(act(h), last.weight, last.bias) + pos[: x.shape[1]]
    return embed


def action_decoder(embed, blocks, out: nn.Sequential, kvs: list[tuple[Tensor, Tensor]], mask: Tensor | None = None,
                   horizon: int | None = None):
    """``(x, t) -> velocity``: the per-step decoder over a fixed prefix cache, functional calls only
    (:meth:`_Block.step`); the same function as the experts' ``decode`` for frozen weights."""
    ln, head = out[0], out[1]
    horizon = None if horizon is None else int(horizon)
    # Key/value buffers holding the prefix once, the action part rewritten at every step.
    bufs = [None if horizon is None else tuple(torch.cat([c, c.new_zeros(*c.shape[:2], horizon, c.shape[3])], 2)
                                               for c in kv) for kv in kvs]
    blocks = list(zip(blocks, kvs, bufs))

    def decode(x: Tensor, t: Tensor | float) -> Tensor:
        h = embed(x, t)
        for blk, kv, buf in blocks:
            h = blk.step(h, kv, mask, buf)
        return F.linear(F.layer_norm(h, ln.normalized_shape, ln.weight, ln.bias, ln.eps), head.weight, head.bias)
    return decode


class ActionTransformer(nn.Module):
    """pi0's action expert in miniature: H action tokens attending to observation tokens.

    Each noisy action ``x_h`` is embedded together with a sinusoidal embedding of ``t`` through
    an MLP, ``tok_h = W_3 swish(W_2 [W_1 x_h, phi(t)]) + pos_h`` (pi0, sec. B), the tokens pass
    ``depth`` blocks and a linear head returns the velocity. Attention is block-causal as in pi0:
    observation tokens (their own weights: a mixture of two experts) attend only among
    themselves; action tokens attend to the observation tokens and to each other. The per-layer
    observation keys/values therefore depend only on the observation: :meth:`encode` computes them
    once per chunk and :meth:`decode` reuses them at every step.

    Shapes: obs ``[B, O]``, task ``[B]`` (long), x ``[B, H, A]``, t ``[]`` or ``[B]``.
    """

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, width: int = 128, depth: int = 3,
                 heads: int = 4, obs_tokens: int = 2, num_tasks: int = 0, time_embed: int = 64):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.encoder = ObsEncoder(obs_dim, width, obs_tokens, num_tasks)
        self.obs_blocks = nn.ModuleList(_Block(width, heads, kv_only=i == depth - 1) for i in range(depth))
        self.act_blocks = nn.ModuleList(_Block(width, heads) for _ in range(depth))
        self.embed_t = SinusoidalEmbedding(time_embed)
        self.in_action = nn.Linear(action_dim, width)
        self.action_time = nn.Sequential(nn.Linear(width + time_embed, width), nn.SiLU(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.randn(horizon, width) * 0.02)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, action_dim))

    def encode(self, obs: Tensor, task: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Observation -> per-layer (keys, values) of the observation tokens (the prefix cache)."""
        h = self.encoder(obs, task)
        cache = []
        for blk in self.obs_blocks:
            h, kv = blk(h)
            cache.append(kv)
        return cache

    def decode(self, x: Tensor, t: Tensor | float, cache: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Velocity ``[B, H, A]`` of the noisy chunk ``x`` at time ``t`` given the prefix cache."""
        h = fused_action_embedding(self.in_action, self.action_time, self.embed_t, self.pos, x, t)
        for blk, kv in zip(self.act_blocks, cache):
            h, _ = blk(h, kv)
        return self.out(h)

    def decoder(self, cache: list[tuple[Tensor, Tensor]]):
        """``(x, t) -> decode(x, t, cache)`` with the per-chunk work (folded embedding weights)
        done once here; for acting (frozen weights, no gradient)."""
        embed = action_embedder(self.in_action, self.action_time, self.embed_t, self.pos)
        return action_decoder(embed, self.act_blocks, self.out, cache, horizon=self.pos.shape[0])

    def forward(self, x: Tensor, t: Tensor | float, obs: Tensor, task: Tensor | None = None) -> Tensor:  # noqa: D102
        return self.decode(x, t, self.encode(obs, task))


class ActionMLP(nn.Module):
    """MLP action expert for tiny problems: ``[flatten(x), phi(t), e(obs)] -> [B, H, A]``.

    ``encode`` runs the observation MLP (and task embedding) once per chunk.
    """

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, width: int = 256, depth: int = 3,
                 num_tasks: int = 0, time_embed: int = 32):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.obs = nn.Sequential(nn.Linear(obs_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.task = nn.Embedding(num_tasks, width) if num_tasks else None
        self.embed_t = SinusoidalEmbedding(time_embed)
        layers: list[nn.Module] = []
        widths = [horizon * action_dim + time_embed + width] + [width] * depth
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(width, horizon * action_dim))
        self.net = nn.Sequential(*layers)

    def encode(self, obs: Tensor, task: Tensor | None = None) -> Tensor:
        """Observation -> ``[B, width]`` features (the cache)."""
        h = self.obs(obs)
        return h + self.task(task) if self.task is not None else h

    def decode(self, x: Tensor, t: Tensor | float, cache: Tensor) -> Tensor:
        """Velocity ``[B, H, A]``."""
        te = self.embed_t(batch_times(t, x))
        out = self.net(torch.cat([x.flatten(1), te, cache.expand(x.shape[0], -1)], -1))
        return out.view(x.shape)

    def forward(self, x: Tensor, t: Tensor | float, obs: Tensor, task: Tensor | None = None) -> Tensor:  # noqa: D102
        return self.decode(x, t, self.encode(obs, task))


NETS = {"transformer": ActionTransformer, "mlp": ActionMLP}


def make_net(kind: str, obs_dim: int, action_dim: int, horizon: int, num_tasks: int = 0, **kwargs) -> nn.Module:
    """An action expert by name: ``"transformer"`` (default) or ``"mlp"``."""
    if kind not in NETS:
        raise ValueError(f"net must be one of {tuple(NETS)}, got {kind!r}")
    return NETS[kind](obs_dim, action_dim, horizon, num_tasks=num_tasks, **kwargs)
