"""Elementary and residual flows: ``planar``, ``radial``, ``residual``, ``cdf``.

===============  =====================================================  ==============
name             layer (data -> latent)                                  base
===============  =====================================================  ==============
``planar``       ``Planar`` × ``transforms`` (Rezende & Mohamed, 2015)    N(0, I)
``radial``       ``Radial`` × ``transforms`` (Rezende & Mohamed, 2015)    N(0, I)
``residual``     (``ResidualBlock`` + ``ScaleShift``) × ``blocks``        N(0, I)
                 (Behrmann et al., 2019; Chen et al., 2019)
``cdf``          ``MixtureCDF`` (1-D only)                                Uniform(0, 1)
===============  =====================================================  ==============

The conditional variants compute the layers' parameters (planar/radial/cdf) or feed ``g``
(residual) from the context.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._validate import check_choice, check_open_interval, check_positive_int, check_widths
from pushforward.distributions import StandardNormal, Uniform
from pushforward.flows.base import NormalizingFlow
from pushforward.registry import register
from pushforward.transforms.cdf import MixtureCDF
from pushforward.transforms.planar import Planar, Radial
from pushforward.transforms.residual import LOGDET_MODES, ResidualBlock, ScaleShift

__all__ = ["CDFFlow", "PlanarFlow", "RadialFlow", "ResidualFlow"]


class _LayerStack(NormalizingFlow):
    """``transforms`` layers of type ``_layer(dim, context_dim, hidden)`` over N(0, I)."""

    _layer: type[Planar] | type[Radial]

    def __init__(self, dim: int, context_dim: int = 0, *, transforms: int = 16, context_hidden: Sequence[int] = (64, 64)):
        check_positive_int(transforms, "transforms")
        hidden = check_widths(context_hidden, "context_hidden")
        layers = [self._layer(dim, context_dim, hidden) for _ in range(transforms)]
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)


@register("planar", "planar flow z + u tanh(wᵀz + b) stacked (Rezende & Mohamed 2015)")
class PlanarFlow(_LayerStack):
    """Planar flow: ``transforms`` planar layers ``z + u tanh(wᵀz + b)`` over N(0, I), data ``[N, dim]``.

    Rezende & Mohamed (2015). Sampling is closed form; density evaluation solves one scalar
    equation per layer. ``context_hidden``: widths of the per-layer MLP mapping context to ``(u, w, b)``.
    """

    _layer = Planar


@register("radial", "radial flow z + β(z - z0)/(α + r) stacked (Rezende & Mohamed 2015)")
class RadialFlow(_LayerStack):
    """Radial flow: ``transforms`` radial layers ``z + β(z - z0)/(α + r)`` over N(0, I), data ``[N, dim]``.

    Rezende & Mohamed (2015). Sampling is closed form; density evaluation solves a quadratic per
    layer. ``context_hidden``: widths of the per-layer MLP mapping context to ``(z0, α, β)``.
    """

    _layer = Radial


@register("residual", "invertible residual flow x + g(x), Lip(g) < 1 (Behrmann 2019; Chen 2019)")
class ResidualFlow(NormalizingFlow):
    """Residual flow: ``blocks`` × (``ResidualBlock`` [+ ``ScaleShift``]) over N(0, I), data ``[N, dim]``.

    Behrmann et al. (2019), Chen et al. (2019): ``z = x + g(x)`` with ``Lip(g) < 1``.

    Args:
        blocks: number of residual blocks.
        hidden: hidden widths of each block's Lipschitz MLP ``g``.
        lipschitz: spectral-norm bound per linear layer of ``g``, in (0, 1).
        logdet: ``"exact"`` (full Jacobian, slogdet), ``"estimate"`` (unbiased Russian-roulette
            Hutchinson estimate in training, deterministic in eval) or ``"auto"`` (exact iff
            ``dim <= exact_max_dim``).
        affine: a learnable elementwise affine after each block.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, blocks: int = 8, hidden: Sequence[int] = (64, 64),
        lipschitz: float = 0.97, logdet: str = "auto", exact_max_dim: int = 16, affine: bool = True,
    ):
        check_positive_int(blocks, "blocks")
        widths = check_widths(hidden, "hidden")
        lipschitz = check_open_interval(lipschitz, 0, 1, "lipschitz", " for the blocks to be invertible")
        check_choice(logdet, LOGDET_MODES, "logdet")
        check_positive_int(exact_max_dim, "exact_max_dim")
        layers = []
        for _ in range(blocks):
            layers.append(ResidualBlock(dim, context_dim, widths, lipschitz, logdet, exact_max_dim))
            if affine:
                layers.append(ScaleShift(dim))
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)


@register("cdf", "1-D CDF flow: learnable mixture CDF onto Uniform(0, 1)")
class CDFFlow(NormalizingFlow):
    """CDF flow for scalar data ``[N, 1]``: ``z = F(x)`` onto Uniform(0, 1), so ``p(x) = F'(x)``.

    ``F`` is a mixture of ``components`` logistic or Gaussian CDFs (``kind``);
    ``context_hidden``: widths of the MLP mapping context to the mixture parameters.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, components: int = 8, kind: str = "logistic",
        context_hidden: Sequence[int] = (64, 64),
    ):
        if dim != 1:
            raise ValueError(f"'cdf' models one-dimensional data only (dim=1), got dim={dim}")
        check_positive_int(components, "components")
        check_choice(kind, ("logistic", "gaussian"), "kind")
        hidden = check_widths(context_hidden, "context_hidden")
        super().__init__([MixtureCDF(components, kind, context_dim, hidden)], Uniform(1), context_dim=context_dim)
