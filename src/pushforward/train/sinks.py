"""Where the loop's log records go: ``metrics.jsonl``, TensorBoard and a progress bar, behind one
interface (:class:`Sink`: ``log`` a record, ``tick`` after a step, ``close``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
from typing import Any

from pushforward._utils import json_safe
from pushforward.train.run import RunDir


class Sink:
    """A destination of log records ``{"step", "loss", "lr", "time"[, "val_loss"]}``."""

    def log(self, rec: dict) -> None:
        """One record, written at every log step."""

    def tick(self, step: int, seconds: float) -> None:
        """After every optimizer step: ``step`` done, ``seconds`` of training in this call."""

    def close(self) -> None:
        """Release files and terminals."""


class MetricsFile(Sink):
    """``metrics.jsonl``: one strict-JSON line per record, flushed at once."""

    def __init__(self, f: Any):
        self.f = f

    def log(self, rec: dict) -> None:
        self.f.write(json.dumps(json_safe(rec)) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoard(Sink):
    """``train/loss``, ``train/lr`` and ``val/loss`` scalars (finite values only)."""

    def __init__(self, writer: Any):
        self.writer = writer

    def log(self, rec: dict) -> None:
        for k in ("loss", "lr", "val_loss"):
            if k in rec and math.isfinite(rec[k]):
                self.writer.add_scalar(f"train/{k}" if k != "val_loss" else "val/loss", rec[k], rec["step"])

    def close(self) -> None:
        self.writer.close()


class ProgressBar(Sink):
    """A tqdm bar over the step budget, or over the seconds of a time budget."""

    def __init__(self, step: int, horizon_steps: int | None, max_time: float | None):
        from tqdm.auto import tqdm

        self.by_steps = bool(horizon_steps)
        if self.by_steps:
            self.bar = tqdm(total=horizon_steps, initial=step, unit="step", dynamic_ncols=True)
        else:
            self.bar = tqdm(total=round(max_time), unit="s", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")

    def log(self, rec: dict) -> None:
        self.bar.set_postfix(step=rec["step"], loss=f"{rec['loss']:.4g}", refresh=False)

    def tick(self, step: int, seconds: float) -> None:
        if self.by_steps:
            self.bar.update(1)
        else:
            self.bar.n = min(seconds, self.bar.total)
            if step % 10 == 0:
                self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Sinks(Sink):
    """Several sinks as one; closing never raises (the run's outcome matters more)."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def log(self, rec: dict) -> None:
        for s in self.sinks:
            s.log(rec)

    def tick(self, step: int, seconds: float) -> None:
        for s in self.sinks:
            s.tick(step, seconds)

    def close(self) -> None:
        for s in self.sinks:
            with contextlib.suppress(Exception):
                s.close()


def make_sinks(run: RunDir | None, records: list[dict], step: int, horizon_steps: int | None,
               max_time: float | None, progress: bool | None, tensorboard: bool | None, main: bool) -> Sinks:
    """The main process's sinks: ``metrics.jsonl`` (rewritten with ``records``) and TensorBoard
    events in ``run`` (TensorBoard by default when installed), and a progress bar (by default
    when stderr is a terminal). Other ranks get none."""
    sinks: list[Sink] = []
    if not main:
        return Sinks(sinks)
    if run is not None:
        sinks.append(MetricsFile(run.open_metrics(records)))
        if tensorboard is None:
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard=True needs the tensorboard package "
                                  "(pip install tensorboard, or pip install 'pushforward[test]')") from e
            sinks.append(TensorBoard(SummaryWriter(str(run / "tensorboard"), purge_step=step or None)))
    if sys.stderr.isatty() if progress is None else progress:
        sinks.append(ProgressBar(step, horizon_steps, max_time))
    return Sinks(sinks)
