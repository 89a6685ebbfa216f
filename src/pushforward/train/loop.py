"""The training loop: :func:`fit` resolves a :class:`~pushforward.train.config.FitConfig`, builds
the data and the collaborators, and runs one step after another until a budget is spent."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pushforward import distributed as ddp
from pushforward._utils import module_device, module_dtype
from pushforward.train.checkpoint import CHECKPOINT_FORMAT, Checkpointer, auto_cadence, load_checkpoint
from pushforward.train.config import FitConfig
from pushforward.train.control import (
    Evaluator,
    Precision,
    Rollback,
    Signals,
    StopRule,
    clip_gradients,
    make_optimizer,
)
from pushforward.train.data import make_data
from pushforward.train.run import LAST, RunDir
from pushforward.train.schedule import LRSchedule
from pushforward.train.sinks import make_sinks
from pushforward.train.stages import Stages
from pushforward.train.state import (
    EMA,
    History,
    TrainingDivergedError,
    cuda_devices,
    rng_state,
    set_rng_state,
)


def fit(
    model: nn.Module,
    data: Any,
    context: Any = None,
    *,
    max_time: float | None | str = "auto",
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
    patience: int | None | str = "auto",
    eval_every: int | str | None = None,
    standardize: bool | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | float | str | None = "auto",
    resume: str | os.PathLike | None = None,
    log_every: int | None = None,
    callback: Callable[[int, dict], Any] | None = None,
    progress: bool | None = None,
    tensorboard: bool | None = None,
    distributed: bool | None = None,
    explode_factor: float | None | str = "auto",
    explode_window: int = 5,
    compile: bool = False,
) -> History:
    """Train ``model`` on ``data`` by minimising ``model.loss`` with Adam/AdamW.

    Args:
        model: a :class:`pushforward.FlowModel` (anything with ``loss(x, context)`` works).
        data: ``Tensor``/``ndarray`` ``[N, *event_shape]``; a map-style ``Dataset`` or a
            ``DataLoader`` whose items are ``x`` or ``(x, context)``; an object with ``.x``
            (and ``.context``) such as :func:`pushforward.data.load`'s result; or a callable
            ``n -> batch`` (a simulator: fresh data every step, no epochs).
        context: ``[N, C]`` conditioning for tensor data (else taken from the items).
        max_time: seconds of training in this call (a budget: the first budget to run out stops
            training). ``"auto"`` (default): none when ``steps``/``epochs`` is given (that budget
            runs in full), else 60, or the model's convergence cap (below).
        steps: optimizer steps in this call (a budget).
        epochs: passes over the data in this call (a budget).
        batch_size: global batch size (default ``model.default_batch_size`` or 256).
        lr: peak learning rate (default ``model.default_lr`` or 1e-3).
        optimizer: ``"adam"`` or ``"adamw"`` (``weight_decay > 0`` with Adam means AdamW).
        schedule: ``"constant"``, ``"cosine"`` (default) or ``"onecycle"``; see :mod:`pushforward.train.schedule`.
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
            validation the model ends with the best evaluated weights. ``"auto"`` (default):
            the model's convergence patience (below), else None.
        eval_every: evaluate every this many steps, or ``"epoch"``: once per pass over the
            training data, a pass counted as at least ``default_convergence["epoch_rows"]``
            rows when the model has one (a posterior: 10 000, so a small data set is not judged
            every step or two: 1000 simulations at batch 512 are one step per epoch).
            Default: every epoch for a model with ``default_convergence`` and a patience, else
            10 times per step budget, or every tenth of ``max_time``.
        standardize: fold per-dimension standardization into the model (default
            ``model.standardize_by_default``); stats from the training data (or a draw of
            10 000 for simulators/loaders), set before training, never on resume.
        seed: seeds data order, validation split and the model's own randomness during
            training. It does not re-initialise a model that is already built: for identical
            runs build it under the same seed too (``torch.manual_seed(s); pf.build(...)``;
            ``pushforward train --seed`` does this).
        device: default: the model's device.
        out_dir: writes ``last.pt``, ``best.pt``, ``metrics.jsonl`` (and TensorBoard events).
        checkpoint_every: an int counts steps; a float or ``"60s"`` counts seconds; None only
            at the end; ``"auto"`` (default): every ``min(60 s, max(1 s, max_time / 10))``,
            and every tenth of a step/epoch budget. With a cadence a fresh run also writes one
            after its first step. Worst case, a process killed outright (``kill -9``) loses
            the training since its last checkpoint: the first step, then at most one cadence
            interval (plus the time a checkpoint takes to write).
            SIGINT, SIGTERM and SIGHUP stop training at the next step boundary and write a
            checkpoint (``stopped_reason="interrupted"``, ``History.signal``); a second signal,
            or a KeyboardInterrupt raised elsewhere, interrupts at once and checkpoints the last
            step boundary.
        resume: checkpoint file or run directory to continue from.
        log_every: record the mean loss every this many steps (default from the budget).
        callback: ``callback(step, metrics)`` at every log; returning True stops training.
        progress: tqdm bar (default: only when stderr is a terminal).
        tensorboard: write TensorBoard events to ``out_dir/tensorboard`` (default: when the
            ``tensorboard`` package is installed and ``out_dir`` is given).
        distributed: use DDP (default: when launched by torchrun with WORLD_SIZE > 1).
        explode_factor, explode_window: the loss has exploded when the logged loss stays above
            ``best + explode_factor * max(1, |best|)`` (``best``: the lowest logged loss so far)
            at ``explode_window`` logs in a row; training then stops like a divergence.
            ``explode_factor=None`` turns this off; ``"auto"`` (default) takes
            ``model.default_explode_factor`` or 10 (None for models whose regression target moves
            with the network: MeanFlow, shortcut, consistency).
        compile: run the training loss through ``torch.compile`` (fewer kernel launches for
            small models on a GPU; the first steps pay the compilation). Same results as eager
            within float tolerance; random draws inside a compiled loss come from inductor's
            generator, so a seeded stochastic loss (flow matching) differs from eager.

    Training to convergence: a model whose ``default_convergence`` is a dict (a
    :class:`~pushforward.posterior.Posterior`: ``{"patience": 20, "max_time": 600, ...}``) is
    trained the way sbi trains its estimators unless told otherwise: the validation loss (the
    held-out ``val_fraction``, a fixed random stream for stochastic objectives) is evaluated
    once per epoch (of at least ``epoch_rows`` rows), training stops once it has not improved
    for ``patience`` evaluations and the model ends with the best evaluated weights. With
    ``lr_decays = k`` in that dict (a posterior: 2), the first ``k`` plateaus do not stop
    training: it goes back to the best weights, restarts Adam's moments at the learning rate
    times ``lr_decay_factor`` (0.1) and waits ``patience`` evaluations again (reduce-on-plateau:
    annealing without a horizon); the ``k+1``-th plateau stops it
    (``stopped_reason="early_stopping"``: converged). A resumed run starts at the configured
    rate again. With no budget given, the cap is the model's ``max_time`` (and its ``schedule``
    and ``warmup``, ``"constant"`` and 0 for a posterior: a cosine over an arbitrary cap would
    anneal at a time unrelated to convergence); a ``max_time``/``steps``/``epochs`` of the
    user's replaces the cap and keeps the model's usual schedule over it. ``patience=None``
    trains a fixed budget without early stopping.

    Returns:
        A :class:`History`.

    Raises:
        ValueError: bad data (NaN/inf, wrong shape, context mismatch) or options.
        RunLockedError: another live process is training into ``out_dir``.
        TrainingDivergedError: the loss (or gradient norm, or a parameter) became NaN/inf, or
            the loss exploded; the model is restored to the last verified good weights (finite
            parameters whose loss was finite) and the last checkpoint (always of finite
            parameters) is kept.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "data", "context")}
    return _Trainer(model, FitConfig.resolve(model, options)).run(data, context)


class _Diverged(Exception):
    """Raised inside a step; :class:`TrainingDivergedError` is what the caller sees."""


class _Trainer:
    """One :func:`fit` call: setup, then :meth:`_loop`; the state lives here between steps."""

    def __init__(self, model: nn.Module, config: FitConfig):
        self.model, self.config = model, config
        self.step, self.elapsed_before, self.elapsed = 0, 0.0, 0.0
        self.history, self.win_sum, self.win_n = History(), 0.0, 0

    def run(self, data: Any, context: Any) -> History:
        """Train inside a forked random state, so the caller's streams are left as they were."""
        cfg = self.config
        self.dist = ddp.setup(cfg.distributed, cfg.device)
        self.rank = ddp.get_rank() if self.dist else 0
        self.world = ddp.get_world_size() if self.dist else 1
        self.main = self.rank == 0
        self.sync = ddp.StepSync(self.dist, self.world, self.main)
        self._place()
        self.run = RunDir(cfg.out_dir, main=self.main) if cfg.out_dir is not None else None
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with (self.run.lock() if self.run is not None else contextlib.nullcontext()), \
                    Signals() as self.signals, torch.random.fork_rng(devices=cuda_devices(self.device)):
                torch.manual_seed(cfg.seed + self.rank)
                np.random.seed((cfg.seed + self.rank) % 2**32)
                random.seed(cfg.seed + self.rank)
                self._setup(data, context)
                return self._loop()
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    # ------------------------------------------------------------------ setup
    def _place(self) -> None:
        dev = self.config.device
        if dev is None:
            nccl = self.dist and torch.distributed.get_backend() == "nccl"
            dev = ddp.default_device() if nccl else module_device(self.model)
        self.device = torch.device(dev)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.model.to(self.device)
        self.dtype = module_dtype(self.model)

    def _setup(self, data: Any, context: Any) -> None:
        """Resume, data, model initialisation, optimizer, then the loop's collaborators."""
        model, resuming = self.model, self.config.resume is not None
        ckpt = self._load_resume() if resuming else None
        cfg = self.config  # a resumed run continues its checkpoint's batch size and lr
        self.data = make_data(data, context, model, batch_size=cfg.batch_size, seed=cfg.seed,
                              val_fraction=cfg.val_fraction, val_data=cfg.val_data, epochs=cfg.epochs,
                              stats=cfg.standardize and not resuming, resuming=resuming, rank=self.rank,
                              world=self.world, device=self.device, dtype=self.dtype)
        self._prepare_model(resuming)
        self.precision = Precision(cfg.amp, self.device)
        model.train()
        self.loss_fn = model.loss
        if self.dist:
            self.loss_fn = ddp.wrap(model, self.device, find_unused_parameters=self._unused_parameters())
        if cfg.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        adamw = cfg.optimizer == "adamw" or cfg.weight_decay > 0
        self.opt = make_optimizer(self.params, cfg.lr, cfg.weight_decay, adamw)
        self.ema = EMA(model, cfg.ema) if cfg.ema is not None else None
        if ckpt is not None:
            self._restore(ckpt)
        self._plan(ckpt["best"] if ckpt is not None else None)

    def _load_resume(self) -> dict:
        path = self.config.resume
        ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["train_state"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise ValueError(f"checkpoint {str(path)!r} does not fit this model: {' '.join(first[:3])}") from None
        self.step, self.elapsed_before = int(ckpt["step"]), float(ckpt["elapsed"])
        self.history = History(ckpt["history"])
        self.config = self.config.continuing(ckpt.get("fit", {}))
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        """Optimizer, EMA, scaler, data position, loss window and RNG of a checkpoint (a
        ``best.pt`` fallback, :func:`~pushforward.train.load_checkpoint`, has none of them)."""
        if ckpt.get("optimizer") is not None:
            self.opt.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.precision.load_state_dict(ckpt.get("scaler"))
        if ckpt.get("data") is not None:
            self.data.source.load_state(ckpt["data"])
        self.win_sum, self.win_n = ckpt.get("window", (0.0, 0))
        rngs = ckpt.get("rng") or []
        # Another world size re-seeds the other ranks; rank 0 continues its own stream.
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank], self.device)
        elif rngs and self.rank == 0:
            set_rng_state(rngs[0], self.device)

    def _prepare_model(self, resuming: bool) -> None:
        """Gradient checkpointing; on a fresh run, standardization and data-dependent init."""
        m, cfg = self.model, self.config
        if cfg.gradient_checkpointing:
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True
            else:
                warnings.warn(f"{type(m).__name__} does not support gradient checkpointing; ignoring it", stacklevel=5)
        xb, cb = self.data.first
        xb = xb.to(self.device, self.dtype)
        cb = None if cb is None else cb.to(self.device, self.dtype)
        if not resuming:
            if cfg.standardize:
                loc, scale = self.data.stats
                m.set_standardization(loc.to(self.dtype), scale.to(self.dtype))
            if hasattr(m, "initialize"):
                m.initialize(xb, cb)
        self.probe = (xb[:64], None if cb is None else cb[:64])
        self.data.first = self.data.stats = None  # free memory

    def _unused_parameters(self) -> bool:
        """Whether some trainable parameter gets no gradient from the loss (one probe step).

        DDP must know (``find_unused_parameters``); the extra graph traversal it costs is
        paid only by models that need it.
        """
        with torch.random.fork_rng(devices=cuda_devices(self.device)):
            self.model.loss(*self.probe).backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        unused = any(p.grad is None for p in params)
        for p in params:
            p.grad = None
        return unused

    def _plan(self, best: dict | None) -> None:
        """Budgets, schedule, cadences, sinks and the other collaborators of the loop."""
        cfg, start = self.config, self.step
        self.stop = StopRule(start, cfg.steps, cfg.epochs, self.data.source.steps_per_epoch,
                             self.elapsed_before, cfg.max_time, cfg.patience)
        horizon = self.stop.horizon_steps
        self.schedule = LRSchedule(cfg.schedule, cfg.lr, cfg.warmup, horizon, self.stop.horizon_time)
        self.log_every = cfg.log_every
        if self.log_every is None:
            self.log_every = max(1, min(50, horizon // 50)) if horizon else 25
        every, secs = cfg.eval_every, None
        conv = getattr(self.model, "default_convergence", None) or {}
        self.decays_left, self.decay_factor = int(conv.get("lr_decays", 0)), float(conv.get("lr_decay_factor", 0.1))
        if every == "epoch":  # an epoch of at least the model's epoch_rows (see fit's eval_every)
            rows = conv.get("epoch_rows", 0)
            every = max(self.data.source.steps_per_epoch or 1, math.ceil(rows / cfg.batch_size))
        if every is None:
            every, secs = (max(1, horizon // 10), None) if horizon else (None, cfg.max_time / 10)
        self.evaluator = Evaluator(self.model, self.ema, self.data.val, every, secs, start, self.elapsed_before,
                                   best, cfg.seed, max(cfg.batch_size, 1024), self.device, self.dtype)
        ck_steps, ck_secs = cfg.checkpoint_steps, cfg.checkpoint_secs
        if cfg.checkpoint_auto:
            ck_steps, ck_secs = auto_cadence(cfg.max_time, horizon - start if horizon else None)
        self.checkpointer = Checkpointer(self.run, self.model, self.ema, ck_steps, ck_secs,
                                         self.sync.gather, start, self.elapsed_before)
        if self.run is not None and cfg.resume is not None and Path(cfg.resume).resolve() in (
                self.run.path.resolve(), (self.run / LAST).resolve()):
            self.checkpointer.saved_step = start  # the run's last.pt is the checkpoint resumed from
        self.sinks = make_sinks(self.run, self.history.records(), start, horizon, cfg.max_time,
                                cfg.progress, cfg.tensorboard, self.main)
        self.rollback = Rollback(self.model, self.ema, cfg.explode_factor, cfg.explode_window, start)
        # A staged recipe (train/stages.py): the model says its stages, the loop enters them.
        self.stages = Stages(self.model, horizon, self.stop.horizon_time) if hasattr(self.model, "fit_stages") else None

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> History:
        model, opt, cfg = self.model, self.opt, self.config
        max_norm = cfg.clip_grad if cfg.clip_grad is not None else math.inf
        t0 = time.perf_counter()
        self.elapsed = self.elapsed_before
        phase, boundary, reason = "boundary", self._capture(), None
        try:
            while True:
                # Everything a checkpoint holds is taken here, between two steps.
                phase, boundary = "boundary", self._capture()
                reason = self.stop.spent(self.step, self.elapsed)
                due_eval = self.evaluator.due(self.step, self.elapsed, reason is not None)
                logged = self._log_due(due_eval, reason)
                if logged:
                    rec = self._log(due_eval)
                    boundary = self._capture()  # the window was reset: later checkpoints start here
                    callback_stop = self._callback_stop(rec)
                    reason = reason or self.stop.requested(self.evaluator.bad_evals, callback_stop)
                    if reason == "early_stopping" and self._decay_on_plateau():
                        reason = None
                reason = reason or self._signalled(logged)
                if reason is None and self.checkpointer.due(self.step, self.elapsed):
                    self._save(boundary)
                if reason is not None:
                    break

                phase = "compute"
                if self.stages is None:
                    self.schedule.apply(opt, self.step, self.elapsed)
                else:
                    self._stage()
                xb, cb, n_global = self.data.source.next()
                with self.precision.autocast():
                    loss = self.loss_fn(xb, cb).float()
                now = self.elapsed_before + (time.perf_counter() - t0)
                loss, loss_value, finite, self.elapsed = self.sync.step(loss, xb.shape[0], n_global, now)
                if not finite:
                    raise _Diverged(f"loss is {loss_value} at step {self.step}")
                self.rollback.confirm(loss_value)
                self.precision.backward(loss, opt)
                gnorm = clip_gradients(self.params, max_norm)
                if self.precision.checks_gradients and not math.isfinite(gnorm):
                    raise _Diverged(f"gradient norm is {gnorm} at step {self.step} (loss {loss_value:.6g})")

                phase = "update"
                self.precision.step(opt)
                opt.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(model)
                self.step += 1
                self.win_sum, self.win_n = self.win_sum + loss_value, self.win_n + 1
                self.sinks.tick(self.step, self.elapsed - self.elapsed_before)
            self._save(self._capture())
        except _Diverged as e:
            raise self._diverged(e.args[0]) from None
        except KeyboardInterrupt:
            reason = "interrupted"
            self._interrupted(phase, boundary)
        except BaseException:
            self.sinks.close()
            raise
        return self._finish(reason)

    def _decay_on_plateau(self) -> bool:
        """A plateau with learning-rate decays left (a converging model's ``lr_decays``): back to
        the best evaluated weights, a fresh optimizer state, the rate times ``lr_decay_factor``,
        and patience starts again. False when none is left (training stops)."""
        if self.decays_left <= 0 or not self.evaluator.restore_best():
            return False
        self.decays_left -= 1
        if self.ema is not None:
            self.ema = EMA(self.model, self.ema.decay)
            self.evaluator.ema = self.rollback.ema = self.checkpointer.ema = self.ema
        self.opt.state.clear()
        self.schedule.lr *= self.decay_factor
        self.evaluator.bad_evals = 0
        self.evaluator.best["bad_evals"] = 0
        return True

    def _signalled(self, logged: bool) -> str | None:
        """``"interrupted"`` once a signal arrived; under DDP agreed at log steps (all ranks stop together)."""
        got = self.signals.received is not None
        if self.dist:
            if not logged:
                return None
            got = self.sync.any(got, self.device)
        return "interrupted" if got else None

    def _stage(self) -> None:
        """Enter the stage of this moment (a new stage restarts the schedule and the validation best)."""
        def draw():
            xb, cb, _ = self.data.source.next()
            return xb, cb

        entered, local = self.stages.enter(self.step, self.elapsed, draw, self.history,
                                           announce=self.main and bool(self.config.progress))
        if entered:
            self.evaluator.best, self.evaluator.bad_evals = None, 0
            self.rollback.new_objective()
        self.schedule.apply(self.opt, *self.stages.local_clock(local))

    def _log_due(self, due_eval: bool, reason: str | None) -> bool:
        last_logged = self.history["step"][-1] if self.history["step"] else -1
        if not (self.step > last_logged and self.step > 0):
            return False
        if due_eval:
            return True
        # An empty loss window (a resumed run at a log step) has nothing to log.
        return (self.step % self.log_every == 0 or reason is not None) and self.win_n > 0

    def _log(self, due_eval: bool) -> dict:
        """Evaluate if due, record the window's mean loss in the history and every sink."""
        rec = {"step": self.step, "loss": self.win_sum / self.win_n if self.win_n else math.nan,
               "lr": self.opt.param_groups[0]["lr"], "time": round(self.elapsed, 4)}
        if due_eval:
            val_loss, improved = self.evaluator.evaluate(self.step, self.elapsed)
            if improved:
                self.checkpointer.save_best(self.evaluator.best)
            self.history["best_val_loss"] = self.evaluator.best["val_loss"]
            self.history["best_step"] = self.evaluator.best["step"]
            rec["val_loss"] = val_loss
        self.history.append(rec, self.elapsed)
        self.win_sum, self.win_n = 0.0, 0
        self.sinks.log(rec)
        exploded = self.rollback.offer(rec["loss"], self.step)
        if exploded:
            raise _Diverged(exploded)
        return rec

    def _callback_stop(self, rec: dict) -> bool:
        """Whether the user's callback (on any rank) asks to stop."""
        if self.config.callback is None:
            return False
        return self.sync.any(self.config.callback(self.step, dict(rec)) is True, self.device)

    # ------------------------------------------------------------------ state
    def _capture(self) -> dict:
        return {"rng": rng_state(self.device), "data": self.data.source.state(),
                "window": (self.win_sum, self.win_n)}

    def _finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def _save(self, boundary: dict, gather: bool = True) -> None:
        """``last.pt`` at a step boundary; a parameter that is NaN/inf is a divergence, never saved."""
        if not self._finite():
            raise _Diverged(f"a parameter became non-finite by step {self.step}")

        def build(rngs: list) -> dict:
            return {
                "format": CHECKPOINT_FORMAT, "version": 1,
                "train_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "ema": None if self.ema is None else self.ema.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.precision.state_dict(),
                "scheduler": self.schedule.state_dict(), "step": self.step, "elapsed": self.elapsed,
                "data": boundary["data"], "window": boundary["window"], "rng": rngs,
                "history": dict(self.history), "best": self.evaluator.best, "fit": self.config.record(self.world),
            }

        self.checkpointer.save(build, boundary["rng"], self.step, self.elapsed, gather=gather)

    def _finish_history(self, reason: str | None) -> None:
        h = self.history
        h.update(steps=self.step, elapsed=self.elapsed, epochs=self.data.source.epochs_done, stopped_reason=reason)
        if self.evaluator.best is not None:
            h.update(best_val_loss=self.evaluator.best["val_loss"], best_step=self.evaluator.best["step"])

    # ------------------------------------------------------------------ endings
    def _finish(self, reason: str | None) -> History:
        self.sinks.close()
        # The model ends with the weights used for evaluation: the best evaluated ones when
        # there was validation, else the EMA (or raw) weights.
        if not self.evaluator.restore_best() and self.ema is not None:
            self.ema.copy_to(self.model)
        self._finish_history(reason)
        if reason == "interrupted":
            self.history["signal"] = self.signals.received
            if self.main:
                by = f" by {self.signals.received}" if self.signals.received else ""
                saved = self._saved_checkpoint()
                where = (f"checkpoint {saved}; continue with `pushforward resume {self.run.path}`"
                         if saved else "no checkpoint was written")
                print(f"pushforward: training interrupted{by} at step {self.step}; {where}", file=sys.stderr)
        return self.history

    def _saved_checkpoint(self) -> str | None:
        """``"DIR/last.pt (step N)"`` for the checkpoint this call wrote, only if the file exists."""
        ck = self.checkpointer
        if self.run is not None and ck.saved_step is not None and (self.run / LAST).is_file():
            return f"{self.run / LAST} (step {ck.saved_step})"
        return None

    def _interrupted(self, phase: str, boundary: dict) -> None:
        """KeyboardInterrupt: checkpoint the last step boundary unless the weights are half
        updated or not finite (the previous checkpoint is kept then)."""
        if phase == "update":
            warnings.warn("interrupted during an optimizer update; the previous checkpoint is kept", stacklevel=4)
        elif self._finite():
            self._save(boundary, gather=False)

    def _diverged(self, what: str) -> TrainingDivergedError:
        rb = self.rollback
        rb.restore()
        self._finish_history(reason="diverged")
        good = (f"step {rb.step} (loss {rb.loss:.6g})" if math.isfinite(rb.loss) else f"step {rb.step}, where this call started")
        msg = (f"training diverged: {what}. The model holds the last verified good weights, from {good}; "
               + (f"the last checkpoint is {saved}" if (saved := self._saved_checkpoint()) else "no checkpoint was written")
               + ". Try a lower lr, a smaller clip_grad or amp=False.")
        self.sinks.close()
        return TrainingDivergedError(msg, self.step, rb.loss, self.history)
