"""The loop's small collaborators, one job each: when to stop (:class:`StopRule`), validation
with best weights and patience (:class:`Evaluator`), divergence rollback (:class:`Rollback`) and
mixed precision (:class:`Precision`)."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from torch import Tensor, nn

from pushforward.train.state import EMA, cuda_devices, eval_weights, swapped_in


class StopRule:
    """Budgets of one :func:`fit` call and the requests to stop early.

    The step budget ends at ``start + steps``, the epoch budget at ``start + epochs *
    steps_per_epoch``, the time budget at ``elapsed_before + max_time``. ``horizon_steps`` (the
    nearer step limit) or else ``horizon_time`` is what the learning-rate schedule runs over.
    """

    def __init__(self, start: int, steps: int | None, epochs: int | None, steps_per_epoch: int | None,
                 elapsed_before: float, max_time: float | None, patience: int | None):
        self.step_limit = None if steps is None else start + steps
        self.epoch_limit = None
        if epochs is not None:
            if steps_per_epoch is None:
                raise ValueError("epochs needs data of known length; use steps or max_time")
            self.epoch_limit = start + epochs * steps_per_epoch
        limits = [v for v in (self.step_limit, self.epoch_limit) if v is not None]
        self.horizon_steps = min(limits) if limits else None
        self.horizon_time = None if self.horizon_steps else elapsed_before + max_time
        self.time_limit = None if max_time is None else elapsed_before + max_time
        self.patience = patience

    def spent(self, step: int, elapsed: float) -> str | None:
        """The budget that has run out (``"steps"``, ``"epochs"``, ``"max_time"``), else None."""
        if self.step_limit is not None and step >= self.step_limit:
            return "steps"
        if self.epoch_limit is not None and step >= self.epoch_limit:
            return "epochs"
        if self.time_limit is not None and elapsed >= self.time_limit:
            return "max_time"
        return None

    def requested(self, bad_evals: int, callback_stop: bool) -> str | None:
        """After a log: ``"early_stopping"`` once ``patience`` evaluations brought no
        improvement, else ``"callback"`` when a callback returned True, else None."""
        if self.patience is not None and bad_evals >= self.patience:
            return "early_stopping"
        return "callback" if callback_stop else None


class Evaluator:
    """The validation loss at its cadence; holds the best evaluated weights and the patience count.

    Evaluation uses the EMA weights when there is an EMA, in eval mode, under a fixed seed
    (``seed + 99991``) so stochastic objectives (flow matching, score matching) are comparable
    between evaluations, and the training random stream is left untouched.

    Args:
        val: ``(x, context)`` or None (then never due).
        every, secs: evaluate every this many steps, or seconds.
        start, elapsed: the step and time this call starts from.
        best: a resumed run's ``{"val_loss", "step", "bad_evals", "state"}`` or None.
        chunk: rows per forward pass.
    """

    def __init__(self, model: nn.Module, ema: EMA | None, val: tuple[Tensor, Tensor | None] | None,
                 every: int | None, secs: float | None, start: int, elapsed: float, best: dict | None,
                 seed: int, chunk: int, device: torch.device, dtype: torch.dtype):
        self.model, self.ema, self.val = model, ema, val
        self.every, self.secs, self.start, self.last_time = every, secs, start, elapsed
        self.best, self.bad_evals = best, int(best["bad_evals"]) if best else 0
        self.seed, self.chunk, self.device, self.dtype = seed, chunk, device, dtype

    def due(self, step: int, elapsed: float, stopping: bool) -> bool:
        """Whether to evaluate at this step boundary (always at the last one)."""
        return self.val is not None and step > self.start and bool(
            (self.every and step % self.every == 0)
            or (self.secs and elapsed - self.last_time >= self.secs)
            or stopping)

    def evaluate(self, step: int, elapsed: float) -> tuple[float, bool]:
        """``(validation loss, whether it is the best so far)``; keeps the best weights."""
        val_loss = self.loss()
        self.last_time = elapsed
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = {"val_loss": val_loss, "step": step, "bad_evals": 0,
                         "state": eval_weights(self.model, self.ema)}
            self.bad_evals = 0
            return val_loss, True
        self.bad_evals += 1
        self.best["bad_evals"] = self.bad_evals
        return val_loss, False

    @torch.no_grad()
    def loss(self) -> float:
        """Mean ``model.loss`` over the validation rows."""
        vx, vc = self.val
        total, count = 0.0, 0
        was = self.model.training
        self.model.eval()
        with swapped_in(self.ema, self.model), torch.random.fork_rng(devices=cuda_devices(self.device)):
            torch.manual_seed(self.seed + 99991)
            for i in range(0, vx.shape[0], self.chunk):
                xb = vx[i:i + self.chunk].to(self.device, self.dtype)
                cb = None if vc is None else vc[i:i + self.chunk].to(self.device, self.dtype)
                total += float(self.model.loss(xb, cb)) * xb.shape[0]
                count += xb.shape[0]
        self.model.train(was)
        return total / count

    def restore_best(self) -> bool:
        """Load the best evaluated weights into the model; False when there are none."""
        if self.best is None or self.best.get("state") is None:
            return False
        self.model.load_state_dict(self.best["state"])
        return True


class Rollback:
    """The weights at the last log whose loss was finite, restored when training diverges."""

    def __init__(self, model: nn.Module, ema: EMA | None):
        self.model, self.ema = model, ema
        self.state, self.loss = eval_weights(model, ema), math.nan

    def remember(self, loss: float) -> None:
        if math.isfinite(loss):
            self.state, self.loss = eval_weights(self.model, self.ema), loss

    def restore(self) -> None:
        self.model.load_state_dict(self.state)


class Precision:
    """Mixed precision: an autocast dtype and, for fp16 on CUDA, a gradient scaler.

    ``amp=True`` takes bf16 where supported (else fp16 on CUDA); ``"bf16"``/``"fp16"`` force it.
    """

    def __init__(self, amp: bool | str, device: torch.device):
        self.device, self.dtype, self.scaler = device, None, None
        if not amp:
            return
        if amp is True:
            amp = "bf16" if device.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"
        if amp in ("bf16", "bfloat16"):
            self.dtype = torch.bfloat16
        else:
            if device.type != "cuda":
                raise ValueError(f"amp='fp16' needs a CUDA device, not {device}; use amp='bf16'")
            self.dtype, self.scaler = torch.float16, torch.amp.GradScaler("cuda")
        if device.type not in ("cpu", "cuda", "mps", "xpu"):
            warnings.warn(f"mixed precision is not supported on {device}; training in full precision", stacklevel=4)
            self.dtype, self.scaler = None, None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def checks_gradients(self) -> bool:
        """Whether a non-finite gradient norm means divergence (a scaler skips such steps itself)."""
        return self.scaler is None

    def backward(self, loss: Tensor, opt: torch.optim.Optimizer) -> None:
        """Backpropagate (scaled), leaving unscaled gradients for clipping."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
