"""Learning-rate schedules as functions of the run's progress ``p`` in [0, 1].

``p = step / horizon`` when a step or epoch budget is given (``horizon = steps already done +
this call's steps``, so a run interrupted and resumed with the remaining steps follows the same
schedule), else ``p = elapsed / (elapsed before + max_time)`` (time-fraction based: a 60 s run
warms up over the first ``warmup`` fraction of its time and anneals to the end of its budget).
Time-based schedules are therefore not bit-reproducible; step-based ones are.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

SCHEDULES = ("constant", "cosine", "onecycle")


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


class LRSchedule:
    """Sets the optimizer's learning rate before each step: ``lr * lr_factor(...)``.

    Progress runs over ``horizon_steps`` when the run has a step/epoch budget, else over
    ``horizon_time`` seconds (see the module docstring).
    """

    def __init__(self, kind: str, lr: float, warmup: float | int, horizon_steps: int | None,
                 horizon_time: float | None):
        self.kind, self.lr, self.warmup = kind, lr, warmup
        self.horizon_steps, self.horizon_time = horizon_steps, horizon_time

    def apply(self, opt: Optimizer, step: int, elapsed: float) -> None:
        """Write the learning rate for the step about to be taken into every param group."""
        p = (step / self.horizon_steps) if self.horizon_steps else (elapsed / self.horizon_time)
        lr = self.lr * lr_factor(self.kind, p, step, self.warmup, self.horizon_steps is None, self.horizon_steps)
        for group in opt.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        """What checkpoints record under ``"scheduler"``."""
        return {"kind": self.kind, "warmup": self.warmup, "lr": self.lr,
                "horizon_steps": self.horizon_steps, "horizon_time": self.horizon_time}
