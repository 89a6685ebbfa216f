"""Base distributions for flows."""

from pushforward.distributions.base import (
    ConditionalDiagGaussian,
    DiagGaussian,
    Distribution,
    GaussianMixture,
    Logistic,
    StandardNormal,
    Uniform,
)

__all__ = [
    "ConditionalDiagGaussian",
    "DiagGaussian",
    "Distribution",
    "GaussianMixture",
    "Logistic",
    "StandardNormal",
    "Uniform",
]
