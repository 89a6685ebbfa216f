"""A small time-conditioned U-Net for image fields (velocity, score, noise) on small images.

Ronneberger et al. 2015 (U-Net) with the diffusion-model additions of Ho et al. 2020: residual
blocks with GroupNorm and SiLU, a sinusoidal time embedding (plus an optional context vector)
added to every block as a per-channel scale and shift (FiLM, Perez et al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.nets.time import SinusoidalEmbedding, batch_times


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """``x + conv(silu(film(norm(conv(silu(norm(x)))), emb)))`` with a 1x1 skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # noqa: D102
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class UNet(nn.Module):
    """Two-level U-Net ``f(x, t, context) -> [N, out_channels, H, W]`` for small images (e.g. 8x8).

    Args:
        channels: input channels C. out_channels: output channels (default C).
        context_dim: conditioning size (0: none); the context is embedded and added to the
            time embedding.
        width: channels of the first level (the second has ``2 * width``).
        time_embed: size of the sinusoidal time embedding. time_scale: its ``scale`` (as TimeMLP's).
    Shapes: x ``[N, C, H, W]`` (any H, W), t ``[]`` or ``[N]``, context ``[N, context_dim]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, context_dim: int = 0,
                 width: int = 32, time_embed: int = 64, time_scale: float = 100.0):
        super().__init__()
        emb = 4 * width
        self.context_dim = context_dim
        self.t_embed = nn.Sequential(SinusoidalEmbedding(time_embed, scale=time_scale), nn.Linear(time_embed, emb),
                                     nn.SiLU(), nn.Linear(emb, emb))
        self.c_embed = nn.Linear(context_dim, emb) if context_dim else None
        w1, w2 = width, 2 * width
        self.inp = nn.Conv2d(channels, w1, 3, padding=1)
        self.down1 = ResBlock(w1, w1, emb)
        self.downsample = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.down2 = ResBlock(w2, w2, emb)
        self.mid = ResBlock(w2, w2, emb)
        self.up2 = ResBlock(2 * w2, w2, emb)
        self.up1 = ResBlock(w2 + w1, w1, emb)
        self.out = nn.Sequential(nn.GroupNorm(_groups(w1), w1), nn.SiLU(), nn.Conv2d(w1, out_channels or channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:  # noqa: D102
        e = self.t_embed(batch_times(t, x))
        if self.c_embed is not None and context is not None:
            e = e + self.c_embed(context)
        e = F.silu(e)
        h1 = self.down1(self.inp(x), e)
        h2 = self.down2(self.downsample(h1), e)
        h = self.mid(h2, e)
        h = self.up2(torch.cat([h, h2], 1), e)
        h = F.interpolate(h, size=h1.shape[-2:], mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), e)
        return self.out(h)
