"""Bijections ``x -> z`` with log|det J|: the building blocks of normalizing flows.

Direction convention: ``forward`` maps data to latent (the normalizing direction) and returns
``(z, log|det dz/dx|)``; ``inverse`` maps latent to data.
"""

from pushforward.transforms.autoregressive import (
    AffineAutoregressive,
    MaskedAutoregressive,
    SplineAutoregressive,
    inverse_autoregressive,
)
from pushforward.transforms.base import Compose, FixedAffine, Identity, Inverse, Transform
from pushforward.transforms.cdf import MixtureCDF
from pushforward.transforms.circular import CircularCoupling, CircularSpline
from pushforward.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    SplineCoupling,
    coupling_mask,
)
from pushforward.transforms.elementwise import Additive, Affine, Chain
from pushforward.transforms.glow import (
    ActNorm2d,
    AffineCoupling2d,
    GlowStep,
    InvertibleConv1x1,
    MultiScaleGlow,
    Squeeze,
)
from pushforward.transforms.linear import ActNorm, LULinear, Permutation
from pushforward.transforms.neural import MonotoneIntegral, SigmoidalMap
from pushforward.transforms.planar import Planar, Radial
from pushforward.transforms.polynomial import BernsteinPolynomial
from pushforward.transforms.preprocess import Logit, ScaleToUnit
from pushforward.transforms.residual import ResidualBlock, ScaleShift
from pushforward.transforms.splines import RationalQuadraticSpline
from pushforward.transforms.tails import SinhArcsinh
from pushforward.transforms.tarflow import TarFlowBlock

__all__ = [
    "BernsteinPolynomial",
    "CircularCoupling",
    "CircularSpline",
    "MonotoneIntegral",
    "SigmoidalMap",
    "TarFlowBlock",
    "Additive",
    "Affine",
    "Chain",
    "RationalQuadraticSpline",
    "SinhArcsinh",
    "inverse_autoregressive",
    "ActNorm",
    "ActNorm2d",
    "AdditiveCoupling",
    "AffineAutoregressive",
    "AffineCoupling",
    "AffineCoupling2d",
    "Compose",
    "Coupling",
    "FixedAffine",
    "GlowStep",
    "Identity",
    "Inverse",
    "InvertibleConv1x1",
    "LULinear",
    "Logit",
    "MaskedAutoregressive",
    "MixtureCDF",
    "MultiScaleGlow",
    "Permutation",
    "Planar",
    "Radial",
    "ResidualBlock",
    "ScaleShift",
    "ScaleToUnit",
    "SplineAutoregressive",
    "SplineCoupling",
    "Squeeze",
    "Transform",
    "coupling_mask",
]
