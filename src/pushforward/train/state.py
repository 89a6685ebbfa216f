"""What a run carries between steps and across a resume: :class:`History`, :class:`EMA`, the
divergence error, and the random-number state of one process."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


class TrainingDivergedError(FloatingPointError):
    """The loss (or gradient norm, or a parameter) became NaN/inf, or the loss exploded.

    Attributes:
        step: the step where it was detected (0-based count of completed steps).
        last_loss: the logged loss of the restored weights (NaN when they are the initial ones).
        history: the :class:`History` up to the failure.
    """

    def __init__(self, message: str, step: int, last_loss: float, history: History | None = None):
        super().__init__(message)
        self.step = step
        self.last_loss = last_loss
        self.history = history


class History(dict):
    """What :func:`fit` returns: a dict with attribute access.

    Lists, one entry per logged step: ``"step"``, ``"loss"`` (mean training loss since the
    previous log; ``model.loss`` values, i.e. in the model's standardized units), ``"lr"``,
    ``"time"`` (seconds of training), ``"val_loss"`` (NaN where no evaluation happened).
    Scalars: ``best_val_loss`` (NaN without validation), ``best_step``, ``steps`` (total
    optimizer steps), ``epochs`` (data passes, NaN for simulators), ``elapsed`` (seconds),
    ``stopped_reason`` (``"max_time"``, ``"steps"``, ``"epochs"``, ``"early_stopping"``,
    ``"callback"`` or ``"interrupted"``), ``signal`` (the signal that interrupted it, e.g.
    ``"SIGTERM"``, else None).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k in ("step", "loss", "lr", "time", "val_loss"):
            self.setdefault(k, [])
        self.setdefault("best_val_loss", math.nan)
        self.setdefault("best_step", -1)
        self.setdefault("steps", 0)
        self.setdefault("epochs", math.nan)
        self.setdefault("elapsed", 0.0)
        self.setdefault("stopped_reason", None)
        self.setdefault("signal", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __repr__(self) -> str:
        last = self["loss"][-1] if self["loss"] else math.nan
        return (f"History(steps={self['steps']}, loss={last:.4g}, best_val_loss={self['best_val_loss']:.4g}, "
                f"elapsed={self['elapsed']:.1f}s, stopped_reason={self['stopped_reason']!r})")

    def append(self, rec: dict, elapsed: float) -> None:
        """Add one log record (``val_loss`` NaN when the record has none); ``time`` unrounded."""
        self["step"].append(rec["step"])
        self["loss"].append(rec["loss"])
        self["lr"].append(rec["lr"])
        self["time"].append(elapsed)
        self["val_loss"].append(rec.get("val_loss", math.nan))

    def records(self) -> list[dict]:
        """The log records as ``metrics.jsonl`` holds them (``val_loss`` only where evaluated)."""
        out = []
        for i, s in enumerate(self["step"]):
            rec = {"step": s, "loss": self["loss"][i], "lr": self["lr"][i], "time": round(self["time"][i], 4)}
            if math.isfinite(self["val_loss"][i]):
                rec["val_loss"] = self["val_loss"][i]
            out.append(rec)
        return out


class EMA:
    """Exponential moving average of a model's floating-point parameters.

    ``shadow <- d_t * shadow + (1 - d_t) * param`` after every optimizer step, with the usual
    warm-up ``d_t = min(decay, (1 + t) / (10 + t))`` so short runs are not dominated by the
    initial weights (Polyak & Juditsky, 1992; as used for score models by Song & Ermon, 2020).
    Buffers (standardization, ActNorm flags) are not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self.names = [n for n, p in model.named_parameters() if p.is_floating_point()]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step after an optimizer step."""
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        params = dict(model.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (for good)."""
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model``."""
        params = dict(model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.names}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks parameters {sorted(missing)[:5]}")
        self.num_updates = int(state["num_updates"])
        for n in self.names:
            self.shadow[n].copy_(state["shadow"][n])


def swapped_in(ema: EMA | None, model: nn.Module) -> contextlib.AbstractContextManager:
    """``ema.swapped(model)``, or nothing to do without an EMA."""
    return ema.swapped(model) if ema is not None else contextlib.nullcontext()


def eval_weights(model: nn.Module, ema: EMA | None) -> dict:
    """A detached copy of the weights used for evaluation (the EMA ones if enabled)."""
    with swapped_in(ema, model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rng_state(device: torch.device) -> dict:
    """This process's torch (and CUDA), NumPy and Python random states."""
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device) -> None:
    """Restore a state from :func:`rng_state`."""
    torch.set_rng_state(s["torch"].cpu())
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"].cpu(), device)


def cuda_devices(device: torch.device) -> list[torch.device]:
    """The devices :func:`torch.random.fork_rng` must save for work on ``device``."""
    return [device] if device.type == "cuda" else []
