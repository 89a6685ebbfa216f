"""TarFlow blocks: affine autoregressive flows over image patches with a causal transformer
(Zhai et al. 2025, "Normalizing Flows are Capable Generative Models").

An image ``[N, C, H, W]`` becomes ``T = (H/p)(W/p)`` patch tokens of size ``P = C p^2``; in a
block (optionally in reversed token order) token ``t`` is mapped by an affine function of the
tokens before it::

    z_t = (x_t - mu_t(x_{<t})) * exp(-alpha_t(x_{<t})),      log|det J| = -sum_t alpha_t

where ``(mu_t, alpha_t)`` is the transformer's output at position ``t - 1`` (token 0 passes
unchanged in that block; the next block, in the other direction, transforms it). Density
evaluation is one parallel causal pass; the inverse is sequential over tokens, and a key/value
cache makes each step attend to the stored keys of the earlier tokens instead of recomputing the
prefix (``T`` single-token steps instead of ``T`` growing passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward._validate import check_int_range, check_positive_float, check_positive_int
from pushforward.transforms.base import Transform
from pushforward.transforms.elementwise import soft_clamp


def patchify(x: Tensor, p: int) -> Tensor:
    """``[N, C, H, W] -> [N, (H/p)(W/p), C p^2]`` tokens in raster order."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(t: Tensor, shape: tuple[int, int, int], p: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[N, T, C p^2] -> [N, C, H, W]``."""
    c, h, w = shape
    n = t.shape[0]
    t = t.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(n, c, h, w)


class CausalLayer(nn.Module):
    """Pre-norm transformer layer with causal self-attention and an optional key/value cache.

    ``forward(h [N, L, W], cache=None)``: causal attention over the ``L`` positions. With a
    ``cache`` dict, ``h`` holds the *next* positions (one at a time in sampling): their keys and
    values are appended to the cache and they attend to every cached position.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: Tensor, cache: dict | None = None) -> Tensor:
        n, length, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(n, length, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if length != 1:
                raise ValueError(f"a cached step takes one new position at a time, got {length}")
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
            o = F.scaled_dot_product_attention(q, k, v)  # the new position may see every cached one
        h = h + self.proj(o.transpose(1, 2).reshape(n, length, w))
        return h + self.mlp(self.norm2(h))


class TarFlowBlock(Transform):
    """One TarFlow block on images ``[N, C, H, W]`` (Zhai et al. 2025).

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: ``p``.
        width: transformer width. layers: causal layers. heads: attention heads (divide ``width``).
        reverse: process the tokens in reversed raster order (blocks alternate).
        context_dim: size C of a context ``[N, C]`` (e.g. one-hot classes), embedded and added to
            every token; the zero vector is the "null" context of classifier-free guidance.
        scale_bound: bound on ``|alpha_t|`` (soft clamp).

    The output projection starts at zero, so a block starts at the identity.
    Shapes: ``x [N, C, H, W]`` -> ``(z [N, C, H, W], logabsdet [N])``.
    """

    def __init__(self, image_shape, patch_size: int = 2, width: int = 64, layers: int = 2, heads: int = 4,
                 reverse: bool = False, context_dim: int = 0, scale_bound: float = 3.0):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        p = check_positive_int(patch_size, "patch_size")
        if h % p or w % p:
            raise ValueError(f"image height and width must be divisible by patch_size={p}, got H={h}, W={w}")
        width = check_positive_int(width, "width")
        heads = check_int_range(heads, "heads", 1)
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.image_shape, self.patch_size = (c, h, w), p
        self.tokens, self.token_dim = (h // p) * (w // p), c * p * p
        self.reverse, self.context_dim = bool(reverse), int(context_dim)
        self.scale_bound = check_positive_float(scale_bound, "scale_bound")
        self.inp = nn.Linear(self.token_dim, width)
        self.pos = nn.Parameter(0.02 * torch.randn(self.tokens, width))
        self.ctx = nn.Linear(self.context_dim, width) if self.context_dim else None
        self.layers = nn.ModuleList(CausalLayer(width, heads) for _ in range(check_positive_int(layers, "layers")))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2 * self.token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # ------------------------------------------------------------------ tokens
    def _tokens(self, x: Tensor) -> Tensor:
        t = patchify(x, self.patch_size)
        return t.flip(1) if self.reverse else t

    def _image(self, t: Tensor) -> Tensor:
        return unpatchify(t.flip(1) if self.reverse else t, self.image_shape, self.patch_size)

    def _embed(self, tok: Tensor, start: int, context: Tensor | None) -> Tensor:
        h = self.inp(tok) + self.pos[start : start + tok.shape[1]]
        if self.ctx is not None:
            if context is None:
                raise ValueError(f"this TarFlow block needs a context [N, {self.context_dim}]")
            h = h + self.ctx(context)[:, None]
        return h

    def _head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, a = self.out(self.norm(h)).chunk(2, -1)
        return mu, soft_clamp(a, self.scale_bound)

    def params(self, tok: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)`` ``[N, T, P]`` for every token of ``tok [N, T, P]`` (zeros for token 0)."""
        h = self._embed(tok[:, :-1], 0, context)
        for layer in self.layers:
            h = layer(h)
        mu, alpha = self._head(h)
        pad = mu.new_zeros(mu.shape[0], 1, mu.shape[2])
        return torch.cat([pad, mu], 1), torch.cat([pad, alpha], 1)

    # ------------------------------------------------------------------ transform
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        tok = self._tokens(x)
        mu, alpha = self.params(tok, context)
        z = (tok - mu) * torch.exp(-alpha)
        return self._image(z), -alpha.sum((1, 2))

    def inverse(self, z: Tensor, context: Tensor | None = None, *, cache: bool = True, guidance: float = 0.0,
                null_context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequential inverse over tokens.

        Args:
            cache: use the key/value cache (``False``: recompute the prefix at every step; the
                same result, kept as the reference).
            guidance: classifier-free guidance weight ``w``: ``mu = mu_c + w (mu_c - mu_u)``
                and likewise ``alpha`` (Zhai et al. 2025, section 2.5), with ``mu_u`` under
                ``null_context`` (default zeros). The log-det returned is that of the guided map.
        """
        zt = self._tokens(z)
        n = zt.shape[0]
        guided = guidance != 0.0
        if guided:
            if self.ctx is None or context is None:
                raise ValueError("guidance needs a conditional model (context_dim > 0) and a context")
            null = torch.zeros_like(context) if null_context is None else null_context.expand_as(context)
            context = torch.cat([context, null])
        caches = [{} for _ in self.layers] if cache else None
        xs = [zt[:, 0]]
        ladj = zt.new_zeros(n)
        for t in range(1, self.tokens):
            if cache:
                tok = xs[-1][:, None]
                h = self._embed(torch.cat([tok, tok]) if guided else tok, t - 1, context)
                for layer, c in zip(self.layers, caches):
                    h = layer(h, c)
            else:
                tok = torch.stack(xs, 1)
                h = self._embed(torch.cat([tok, tok]) if guided else tok, 0, context)
                for layer in self.layers:
                    h = layer(h)
            mu, alpha = self._head(h[:, -1])
            if guided:
                (mu_c, mu_u), (a_c, a_u) = mu.chunk(2), alpha.chunk(2)
                mu, alpha = mu_c + guidance * (mu_c - mu_u), a_c + guidance * (a_c - a_u)
            xs.append(zt[:, t] * torch.exp(alpha) + mu)
            ladj = ladj + alpha.sum(-1)
        return self._image(torch.stack(xs, 1)), ladj

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, patch_size={self.patch_size}, tokens={self.tokens}, "
                f"reverse={self.reverse}, context_dim={self.context_dim}")
