"""Glow for images: ``pf.build("glow", image_shape=(C, H, W))``.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions", with the
logit preprocessing and multi-scale factoring of Dinh et al. (2017), "Real NVP". The layers are
in :mod:`pushforward.transforms.glow`; this module adds the data units, the support and the
bits-per-dimension loss.

Example (sklearn's 8x8 digits, integer pixels 0..16):
    >>> import pushforward as pf, torch
    >>> from sklearn.datasets import load_digits              # doctest: +SKIP
    >>> x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None]  # [N, 1, 8, 8]  # doctest: +SKIP
    >>> model = pf.build("glow", image_shape=(1, 8, 8), num_bins=17)   # doctest: +SKIP
    >>> model.bits_per_dim(x).mean()                          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward.distributions import StandardNormal
from pushforward.flows.base import ImageFlow
from pushforward.registry import register
from pushforward.transforms.glow import ActNorm2d, MultiScaleGlow, default_levels
from pushforward.transforms.preprocess import Logit, ScaleToUnit, bits_per_dim, uniform_dequantize

__all__ = ["GlowFlow"]


def _check_image_shape(image_shape, dim: int | None, levels: int | None) -> tuple[tuple[int, int, int], int]:
    """``(image_shape, levels)`` checked against ``dim``, with the default number of levels."""
    if image_shape is None:
        raise ValueError(
            "glow is an image model: pass image_shape=(C, H, W), e.g. pf.build('glow', image_shape=(1, 8, 8))"
        )
    c, h, w = (int(s) for s in image_shape)
    if dim is not None and dim != c * h * w:
        raise ValueError(f"dim={dim} does not match image_shape={tuple(image_shape)} (C*H*W = {c * h * w})")
    if levels is None:
        levels = default_levels(h, w)
        if levels == 0:
            raise ValueError(f"glow needs even image height and width (each level squeezes by 2), got H={h}, W={w}")
    return (c, h, w), levels


@register("glow", "Glow (Kingma & Dhariwal 2018): multi-scale ActNorm + 1x1 conv + affine coupling image flow")
class GlowFlow(ImageFlow):
    """Glow over images ``[N, C, H, W]``, a density in the user's data units.

    **Data and units.** With ``num_bins = B`` (an integer), data are discrete levels
    ``k = 0..B-1``, given either as the numbers ``k`` (default) or, with ``unit_range=True``, as
    floats ``k / (B - 1)`` in ``[0, 1]`` (e.g. torchvision's ``ToTensor`` output with ``B=256``).
    Level ``k`` owns a bin of width ``w`` centred on it (``w = 1``, or ``1/(B-1)`` with
    ``unit_range``). With ``num_bins=None`` data are continuous in ``[0, 1]`` (no bins, no noise).

    The transform chain is ``x -> p = (x/w + 1/2)/B -> y = logit(alpha + (1-2alpha) p) -> Glow -> z``
    with ``z ~ N(0, I)``, so :meth:`log_prob` is the log-density (nats) of a continuous ``x``
    in the user's units, including every Jacobian. Integrated over a bin it gives the
    probability of the discrete image; ``log_prob`` at the integer levels themselves is the
    *mid-bin* value (deterministic, in train and eval mode), and ``-inf`` outside the support.

    **Training.** :meth:`loss` is the mean bits per dimension of the batch. In train mode
    (``model.train()``) it adds uniform dequantization noise ``U[-w/2, w/2)`` to every pixel,
    which makes it an unbiased estimate of an upper bound on the discrete code length
    (Theis et al., 2016); in eval mode it is the deterministic mid-bin value. The first training
    call of :meth:`loss` initialises ActNorm from its batch unless :meth:`initialize` ran.

    **Sampling.** :meth:`sample` returns images in data units clamped to ``[0, B-1]`` (or
    ``[0, 1]``); ``temperature`` scales the latent (Glow uses 0.7), ``quantize=True`` rounds to
    the levels.

    The defaults suit tiny images (8x8 digits train in CPU minutes).

    Args:
        image_shape: ``(C, H, W)``, required.
        context_dim: size of a conditioning vector, e.g. one-hot class labels (0: unconditional).
        dim: ``C * H * W`` (may be omitted; checked against ``image_shape`` when given).
        levels: number of squeeze levels; ``None``: as many as keep the last level at least 2x2,
            at most 3 (8x8 -> 2, 16x16 and 32x32 -> 3).
        steps_per_level: ActNorm/1x1-conv/coupling steps per level.
        hidden_channels: width of the coupling conv nets.
        split_prior: learned conditional prior for factored-out channels (as in Glow).
        scale_bound: bound on coupling/prior log-scales (see
            :class:`pushforward.transforms.glow.MultiScaleGlow`).
        num_bins: number of discrete levels ``B`` (256 for 8-bit images, 17 for sklearn digits),
            or ``None`` for continuous data in ``[0, 1]``.
        unit_range: data are ``k / (B - 1)`` floats in ``[0, 1]`` instead of integers ``k``.
        alpha: logit margin (Real NVP uses 0.05).
    """

    standardize_by_default = False

    def __init__(
        self, image_shape: Sequence[int] | None = None, context_dim: int = 0, *, dim: int | None = None,
        levels: int | None = None, steps_per_level: int = 4, hidden_channels: int = 64,
        num_bins: int | None = 256, unit_range: bool = False, alpha: float = 0.05, split_prior: bool = True,
        scale_bound: float = 2.0,
    ):
        image_shape, levels = _check_image_shape(image_shape, dim, levels)
        if num_bins is not None and (isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2):
            raise ValueError(f"num_bins must be an integer >= 2 (or None for continuous [0, 1] data), got {num_bins!r}")
        if unit_range and num_bins is None:
            raise ValueError("unit_range=True needs num_bins (the number of levels k / (num_bins - 1))")
        self.num_bins = num_bins
        self.unit_range = bool(unit_range) or num_bins is None
        if num_bins is None:
            self.bin_width, self.data_max = None, 1.0
        elif unit_range:
            self.bin_width, self.data_max = 1.0 / (num_bins - 1), 1.0
        else:
            self.bin_width, self.data_max = 1.0, float(num_bins - 1)
        chain = [] if num_bins is None else [ScaleToUnit(num_bins, self.bin_width)]
        chain += [
            Logit(alpha),
            MultiScaleGlow(image_shape, levels, steps_per_level, hidden_channels, context_dim, split_prior, scale_bound),
        ]
        super().__init__(chain, StandardNormal(image_shape), context_dim=context_dim)
        # Support of the density in user units: where alpha + (1 - 2 alpha) p lies in (0, 1).
        margin = alpha / (1 - 2 * alpha)
        if num_bins is None:
            self._support = (-margin, 1 + margin)
        else:
            lo_p, hi_p = -margin, 1 + margin
            self._support = (
                (lo_p * num_bins - 0.5) * self.bin_width,
                (hi_p * num_bins - 0.5) * self.bin_width,
            )


    def _check_range(self, x: Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        tol = 1e-6 * max(1.0, self.data_max)
        if lo < -tol or hi > self.data_max + tol:
            if self.num_bins is None:
                what = "continuous data in [0, 1] (num_bins=None)"
            elif self.unit_range:
                what = f"levels k/{self.num_bins - 1} in [0, 1] (num_bins={self.num_bins}, unit_range=True)"
            else:
                what = f"integer levels 0..{self.num_bins - 1} (num_bins={self.num_bins})"
            raise ValueError(
                f"data range [{lo:g}, {hi:g}] does not fit this glow model, which expects {what}; "
                "build it with num_bins matching your data (e.g. 17 for sklearn digits, 256 for 8-bit images)"
            )

    def _needs_init(self) -> bool:
        return any(isinstance(m, ActNorm2d) and not bool(m.initialized) for m in self.modules())

    # ------------------------------------------------------------------ model units
    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        lo, hi = self._support
        inside = ((x > lo) & (x < hi)).reshape(x.shape[0], -1).all(-1)
        # Evaluate a harmless point outside the support so no NaN reaches the graph.
        safe = torch.where(inside[:, None, None, None], x, torch.full_like(x, 0.5 * self.data_max))
        lp = super()._log_prob(safe, context)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def _dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.num_bins is None or not self.training:
            return x
        return uniform_dequantize(x, self.bin_width, generator)

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        self._check_range(x)
        x = self._dequantize(x)
        if self.training and self._needs_init():
            self.transform.initialize(x, context)
        lp = self._log_prob(x, context)
        return bits_per_dim(lp, self.num_dims, self.bin_width or 1.0).mean()

    def _sample(
        self,
        n: int,
        context: Tensor | None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        quantize: bool = False,
    ) -> Tensor:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        z = self.base.sample(n, context, generator) * temperature
        x, _ = self.transform.inverse(z, context)
        x = x.clamp(0.0, self.data_max)
        if quantize and self.num_bins is not None:
            x = torch.round(x / self.bin_width) * self.bin_width
        return x

    # ------------------------------------------------------------------ user units
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """ActNorm data-dependent initialisation from a batch ``[N, C, H, W]`` in data units."""
        x = self._check_x(x)
        context = self._check_context(context, x.shape[0])
        x = self.standardize(x)
        self._check_range(x)
        self.transform.initialize(self._dequantize(x), context)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_bins={self.num_bins}, unit_range={self.unit_range}"
