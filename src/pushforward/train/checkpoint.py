"""Training checkpoints: the format, reading one back, and when and how the loop writes them.

A checkpoint (``last.pt``) is a dict with ``"format": "pushforward-checkpoint"``, the raw
training weights (``train_state``), the EMA, optimizer and grad-scaler states, the schedule, the
step and elapsed time, the data position, the loss window, every rank's RNG state, the history,
the best evaluation, the ``fit`` options and ``model`` (the evaluation weights as a payload
:func:`pushforward.load` reads). Everything is captured at a step boundary, which is what makes
"N steps + resume M" bit-equal to "N + M".
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from pushforward.models import model_payload, read_torch_file
from pushforward.train.run import BEST, LAST, METRICS, RunDir
from pushforward.train.state import EMA, History, swapped_in

CHECKPOINT_FORMAT = "pushforward-checkpoint"


def auto_cadence(max_time: float | None, steps_left: int | None) -> tuple[int | None, float]:
    """``checkpoint_every="auto"``: ``(steps, seconds)``, whichever comes first.

    Seconds: ``min(60, max(1, max_time / 10))`` (60 without a time budget); steps: a tenth of
    the step/epoch budget left to this call (None without one).
    """
    secs = min(60.0, max(1.0, max_time / 10)) if max_time else 60.0
    return (max(1, steps_left // 10) if steps_left else None), secs


def _resolve_checkpoint(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(p)!r}")
    return p


_FALLBACK_SAID: set[str] = set()


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint (``last.pt`` or a run directory, which means its ``last.pt``).

    For a run directory whose ``last.pt`` is unreadable (truncated, corrupt, empty) but whose
    ``best.pt`` is readable, the run continues from ``best.pt``'s weights and step, and says so
    (a warning naming both files): the optimizer, the data position and the RNG start afresh,
    the history is ``metrics.jsonl`` up to that step, and ``"fallback"`` holds the message.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the file is empty, truncated, corrupt, or a ``.pt`` file of another kind,
            naming the file.
    """
    if Path(path).is_dir() and (Path(path) / LAST).is_file():
        try:
            return _read_checkpoint(Path(path) / LAST, map_location)
        except ValueError as e:
            ckpt = _from_best(Path(path), map_location, e)
            if ckpt is None:
                raise
            if ckpt["fallback"] not in _FALLBACK_SAID:  # once per process, not once per reader
                _FALLBACK_SAID.add(ckpt["fallback"])
                warnings.warn(ckpt["fallback"], stacklevel=2)
            return ckpt
    return _read_checkpoint(_resolve_checkpoint(path), map_location)


def _from_best(run: Path, map_location: Any, why: ValueError) -> dict | None:
    """A checkpoint made from ``best.pt`` (see :func:`load_checkpoint`), or None if unreadable."""
    try:
        best = read_torch_file(run / BEST, map_location, "best checkpoint")
        payload = best["model"]
        state = payload["state_dict"] if "state_dict" in payload else payload["module"].state_dict()
        step = int(best["step"])
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None
    history = History()
    try:
        for line in (run / METRICS).read_text().splitlines():
            rec = json.loads(line)
            if int(rec.get("step", step + 1)) <= step and "loss" in rec:
                history.append(rec, float(rec.get("time", 0.0)))
    except (OSError, ValueError):
        pass
    history["steps"] = step
    elapsed = float(history["time"][-1]) if history["time"] else 0.0
    msg = (f"{str(run / LAST)!r} is unreadable ({why}); resuming from {str(run / BEST)!r} (step {step}): "
           "the optimizer state, data position and random streams start afresh")
    return {"format": CHECKPOINT_FORMAT, "train_state": state, "model": payload, "step": step,
            "elapsed": elapsed, "history": dict(history), "fit": {}, "best": None, "optimizer": None,
            "ema": None, "scaler": None, "data": None, "window": (0.0, 0), "rng": [], "fallback": msg}


def _read_checkpoint(p: Path, map_location: Any) -> dict:
    ckpt = read_torch_file(p, map_location, "pushforward training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        kind = ckpt.get("format") if isinstance(ckpt, dict) and isinstance(ckpt.get("format"), str) else None
        what = f"a {kind!r} file" if kind else f"a {type(ckpt).__name__}"
        raise ValueError(f"{str(p)!r} is not a pushforward training checkpoint (it holds {what})")
    return ckpt


class Checkpointer:
    """Writes ``last.pt`` every ``steps`` optimizer steps or ``secs`` seconds, and ``best.pt``.

    A fresh run (``step == 0``) with a cadence also writes one after its first step, so a
    process killed outright (``kill -9``, out of memory) loses at most the cadence's worth of
    training from then on; the early checkpoint does not shift the cadence.

    Every rank calls :meth:`save` at the same steps (the RNG states are gathered from all of
    them); only the main one writes. Without a run directory nothing is written.

    Args:
        run: the run directory, or None.
        model, ema: the model (and its EMA): ``"model"`` in ``last.pt`` holds the EMA weights.
        steps, secs: the cadence (either may be None; both None: only at the end).
        gather: ``gather(obj) -> [obj_rank0, ...]``, the ranks' RNG states.
        step, elapsed: where the run starts (a resumed run's last checkpoint).

    ``saved_step`` is the step of the ``last.pt`` this object wrote (None before the first).
    """

    def __init__(self, run: RunDir | None, model: nn.Module, ema: EMA | None, steps: int | None,
                 secs: float | None, gather: Callable[[Any], list], step: int, elapsed: float):
        self.run, self.model, self.ema = run, model, ema
        self.steps, self.secs, self.gather = steps, secs, gather
        self.last_step, self.last_time = step, elapsed
        self.early = step == 0 and (steps is not None or secs is not None)
        self.saved_step: int | None = None

    def due(self, step: int, elapsed: float) -> bool:
        """Whether the cadence (or the early first checkpoint) asks for one at this boundary."""
        return self.run is not None and step > self.last_step and (
            (self.early and self.saved_step is None) or self._cadence_due(step, elapsed))

    def _cadence_due(self, step: int, elapsed: float) -> bool:
        return bool(self.steps and step - self.last_step >= self.steps) or (
            self.secs is not None and elapsed - self.last_time >= self.secs)

    def save(self, build: Callable[[list], dict], rng: dict, step: int, elapsed: float,
             gather: bool = True) -> None:
        """Write ``build(rng_states)`` plus the loadable ``"model"`` as ``last.pt``;
        ``gather=False`` when the other ranks cannot take part (an interrupt): this rank's
        state alone is kept."""
        if self.run is None:
            return
        # The early first checkpoint is an extra: the cadence keeps counting from the start.
        cadence = not (self.early and self.saved_step is None) or self._cadence_due(step, elapsed)
        rngs = self.gather(rng) if gather else [rng]
        if self.run.main:
            ckpt = build(rngs)
            # The payload references the live parameters: write it while the EMA is swapped in.
            with swapped_in(self.ema, self.model):
                ckpt["model"] = model_payload(self.model)
                self.run.save_checkpoint(ckpt)
        self.saved_step = step
        if cadence:
            self.last_step, self.last_time = step, elapsed

    def save_best(self, best: dict) -> None:
        """``best.pt`` from the best evaluated weights ``best["state"]``."""
        if self.run is not None:
            self.run.save_best(self.model, best, CHECKPOINT_FORMAT + "-best")
