"""The model contract every family implements, and save/load.

Every model is an ``nn.Module`` that is also a distribution over ``event_shape``::

    model.loss(x, context=None)      # scalar training objective
    model.log_prob(x, context=None)  # [N], in the user's units
    model.sample(n, context=None)    # [n, *event_shape]; with context, one sample per row

Subclasses implement ``_log_prob``, ``_sample`` and optionally ``_loss`` in *standardized*
units; this base class validates inputs and folds the data standardization
``x_std = (x - data_loc) / data_scale`` in and out, including its Jacobian in ``log_prob``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pushforward._validate import (
    CheckedArguments,
    check_context,
    check_dim,
    check_event,
    check_finite,
    check_int_range,
)


class FlowModel(nn.Module, metaclass=CheckedArguments):
    """Base class of every pushforward model.

    Args:
        event_shape: shape of one data point, e.g. ``(D,)`` or ``(C, H, W)``.
        context_dim: size of the conditioning vector (0: unconditional).

    Attributes:
        standardize_by_default: whether :func:`pushforward.fit` standardizes data for this
            model (False for image models with their own preprocessing).
        signed_arguments: int constructor arguments that may be negative; every other int
            argument of every model class must be >= 0 and every float one finite
            (:class:`~pushforward._validate.CheckedArguments`).
        config: the ``build`` arguments that recreate this model (set by :func:`build`).
        resolved_options: options whose ``None`` default the constructor resolved from the others
            (e.g. a size that depends on ``dim``); ``build`` records these values, so a reloaded
            model does not follow a later change of that rule.
    """

    standardize_by_default: bool = True
    #: int constructor arguments that may be negative (every other one must be >= 0).
    signed_arguments: frozenset = frozenset()

    def __init__(self, event_shape: Sequence[int], context_dim: int = 0):
        super().__init__()
        if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Sequence):
            raise TypeError(f"event_shape must be a sequence of positive integers, got {event_shape!r}")
        self.event_shape = tuple(check_dim(s, "event_shape entry") for s in event_shape)
        self.context_dim = check_int_range(context_dim, "context_dim", 0)
        self.config: dict[str, Any] | None = None
        self.resolved_options: dict[str, Any] = {}
        self.register_buffer("data_loc", torch.zeros(self.event_shape))
        self.register_buffer("data_scale", torch.ones(self.event_shape))

    # ----------------------------------------------------------------- standardization
    def set_standardization(self, loc: Tensor, scale: Tensor) -> None:
        """Set the affine map ``x_std = (x - loc) / scale`` (shapes broadcast to event_shape)."""
        loc = torch.as_tensor(loc, dtype=self.data_loc.dtype, device=self.data_loc.device)
        scale = torch.as_tensor(scale, dtype=self.data_scale.dtype, device=self.data_scale.device)
        check_finite(loc, "standardization loc")
        check_finite(scale, "standardization scale")
        if bool((scale <= 0).any()):
            raise ValueError("standardization scale must be positive")
        self.data_loc.copy_(loc.expand(self.event_shape))
        self.data_scale.copy_(scale.expand(self.event_shape))

    def standardize(self, x: Tensor) -> Tensor:
        """User units -> model units: ``(x - loc) / scale``."""
        # One fused pass over x: x * (1 / scale) + (-loc / scale).
        inv = self.data_scale.reciprocal()
        return torch.addcmul(-self.data_loc * inv, x, inv)

    def unstandardize(self, x: Tensor) -> Tensor:
        """Model units -> user units."""
        return x * self.data_scale + self.data_loc

    def _log_scale_sum(self) -> Tensor:
        return torch.log(self.data_scale).sum()

    # ----------------------------------------------------------------- validation
    def _as_model_dtype(self, t: Tensor | None, name: str) -> Tensor | None:
        """The dtype rule (docs/conventions.md): every real tensor input (float of any width,
        integer, bool) is cast to the model's dtype; complex tensors are refused."""
        if not isinstance(t, Tensor):
            return t
        if t.is_complex():
            raise TypeError(f"{name} must be real, got a tensor of dtype {t.dtype}")
        dtype = self.data_loc.dtype
        return t if t.dtype == dtype else t.to(dtype)

    def _check_x(self, x: Tensor, name: str = "x") -> Tensor:
        return check_event(self._as_model_dtype(x, name), self.event_shape, name)

    def _check_context(self, context: Tensor | None, n: int | None) -> Tensor | None:
        context = self._as_model_dtype(context, "context")
        if context is not None and self.context_dim and isinstance(context, Tensor) and context.dim() == 1 and n is not None:
            context = context.expand(n, -1)
        return check_context(context, self.context_dim, n)

    # ----------------------------------------------------------------- public contract
    def log_prob(self, x: Tensor, context: Tensor | None = None, **kwargs) -> Tensor:
        """Log-density of ``x`` ``[N, *event_shape]`` in the user's units -> ``[N]``."""
        x = self._check_x(x)
        context = self._check_context(context, x.shape[0])
        return self._log_prob(self.standardize(x), context, **kwargs) - self._log_scale_sum()

    def sample(
        self,
        n: int,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> Tensor:
        """Draw ``n`` samples ``[n, *event_shape]`` in the user's units.

        With a context, ``context`` is ``[n, C]`` (one sample per row) or ``[C]`` (shared).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
        context = self._check_context(context, n)
        return self.unstandardize(self._sample(n, context, generator, **kwargs))

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The model's training objective on a batch (in standardized units): a scalar."""
        x = self._check_x(x)
        context = self._check_context(context, x.shape[0])
        return self._loss(self.standardize(x), context)

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation from a first batch (user units). Default: nothing."""

    # ----------------------------------------------------------------- to implement
    def _log_prob(self, x: Tensor, context: Tensor | None, **kwargs) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, context: Tensor | None, generator: torch.Generator | None, **kwargs) -> Tensor:
        raise NotImplementedError

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        return -self._log_prob(x, context).mean()

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, context_dim={self.context_dim}"


# --------------------------------------------------------------------- save / load
FORMAT = "pushforward-model"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write
    never leaves a truncated file at ``path``.

    The file gets the permissions of any other file the process creates (``0o666`` minus the
    umask), not ``mkstemp``'s ``0o600``. A full disk raises ``OSError`` (``ENOSPC``) naming
    ``path``; the previous file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "; the previous file there is kept" if path.exists() else ""
            raise OSError(e.errno, f"no space left on device writing {str(path)!r}{kept}") from e
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror or e}") from e
        raise


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu", what: str = "pushforward file") -> Any:
    """``torch.load(path)``, with an error that names the file when it cannot be read.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is empty, truncated, corrupt or not a ``torch.save`` file at all
            ("'PATH' is not a readable WHAT (...)").
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no {what} at {str(p)!r}")
    if p.stat().st_size == 0:
        raise ValueError(f"{str(p)!r} is not a readable {what}: the file is empty")
    try:
        return torch.load(p, map_location=map_location, weights_only=False)
    except PermissionError:
        raise
    except KeyboardInterrupt:
        raise
    except MemoryError:
        # Unpickling garbage asks for absurd allocations: random bytes often end here, not in a
        # format error (a real file larger than memory is the other possibility; say both).
        raise ValueError(f"{str(p)!r} is not a readable {what}: reading it ran out of memory "
                         "(a corrupt file, or one larger than this machine's memory)") from None
    except Exception as e:  # unpickling, zip and storage errors all mean "not this format"
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise ValueError(f"{str(p)!r} is not a readable {what} (truncated, corrupt or another format: {why})") from None


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a model so that :func:`load` rebuilds it without any config file.

    Built models (``pf.build``) are stored as their build arguments plus ``state_dict``;
    hand-assembled modules are pickled whole. The write is atomic.
    """
    atomic_save(model_payload(model), path)


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a model written by :func:`save` (or by ``torch.save(model, path)``).

    Raises:
        FileNotFoundError: naming the missing path.
        ValueError: the file is empty, truncated, corrupt or not a pushforward model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {str(path)!r}")
    obj = read_torch_file(path, map_location, "pushforward model file")
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return load_from_payload(obj)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and obj["model"].get("format") == FORMAT:
        return load_from_payload(obj["model"])
    raise ValueError(f"{str(path)!r} is not a pushforward model file (it holds a {type(obj).__name__} "
                     "without a pushforward model)")


def load_from_payload(obj: dict) -> nn.Module:
    """Rebuild a model from a payload dict as written by :func:`save` (used by checkpoints)."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a pushforward model payload")
    if "module" in obj:
        return obj["module"]
    from pushforward.registry import build, complete_config

    cfg = complete_config(dict(obj["config"]))
    model = build(cfg.pop("name"), **cfg)
    state = obj["state_dict"]
    first = next((v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()), None)
    if first is not None:
        model = model.to(device=first.device, dtype=first.dtype)
    model.load_state_dict(state)
    return model


def model_payload(model: nn.Module) -> dict:
    """The dict :func:`save` writes, for embedding a model in a training checkpoint."""
    config = getattr(model, "config", None)
    if config is not None:
        return {"format": FORMAT, "config": dict(config), "state_dict": model.state_dict()}
    return {"format": FORMAT, "module": model}
