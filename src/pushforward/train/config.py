"""The options of one :func:`~pushforward.train.fit` call, resolved and validated once."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pushforward._validate import check_dim
from pushforward.train.schedule import SCHEDULES

_AMP = ("bf16", "bfloat16", "fp16", "float16")
_CKPT_ERROR = "checkpoint_every must be a positive number of steps (int), seconds ('60s', 30.0), 'auto' or None, got {!r}"


@dataclass(frozen=True)
class FitConfig:
    """Every option of :func:`~pushforward.train.fit` with the model's defaults filled in.

    ``batch_size``, ``lr``, ``schedule``, ``ema`` and ``standardize`` come from the user or,
    when left to None/"auto", from ``model.default_batch_size`` (256), ``default_lr`` (1e-3),
    ``default_schedule`` ("cosine"), ``default_ema`` (None) and ``standardize_by_default``.
    ``max_time="auto"``, ``patience="auto"`` and ``eval_every="epoch"`` follow the model's
    ``default_convergence`` (:func:`~pushforward.train.fit`'s "Training to convergence").
    ``checkpoint_every`` is split into ``checkpoint_steps`` (an int) or ``checkpoint_secs``;
    ``"auto"`` leaves both None and sets ``checkpoint_auto`` (the loop ties it to the budget).
    ``explicit`` names the options the user set, which a resumed run does not override.
    """

    max_time: float | None
    steps: int | None
    epochs: int | None
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    schedule: str
    warmup: float | int
    clip_grad: float | None
    ema: float | None
    amp: bool | str
    gradient_checkpointing: bool
    val_fraction: float | None
    val_data: Any
    patience: int | None
    eval_every: int | None
    standardize: bool
    seed: int
    device: str | torch.device | None
    out_dir: Path | None
    checkpoint_steps: int | None
    checkpoint_secs: float | None
    checkpoint_auto: bool
    explode_factor: float | None
    explode_window: int
    resume: str | os.PathLike | None
    log_every: int | None
    callback: Callable[[int, dict], Any] | None
    progress: bool | None
    tensorboard: bool | None
    distributed: bool | None
    explicit: frozenset = frozenset()
    compile: bool = False

    @classmethod
    def resolve(cls, model: nn.Module, options: dict[str, Any]) -> FitConfig:
        """Fill in the model's defaults and check every value; ``options`` are ``fit``'s keywords.

        Raises:
            TypeError: the model has no ``loss``.
            ValueError: naming the first bad option, its value and what was expected.
        """
        if not hasattr(model, "loss"):
            raise TypeError(f"fit needs a model with a .loss(x, context) method, got {type(model).__name__}")
        o = _convergence(model, options)
        _check_budget(o["max_time"], o["steps"], o["epochs"])
        o["batch_size"] = check_dim(_default(o["batch_size"], int(getattr(model, "default_batch_size", 256))),
                                    "batch_size")
        lr = float(_default(o["lr"], getattr(model, "default_lr", 1e-3)))
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"lr must be a positive number, got {o['lr']!r}")
        o["lr"] = lr
        o["schedule"] = o["schedule"] or getattr(model, "default_schedule", "cosine")
        if o["schedule"] not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {o['schedule']!r}")
        o["warmup"] = _warmup(o["warmup"], o["schedule"])
        _check_optimizer(o["optimizer"], o["weight_decay"], o["clip_grad"])
        o["ema"] = _ema(o["ema"], model)
        if o["patience"] is not None and (not isinstance(o["patience"], int) or o["patience"] <= 0):
            raise ValueError(f"patience must be a positive integer or None, got {o['patience']!r}")
        ce = o.pop("checkpoint_every")
        o["checkpoint_auto"] = ce == "auto"
        o["checkpoint_steps"], o["checkpoint_secs"] = (None, None) if ce == "auto" else _checkpoint_every(ce)
        if o["explode_factor"] == "auto":
            # Bootstrapped objectives (MeanFlow, shortcut, consistency: the target moves with the
            # network) may rise legitimately; such models set default_explode_factor = None.
            o["explode_factor"] = getattr(model, "default_explode_factor", 10.0)
        _check_explode(o["explode_factor"], o["explode_window"])
        o["seed"] = _seed(o["seed"])
        if o["val_fraction"] is not None and not 0 <= o["val_fraction"] < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {o['val_fraction']!r}")
        if o["amp"] and o["amp"] is not True and o["amp"] not in _AMP:
            raise ValueError(f"amp must be True, False, 'bf16' or 'fp16', got {o['amp']!r}")
        if not isinstance(o.get("compile", False), bool):
            raise ValueError(f"compile must be True or False, got {o['compile']!r}")
        o["standardize"] = _standardize(o["standardize"], model)
        o["out_dir"] = Path(o["out_dir"]) if o["out_dir"] is not None else None
        explicit = frozenset(k for k in ("batch_size", "lr") if options[k] is not None)
        return cls(**o, explicit=explicit)

    def continuing(self, record: dict) -> FitConfig:
        """This config with the batch size and learning rate of a checkpoint's ``"fit"`` record
        where the user left them to their defaults: a resumed run continues its own run."""
        changes = {}
        if "batch_size" not in self.explicit and "batch_size" in record:
            changes["batch_size"] = int(record["batch_size"])
        if "lr" not in self.explicit and "lr" in record:
            changes["lr"] = float(record["lr"])
        return dataclasses.replace(self, **changes)

    def record(self, world_size: int) -> dict:
        """The ``"fit"`` block of a checkpoint."""
        return {"batch_size": self.batch_size, "lr": self.lr, "seed": self.seed, "ema": self.ema,
                "schedule": self.schedule, "warmup": self.warmup, "world_size": world_size}


def _convergence(model: nn.Module, o: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``max_time="auto"``, ``patience="auto"`` and the convergence defaults of a model
    with ``default_convergence`` (see :func:`fit`'s "Training to convergence")."""
    o = dict(o)
    conv = getattr(model, "default_convergence", None) or {}
    if o["patience"] == "auto":
        o["patience"] = conv.get("patience")
    if conv and o["patience"] is not None and o["eval_every"] is None:
        o["eval_every"] = "epoch"  # also for a patience of the user's (else: every tenth of the cap)
    if o["max_time"] == "auto":
        # No budget at all: a converging model's cap, its schedule and warm-up.
        # A step/epoch budget of the user's is the budget: no silent 60 s cut under it.
        counted = o["steps"] is not None or o["epochs"] is not None
        capped = bool(conv) and o["patience"] is not None and not counted
        if counted:
            o["max_time"] = None
        else:
            o["max_time"] = float(conv.get("max_time", 60.0)) if capped else 60.0
        for key in ("schedule", "warmup") if capped else ():
            if o[key] is None:
                o[key] = conv.get(key)
    ev = o["eval_every"]
    if ev is not None and ev != "epoch" and (isinstance(ev, bool) or not isinstance(ev, int) or ev <= 0):
        raise ValueError(f"eval_every must be a positive number of steps, 'epoch' or None, got {ev!r}")
    return o


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_budget(max_time: Any, steps: Any, epochs: Any) -> None:
    for name, v in (("steps", steps), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
        raise ValueError(f"max_time must be a positive number of seconds or None, got {max_time!r}")
    if max_time is None and steps is None and epochs is None:
        raise ValueError("give a budget: max_time, steps or epochs")


def _warmup(w: Any, schedule: str) -> float | int:
    if w is None:
        w = 0.3 if schedule == "onecycle" else 0.02
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or (isinstance(w, float) and w >= 1):
        raise ValueError(f"warmup must be an int number of steps or a fraction in [0, 1), got {w!r}")
    return w


def _check_optimizer(optimizer: Any, weight_decay: Any, clip_grad: Any) -> None:
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be positive or None, got {clip_grad!r}")


def _ema(ema: Any, model: nn.Module) -> float | None:
    if ema == "auto":
        ema = getattr(model, "default_ema", None)
    if ema is not None and not (isinstance(ema, float) and 0 < ema < 1):
        raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema!r}")
    return ema


def _checkpoint_every(ce: Any) -> tuple[int | None, float | None]:
    """``(steps, None)`` for an int, ``(None, seconds)`` for a float or ``"60s"``; both > 0."""
    steps, secs = _checkpoint_cadence(ce)
    for v in (steps, secs):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"checkpoint_every must be a positive number of steps or seconds, got {ce!r}")
    return steps, secs


def _checkpoint_cadence(ce: Any) -> tuple[int | None, float | None]:
    if ce is None:
        return None, None
    value: Any = ce
    if isinstance(ce, str):
        try:
            value = float(ce[:-1] if ce.endswith("s") else ce)
        except ValueError:
            raise ValueError(_CKPT_ERROR.format(ce)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(_CKPT_ERROR.format(ce))
    return (value, None) if isinstance(value, int) else (None, float(value))


def _check_explode(factor: Any, window: Any) -> None:
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not 0 < factor < math.inf):
        raise ValueError(f"explode_factor must be a positive number or None, got {factor!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"explode_window must be a positive integer (logs), got {window!r}")


def _seed(seed: Any) -> int:
    # None draws a seed from the caller's generator, as a fresh run would expect.
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    return seed


def _standardize(std: bool | None, model: nn.Module) -> bool:
    can = hasattr(model, "set_standardization")
    if std is None:
        return bool(getattr(model, "standardize_by_default", False)) and can
    if std and not can:
        raise ValueError(f"standardize=True but {type(model).__name__} has no set_standardization")
    return bool(std)
