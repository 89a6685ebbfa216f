"""Staged recipes inside one :func:`~pushforward.train.fit` budget (e.g. rectified flow's 1-RF -> reflow -> distill).

The hook, optional for any model:

* ``model.fit_stages() -> [(name, fraction), ...]``: the stages and their shares of the budget
  (fractions > 0 summing to 1; the budget is the run's step horizon, else its time horizon);
* ``model.begin_stage(index, name, draw, max_time)``: called once when the run enters stage
  ``index`` (not for stage 0 and not again on resume); ``draw()`` returns a training batch
  ``(x, context)`` (the model may use it to collect contexts, e.g. for pair generation);
  ``max_time`` is what the preparation may spend: half the stage's share of a time budget (None
  with a step budget), so the recipe stays inside the budget. It may return a dict, recorded in
  the stage's history entry. The model keeps whatever the stage needs in its own state (buffers),
  so checkpoints carry it;
* ``model.fit_stage`` (an int): the stage the model is in, part of its state, so a resumed run
  continues the stage it was in.

Within a stage the learning-rate schedule restarts (its progress is the stage's own), the
validation best restarts (the objective changes) and ``history["stages"]`` records each entry
``{"stage", "step", "time"}``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from torch import nn


class Stages:
    """The stage plan of one run: maps the run's progress to (stage, progress within the stage)."""

    def __init__(self, model: nn.Module, horizon_steps: int | None, horizon_time: float | None):
        plan = list(model.fit_stages())
        if not plan or any(not (f > 0) for _, f in plan) or abs(sum(f for _, f in plan) - 1.0) > 1e-6:
            raise ValueError(f"fit_stages() must give (name, fraction > 0) pairs summing to 1, got {plan!r}")
        self.model, self.names = model, [n for n, _ in plan]
        fr = [f for _, f in plan]
        self.bounds = [sum(fr[:i]) for i in range(len(fr) + 1)]
        self.horizon_steps, self.horizon_time = horizon_steps, horizon_time

    def progress(self, step: int, elapsed: float) -> float:
        """The run's progress in [0, 1] (steps when the run has a step horizon, else time)."""
        p = step / self.horizon_steps if self.horizon_steps else elapsed / self.horizon_time
        return min(max(p, 0.0), 1.0)

    def locate(self, p: float) -> tuple[int, float]:
        """``(stage index, progress within it)`` at run progress ``p``."""
        i = max(j for j in range(len(self.names)) if self.bounds[j] <= p or j == 0)
        lo, hi = self.bounds[i], self.bounds[i + 1]
        return i, (p - lo) / (hi - lo)

    def enter(self, step: int, elapsed: float, draw: Callable, history: dict, announce: bool) -> tuple[bool, float]:
        """Advance the model to the stage of this moment; ``(entered a new stage, local progress)``.

        Stages are entered in order (a jump over a short stage still runs its ``begin_stage``).
        """
        i, local = self.locate(self.progress(step, elapsed))
        current, entered = int(self.model.fit_stage), False
        while current < i:
            current += 1
            allowance = None if self.horizon_steps else \
                0.5 * (self.bounds[current + 1] - self.bounds[current]) * self.horizon_time
            info = self.model.begin_stage(current, self.names[current], draw, max_time=allowance)
            self.model.fit_stage = current
            entry = {"stage": self.names[current], "step": step, "time": round(elapsed, 4)}
            entry.update(info if isinstance(info, dict) else {})
            history.setdefault("stages", []).append(entry)
            if announce:
                extra = "".join(f", {k} {v}" for k, v in entry.items() if k not in ("stage", "step", "time"))
                print(f"pushforward: stage {current + 1}/{len(self.names)} {self.names[current]} "
                      f"(step {step}, {elapsed:.1f} s{extra})", file=sys.stderr)
            entered = True
        return entered, local if current == i else 0.0

    def local_clock(self, local: float) -> tuple[int, float]:
        """``(step, elapsed)`` that make the run's schedule read the stage's own progress ``local``."""
        if self.horizon_steps:
            return int(math.floor(local * self.horizon_steps)), 0.0
        return 0, local * self.horizon_time
