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

_LAZY_FUNCS = {"fit": ("pushforward.train", "fit"), "evaluate": ("pushforward.metrics", "evaluate")}
_LAZY_MODULES = ("data", "metrics", "viz", "train", "nets", "continuous", "matching", "score", "policy",
                 "discrete", "manifolds", "posterior", "diagnostics")


def __getattr__(name: str):
    # Heavy or optional pieces (matplotlib, POT, sklearn) load on first use, not at import.
    import importlib

    if name in _LAZY_FUNCS:
        mod, attr = _LAZY_FUNCS[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"pushforward.{name}")
    raise AttributeError(f"module 'pushforward' has no attribute {name!r}")


__all__ = [
    "FlowModel",
    "NormalizingFlow",
    "available_models",
    "build",
    "describe_models",
    "distributions",
    "evaluate",
    "fit",
    "load",
    "register",
    "save",
    "transforms",
]
