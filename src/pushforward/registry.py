"""Named model builders: ``pf.build(name, dim, ...)`` and ``pf.available_models()``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from pushforward._validate import check_dim

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str = "") -> Callable:
    """Decorator registering ``fn(dim, context_dim=0, image_shape=None, **options)`` as ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered")
        _BUILDERS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return deco


def _ensure_loaded() -> None:
    # Builders live in pushforward.builders; _families imports each module, filling the registry.
    from pushforward import _families  # noqa: F401


def available_models() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    _ensure_loaded()
    return sorted(_BUILDERS)


def describe_models() -> dict[str, str]:
    """``{name: one-line description}`` for every registered model."""
    _ensure_loaded()
    return {k: _DESCRIPTIONS[k] for k in sorted(_BUILDERS)}


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
        **overrides: architecture options of that model (see its builder's docstring).

    Returns:
        A :class:`pushforward.FlowModel` whose ``config`` recreates it (used by ``pf.load``).
    """
    _ensure_loaded()
    if name not in _BUILDERS:
        close = difflib.get_close_matches(str(name), _BUILDERS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(sorted(_BUILDERS))}")
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or any(s <= 0 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {image_shape}")
        if dim is None:
            dim = image_shape[0] * image_shape[1] * image_shape[2]
    if dim is None:
        raise ValueError(f"build({name!r}) needs dim (the data dimension) or image_shape")
    check_dim(dim, "dim")
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}")
    fn = _BUILDERS[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in overrides if k not in params]
        if unknown:
            options = [k for k in params if k not in ("dim", "context_dim", "image_shape")]
            raise TypeError(f"{name!r} does not take option(s) {unknown}; its options are {options}")
    model = fn(dim=dim, context_dim=context_dim, image_shape=image_shape, **overrides)
    # The builder's defaults are recorded too, so a checkpoint reloads as it was built even
    # after a later version changes a default.
    defaults = {k: p.default for k, p in params.items() if k not in ("dim", "context_dim", "image_shape")
                and p.default is not p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    model.config = {"name": name, "dim": dim, "context_dim": context_dim, "image_shape": image_shape,
                    **defaults, **overrides}
    return model
