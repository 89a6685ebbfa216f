"""Named models: ``pf.build(name, dim, ...)``, ``pf.available_models()`` and :func:`register`.

A name maps to a *factory*, the model class itself (or a function with an explicit signature),
plus an optional *preset* of option values. ``build`` passes ``dim``, ``context_dim`` and
``image_shape`` to the parameters of those names, the preset and the user's overrides to the rest,
and records every option, defaults included (and the values of ``None`` defaults that the class
resolved, ``model.resolved_options``), in ``model.config``: a checkpoint therefore reloads as it
was built even after a later version changes a default.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pushforward._validate import check_dim

BUILD_ARGS = ("dim", "context_dim", "image_shape")
Inputs = Callable[[int, int, "tuple[int, ...] | None", dict], dict]


@dataclass(frozen=True)
class Entry:
    """One registered name: its factory, preset options, description and input adapter.

    ``inputs(dim, context_dim, image_shape, options) -> kwargs`` computes constructor arguments
    that are not plain options (e.g. a policy's ``obs_dim``/``action_dim`` from ``context_dim``
    and ``dim``); without it the build arguments go to the parameters of the same name.
    """

    factory: Callable[..., nn.Module]
    description: str
    preset: dict = field(default_factory=dict)
    inputs: Inputs | None = None
    legacy: dict = field(default_factory=dict)

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)

    def options(self, supplied: Sequence[str] = ()) -> dict[str, Any]:
        """``{option: default}`` for every keyword option of the factory (preset applied)."""
        out = {}
        for k, p in self.parameters().items():
            if k in BUILD_ARGS or k in supplied or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                continue
            if p.default is not p.empty:
                out[k] = p.default
        return {**out, **self.preset}


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    factory: Callable[..., nn.Module] | None = None,
    description: str = "",
    *,
    preset: dict | None = None,
    inputs: Inputs | None = None,
    legacy: dict | None = None,
) -> Any:
    """Register ``factory`` (a model class or a function) under ``name``.

    Usable as ``register("ffjord", FFJORD)``, ``register("ot-fm", FlowMatching, preset={...})`` or
    as a class/function decorator ``@register("maf")``. The factory's signature lists every option
    explicitly (no ``**kwargs``; tests check every name) so that ``build`` records them all.
    ``legacy`` maps options added after a name was first released to the value that reproduces
    the old architecture; :func:`complete_config` applies it to a recorded config that lacks them.
    """

    if isinstance(factory, str):  # @register(name, description) as a decorator
        factory, description = None, factory

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
            raise TypeError(f"the factory of {name!r} takes **kwargs; list its options explicitly")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Entry(fn, doc, dict(preset or {}), inputs, dict(legacy or {}))
        return fn

    return add if factory is None else add(factory)


def _ensure_loaded() -> None:
    # _families imports every module that registers names, filling the registry.
    from pushforward import _families  # noqa: F401


def entry(name: str) -> Entry:
    """The :class:`Entry` of a registered name (raises with close matches when unknown)."""
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_models() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def describe_models() -> dict[str, str]:
    """``{name: one-line description}`` for every registered model."""
    _ensure_loaded()
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def _check_build_args(name: str, dim: Any, context_dim: Any, image_shape: Any, params: dict) -> tuple:
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or any(s <= 0 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {image_shape}")
        if "image_shape" not in params:
            raise ValueError(f"{name!r} is a model on vectors [N, D]; got image_shape={image_shape} "
                             "(flatten the images and pass dim, or use an image model such as 'glow')")
        if dim is None:
            dim = image_shape[0] * image_shape[1] * image_shape[2]
    if dim is None:
        raise ValueError(f"build({name!r}) needs dim (the data dimension) or image_shape")
    check_dim(dim, "dim")
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}")
    return dim, image_shape


def build(
    name: str,
    dim: int | None = None,
    context_dim: int = 0,
    image_shape: Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a named model with good defaults.

    Args:
        name: one of :func:`available_models`.
        dim: data dimension D for vector data ``[N, D]``.
        context_dim: size C of a conditioning vector ``[N, C]`` (0: unconditional).
        image_shape: ``(C, H, W)`` for image models (then ``dim`` may be omitted).
        **overrides: options of that model (the keyword arguments of its class).

    Returns:
        A :class:`pushforward.FlowModel` whose ``config`` recreates it (used by ``pf.load``).
    """
    e = entry(name)
    params = e.parameters()
    dim, image_shape = _check_build_args(name, dim, context_dim, image_shape, params)
    options = {**e.preset, **overrides}
    if e.inputs is not None:
        args = e.inputs(dim, context_dim, image_shape, options)
    else:
        args = {k: v for k, v in (("dim", dim), ("context_dim", context_dim), ("image_shape", image_shape))
                if k in params}
    if context_dim and "context_dim" not in params and e.inputs is None:
        raise ValueError(f"{name!r} is unconditional only; got context_dim={context_dim}")
    recorded = e.options(supplied=args)
    unknown = [k for k in options if k not in recorded]
    if unknown:
        raise TypeError(f"{name!r} does not take option(s) {unknown}; its options are {list(recorded)}")
    model = e.factory(**args, **{k: v for k, v in options.items() if k not in args})
    model.config = {"name": name, "dim": dim, "context_dim": context_dim, "image_shape": image_shape,
                    **recorded, **overrides, **getattr(model, "resolved_options", {})}
    return model


def complete_config(config: dict) -> dict:
    """A recorded ``model.config`` with the registry's ``legacy`` values for options it lacks.

    A config written before an option existed rebuilds the architecture it was saved with (e.g. an
    ``nsf`` checkpoint without ``tails`` reloads with ``tails=False``), not today's default.
    """
    legacy = entry(config["name"]).legacy
    return {**legacy, **config}
