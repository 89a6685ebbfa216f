"""TarFlow for images: ``pf.build("tarflow", image_shape=(C, H, W))`` (Zhai et al. 2025,
"Normalizing Flows are Capable Generative Models").

A stack of :class:`pushforward.transforms.tarflow.TarFlowBlock` (causal transformers over
patches, alternating token order) after the affine map of the data onto ``[-1, 1]``, over
``N(0, I)``. Training adds Gaussian noise of std ``noise_std`` (in the ``[-1, 1]`` units) on top of
uniform dequantization; sampling inverts the blocks token by token with a key/value cache and
then denoises with the flow's own score (Tweedie's formula ``y + sigma^2 grad log p(y)``).
Class-conditional models (``context_dim > 0``, e.g. one-hot labels) are trained with the
context dropped to the null vector (zeros) with probability ``p_uncond``, which enables
classifier-free ``guidance`` at sampling.

Example (sklearn's 8x8 digits, integer pixels 0..16):
    >>> import pushforward as pf
    >>> model = pf.build("tarflow", image_shape=(1, 8, 8), num_bins=17)
    >>> model.sample(2).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward._validate import check_int_range, check_positive_float, check_positive_int
from pushforward.distributions import StandardNormal
from pushforward.flows.base import ImageFlow
from pushforward.registry import register
from pushforward.transforms.base import FixedAffine
from pushforward.transforms.preprocess import bits_per_dim, uniform_dequantize
from pushforward.transforms.tarflow import TarFlowBlock

__all__ = ["TarFlow"]


@register("tarflow", "TarFlow (Zhai et al. 2025): causal-transformer autoregressive flow over image patches")
class TarFlow(ImageFlow):
    """TarFlow over images ``[N, C, H, W]``, a density in the user's data units.

    **Data.** As :class:`pushforward.flows.GlowFlow`: with ``num_bins = B`` data are levels
    ``0..B-1`` (or ``k / (B-1)`` with ``unit_range``), ``num_bins=None`` continuous ``[0, 1]``.
    They are mapped affinely onto ``[-1, 1]`` (``y = 2 x / x_max - 1``, its Jacobian included),
    so :meth:`log_prob` is a density on ``R^D`` in data units (no bounded support).

    **Training.** :meth:`loss` is the mean bits per dimension; in train mode it adds uniform
    dequantization noise and Gaussian noise ``noise_std * eps`` in the ``[-1, 1]`` units (the
    TarFlow recipe: the flow models the slightly smoothed data, which its samples are then
    denoised from). With a context, each row's context is replaced by zeros with probability
    ``p_uncond``.

    **Sampling.** :meth:`sample` (``temperature``, ``guidance``, ``cache``, ``denoise``,
    ``quantize``) returns images clamped to the data range.

    Args:
        image_shape: ``(C, H, W)``, required. context_dim: conditioning size (0: unconditional).
        dim: ``C * H * W`` (checked when given).
        patch_size: patch side ``p`` (divides ``H`` and ``W``).
        blocks: number of TarFlow blocks (token order alternates). layers: causal layers per block.
        width: transformer width. heads: attention heads.
        num_bins, unit_range: the data's levels (see above).
        noise_std: training noise std in ``[-1, 1]`` units (0: none; then no denoising).
        p_uncond: context dropout probability for classifier-free guidance.
        scale_bound: bound on the per-token log-scales.
    """

    standardize_by_default = False

    def __init__(
        self, image_shape: Sequence[int] | None = None, context_dim: int = 0, *, dim: int | None = None,
        patch_size: int = 2, blocks: int = 4, layers: int = 2, width: int = 64, heads: int = 4,
        num_bins: int | None = 256, unit_range: bool = False, noise_std: float = 0.05, p_uncond: float = 0.1,
        scale_bound: float = 3.0,
    ):
        if image_shape is None:
            raise ValueError("tarflow is an image model: pass image_shape=(C, H, W), "
                             "e.g. pf.build('tarflow', image_shape=(1, 8, 8))")
        c, h, w = (int(s) for s in image_shape)
        if dim is not None and dim != c * h * w:
            raise ValueError(f"dim={dim} does not match image_shape={tuple(image_shape)} (C*H*W = {c * h * w})")
        if num_bins is not None:
            check_int_range(num_bins, "num_bins", 2)
        if unit_range and num_bins is None:
            raise ValueError("unit_range=True needs num_bins (the number of levels k / (num_bins - 1))")
        check_positive_int(blocks, "blocks")
        self.noise_std = check_positive_float(noise_std, "noise_std", allow_zero=True)
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond!r}")
        self.p_uncond = float(p_uncond)
        self.num_bins = num_bins
        self.unit_range = bool(unit_range) or num_bins is None
        if num_bins is None:
            self.bin_width, self.data_max = None, 1.0
        elif unit_range:
            self.bin_width, self.data_max = 1.0 / (num_bins - 1), 1.0
        else:
            self.bin_width, self.data_max = 1.0, float(num_bins - 1)
        half = torch.tensor(self.data_max / 2)
        chain = [FixedAffine(half, half)] + [
            TarFlowBlock((c, h, w), patch_size, width, layers, heads, reverse=bool(i % 2), context_dim=context_dim,
                         scale_bound=scale_bound)
            for i in range(blocks)
        ]
        super().__init__(chain, StandardNormal((c, h, w)), context_dim=context_dim)


    def _check_range(self, x: Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        tol = 1e-6 * max(1.0, self.data_max)
        if lo < -tol or hi > self.data_max + tol:
            raise ValueError(f"data range [{lo:g}, {hi:g}] does not fit this tarflow model, which expects values "
                             f"in [0, {self.data_max:g}]; build it with num_bins/unit_range matching your data")

    # ------------------------------------------------------------------ training
    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        self._check_range(x)
        if self.training:
            if self.num_bins is not None:
                x = uniform_dequantize(x, self.bin_width)
            if self.noise_std:
                # noise_std is in the [-1, 1] units: data_max / 2 per unit in data units.
                x = x + (self.noise_std * self.data_max / 2) * torch.randn_like(x)
            if context is not None and self.p_uncond > 0:
                keep = torch.rand(context.shape[0], 1, device=context.device) >= self.p_uncond
                context = context * keep.to(context.dtype)
        lp = self._log_prob(x, context)
        return bits_per_dim(lp, self.num_dims, self.bin_width or 1.0).mean()

    # ------------------------------------------------------------------ sampling
    def _latent_log_prob(self, y: Tensor, context: Tensor | None) -> Tensor:
        """``log p(y)`` for ``y`` in the ``[-1, 1]`` units (the blocks only)."""
        total = y.new_zeros(y.shape[0])
        for block in list(self.transform)[1:]:
            y, ladj = block(y, context)
            total = total + ladj
        return self.base.log_prob(y) + total

    def denoise(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Tweedie's denoiser ``y + sigma^2 grad_y log p(y)`` in the ``[-1, 1]`` units (``[N, C, H, W]``)."""
        if not self.noise_std:
            return y
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(self._latent_log_prob(yg, context).sum(), yg)
        return y + self.noise_std**2 * score

    def _sample(
        self, n: int, context: Tensor | None, generator: torch.Generator | None = None, temperature: float = 1.0,
        guidance: float = 0.0, cache: bool = True, denoise: bool = True, quantize: bool = False,
    ) -> Tensor:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        y = self.base.sample(n, context, generator) * temperature
        for block in reversed(list(self.transform)[1:]):
            y, _ = block.inverse(y, context, cache=cache, guidance=guidance)
        if denoise:
            y = self.denoise(y, context)
        x, _ = self.transform[0].inverse(y)
        x = x.clamp(0.0, self.data_max)
        if quantize and self.num_bins is not None:
            x = torch.round(x / self.bin_width) * self.bin_width
        return x

    def _sample_and_log_prob(self, n, context, generator=None) -> tuple[Tensor, Tensor]:
        z = self.base.sample(n, context, generator)
        x, ladj = self.transform.inverse(z, context)
        return x, self.base.log_prob(z, context) - ladj

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_bins={self.num_bins}, noise_std={self.noise_std}"
