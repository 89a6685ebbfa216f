"""A run directory, written in one place.

::

    config.json     the resolved config of a CLI run (model, data, options, fit budget)
    last.pt         the training checkpoint (:mod:`pushforward.train.checkpoint`)
    best.pt         the best evaluated weights, loadable by :func:`pushforward.load`
    model.pt        the final model, loadable by :func:`pushforward.load`
    metrics.jsonl   one JSON record per log: step, loss, lr, time (and val_loss)
    history.json    the :class:`~pushforward.train.History` of the last call
    tensorboard/    TensorBoard events (when enabled)

Only the main process (rank 0) writes; the other ranks' calls are no-ops, so callers need not
ask. Every file is replaced atomically: a crash never leaves a truncated one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from pushforward._utils import json_safe
from pushforward.models import atomic_save, model_payload

CONFIG, LAST, BEST, MODEL, METRICS, HISTORY = (
    "config.json", "last.pt", "best.pt", "model.pt", "metrics.jsonl", "history.json")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN/inf as null), indented, replaced atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


class RunDir:
    """The files of one training run under ``path`` (see the module docstring).

    Args:
        path: the directory (created on the first write).
        main: whether this process writes (rank 0); others only read.
    """

    def __init__(self, path: str | os.PathLike, main: bool = True):
        self.path, self.main = Path(path), main

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def _ready(self) -> bool:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
        return self.main

    # ------------------------------------------------------------------ writing
    def write_config(self, config: dict) -> None:
        """``config.json``: what the CLI needs to rebuild and resume the run."""
        if self._ready():
            write_json(self.path / CONFIG, config)

    def write_history(self, history: dict) -> None:
        if self._ready():
            write_json(self.path / HISTORY, dict(history))

    def save_model(self, model: nn.Module) -> None:
        """``model.pt``: the final model, loadable by :func:`pushforward.load`."""
        if self._ready():
            atomic_save(model_payload(model), self.path / MODEL)

    def save_checkpoint(self, checkpoint: dict) -> None:
        """``last.pt``: everything a resumed run needs (see :func:`~pushforward.train.load_checkpoint`)."""
        if self._ready():
            atomic_save(checkpoint, self.path / LAST)

    def save_best(self, model: nn.Module, best: dict, fmt: str) -> None:
        """``best.pt``: the weights ``best["state"]`` as a loadable model, with step and val_loss."""
        if not self._ready():
            return
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(best["state"])
            atomic_save({"format": fmt, "model": model_payload(model), "step": best["step"],
                         "val_loss": best["val_loss"]}, self.path / BEST)
        finally:
            model.load_state_dict(backup)

    def open_metrics(self, records: list[dict]) -> Any:
        """``metrics.jsonl`` opened for appending, rewritten first with ``records`` (a resumed
        run's history), so a resumed run has no duplicate lines. None on other ranks."""
        if not self._ready():
            return None
        f = open(self.path / METRICS, "w")
        for rec in records:
            f.write(json.dumps(json_safe(rec)) + "\n")
        f.flush()
        return f

    def clear(self) -> None:
        """Remove a previous run's checkpoints, model and metrics (a disposable directory)."""
        if self.main:
            for name in (LAST, BEST, MODEL, METRICS):
                (self.path / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def has_run(self) -> bool:
        return (self.path / LAST).exists()

    def read_config(self) -> dict:
        f = self.path / CONFIG
        if not f.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} has no config.json (is it a pushforward run directory?)")
        return json.loads(f.read_text())

    def remaining_budget(self, checkpoint: dict) -> dict:
        """The ``fit`` budget left of the run's planned one (``config.json``'s ``fit``) after
        ``checkpoint``: ``{"steps": N, "max_time": None}`` or ``{"steps": None, "max_time": S}``;
        non-positive values mean the budget is spent.

        Raises:
            ValueError: the run had an epoch budget (its remainder is not a step count).
        """
        planned = self.read_config().get("fit", {})
        if planned.get("steps"):
            return {"steps": planned["steps"] - int(checkpoint["step"]), "max_time": None}
        if planned.get("epochs"):
            raise ValueError("this run had an epoch budget; give --steps or --max-time to resume it")
        return {"steps": None, "max_time": float(planned.get("max_time") or 60) - float(checkpoint["elapsed"])}
