"""Small helpers shared by every layer: module device/dtype, array -> tensor with a named error,
batched evaluation, column statistics and JSON-safe values. Each is written here once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def module_like(module: Any) -> dict:
    """``{"device", "dtype"}`` of a module's first floating parameter (or buffer).

    Bound methods are followed to their module (``model.log_prob`` -> ``model``). CPU float32 when
    there is no floating tensor at all.
    """
    mod = module if isinstance(module, nn.Module) else getattr(module, "__self__", None)
    if isinstance(mod, nn.Module):
        for t in (*mod.parameters(), *mod.buffers()):
            if t.is_floating_point():
                return {"device": t.device, "dtype": t.dtype}
    return {"device": torch.device("cpu"), "dtype": torch.float32}


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU when it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """Floating dtype of a module's parameters (torch's default when it has none)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def to_tensor(a: Any, name: str, dtype: torch.dtype | None = None, device: Any = None) -> Tensor | None:
    """A tensor, ndarray or nested sequence as a real tensor (``None`` passes through).

    Raises:
        TypeError: naming ``name`` when ``a`` is not numeric, complex, or not array-like.
    """
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got an array of dtype {a.dtype}")
        a = torch.from_numpy(np.ascontiguousarray(a))
    elif not isinstance(a, Tensor):
        try:
            # dtype here, not after: a list of Python floats asked for as float64 keeps its digits
            a = torch.as_tensor(a, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor or array, got {type(a).__name__}") from e
    if a.is_complex():
        raise TypeError(f"{name} must be real, got {a.dtype}")
    if dtype is None and device is None:
        return a
    return a.to(device=device, dtype=dtype)


def batched(fn: Callable[..., Tensor], x: Tensor, context: Tensor | None = None, batch_size: int = 4096) -> Tensor:
    """``fn(x[i:j])`` (or ``fn(x[i:j], context[i:j])``) over row blocks, concatenated: ``[N, ...]``.

    ``context`` of one row ``[1, C]`` or ``[C]`` is shared by every block.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if context is not None and (context.dim() == 1 or context.shape[0] == 1):
        context = context.reshape(1, -1)
        shared = True
    else:
        shared = False
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if context is None:
            out.append(fn(xb))
        else:
            cb = context.expand(xb.shape[0], -1) if shared else context[i : i + batch_size]
            out.append(fn(xb, cb))
    return torch.cat(out) if out else x.new_zeros((0,))


def column_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std in float64, reduced over every axis but the last:
    ``[N, ..., D] -> [D], [D]`` (``[N] -> [1], [1]``).

    A constant (or non-finite-scale) column gets scale 1: it has nothing to standardize, and
    dividing by ~0 would blow it up.
    """
    x = x.double().reshape(-1, x.shape[-1]) if x.dim() > 1 else x.double()[:, None]
    return _stats(x)


def event_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and std over the batch: ``[N, *event] -> [*event], [*event]`` (float64);
    constant coordinates get scale 1 as in :func:`column_stats`."""
    return _stats(x.double())


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    m = x.mean(0)
    s = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(m)
    return m, torch.where((s > 1e-12 * (1 + m.abs())) & torch.isfinite(s), s, torch.ones_like(s))


def json_safe(obj: Any) -> Any:
    """NaN/inf -> ``None`` through dicts, lists and tuples, so files are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
