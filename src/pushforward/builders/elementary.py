"""Builders for the elementary and residual flows: ``planar``, ``radial``, ``residual``, ``cdf``.

===============  =====================================================  ==============
name             layer (data -> latent)                                  base
===============  =====================================================  ==============
``planar``       ``Planar`` × ``transforms`` (Rezende & Mohamed, 2015)    N(0, I)
``radial``       ``Radial`` × ``transforms`` (Rezende & Mohamed, 2015)    N(0, I)
``residual``     (``ResidualBlock`` + ``ScaleShift``) × ``blocks``        N(0, I)
                 (Behrmann et al., 2019; Chen et al., 2019)
``cdf``          ``MixtureCDF`` (1-D only)                                Uniform(0, 1)
===============  =====================================================  ==============

Every model takes ``context_dim``: the conditional variants compute the layers' parameters
(planar/radial/cdf) or feed ``g`` (residual) from the context.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward.distributions import StandardNormal, Uniform
from pushforward.flows import NormalizingFlow
from pushforward.registry import register
from pushforward.transforms.cdf import MixtureCDF
from pushforward.transforms.planar import Planar, Radial
from pushforward.transforms.residual import ResidualBlock, ScaleShift

__all__ = ["build_cdf", "build_planar", "build_radial", "build_residual"]


def _vector_only(name: str, image_shape) -> None:
    if image_shape is not None:
        raise ValueError(
            f"{name!r} is a flow on vectors [N, D]; got image_shape={tuple(image_shape)} "
            "(flatten the images and pass dim, or use an image model such as 'glow')"
        )


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _widths(hidden, what: str = "hidden") -> tuple[int, ...]:
    try:
        widths = tuple(int(h) for h in hidden)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of layer widths, got {hidden!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{what} must be non-empty positive layer widths, got {hidden!r}")
    return widths


@register("planar", "planar flow z + u tanh(wᵀz + b) stacked (Rezende & Mohamed 2015)")
def build_planar(
    dim: int,
    context_dim: int = 0,
    image_shape: Sequence[int] | None = None,
    *,
    transforms: int = 16,
    context_hidden: Sequence[int] = (64, 64),
) -> NormalizingFlow:
    """Planar flow: ``transforms`` planar layers over N(0, I).

    Sampling is closed form; density evaluation solves one scalar equation per layer.
    ``context_hidden``: widths of the per-layer MLP mapping context to ``(u, w, b)``.
    """
    _vector_only("planar", image_shape)
    _positive_int(transforms, "transforms")
    hidden = _widths(context_hidden, "context_hidden")
    layers = [Planar(dim, context_dim, hidden) for _ in range(transforms)]
    return NormalizingFlow(layers, StandardNormal(dim), context_dim=context_dim)


@register("radial", "radial flow z + β(z - z0)/(α + r) stacked (Rezende & Mohamed 2015)")
def build_radial(
    dim: int,
    context_dim: int = 0,
    image_shape: Sequence[int] | None = None,
    *,
    transforms: int = 16,
    context_hidden: Sequence[int] = (64, 64),
) -> NormalizingFlow:
    """Radial flow: ``transforms`` radial layers over N(0, I).

    Sampling is closed form; density evaluation solves a quadratic per layer.
    ``context_hidden``: widths of the per-layer MLP mapping context to ``(z0, α, β)``.
    """
    _vector_only("radial", image_shape)
    _positive_int(transforms, "transforms")
    hidden = _widths(context_hidden, "context_hidden")
    layers = [Radial(dim, context_dim, hidden) for _ in range(transforms)]
    return NormalizingFlow(layers, StandardNormal(dim), context_dim=context_dim)


@register("residual", "invertible residual flow x + g(x), Lip(g) < 1 (Behrmann 2019; Chen 2019)")
def build_residual(
    dim: int,
    context_dim: int = 0,
    image_shape: Sequence[int] | None = None,
    *,
    blocks: int = 8,
    hidden: Sequence[int] = (64, 64),
    lipschitz: float = 0.97,
    logdet: str = "auto",
    exact_max_dim: int = 16,
    affine: bool = True,
) -> NormalizingFlow:
    """Residual flow: ``blocks`` × (``ResidualBlock`` [+ ``ScaleShift``]) over N(0, I).

    Args:
        blocks: number of residual blocks.
        hidden: hidden widths of each block's Lipschitz MLP ``g``.
        lipschitz: spectral-norm bound per linear layer of ``g``, in (0, 1).
        logdet: ``"exact"`` (full Jacobian, slogdet), ``"estimate"`` (unbiased Russian-roulette
            Hutchinson estimate in training, deterministic in eval) or ``"auto"`` (exact iff
            ``dim <= exact_max_dim``).
        affine: a learnable elementwise affine after each block.
    """
    _vector_only("residual", image_shape)
    _positive_int(blocks, "blocks")
    widths = _widths(hidden)
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not 0 < lipschitz < 1:
        raise ValueError(f"lipschitz must be in (0, 1) for the blocks to be invertible, got {lipschitz!r}")
    if logdet not in ("exact", "estimate", "auto"):
        raise ValueError(f"logdet must be 'exact', 'estimate' or 'auto', got {logdet!r}")
    _positive_int(exact_max_dim, "exact_max_dim")
    layers = []
    for _ in range(blocks):
        layers.append(ResidualBlock(dim, context_dim, widths, float(lipschitz), logdet, exact_max_dim))
        if affine:
            layers.append(ScaleShift(dim))
    return NormalizingFlow(layers, StandardNormal(dim), context_dim=context_dim)


@register("cdf", "1-D CDF flow: learnable mixture CDF onto Uniform(0, 1)")
def build_cdf(
    dim: int,
    context_dim: int = 0,
    image_shape: Sequence[int] | None = None,
    *,
    components: int = 8,
    kind: str = "logistic",
    context_hidden: Sequence[int] = (64, 64),
) -> NormalizingFlow:
    """CDF flow for scalar data: ``z = F(x)``, ``F`` a mixture of ``components`` logistic or
    Gaussian CDFs (``kind``), base Uniform(0, 1); so ``p(x)`` is the mixture density.

    ``context_hidden``: widths of the MLP mapping context to the mixture parameters.
    """
    _vector_only("cdf", image_shape)
    if dim != 1:
        raise ValueError(f"'cdf' models one-dimensional data only (dim=1), got dim={dim}")
    _positive_int(components, "components")
    if kind not in ("logistic", "gaussian"):
        raise ValueError(f"kind must be 'logistic' or 'gaussian', got {kind!r}")
    hidden = _widths(context_hidden, "context_hidden")
    layer = MixtureCDF(components, kind, context_dim, hidden)
    return NormalizingFlow([layer], Uniform(1), context_dim=context_dim)
