"""Glow: a multi-scale image flow of ActNorm, invertible 1x1 convolutions and affine couplings.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions"; the
multi-scale architecture (squeeze, factor out half the channels per level) is from Dinh et al.
(2017), "Density estimation using Real NVP".

All transforms act on images ``[N, C, H, W]`` and map data -> latent (the normalizing
direction), returning ``(z, log|det dz/dx|)`` with ``log|det|`` of shape ``[N]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward._validate import check_positive_int
from pushforward.transforms.base import Compose, Transform, sum_except_batch

__all__ = [
    "ActNorm2d",
    "AffineCoupling2d",
    "GlowStep",
    "InvertibleConv1x1",
    "MultiScaleGlow",
    "SplitPrior",
    "Squeeze",
    "default_levels",
    "squeeze2d",
    "unsqueeze2d",
]


def _check_image(x: Tensor, channels: int | None, who: str) -> None:
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else str(channels)
        raise ValueError(f"{who} expects images of shape [N, {c}, H, W], got {list(x.shape)}")


def _soft_clamp(raw: Tensor, bound: float) -> Tensor:
    # Identity near 0 (so zero-initialised nets give the identity map), bounded by +-bound so
    # a scale can never overflow: the usual cause of NaN/inf in coupling flows.
    return bound * torch.tanh(raw / bound)


def _context_planes(h: Tensor, context: Tensor | None, context_dim: int) -> Tensor:
    """Append a context vector ``[N, K]`` to ``h`` as ``K`` constant feature planes."""
    if context_dim == 0:
        return h
    if context is None:
        raise ValueError(f"this layer is conditional: context of shape [N, {context_dim}] is required")
    if context.dim() != 2 or context.shape != (h.shape[0], context_dim):
        raise ValueError(f"context must have shape [{h.shape[0]}, {context_dim}], got {list(context.shape)}")
    planes = context.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
    return torch.cat([h, planes], dim=1)


# --------------------------------------------------------------------------- squeeze
def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth: ``[N, C, H, W] -> [N, 4C, H/2, W/2]``.

    Output channel ``4c + 2i + j`` holds pixel ``(2h + i, 2w + j)`` of input channel ``c``.
    """
    _check_image(x, None, "squeeze2d")
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got H={h}, W={w} (shape {list(x.shape)})")
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze2d(z: Tensor) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze2d`: ``[N, 4C, H, W] -> [N, C, 2H, 2W]``."""
    _check_image(z, None, "unsqueeze2d")
    n, c4, h, w = z.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {c4} (shape {list(z.shape)})")
    z = z.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(n, c4 // 4, 2 * h, 2 * w)


class Squeeze(Transform):
    """Space-to-depth ``[N, C, H, W] -> [N, 4C, H/2, W/2]``, a permutation: log-det 0.

    Trades spatial size for channels so that channel-wise couplings can mix neighbouring
    pixels (Dinh et al., 2017, section 3.6). Odd ``H`` or ``W`` raise ``ValueError``.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unsqueeze2d(z), z.new_zeros(z.shape[0])


# --------------------------------------------------------------------------- actnorm
class ActNorm2d(Transform):
    """Per-channel affine normalisation ``z = (x - b) * exp(-s)`` (Glow, section 3.1).

    ``log|det| = -H W sum_c s_c``. :meth:`initialize` sets ``b`` and ``exp(s)`` to the
    per-channel mean and standard deviation of a first batch, so that post-ActNorm activations
    start with zero mean and unit variance; the ``initialized`` buffer is saved in the state
    dict, so a reloaded model is never re-initialised.

    Args:
        num_channels: ``C``.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = int(num_channels)
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _ladj(self, x: Tensor) -> Tensor:
        return (-x.shape[2] * x.shape[3] * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(x, self.num_channels, "ActNorm2d")
        z = (x - self.loc[:, None, None]) * torch.exp(-self.log_scale)[:, None, None]
        return z, self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(z, self.num_channels, "ActNorm2d")
        x = z * torch.exp(self.log_scale)[:, None, None] + self.loc[:, None, None]
        return x, -self._ladj(z)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Set ``b``, ``s`` from the batch statistics of ``x`` ``[N, C, H, W]``; returns ``z``."""
        _check_image(x, self.num_channels, "ActNorm2d")
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), unbiased=False) if x[:, 0].numel() > 1 else torch.ones_like(mean)
        self.loc.copy_(mean)
        self.log_scale.copy_(torch.log(std + self.eps))
        self.initialized.fill_(True)
        return self(x, context)[0]

    def extra_repr(self) -> str:
        return f"{self.num_channels}, initialized={bool(self.initialized)}"


# --------------------------------------------------------------------------- 1x1 conv
class InvertibleConv1x1(Transform):
    """Invertible 1x1 convolution ``z_{:,h,w} = W x_{:,h,w}`` in LU form (Glow, section 3.2).

    ``W = P L (U + diag(sign * exp(log_s)))`` with ``P`` a fixed permutation, ``L`` unit lower
    triangular, ``U`` strictly upper triangular, and fixed signs; initialised at a random
    rotation. ``log|det| = H W sum(log_s)``: O(C) instead of O(C^3).

    Args:
        num_channels: ``C``.
        generator: optional ``torch.Generator`` for the random initial rotation.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_channels: int, generator: torch.Generator | None = None):
        super().__init__()
        c = int(num_channels)
        self.num_channels = c
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        """The ``[C, C]`` matrix ``W`` (``z = W x`` at every pixel)."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W^{-1} = U^{-1} L^{-1} P^T`` by two triangular solves."""
        lower, upper = self._factors()
        eye = torch.eye(self.num_channels, dtype=lower.dtype, device=lower.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.perm.T

    def _ladj(self, x: Tensor) -> Tensor:
        return (x.shape[2] * x.shape[3] * self.log_s.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(x, self.num_channels, "InvertibleConv1x1")
        w = self.weight().to(x.dtype)
        return F.conv2d(x, w[:, :, None, None]), self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(z, self.num_channels, "InvertibleConv1x1")
        w = self.inverse_weight().to(z.dtype)
        return F.conv2d(z, w[:, :, None, None]), -self._ladj(z)

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


# --------------------------------------------------------------------------- coupling
def _conv_net(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    """3x3 -> ReLU -> 1x1 -> ReLU -> 3x3 (zero-initialised: the layer starts as the identity)."""
    last = nn.Conv2d(hidden, out_ch, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


class AffineCoupling2d(Transform):
    """Channel-split affine coupling (Glow, section 3.3; Real NVP).

    ``x = [x_a, x_b]`` split along channels (``C_a = C // 2``); ``(t, r) = NN([x_a, c])``;
    ``z_a = x_a``, ``z_b = x_b * exp(log_s) + t`` with the bounded log-scale
    ``log_s = B tanh(r / B)``, ``log|det| = sum log_s``. The net's last layer is
    zero-initialised, so the layer starts as the identity, and ``|log_s| < B`` always.
    A context ``[N, K]`` (e.g. one-hot class labels) enters the net as ``K`` constant planes.

    Args:
        num_channels: ``C >= 2``.
        hidden_channels: width of the conditioner net.
        context_dim: ``K`` (0: unconditional).
        scale_bound: ``B``, the bound on ``|log_s|``.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_channels: int, hidden_channels: int = 64, context_dim: int = 0, scale_bound: float = 2.0):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"AffineCoupling2d needs at least 2 channels to split, got {num_channels}; "
                             "squeeze the image first")
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound!r}")
        self.num_channels = int(num_channels)
        self.context_dim = int(context_dim)
        self.scale_bound = float(scale_bound)
        self.split = num_channels // 2
        out = num_channels - self.split
        self.net = _conv_net(self.split + context_dim, hidden_channels, 2 * out)

    def _params(self, xa: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self.net(_context_planes(xa, context, self.context_dim)).chunk(2, dim=1)
        return shift, _soft_clamp(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(x, self.num_channels, "AffineCoupling2d")
        xa, xb = x[:, : self.split], x[:, self.split :]
        shift, log_s = self._params(xa, context)
        return torch.cat([xa, xb * torch.exp(log_s) + shift], dim=1), sum_except_batch(log_s)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(z, self.num_channels, "AffineCoupling2d")
        za, zb = z[:, : self.split], z[:, self.split :]
        shift, log_s = self._params(za, context)
        return torch.cat([za, (zb - shift) * torch.exp(-log_s)], dim=1), -sum_except_batch(log_s)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, context_dim={self.context_dim}, scale_bound={self.scale_bound:g}"


class GlowStep(Compose):
    """One step of flow: ActNorm2d -> InvertibleConv1x1 -> AffineCoupling2d (Glow, figure 2a)."""

    def __init__(self, num_channels: int, hidden_channels: int = 64, context_dim: int = 0, scale_bound: float = 2.0):
        super().__init__(
            ActNorm2d(num_channels),
            InvertibleConv1x1(num_channels),
            AffineCoupling2d(num_channels, hidden_channels, context_dim, scale_bound),
        )


# --------------------------------------------------------------------------- split prior
class SplitPrior(nn.Module):
    """Learned conditional prior of factored-out channels, as an affine normalisation.

    Glow models the channels ``z_o`` split off after a level as ``N(mu(h), exp(log_sigma(h))^2)``
    given the channels ``h`` that continue (and the context). Here this is the bijection
    ``u = (z_o - mu) * exp(-log_sigma)`` followed by the N(0, I) base: the same density, with the
    model's base staying standard normal. ``log|det| = -sum log_sigma`` with
    ``log_sigma = B tanh(r / B)``; the conv is zero-initialised (starts as N(0, I)).

    Shapes: ``forward(z_o [N, C_o, H, W], h [N, C_h, H, W], context) -> (u, [N])``.
    """

    def __init__(self, out_channels: int, cond_channels: int, context_dim: int = 0, scale_bound: float = 2.0):
        super().__init__()
        self.context_dim = int(context_dim)
        self.scale_bound = float(scale_bound)
        self.conv = nn.Conv2d(cond_channels + context_dim, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _params(self, h: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mu, raw = self.conv(_context_planes(h, context, self.context_dim)).chunk(2, dim=1)
        return mu, _soft_clamp(raw, self.scale_bound)

    def forward(self, zo: Tensor, h: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(h, context)
        return (zo - mu) * torch.exp(-log_sigma), -sum_except_batch(log_sigma)

    def inverse(self, u: Tensor, h: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(h, context)
        return u * torch.exp(log_sigma) + mu, sum_except_batch(log_sigma)


class _TopPrior(nn.Module):
    """Class-conditional prior on the last level's latent (Glow's y-conditioning), as an affine
    normalisation per channel driven by the context; zero-initialised."""

    def __init__(self, channels: int, context_dim: int, scale_bound: float):
        super().__init__()
        self.scale_bound = float(scale_bound)
        self.linear = nn.Linear(context_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def _params(self, h: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.linear(context.to(h.dtype)).chunk(2, dim=1)
        log_sigma = _soft_clamp(raw, self.scale_bound)
        return mu[:, :, None, None], log_sigma[:, :, None, None].expand_as(h)

    def forward(self, h: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(h, context)
        return (h - mu) * torch.exp(-log_sigma), -sum_except_batch(log_sigma)

    def inverse(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(u, context)
        return u * torch.exp(log_sigma) + mu, sum_except_batch(log_sigma)


# --------------------------------------------------------------------------- multi-scale
def default_levels(height: int, width: int, max_levels: int = 3) -> int:
    """Most levels (at most ``max_levels``) such that ``H / 2^L`` and ``W / 2^L`` are integers >= 2.

    1x8x8 -> 2, 1x16x16 -> 3, 3x32x32 -> 3. Returns 0 when ``H`` or ``W`` is odd.
    """
    levels = 0
    h, w = height, width
    while levels < max_levels and h % 2 == 0 and w % 2 == 0 and h // 2 >= 2 and w // 2 >= 2:
        h, w, levels = h // 2, w // 2, levels + 1
    if levels == 0 and height % 2 == 0 and width % 2 == 0:
        levels = 1  # 2xW images: one level down to 1 pixel high
    return levels


class MultiScaleGlow(Transform):
    """Glow's multi-scale architecture as a single image-shaped bijection ``x -> z``.

    For each of ``L`` levels: squeeze (``C -> 4C``, ``H, W -> H/2, W/2``), ``K`` steps of flow
    (:class:`GlowStep`), then, except after the last level, split off half the channels, which
    leave the flow (normalised by a learned :class:`SplitPrior` conditioned on the other half,
    as in Glow) while the other half continues to the next level.

    **Latent layout.** ``z`` has the input's shape ``[N, C, H, W]``: the pieces are put back
    with the inverse squeezes, level by level (``z = unsqueeze([z_next_level, z_split])`` per
    level), so ``z`` is a fixed permutation of the concatenated latents and its base is
    ``N(0, I)`` over ``[C, H, W]``. Spatial position in ``z`` approximately follows the image.

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
        levels: ``L >= 1``.
        steps_per_level: ``K >= 1``.
        hidden_channels: width of the coupling nets.
        context_dim: size of a conditioning vector (couplings, split priors and a class-conditional
            top prior read it); 0: unconditional.
        split_prior: learn Glow's conditional prior for split-off channels (else they are N(0, I)).
        scale_bound: bound on every log-scale in couplings and priors.

    Shapes: ``[N, C, H, W] -> ([N, C, H, W], [N])``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        context_dim: int = 0,
        split_prior: bool = True,
        scale_bound: float = 2.0,
    ):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        check_positive_int(levels, "levels")
        check_positive_int(steps_per_level, "steps_per_level")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"image height and width must be divisible by 2**levels = {2**levels} "
                f"(each level squeezes by 2), got H={h}, W={w} with levels={levels}"
            )
        self.image_shape = (c, h, w)
        self.context_dim = int(context_dim)
        self.num_levels = levels
        self.steps = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.keep: list[int] = []
        for i in range(levels):
            c *= 4
            self.steps.append(
                Compose([GlowStep(c, hidden_channels, context_dim, scale_bound) for _ in range(steps_per_level)])
            )
            if i < levels - 1:
                keep = c // 2
                self.keep.append(keep)
                self.priors.append(
                    SplitPrior(c - keep, keep, context_dim, scale_bound) if split_prior else nn.Identity()
                )
                c = keep
        self.top = _TopPrior(c, context_dim, scale_bound) if context_dim else None

    def _check_event(self, x: Tensor, what: str) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(str(s) for s in self.image_shape)
            raise ValueError(f"MultiScaleGlow expects {what} of shape [N, {expected}], got {list(x.shape)}")

    def _run(self, x: Tensor, context: Tensor | None, init: bool) -> tuple[Tensor, Tensor]:
        self._check_event(x, "images")
        ladj, outs, h = x.new_zeros(x.shape[0]), [], x
        for i in range(self.num_levels):
            h = squeeze2d(h)
            if init:
                h = self.steps[i].initialize(h, context)
            else:
                h, dl = self.steps[i](h, context)
                ladj = ladj + dl
            if i < self.num_levels - 1:
                h, zo = h[:, : self.keep[i]], h[:, self.keep[i] :]
                if isinstance(self.priors[i], SplitPrior):
                    zo, dl = self.priors[i](zo, h, context)
                    ladj = ladj + dl
                outs.append(zo)
        if self.top is not None:
            h, dl = self.top(h, context)
            ladj = ladj + dl
        z = h
        for i in reversed(range(self.num_levels)):
            if i < self.num_levels - 1:
                z = torch.cat([z, outs[i]], dim=1)
            z = unsqueeze2d(z)
        return z, ladj

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(x, context, init=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_event(z, "latents")
        ladj, outs, h = z.new_zeros(z.shape[0]), [], z
        for i in range(self.num_levels):
            h = squeeze2d(h)
            if i < self.num_levels - 1:
                h, zo = h[:, : self.keep[i]], h[:, self.keep[i] :]
                outs.append(zo)
        if self.top is not None:
            h, dl = self.top.inverse(h, context)
            ladj = ladj + dl
        for i in reversed(range(self.num_levels)):
            if i < self.num_levels - 1:
                zo = outs[i]
                if isinstance(self.priors[i], SplitPrior):
                    zo, dl = self.priors[i].inverse(zo, h, context)
                    ladj = ladj + dl
                h = torch.cat([h, zo], dim=1)
            h, dl = self.steps[i].inverse(h, context)
            ladj = ladj + dl
            h = unsqueeze2d(h)
        return h, ladj

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Data-dependent ActNorm initialisation on a batch ``[N, C, H, W]``; returns ``z``."""
        self._run(x, context, init=True)
        return self(x, context)[0]

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, levels={self.num_levels}, context_dim={self.context_dim}"

