"""pushforward: flow-based generative models under one API.

>>> import pushforward as pf
>>> model = pf.build("nsf", dim=2)          # doctest: +SKIP
>>> history = pf.fit(model, x, max_time=60)  # doctest: +SKIP
>>> model.log_prob(x), model.sample(1000)    # doctest: +SKIP
"""

from pushforward import distributions, transforms
from pushforward.flows import NormalizingFlow
from pushforward.models import FlowModel, load, save
from pushforward.registry import available_models, build, describe_models, register

__version__ = "0.1.0"

__all__ = [
    "FlowModel",
    "NormalizingFlow",
    "available_models",
    "build",
    "describe_models",
    "distributions",
    "load",
    "register",
    "save",
    "transforms",
]
