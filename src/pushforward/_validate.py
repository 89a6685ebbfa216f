"""Input checks shared by every model: errors name the offending shape or value."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import Tensor


def check_dim(dim: int, name: str = "dim") -> int:
    """Return ``dim`` as an int, or raise if it is not a positive integer."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"{name} must be a positive integer, got {dim!r}")
    return dim


def check_finite(x: Tensor, name: str = "input") -> Tensor:
    """Raise if ``x`` holds NaN or inf, naming how many and where the first one is."""
    if not torch.is_floating_point(x):
        return x
    # Fast path: a finite sum means every entry is finite (one reduction instead of a mask);
    # an overflowing sum of finite values falls through to the exact check below.
    if bool(torch.isfinite(x.sum())):
        return x
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf); "
            f"first at index {first}"
        )
    return x


def check_event(x: Tensor, event_shape: Sequence[int], name: str = "x") -> Tensor:
    """Check ``x`` is ``[N, *event_shape]`` and finite."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    event_shape = tuple(event_shape)
    if x.dim() != 1 + len(event_shape) or tuple(x.shape[1:]) != event_shape:
        expected = "[N, " + ", ".join(str(s) for s in event_shape) + "]"
        raise ValueError(f"{name} must have shape {expected}, got {list(x.shape)}")
    return check_finite(x, name)


def check_context(context: Tensor | None, context_dim: int, n: int | None) -> Tensor | None:
    """Check a context tensor is ``[n, context_dim]`` (or absent when ``context_dim == 0``)."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(
                "this model is unconditional (context_dim=0) but a context was passed; "
                "build it with context_dim=C to condition on a [N, C] context"
            )
        return None
    if context is None:
        raise ValueError(f"this model is conditional: context of shape [N, {context_dim}] is required")
    if not isinstance(context, Tensor):
        raise TypeError(f"context must be a torch.Tensor, got {type(context).__name__}")
    if context.dim() != 2 or context.shape[1] != context_dim or (n is not None and context.shape[0] != n):
        rows = "N" if n is None else str(n)
        raise ValueError(f"context must have shape [{rows}, {context_dim}], got {list(context.shape)}")
    return check_finite(context, "context")


def check_int_range(value: int, name: str, low: int = 1, high: int | None = None, *, high_text: str = "") -> int:
    """Return ``value`` if it is an integer in ``[low, high]`` (``high=None``: unbounded), else raise.

    The error names ``value`` and the range: "a positive integer" (``low=1``), "a non-negative
    integer" (``low=0``), "an integer >= low", or "an integer in [low, high_text or high]".
    """
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low and (high is None or value <= high)
    if ok:
        return value
    if high is not None:
        want = f"an integer in [{low}, {high_text or high}]"
    else:
        want = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")
    raise ValueError(f"{name} must be {want}, got {value!r}")


def check_positive_int(value, name: str, *, allow_none: bool = False):
    """Return ``value`` if it is a positive integer (or None with ``allow_none``), else raise."""
    if value is None and allow_none:
        return None
    return check_int_range(value, name, 1)


def check_widths(widths: Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    """Return hidden-layer widths as a non-empty tuple of positive ints, else raise naming ``name``."""
    try:
        out = tuple(int(w) for w in widths)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of layer widths, got {widths!r}") from None
    if not out or any(w < 1 for w in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive layer widths, got {widths!r}")
    return out


def check_choice(value, choices: Sequence, name: str):
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_open_interval(value: float, low: float, high: float, name: str, why: str = "") -> float:
    """Return ``value`` as a float if ``low < value < high`` (a real number, not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}){why}, got {value!r}")
    return float(value)


def check_positive_float(value, name: str, *, allow_none: bool = False, allow_zero: bool = False):
    """Return ``value`` as a float if it is finite and > 0 (>= 0 with ``allow_zero``), else raise."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_embed_size(value, name: str = "time_embed") -> int:
    """Return a sinusoidal embedding size: a non-negative even integer (0: no embedding)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % 2:
        raise ValueError(f"{name} must be a non-negative even integer, got {value!r}")
    return value


def resolve_named(value, table: dict, base: type, name: str, **kwargs):
    """``table[value](**kwargs)`` for a name, or ``value`` itself if it is already a ``base``.

    Used for the named components of a model (couplings, time samplers, schedulers).
    """
    if isinstance(value, base):
        return value
    return table[check_choice(value, tuple(table), name)](**kwargs)


# ---------------------------------------------------------------- constructor arguments
_INT_ANNOTATIONS = {"int", "int | None", "Optional[int]"}
_FLOAT_ANNOTATIONS = {"float", "float | None", "Optional[float]"}


def numeric_kind(param) -> str | None:
    """``"int"``, ``"float"`` or None for an ``inspect.Parameter``: from its annotation when that
    is plainly numeric, else from the type of its default (bools are never numeric)."""
    ann = param.annotation
    ann = ann if isinstance(ann, str) else getattr(ann, "__name__", None)
    if ann in _INT_ANNOTATIONS:
        return "int"
    if ann in _FLOAT_ANNOTATIONS:
        return "float"
    if ann not in (None, "_empty"):
        return None
    d = param.default
    return "int" if type(d) is int else "float" if type(d) is float else None


def check_numeric_arguments(signature, args: tuple, kwargs: dict, owner: str, signed: frozenset = frozenset()) -> None:
    """Check a call's int and float arguments by the callee's signature (see :func:`numeric_kind`).

    An int argument must be an integer (not a bool) and >= 0 unless it is named in ``signed``;
    a float argument must be a finite real number. None passes where it is the default or the
    annotation allows it. The error names ``owner``, the argument and its value.
    """
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return  # the call itself will raise Python's own error naming the argument
    for name, value in bound.arguments.items():
        p = signature.parameters[name]
        kind = numeric_kind(p)
        if kind is None or (value is None and (p.default is None or "None" in str(p.annotation))):
            continue
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
            if value < 0 and name not in signed:
                raise ValueError(f"{owner}: {name} must be a non-negative integer, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")


def constructor_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls(...)`` with the options that its ``__init__``'s ``**kwargs`` forwards
    to the base classes merged in (MRO order, the nearest declaration wins).

    A subclass thus lists only its own options and the ones whose default it changes
    (``def __init__(self, dim=None, context_dim=0, image_shape=None, *, steps=1, **options)``);
    the registry records the merged set. Base parameters other than the subclass's positional ones
    become keyword-only; a ``**kwargs`` remains only if the chain ends in one.
    """
    positional, keyword, seen, var_kw = [], [], set(), None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        first = not positional and not keyword
        var_kw = None
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                var_kw = p
            elif p.kind is p.VAR_POSITIONAL or p.name in seen:
                continue
            elif first and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positional.append(p)
                seen.add(p.name)
            else:
                keyword.append(p.replace(kind=p.KEYWORD_ONLY))
                seen.add(p.name)
        if var_kw is None:
            break
    return inspect.Signature(positional + keyword + ([var_kw] if var_kw is not None else []))


class CheckedArguments(type):
    """Metaclass of the public base classes (``FlowModel``, ``Transform``): calling any subclass
    first runs :func:`check_numeric_arguments` on the call against that class's signature, so
    every int/float constructor argument is validated before the class's own code runs. The
    class attribute ``signed_arguments`` names ints that may be negative."""

    @property
    def __signature__(cls) -> inspect.Signature:
        # inspect.signature(cls) would otherwise report this __call__'s (*args, **kwargs).
        # Not cached: a class's defaults may change at run time (tests patch them).
        return constructor_signature(cls)

    def __call__(cls, *args, **kwargs):
        check_numeric_arguments(cls.__signature__, args, kwargs, cls.__name__,
                                getattr(cls, "signed_arguments", frozenset()))
        return super().__call__(*args, **kwargs)
