"""Preprocessing for discrete (integer-valued) image data: dequantization, scaling, logit.

Units used throughout (and by :class:`pushforward.flows.GlowFlow`):

* **Bin units.** A pixel with integer value ``k`` in ``{0, ..., num_bins - 1}`` owns the bin
  ``[k - 1/2, k + 1/2)`` of width 1: integers sit at bin centres. Uniform dequantization adds
  ``u ~ U[-1/2, 1/2)``, so the dequantized value ``v = k + u`` lives in ``[-1/2, num_bins - 1/2)``.
  A density ``p(v)`` in these units integrates over a bin to a probability, and by Jensen
  ``E_u[log p(k + u)] <= log P(k)`` (Theis et al., 2016, "A note on the evaluation of generative
  models"; Uria et al., 2013): the dequantized log-density is a lower bound on the discrete
  log-likelihood, in nats.
* **Unit interval.** :class:`ScaleToUnit` maps bin units to ``p = (v + 1/2) / num_bins`` in
  ``[0, 1)``; :class:`Logit` maps ``p`` to ``y = logit(alpha + (1 - 2 alpha) p)`` on the real
  line (Dinh et al., 2017, "Density estimation using Real NVP", section 4.1).
* **Bits per dimension.** ``bpd = -(log p(v) + D log(bin_width)) / (D ln 2)`` where ``log p`` is
  a density in the data's own units and ``bin_width`` is the width of one bin in those units
  (1 in bin units): :func:`bits_per_dim`. A model uniform over the bins scores exactly
  ``log2(num_bins)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward.transforms.base import Transform, sum_except_batch


def uniform_dequantize(x: Tensor, bin_width: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Add uniform noise ``u ~ U[-w/2, w/2)`` to discrete values at bin centres.

    Args:
        x: ``[N, ...]`` values on the bin centres (integers in bin units); any dtype (integer
            tensors are cast to the default float dtype).
        bin_width: ``w``, the width of one bin in the units of ``x``.
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        ``[N, ...]`` floating tensor ``x + u``.
    """
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * bin_width


def bits_per_dim(log_prob: Tensor, num_dims: int, bin_width: float = 1.0) -> Tensor:
    """Convert a log-density of dequantized data to bits per dimension of the discrete data.

    ``bpd = -(log p(v) + D log(bin_width)) / (D ln 2)``: the density times the volume of one
    bin, ``bin_width^D``, is the (mid-bin, or with noise: bounded) probability of the discrete
    image, and ``-log2`` of it divided by ``D`` is the code length per dimension.

    Args:
        log_prob: ``[N]`` log-densities in nats, in the units where one bin is ``bin_width`` wide.
        num_dims: ``D``, number of dimensions per data point (``C * H * W``).
        bin_width: width of one bin in the units of ``log_prob`` (1 for bin units, ``1/255`` for
            8-bit images given as ``k / 255``).

    Returns:
        ``[N]`` bits per dimension.

    Example:
        >>> import math, torch
        >>> lp = torch.full((2,), -64 * math.log(17.0))   # uniform over 17 bins, D = 64
        >>> bits_per_dim(lp, 64)                            # log2(17) = 4.087...
        tensor([4.0875, 4.0875])
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims <= 0:
        raise ValueError(f"num_dims must be a positive integer, got {num_dims!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    return -(log_prob + num_dims * math.log(bin_width)) / (num_dims * math.log(2.0))


class ScaleToUnit(Transform):
    """Affine map from bin-centred discrete units to the unit interval.

    ``p = (x / w + 1/2) / num_bins``: the bin ``[k - w/2, k + w/2)`` around the ``k``-th level
    (``x = k w``) maps to ``[k / num_bins, (k + 1) / num_bins)``.
    ``log|det| = -D log(w num_bins)``.

    Args:
        num_bins: number of discrete levels (17 for sklearn digits, 256 for 8-bit images).
        bin_width: ``w``, distance between consecutive levels in the data's units (1 for
            integers ``0..num_bins-1``; ``1/(num_bins-1)`` for floats ``k/(num_bins-1)``).

    Shapes: ``[N, ...] -> [N, ...]``.
    """

    def __init__(self, num_bins: int, bin_width: float = 1.0):
        super().__init__()
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        if not bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {bin_width!r}")
        self.num_bins = num_bins
        self.bin_width = float(bin_width)

    def _ladj(self, x: Tensor) -> Tensor:
        d = x[0].numel()
        return x.new_full((x.shape[0],), -d * math.log(self.bin_width * self.num_bins))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x / self.bin_width + 0.5) / self.num_bins, self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (z * self.num_bins - 0.5) * self.bin_width, -self._ladj(z)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, bin_width={self.bin_width:g}"


class Logit(Transform):
    """``y = logit(s)``, ``s = alpha + (1 - 2 alpha) p``: unit interval -> real line.

    The margin ``alpha`` keeps ``y`` finite at ``p = 0`` and ``p = 1`` (Dinh et al., 2017,
    Real NVP, section 4.1). Per dimension ``dy/dp = (1 - 2 alpha) / (s (1 - s))`` and, written
    in ``y`` so both directions are stable, ``-log(s (1 - s)) = softplus(y) + softplus(-y)``:

        ``log|det| = sum[log(1 - 2 alpha) + softplus(y) + softplus(-y)]``.

    The map is defined for ``s`` in ``(0, 1)``, i.e. ``p`` slightly beyond ``[0, 1]``; outside
    it the output is NaN (callers check the domain; :class:`GlowFlow` returns ``-inf``).

    Args:
        alpha: margin in ``(0, 0.5)``; 0.05 as in Real NVP.

    Shapes: ``[N, ...] -> [N, ...]``.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)

    def _ladj(self, y: Tensor) -> Tensor:
        return sum_except_batch(math.log(1 - 2 * self.alpha) + F.softplus(y) + F.softplus(-y))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        return y, self._ladj(y)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        return x, -self._ladj(z)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"
