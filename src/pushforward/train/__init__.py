"""Training: :func:`fit` trains any pushforward model on its own objective ``model.loss``.

>>> import pushforward as pf
>>> model = pf.build("nsf", dim=2)                    # doctest: +SKIP
>>> history = pf.fit(model, x, max_time=30)            # doctest: +SKIP
>>> history.stopped_reason, history.best_val_loss     # doctest: +SKIP

Budgets. ``max_time`` (seconds), ``steps`` and ``epochs`` are budgets *for this call*;
training stops at whichever runs out first. A resumed run (``resume=``) continues the step
counter, the history and the optimizer/EMA/RNG state of its checkpoint. Learning-rate schedules
follow the run's progress (:mod:`pushforward.train.schedule`).

Reproducibility. Under ``seed`` (CPU, same data, same initial model) the history and weights
are identical from run to run, and ``N steps + resume M steps`` equals ``N + M`` steps
straight. ``fit`` runs inside :func:`torch.random.fork_rng` (and saves/restores NumPy's and
Python's global RNGs), so it never changes the caller's random streams.

Robustness (docs/robustness.md): SIGINT/SIGTERM/SIGHUP stop at a step boundary with a
checkpoint; the first checkpoint comes after the first step, then at a cadence tied to the
budget; a run directory is locked for the run's life; a divergence or an explosion restores the
last verified good weights.

Layout: :mod:`~pushforward.train.config` (the options, resolved once), :mod:`~.data` (data
sources), :mod:`~.loop` (:func:`fit` and the loop), :mod:`~.control` (stop rule, evaluator,
rollback, mixed precision), :mod:`~.checkpoint`, :mod:`~.sinks` (metrics.jsonl, TensorBoard,
progress bar), :mod:`~.run` (the run directory), :mod:`~.state` (history, EMA, RNG state).
"""

from pushforward.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from pushforward.train.config import FitConfig
from pushforward.train.loop import fit
from pushforward.train.run import RunDir, RunLockedError
from pushforward.train.schedule import SCHEDULES, lr_factor
from pushforward.train.state import EMA, History, TrainingDivergedError

__all__ = [
    "CHECKPOINT_FORMAT",
    "EMA",
    "SCHEDULES",
    "FitConfig",
    "History",
    "RunDir",
    "RunLockedError",
    "TrainingDivergedError",
    "fit",
    "load_checkpoint",
    "lr_factor",
]
