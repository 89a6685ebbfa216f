"""Discrete flow matching: mixture paths on categories, a jump-process sampler, the path ELBO."""

from pushforward.discrete.models import CategoricalDenoiser, DiscreteFlowMatching
from pushforward.discrete.paths import (
    KineticOptimalScheduler,
    LinearScheduler,
    MixturePath,
    elbo_integrand,
    path_elbo,
)

__all__ = ["CategoricalDenoiser", "DiscreteFlowMatching", "KineticOptimalScheduler", "LinearScheduler",
           "MixturePath", "elbo_integrand", "path_elbo"]
