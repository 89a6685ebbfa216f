"""Training: :func:`fit` trains any pushforward model on its own objective ``model.loss``.

>>> import pushforward as pf
>>> model = pf.build("nsf", dim=2)                    # doctest: +SKIP
>>> history = pf.fit(model, x, max_time=30)            # doctest: +SKIP
>>> history.stopped_reason, history.best_val_loss     # doctest: +SKIP

Budgets. ``max_time`` (seconds), ``steps`` and ``epochs`` are budgets *for this call*;
training stops at whichever runs out first. A resumed run (``resume=``) continues the step
counter, the history and the optimizer/EMA/RNG state of its checkpoint.

Learning-rate schedules are functions of the run's *progress* ``p`` in [0, 1]:
``p = step / horizon`` when a step or epoch budget is given (``horizon = steps already done +
this call's steps``, so a run interrupted and resumed with the remaining steps follows the same
schedule), else ``p = elapsed / (elapsed before + max_time)`` (time-fraction based: a 60 s run
warms up over the first ``warmup`` fraction of its time and anneals to the end of its budget).
Time-based schedules are therefore not bit-reproducible; step-based ones are.

Reproducibility. Under ``seed`` (CPU, same data, same initial model) the history and weights
are identical from run to run, and ``N steps + resume M steps`` equals ``N + M`` steps
straight. ``fit`` runs inside :func:`torch.random.fork_rng` (and saves/restores NumPy's and
Python's global RNGs), so it never changes the caller's random streams.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pushforward import distributed as ddp
from pushforward._validate import check_finite
from pushforward.models import atomic_save, model_payload

CHECKPOINT_FORMAT = "pushforward-checkpoint"
SCHEDULES = ("constant", "cosine", "onecycle")
_VAL_CAP = 20000  # validation points materialised from a map-style Dataset
_STATS_DRAW = 10000  # rows used for standardization statistics of non-tensor data


class TrainingDivergedError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf.

    Attributes:
        step: the step whose loss was non-finite (0-based count of completed steps).
        last_loss: the last finite logged loss (NaN if none).
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
    previous log; ``model.loss`` values, i.e. in the model's standardized units), ``"lr"``, ``"time"`` (seconds of training), ``"val_loss"`` (NaN where no
    evaluation happened). Scalars: ``best_val_loss`` (NaN without validation), ``best_step``,
    ``steps`` (total optimizer steps), ``epochs`` (data passes, NaN for simulators),
    ``elapsed`` (seconds), ``stopped_reason`` (``"max_time"``, ``"steps"``, ``"epochs"``,
    ``"early_stopping"``, ``"callback"`` or ``"interrupted"``).
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
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        params = dict(model.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
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


def lr_factor(kind: str, p: float, step: int, warmup: float | int, time_based: bool, horizon: int | None) -> float:
    """Multiplier of the base learning rate at progress ``p`` in [0, 1] (see module docstring).

    * ``constant``: 1 after warm-up.
    * ``cosine``: ``0.5 (1 + cos(pi p))`` after a linear warm-up (Loshchilov & Hutter, 2017).
    * ``onecycle``: cosine ramp from ``1/25`` up to 1 over the first ``warmup`` fraction
      (default 0.3), then cosine annealing down to ``1/1e4`` (Smith & Topin, 2018).

    ``warmup``: an int counts steps; a float in [0, 1) is a fraction of the budget.
    """
    p = min(max(p, 0.0), 1.0)
    if kind == "onecycle":
        pct = float(warmup) / horizon if isinstance(warmup, int) and horizon else float(warmup or 0.3)
        pct = min(max(pct, 1e-6), 1 - 1e-6)
        if p < pct:
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * p / pct))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (p - pct) / (1 - pct)))
    warm = 1.0
    if isinstance(warmup, int) and warmup > 0:
        warm = min(1.0, (step + 1) / warmup)
    elif warmup and warmup > 0:
        if time_based or not horizon:
            warm = min(1.0, max(p / warmup, 0.01))
        else:
            warm = min(1.0, (step + 1) / max(1, round(warmup * horizon)))
    if kind == "constant":
        return warm
    return warm * 0.5 * (1 + math.cos(math.pi * p))


# ============================================================================ data sources
def _split_item(item: Any) -> tuple[Any, Any]:
    """A batch or item is ``x``, ``(x,)``, ``(x, context)`` or ``{"x": ..., "context": ...}``."""
    if isinstance(item, dict):
        return item["x"], item.get("context")
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise ValueError(f"data items must be x or (x, context); got a tuple of {len(item)}")
    return item, None


def _to_tensor(a: Any, dtype: torch.dtype, name: str) -> Tensor | None:
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got an array of dtype {a.dtype}")
        a = torch.from_numpy(np.ascontiguousarray(a))
    elif not isinstance(a, Tensor):
        try:
            a = torch.as_tensor(a)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor or array, got {type(a).__name__}") from e
    if a.is_complex():
        raise TypeError(f"{name} must be real, got {a.dtype}")
    return a.to(dtype)


class _Source:
    """Yields global batches, sliced to this rank's share: ``next() -> (x, context, n_global)``."""

    steps_per_epoch: int | None = None
    epoch: int = 0
    pos: int = 0

    def __init__(self, rank: int, world: int, device: torch.device, dtype: torch.dtype):
        self.rank, self.world, self.device, self.dtype = rank, world, device, dtype

    def _shard(self, t: Tensor | None) -> Tensor | None:
        if t is None or self.world == 1:
            return t
        return t.tensor_split(self.world)[self.rank]

    def _move(self, t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return t.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.steps_per_epoch if self.steps_per_epoch else math.nan


class _IndexedSource(_Source):
    """Tensors or a map-style Dataset; each epoch is a fresh permutation derived from
    ``(seed, epoch)``, so the data order depends only on the seed and the position."""

    def __init__(self, get: Callable[[Tensor], tuple[Tensor, Tensor | None]], n: int, batch_size: int,
                 seed: int, **kw):
        super().__init__(**kw)
        self.get, self.n, self.seed = get, n, seed
        self.bs = min(batch_size, n)
        self.steps_per_epoch = n // self.bs  # the last partial batch is dropped
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * (self.epoch + 1)) % (2**63))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), self.epoch
        return self._perm

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        if self.pos >= self.steps_per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self._permutation()[self.pos * self.bs:(self.pos + 1) * self.bs]
        self.pos += 1
        if self.world > 1:
            idx = idx.tensor_split(self.world)[self.rank]
        x, c = self.get(idx)
        return self._move(x), self._move(c), self.bs


class _LoaderSource(_Source):
    """A DataLoader (or any re-iterable of batches). Resuming replays the epoch up to the saved
    position, which is exact when the loader's order is deterministic."""

    def __init__(self, loader: Any, **kw):
        super().__init__(**kw)
        self.loader = loader
        try:
            self.steps_per_epoch = len(loader) or None
        except TypeError:
            self.steps_per_epoch = None
        self._it = None

    def _batch(self) -> tuple[Tensor, Tensor | None]:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
                for _ in range(self.pos):
                    next(self._it)
            try:
                x, c = _split_item(next(self._it))
                return _to_tensor(x, self.dtype, "data"), _to_tensor(c, self.dtype, "context")
            except StopIteration:
                if self.pos == 0:
                    raise ValueError("the data loader yielded no batches") from None
                self._it, self.epoch, self.pos = None, self.epoch + 1, 0

    def load_state(self, s: dict) -> None:
        super().load_state(s)
        self._it = None

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        x, c = self._batch()
        self.pos += 1
        return self._move(self._shard(x)), self._move(self._shard(c)), x.shape[0]


class _SimulatorSource(_Source):
    """A callable ``n -> batch``: every step draws fresh data (no epochs). Each rank draws its
    own share of the global batch from its own random stream."""

    def __init__(self, fn: Callable[[int], Any], batch_size: int, **kw):
        super().__init__(**kw)
        self.fn, self.bs = fn, batch_size

    def draw(self, n: int) -> tuple[Tensor, Tensor | None]:
        x, c = _split_item(self.fn(n))
        x, c = _to_tensor(x, self.dtype, "simulator output"), _to_tensor(c, self.dtype, "simulator context")
        if x.shape[0] != n:
            raise ValueError(f"the simulator was asked for {n} samples and returned {x.shape[0]}")
        return x, c

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        n_local = len(range(self.rank, self.bs, self.world))
        x, c = self.draw(n_local)
        self.pos += 1
        return self._move(x), self._move(c), self.bs


# ============================================================================ checks
def _check_data(x: Tensor, context: Tensor | None, model: nn.Module, what: str = "data") -> Tensor:
    event_shape = getattr(model, "event_shape", None)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {list(x.shape)})")
    if event_shape is not None:
        event_shape = tuple(event_shape)
        if x.dim() == 1 and event_shape == (1,):
            x = x[:, None]
        if tuple(x.shape[1:]) != event_shape:
            raise ValueError(
                f"{what} has shape {list(x.shape)} (points of shape {list(x.shape[1:])}) but the model "
                f"expects points of shape {list(event_shape)}, i.e. [N, {', '.join(map(str, event_shape))}]"
            )
    check_finite(x, what)
    context_dim = int(getattr(model, "context_dim", 0) or 0)
    if context is not None:
        if context_dim == 0:
            raise ValueError("a context was given but the model is unconditional (context_dim=0)")
        if context.dim() == 1 and context_dim == 1:
            context = context[:, None]
        if context.dim() != 2 or context.shape[1] != context_dim:
            raise ValueError(f"context has shape {list(context.shape)} but the model expects [N, {context_dim}]")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context has {context.shape[0]} rows but {what} has {x.shape[0]}")
        check_finite(context, "context")
    elif context_dim:
        raise ValueError(f"the model is conditional (context_dim={context_dim}) but no context was given")
    return x


def _fix_context(c: Tensor | None) -> Tensor | None:
    return c[:, None] if c is not None and c.dim() == 1 else c


def _standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.double()
    loc = x.mean(0)
    scale = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(loc)
    # A constant column has no scale to learn: leave it unscaled rather than divide by ~0.
    scale = torch.where((scale > 1e-12 * (1 + loc.abs())) & torch.isfinite(scale), scale, torch.ones_like(scale))
    return loc, scale


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _rng_state(device: torch.device) -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"].cpu())
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"].cpu(), device)


def _resolve_checkpoint(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(p)!r}")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint (``last.pt``/``best.pt`` or a run directory)."""
    p = _resolve_checkpoint(path)
    ckpt = torch.load(p, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(p)!r} is not a pushforward training checkpoint")
    return ckpt


# ============================================================================ fit
def fit(
    model: nn.Module,
    data: Any,
    context: Any = None,
    *,
    max_time: float | None = 60,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = None,
    warmup: float | int | None = None,
    clip_grad: float | None = 10.0,
    ema: float | None | str = "auto",
    amp: bool | str = False,
    gradient_checkpointing: bool = False,
    val_fraction: float | None = None,
    val_data: Any = None,
    patience: int | None = None,
    eval_every: int | None = None,
    standardize: bool | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | float | str | None = "60s",
    resume: str | os.PathLike | None = None,
    log_every: int | None = None,
    callback: Callable[[int, dict], Any] | None = None,
    progress: bool | None = None,
    tensorboard: bool | None = None,
    distributed: bool | None = None,
) -> History:
    """Train ``model`` on ``data`` by minimising ``model.loss`` with Adam/AdamW.

    Args:
        model: a :class:`pushforward.FlowModel` (anything with ``loss(x, context)`` works).
        data: ``Tensor``/``ndarray`` ``[N, *event_shape]``; a map-style ``Dataset`` or a
            ``DataLoader`` whose items are ``x`` or ``(x, context)``; an object with ``.x``
            (and ``.context``) such as :func:`pushforward.data.load`'s result; or a callable
            ``n -> batch`` (a simulator: fresh data every step, no epochs).
        context: ``[N, C]`` conditioning for tensor data (else taken from the items).
        max_time, steps, epochs: budgets for this call; the first to run out stops training.
        batch_size: global batch size (default ``model.default_batch_size`` or 256).
        lr: peak learning rate (default ``model.default_lr`` or 1e-3).
        optimizer: ``"adam"`` or ``"adamw"`` (``weight_decay > 0`` with Adam means AdamW).
        schedule: ``"constant"``, ``"cosine"`` (default) or ``"onecycle"``; see module doc.
        warmup: linear warm-up: int steps or a fraction of the budget (default 0.02;
            ``onecycle``'s rising fraction, default 0.3).
        clip_grad: max global gradient norm (None: no clipping).
        ema: EMA decay of the weights (e.g. 0.999) or None; ``"auto"`` takes
            ``model.default_ema``. Evaluation uses the EMA weights and the model holds them at
            the end; checkpoints keep both.
        amp: mixed precision: True (bf16 autocast where supported, else fp16 with a gradient
            scaler on CUDA), ``"bf16"`` or ``"fp16"``.
        gradient_checkpointing: set ``model.gradient_checkpointing = True`` (warns if the model
            has no such switch).
        val_fraction: held-out fraction (default 0.1 for tensor data with N >= 100, else 0).
        val_data: explicit validation data (tensor, or ``(x, context)``) instead of a split.
        patience: stop after this many evaluations without improvement (None: never). With
            validation the model ends with the best evaluated weights.
        eval_every: evaluate every this many steps (default: 10 times per step budget, or
            every tenth of ``max_time``).
        standardize: fold per-dimension standardization into the model (default
            ``model.standardize_by_default``); stats from the training data (or a draw of
            10 000 for simulators/loaders), set before training, never on resume.
        seed: seeds data order, validation split and the model's own randomness.
        device: default: the model's device.
        out_dir: writes ``last.pt``, ``best.pt``, ``metrics.jsonl`` (and TensorBoard events).
        checkpoint_every: an int counts steps; a float or ``"60s"`` counts seconds; None only
            at the end. A checkpoint is also written on KeyboardInterrupt.
        resume: checkpoint file or run directory to continue from.
        log_every: record the mean loss every this many steps (default from the budget).
        callback: ``callback(step, metrics)`` at every log; returning True stops training.
        progress: tqdm bar (default: only when stderr is a terminal).
        tensorboard: write TensorBoard events to ``out_dir/tensorboard`` (default: when the
            ``tensorboard`` package is installed and ``out_dir`` is given).
        distributed: use DDP (default: when launched by torchrun with WORLD_SIZE > 1).

    Returns:
        A :class:`History`.

    Raises:
        ValueError: bad data (NaN/inf, wrong shape, context mismatch) or options.
        TrainingDivergedError: the loss became NaN/inf; the model is restored to the last good
            weights and the last good checkpoint is kept.
    """
    trainer = _Trainer(model, data, context, locals())
    return trainer.run()


class _Trainer:
    def __init__(self, model: nn.Module, data: Any, context: Any, opts: dict):
        self.model = model
        self.o = {k: v for k, v in opts.items() if k not in ("model", "data", "context")}
        self.data, self.context = data, context

    # ------------------------------------------------------------------ options
    def _resolve(self) -> None:
        o, m = self.o, self.model
        if not hasattr(m, "loss"):
            raise TypeError(f"fit needs a model with a .loss(x, context) method, got {type(m).__name__}")
        for name in ("steps", "epochs"):
            v = o[name]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if o["max_time"] is not None and not (isinstance(o["max_time"], (int, float)) and o["max_time"] > 0):
            raise ValueError(f"max_time must be a positive number of seconds or None, got {o['max_time']!r}")
        if o["max_time"] is None and o["steps"] is None and o["epochs"] is None:
            raise ValueError("give a budget: max_time, steps or epochs")
        self.batch_size = o["batch_size"] if o["batch_size"] is not None else int(getattr(m, "default_batch_size", 256))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self.lr = float(o["lr"] if o["lr"] is not None else getattr(m, "default_lr", 1e-3))
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {o['lr']!r}")
        self.schedule = o["schedule"] or getattr(m, "default_schedule", "cosine")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        w = o["warmup"]
        if w is None:
            w = 0.3 if self.schedule == "onecycle" else 0.02
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or (isinstance(w, float) and w >= 1):
            raise ValueError(f"warmup must be an int number of steps or a fraction in [0, 1), got {w!r}")
        self.warmup = w
        if o["optimizer"] not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {o['optimizer']!r}")
        if not o["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {o['weight_decay']!r}")
        if o["clip_grad"] is not None and not o["clip_grad"] > 0:
            raise ValueError(f"clip_grad must be positive or None, got {o['clip_grad']!r}")
        ema = o["ema"]
        if ema == "auto":
            ema = getattr(m, "default_ema", None)
        if ema is not None and not (isinstance(ema, float) and 0 < ema < 1):
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema!r}")
        self.ema_decay = ema
        if o["patience"] is not None and (not isinstance(o["patience"], int) or o["patience"] <= 0):
            raise ValueError(f"patience must be a positive integer or None, got {o['patience']!r}")
        ce = o["checkpoint_every"]
        self.ckpt_steps = self.ckpt_secs = None
        if isinstance(ce, str):
            try:
                self.ckpt_secs = float(ce[:-1] if ce.endswith("s") else ce)
            except ValueError:
                raise ValueError(f"checkpoint_every must be steps (int) or seconds ('60s'), got {ce!r}") from None
        elif isinstance(ce, bool):
            raise ValueError(f"checkpoint_every must be steps (int) or seconds ('60s'), got {ce!r}")
        elif isinstance(ce, int):
            self.ckpt_steps = ce
        elif isinstance(ce, float):
            self.ckpt_secs = ce
        elif ce is not None:
            raise ValueError(f"checkpoint_every must be steps (int) or seconds ('60s'), got {ce!r}")

    # ------------------------------------------------------------------ setup
    def _setup_distributed(self) -> None:
        want = self.o["distributed"]
        if want is None:
            want = ddp.is_initialized() and ddp.get_world_size() > 1 or ddp.env_world_size() > 1
        if want:
            ddp.init_from_env(device=self.o["device"])
        self.dist = bool(want) and ddp.is_initialized() and ddp.get_world_size() > 1
        self.rank = ddp.get_rank() if self.dist else 0
        self.world = ddp.get_world_size() if self.dist else 1
        self.main = self.rank == 0

    def _setup_device(self) -> None:
        dev = self.o["device"]
        if dev is None:
            nccl = self.dist and torch.distributed.get_backend() == "nccl"
            dev = ddp.default_device() if nccl else _model_device(self.model)
        self.device = torch.device(dev)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.model.to(self.device)
        self.dtype = _model_dtype(self.model)

    def _setup_data(self) -> None:
        data, context, o = self.data, self.context, self.o
        kw = {"rank": self.rank, "world": self.world, "device": self.device, "dtype": self.dtype}
        if self.batch_size < self.world:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the number of processes {self.world}")
        self.val = None
        self.init_batch = None
        stats_x = None
        if isinstance(getattr(data, "x", None), (Tensor, np.ndarray)):  # e.g. pushforward.data.load(...)
            if context is None:
                context = getattr(data, "context", None)
            data = data.x
        if isinstance(data, (Tensor, np.ndarray)):
            x = _to_tensor(data, self.dtype, "data")
            c = _fix_context(_to_tensor(context, self.dtype, "context"))
            x = _check_data(x, c, self.model)
            n = x.shape[0]
            frac = o["val_fraction"]
            if frac is None:
                frac = 0.1 if (n >= 100 and o["val_data"] is None) else 0.0
            if not 0 <= frac < 1:
                raise ValueError(f"val_fraction must be in [0, 1), got {frac!r}")
            n_val = int(round(frac * n))
            if frac > 0 and (n_val < 1 or n - n_val < 1):
                raise ValueError(f"val_fraction={frac} leaves no validation or training data with N={n}")
            if n_val:
                g = torch.Generator().manual_seed(self.seed + 4242)
                perm = torch.randperm(n, generator=g)
                vi, ti = perm[:n_val], perm[n_val:]
                self.val = (x[vi], None if c is None else c[vi])
                x, c = x[ti], (None if c is None else c[ti])
            if self.device.type != "cpu" and x.numel() * x.element_size() < 2**31:
                x = x.to(self.device)
                c = None if c is None else c.to(self.device)

            def get(idx: Tensor, x=x, c=c) -> tuple[Tensor, Tensor | None]:
                idx = idx.to(x.device)
                return x[idx], (None if c is None else c[idx])

            self.source = _IndexedSource(get, x.shape[0], self.batch_size, self.seed, **kw)
            stats_x = x
            g = torch.Generator().manual_seed(self.seed + 777)
            ii = torch.randperm(x.shape[0], generator=g)[: self.source.bs].to(x.device)
            self.init_batch = (x[ii], None if c is None else c[ii])
        elif isinstance(data, torch.utils.data.DataLoader):
            if context is not None:
                raise ValueError("with a DataLoader, the context comes from its (x, context) items")
            self.source = _LoaderSource(data, **kw)
            xs, cs, rows = [], [], 0
            for b in data:
                bx, bc = _split_item(b)
                bx, bc = _to_tensor(bx, self.dtype, "data"), _fix_context(_to_tensor(bc, self.dtype, "context"))
                _check_data(bx, bc, self.model, "data batch")
                xs.append(bx)
                cs.append(bc)
                rows += bx.shape[0]
                if rows >= _STATS_DRAW:
                    break
            if not xs:
                raise ValueError("the data loader yielded no batches")
            stats_x = torch.cat(xs)
            self.init_batch = (xs[0], cs[0])
            if o["val_fraction"]:
                raise ValueError("val_fraction needs tensor data or a Dataset; pass val_data with a DataLoader")
        elif isinstance(data, torch.utils.data.Dataset):
            if context is not None:
                raise ValueError("with a Dataset, the context comes from its (x, context) items")
            try:
                n = len(data)
            except TypeError:
                raise TypeError("fit needs a map-style Dataset (with __len__); wrap iterable ones in a DataLoader") from None
            if n == 0:
                raise ValueError("the dataset is empty")

            def collate(items: list) -> tuple[Tensor, Tensor | None]:
                pairs = [_split_item(it) for it in items]
                x = torch.stack([_to_tensor(p[0], self.dtype, "data") for p in pairs])
                c = None if pairs[0][1] is None else torch.stack([_to_tensor(p[1], self.dtype, "context") for p in pairs])
                return x, _fix_context(c)

            frac = o["val_fraction"] or 0.0
            if not 0 <= frac < 1:
                raise ValueError(f"val_fraction must be in [0, 1), got {frac!r}")
            g = torch.Generator().manual_seed(self.seed + 4242)
            perm = torch.randperm(n, generator=g)
            n_val = int(round(frac * n))
            if frac > 0 and (n_val < 1 or n - n_val < 1):
                raise ValueError(f"val_fraction={frac} leaves no validation or training data with N={n}")
            train_idx = perm[n_val:]
            if n_val:
                vx, vc = collate([data[int(i)] for i in perm[: min(n_val, _VAL_CAP)]])
                self.val = (vx, vc)

            def get(idx: Tensor) -> tuple[Tensor, Tensor | None]:
                return collate([data[int(i)] for i in train_idx[idx]])

            self.source = _IndexedSource(get, len(train_idx), self.batch_size, self.seed, **kw)
            sx, sc = get(torch.arange(min(len(train_idx), _STATS_DRAW)))
            _check_data(sx, sc, self.model, "data items")
            stats_x = sx
            self.init_batch = (sx[: self.source.bs], None if sc is None else sc[: self.source.bs])
        elif callable(data):
            if o["epochs"] is not None:
                raise ValueError("epochs has no meaning for a simulator (data is a callable n -> batch); use steps or max_time")
            if context is not None:
                raise ValueError("a simulator returns its own context: have it return (x, context)")
            self.source = _SimulatorSource(data, self.batch_size, **kw)
            need_stats = not self.resuming
            sx, sc = self.source.draw(max(_STATS_DRAW, self.batch_size) if need_stats else self.batch_size)
            _check_data(sx, _fix_context(sc), self.model, "simulator output")
            stats_x = sx
            self.init_batch = (sx[: self.batch_size], _fix_context(sc)[: self.batch_size] if sc is not None else None)
        else:
            raise TypeError(f"data must be a tensor/array, Dataset, DataLoader or callable, got {type(data).__name__}")

        if o["val_data"] is not None:
            vx, vc = _split_item(o["val_data"])
            vx, vc = _to_tensor(vx, self.dtype, "val_data"), _fix_context(_to_tensor(vc, self.dtype, "val context"))
            vx = _check_data(vx, vc, self.model, "val_data")
            self.val = (vx, vc)
        self.stats_x = stats_x

    def _setup_model(self) -> None:
        m, o = self.model, self.o
        std = o["standardize"]
        if std is None:
            std = bool(getattr(m, "standardize_by_default", False)) and hasattr(m, "set_standardization")
        if std and not hasattr(m, "set_standardization"):
            raise ValueError(f"standardize=True but {type(m).__name__} has no set_standardization")
        if o["gradient_checkpointing"]:
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True
            else:
                warnings.warn(f"{type(m).__name__} does not support gradient checkpointing; ignoring it", stacklevel=3)
        if not self.resuming:
            if std:
                loc, scale = _standardization(self.stats_x)
                m.set_standardization(loc.to(self.dtype), scale.to(self.dtype))
            if hasattr(m, "initialize"):
                xb, cb = self.init_batch
                xb = xb.to(self.device, self.dtype)
                cb = None if cb is None else cb.to(self.device, self.dtype)
                m.initialize(xb, cb)
        xb, cb = self.init_batch
        self.probe_batch = (xb[:64], None if cb is None else cb[:64])
        self.stats_x = self.init_batch = None  # free memory

    def _unused_parameters(self) -> bool:
        """Whether some trainable parameter gets no gradient from the loss (one probe step).

        DDP must know (``find_unused_parameters``); the extra graph traversal it costs is
        paid only by models that need it.
        """
        xb, cb = self.probe_batch
        xb = xb.to(self.device, self.dtype)
        cb = None if cb is None else cb.to(self.device, self.dtype)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.model.loss(xb, cb).backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        unused = any(p.grad is None for p in params)
        for p in params:
            p.grad = None
        return unused

    def _setup_amp(self) -> None:
        amp, dev = self.o["amp"], self.device
        self.autocast_dtype, self.scaler = None, None
        if not amp:
            return
        if amp is True:
            if dev.type == "cuda":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                amp = "bf16"
        if amp in ("bf16", "bfloat16"):
            self.autocast_dtype = torch.bfloat16
        elif amp in ("fp16", "float16"):
            if dev.type != "cuda":
                raise ValueError(f"amp='fp16' needs a CUDA device, not {dev}; use amp='bf16'")
            self.autocast_dtype = torch.float16
            self.scaler = torch.amp.GradScaler("cuda")
        else:
            raise ValueError(f"amp must be True, False, 'bf16' or 'fp16', got {amp!r}")
        if dev.type not in ("cpu", "cuda", "mps", "xpu"):
            warnings.warn(f"mixed precision is not supported on {dev}; training in full precision", stacklevel=3)
            self.autocast_dtype, self.scaler = None, None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ state
    def _eval_state(self) -> dict:
        """A detached copy of the weights used for evaluation (EMA if enabled)."""
        if self.ema is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with self.ema.swapped(self.model):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _capture(self) -> dict:
        return {"rng": _rng_state(self.device), "data": self.source.state(),
                "window": (self.win_sum, self.win_n)}

    def _checkpoint(self, boundary: dict, gather: bool = True, path: str = "last.pt") -> None:
        rngs = ddp.all_gather_object(boundary["rng"]) if (self.dist and gather) else [boundary["rng"]]
        if not self.main or self.out is None:
            return
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "train_state": raw,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "scheduler": {"kind": self.schedule, "warmup": self.warmup, "lr": self.lr,
                          "horizon_steps": self.horizon_steps, "horizon_time": self.horizon_time},
            "step": self.step,
            "elapsed": self.elapsed,
            "data": boundary["data"],
            "window": boundary["window"],
            "rng": rngs,
            "history": dict(self.history),
            "best": self.best,
            "fit": {"batch_size": self.batch_size, "lr": self.lr, "seed": self.seed, "ema": self.ema_decay,
                    "schedule": self.schedule, "warmup": self.warmup, "world_size": self.world},
        }
        cm = self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()
        with cm:
            ckpt["model"] = model_payload(self.model)
            atomic_save(ckpt, self.out / path)
        self.last_ckpt_step, self.last_ckpt_time = self.step, self.elapsed

    def _load_resume(self, path: Any) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["train_state"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise ValueError(f"checkpoint {str(path)!r} does not fit this model: {' '.join(first[:3])}") from None
        self.ckpt = ckpt
        self.step = int(ckpt["step"])
        self.elapsed_before = float(ckpt["elapsed"])
        self.history = History(ckpt["history"])
        self.best = ckpt["best"]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _val_loss(self) -> float:
        vx, vc = self.val
        total, count = 0.0, 0
        chunk = max(self.batch_size, 1024)
        was = self.model.training
        self.model.eval()
        cm = self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()
        # A fixed seed makes stochastic objectives (flow matching, score matching) comparable
        # between evaluations and keeps the training random stream untouched.
        devices = [self.device] if self.device.type == "cuda" else []
        with cm, torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + 99991)
            for i in range(0, vx.shape[0], chunk):
                xb = vx[i:i + chunk].to(self.device, self.dtype)
                cb = None if vc is None else vc[i:i + chunk].to(self.device, self.dtype)
                loss = float(self.model.loss(xb, cb))
                total += loss * xb.shape[0]
                count += xb.shape[0]
        self.model.train(was)
        return total / count

    # ------------------------------------------------------------------ main
    def run(self) -> History:
        o = self.o
        self._resolve()
        self._setup_distributed()
        seed = o["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self._setup_device()
        devices = [self.device] if self.device.type == "cuda" else []
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + self.rank)
                np.random.seed((seed + self.rank) % 2**32)
                random.seed(seed + self.rank)
                return self._run()
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    def _run(self) -> History:
        o, model = self.o, self.model
        self.resuming = o["resume"] is not None
        self.step, self.elapsed_before = 0, 0.0
        self.history, self.best, self.ckpt = History(), None, None
        self.win_sum, self.win_n = 0.0, 0
        if self.resuming:
            self._load_resume(o["resume"])
            fitrec = self.ckpt.get("fit", {})
            # Options left to their defaults continue the checkpoint's run.
            if o["batch_size"] is None and "batch_size" in fitrec:
                self.batch_size = int(fitrec["batch_size"])
            if o["lr"] is None and "lr" in fitrec:
                self.lr = float(fitrec["lr"])
        self._setup_data()
        self._setup_model()
        self._setup_amp()
        model.train()
        self.loss_module = None
        if self.dist:
            self.loss_module = ddp.wrap(model, self.device, find_unused_parameters=self._unused_parameters())

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        use_w = o["optimizer"] == "adamw" or o["weight_decay"] > 0
        Opt = torch.optim.AdamW if use_w else torch.optim.Adam
        self.opt = Opt(params, lr=self.lr, weight_decay=o["weight_decay"])
        self.ema = EMA(model, self.ema_decay) if self.ema_decay is not None else None
        if self.ckpt is not None:
            self.opt.load_state_dict(self.ckpt["optimizer"])
            if self.ema is not None and self.ckpt.get("ema") is not None:
                self.ema.load_state_dict(self.ckpt["ema"])
            if self.scaler is not None and self.ckpt.get("scaler") is not None:
                self.scaler.load_state_dict(self.ckpt["scaler"])
            self.source.load_state(self.ckpt["data"])
            self.win_sum, self.win_n = self.ckpt.get("window", (0.0, 0))
            rngs = self.ckpt.get("rng") or []
            if len(rngs) == self.world:
                _set_rng_state(rngs[self.rank], self.device)
            elif rngs and self.rank == 0:
                _set_rng_state(rngs[0], self.device)

        # budgets and schedule horizon
        start = self.step
        self.step_limit = None
        if o["steps"] is not None:
            self.step_limit = start + o["steps"]
        self.epoch_limit = None
        if o["epochs"] is not None:
            spe = self.source.steps_per_epoch
            if spe is None:
                raise ValueError("epochs needs data of known length; use steps or max_time")
            self.epoch_limit = start + o["epochs"] * spe
        limits = [v for v in (self.step_limit, self.epoch_limit) if v is not None]
        self.horizon_steps = min(limits) if limits else None
        self.horizon_time = None if self.horizon_steps else self.elapsed_before + o["max_time"]
        self.time_limit = None if o["max_time"] is None else self.elapsed_before + o["max_time"]
        log_every = o["log_every"]
        if log_every is None:
            log_every = max(1, min(50, self.horizon_steps // 50)) if self.horizon_steps else 25
        eval_every = o["eval_every"]
        eval_secs = None
        if eval_every is None:
            if self.horizon_steps:
                eval_every = max(1, self.horizon_steps // 10)
            else:
                eval_every, eval_secs = None, o["max_time"] / 10
        self.log_every, self.eval_every, self.eval_secs = log_every, eval_every, eval_secs

        # output
        self.out = Path(o["out_dir"]) if o["out_dir"] is not None else None
        metrics_f = tb = None
        if self.out is not None and self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Rewritten from the checkpoint's history so a resumed run has no duplicate lines.
            metrics_f = open(self.out / "metrics.jsonl", "w")
            for rec in _records(self.history):
                metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            want_tb = o["tensorboard"]
            if want_tb is None:
                want_tb = importlib.util.find_spec("tensorboard") is not None
            if want_tb:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)
                except ImportError:
                    tb = None
        self.last_ckpt_step, self.last_ckpt_time = self.step, self.elapsed_before
        show = o["progress"]
        if show is None:
            show = sys.stderr.isatty()
        bar = None
        if show and self.main:
            from tqdm.auto import tqdm

            if self.horizon_steps:
                bar = tqdm(total=self.horizon_steps, initial=self.step, unit="step", dynamic_ncols=True)
            else:
                bar = tqdm(total=round(o["max_time"]), unit="s", dynamic_ncols=True,
                           bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")

        last_good = self._eval_state()
        last_good_loss = math.nan
        last_logged = self.history["step"][-1] if self.history["step"] else -1
        last_eval_time = self.elapsed_before
        bad_evals = int(self.best["bad_evals"]) if self.best else 0
        stop_requested = None
        t0 = time.perf_counter()
        self.elapsed = self.elapsed_before
        phase = "boundary"
        boundary = self._capture()
        reason = None
        try:
            while True:
                phase = "boundary"
                boundary = self._capture()
                # -------- stop decision (all inputs are synchronised across ranks)
                reason = stop_requested
                if reason is None and self.step_limit is not None and self.step >= self.step_limit:
                    reason = "steps"
                if reason is None and self.epoch_limit is not None and self.step >= self.epoch_limit:
                    reason = "epochs"
                if reason is None and self.time_limit is not None and self.elapsed >= self.time_limit:
                    reason = "max_time"
                # -------- evaluation and logging
                due_eval = self.val is not None and self.step > start and (
                    (self.eval_every and self.step % self.eval_every == 0)
                    or (self.eval_secs and self.elapsed - last_eval_time >= self.eval_secs)
                    or reason is not None)
                due_log = self.step > last_logged and self.step > 0 and (
                    self.step % self.log_every == 0 or due_eval or reason is not None)
                if due_log and self.win_n == 0 and not due_eval:
                    due_log = False
                if due_log:
                    val_loss = math.nan
                    if due_eval:
                        val_loss = self._val_loss()
                        last_eval_time = self.elapsed
                        if self.best is None or val_loss < self.best["val_loss"]:
                            self.best = {"val_loss": val_loss, "step": self.step, "bad_evals": 0,
                                         "state": self._eval_state()}
                            bad_evals = 0
                            if self.out is not None and self.main:
                                self._write_best()
                        else:
                            bad_evals += 1
                            self.best["bad_evals"] = bad_evals
                        self.history["best_val_loss"] = self.best["val_loss"]
                        self.history["best_step"] = self.best["step"]
                    loss = self.win_sum / self.win_n if self.win_n else math.nan
                    cur_lr = self.opt.param_groups[0]["lr"]
                    rec = {"step": self.step, "loss": loss, "lr": cur_lr, "time": round(self.elapsed, 4)}
                    if due_eval:
                        rec["val_loss"] = val_loss
                    h = self.history
                    h["step"].append(self.step)
                    h["loss"].append(loss)
                    h["lr"].append(cur_lr)
                    h["time"].append(self.elapsed)
                    h["val_loss"].append(val_loss)
                    self.win_sum, self.win_n = 0.0, 0
                    last_logged = self.step
                    if math.isfinite(loss):
                        last_good, last_good_loss = self._eval_state(), loss
                    if metrics_f is not None:
                        metrics_f.write(json.dumps(_json_safe(rec)) + "\n")
                        metrics_f.flush()
                    if tb is not None:
                        for k in ("loss", "lr", "val_loss"):
                            if k in rec and math.isfinite(rec[k]):
                                tb.add_scalar(f"train/{k}" if k != "val_loss" else "val/loss", rec[k], self.step)
                    if bar is not None:
                        bar.set_postfix(step=self.step, loss=f"{loss:.4g}", refresh=False)
                    if o["patience"] is not None and bad_evals >= o["patience"] and reason is None:
                        reason = "early_stopping"
                    boundary = self._capture()  # the window was reset: later checkpoints start here
                    if callback := o["callback"]:
                        if callback(self.step, dict(rec)) is True and reason is None:
                            reason = stop_requested = "callback"
                        if self.dist:
                            flag = torch.tensor([1.0 if reason == "callback" else 0.0], device=self.device)
                            if ddp.all_reduce_sum(flag).item() > 0 and reason is None:
                                reason = "callback"
                # -------- checkpoint
                if self.out is not None and reason is None and self.step > self.last_ckpt_step and (
                        (self.ckpt_steps and self.step - self.last_ckpt_step >= self.ckpt_steps)
                        or (self.ckpt_secs is not None and self.elapsed - self.last_ckpt_time >= self.ckpt_secs)):
                    self._checkpoint(boundary)
                if reason is not None:
                    break

                # -------- one optimizer step
                phase = "compute"
                p = (self.step / self.horizon_steps) if self.horizon_steps else (self.elapsed / self.horizon_time)
                cur_lr = self.lr * lr_factor(self.schedule, p, self.step, self.warmup,
                                             self.horizon_steps is None, self.horizon_steps)
                for gr in self.opt.param_groups:
                    gr["lr"] = cur_lr
                xb, cb, n_global = self.source.next()
                with self._autocast():
                    loss = self.loss_module(xb, cb) if self.loss_module is not None else model.loss(xb, cb)
                loss = loss.float()
                local = loss.detach()
                elapsed_now = self.elapsed_before + (time.perf_counter() - t0)
                if self.dist:
                    w = xb.shape[0] / n_global
                    stats = torch.stack([
                        torch.where(torch.isfinite(local), local * w, torch.zeros_like(local)).double(),
                        (~torch.isfinite(local)).double(),
                        local.new_tensor(elapsed_now if self.main else 0.0, dtype=torch.float64),
                    ])
                    ddp.all_reduce_sum(stats)
                    loss_value = float(stats[0])
                    finite = float(stats[1]) == 0
                    self.elapsed = float(stats[2])
                    # DDP averages gradients over ranks; scaling by the shard's share makes the
                    # average the gradient of the global-batch mean even for uneven shards.
                    loss = loss * (xb.shape[0] * self.world / n_global)
                else:
                    loss_value = float(local)
                    finite = math.isfinite(loss_value)
                    self.elapsed = elapsed_now
                if not finite:
                    raise _Diverged(f"loss is {loss_value} at step {self.step}")
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.opt)
                else:
                    loss.backward()
                max_norm = o["clip_grad"] if o["clip_grad"] is not None else math.inf
                gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                if self.scaler is None and not bool(torch.isfinite(gnorm)):
                    raise _Diverged(f"gradient norm is {float(gnorm)} at step {self.step} (loss {loss_value:.6g})")
                phase = "update"
                if self.scaler is not None:
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(model)
                self.step += 1
                self.win_sum += loss_value
                self.win_n += 1
                if bar is not None:
                    if self.horizon_steps:
                        bar.update(1)
                    else:
                        bar.n = min(self.elapsed - self.elapsed_before, bar.total)
                        if self.step % 10 == 0:
                            bar.refresh()
        except _Diverged as e:
            model.load_state_dict(last_good)
            self._finish_history(reason="diverged")
            msg = (f"training diverged: {e.args[0]}; the last finite logged loss was {last_good_loss:.6g}. "
                   "The model holds the last good weights"
                   + (f" and {self.out / 'last.pt'} the last good checkpoint" if self.out is not None else "")
                   + ". Try a lower lr, a smaller clip_grad or amp=False.")
            self._close(metrics_f, tb, bar)
            raise TrainingDivergedError(msg, self.step, last_good_loss, self.history) from None
        except KeyboardInterrupt:
            reason = "interrupted"
            if phase == "update":
                warnings.warn("interrupted during an optimizer update; the previous checkpoint is kept",
                              stacklevel=2)
            elif self.out is not None:
                self._checkpoint(boundary, gather=False)
        except BaseException:
            self._close(metrics_f, tb, bar)
            raise
        else:
            if self.out is not None:
                self._checkpoint(self._capture())
        self._close(metrics_f, tb, bar)
        # The model ends with the weights used for evaluation: the best evaluated ones when
        # there was validation, else the EMA (or raw) weights.
        if self.best is not None and self.best.get("state") is not None:
            model.load_state_dict(self.best["state"])
        elif self.ema is not None:
            self.ema.copy_to(model)
        self._finish_history(reason)
        if reason == "interrupted" and self.main:
            where = f"; checkpoint in {self.out}" if self.out is not None else ""
            print(f"pushforward: training interrupted at step {self.step}{where}", file=sys.stderr)
        return self.history

    def _write_best(self) -> None:
        """``best.pt``: the best evaluated weights, loadable by :func:`pushforward.load`."""
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(self.best["state"])
            atomic_save({"format": CHECKPOINT_FORMAT + "-best", "model": model_payload(self.model),
                         "step": self.best["step"], "val_loss": self.best["val_loss"]}, self.out / "best.pt")
        finally:
            self.model.load_state_dict(backup)

    def _finish_history(self, reason: str | None) -> None:
        h = self.history
        h["steps"] = self.step
        h["elapsed"] = self.elapsed
        h["epochs"] = self.source.epochs_done
        h["stopped_reason"] = reason
        if self.best is not None:
            h["best_val_loss"] = self.best["val_loss"]
            h["best_step"] = self.best["step"]

    @staticmethod
    def _close(metrics_f: Any, tb: Any, bar: Any) -> None:
        for obj in (metrics_f, tb, bar):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()


class _Diverged(Exception):
    pass


def _json_safe(rec: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}


def _records(h: History) -> list[dict]:
    out = []
    for i, s in enumerate(h["step"]):
        rec = {"step": s, "loss": h["loss"][i], "lr": h["lr"][i], "time": round(h["time"][i], 4)}
        if math.isfinite(h["val_loss"][i]):
            rec["val_loss"] = h["val_loss"][i]
        out.append(_json_safe(rec))
    return out
