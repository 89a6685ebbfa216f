"""A run directory, written in one place.

::

    config.json     the resolved config of a CLI run (model, data, options, fit budget)
    last.pt         the training checkpoint (:mod:`pushforward.train.checkpoint`)
    best.pt         the best evaluated weights, loadable by :func:`pushforward.load`
    model.pt        the final model, loadable by :func:`pushforward.load`
    metrics.jsonl   one JSON record per log: step, loss, lr, time (and val_loss)
    history.json    the :class:`~pushforward.train.History` of the last call
    tensorboard/    TensorBoard events (when enabled)
    .lock           the run's lock file (holds the pid of the process training into it)

Only the main process (rank 0) writes; the other ranks' calls are no-ops, so callers need not
ask. Every file is replaced atomically: a crash never leaves a truncated one.

One run at a time: :meth:`RunDir.lock` takes an OS lock (``fcntl.flock``) on ``.lock`` for the
run's life. The kernel releases it when the process dies (even by ``kill -9``), so a dead run's
lock is taken over; a live one makes a second run fail with :class:`RunLockedError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from pushforward._utils import json_safe
from pushforward.models import atomic_save, model_payload

CONFIG, LAST, BEST, MODEL, METRICS, HISTORY, LOCK = (
    "config.json", "last.pt", "best.pt", "model.pt", "metrics.jsonl", "history.json", ".lock")
# What a run leaves behind; --overwrite removes all of it before anything new is written.
RUN_FILES = (LAST, BEST, MODEL, METRICS, HISTORY, CONFIG, "tensorboard", "plots")


class RunLockedError(RuntimeError):
    """Another live process is training into this run directory."""


# The locks this process holds, by resolved path: [open file, depth]. flock is per open file,
# so a second open by the same process (the CLI, then fit inside it) must reuse the first.
_HELD: dict[str, list] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN/inf as null), indented, replaced atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on device writing {str(path)!r}") from e
        raise


class RunDir:
    """The files of one training run under ``path`` (see the module docstring).

    Args:
        path: the directory (created on the first write).
        main: whether this process writes (rank 0); others only read.
    """

    def __init__(self, path: str | os.PathLike, main: bool = True):
        self.path, self.main = Path(path), main

    @classmethod
    def fresh(cls, model: str, data: str, main: bool = True) -> RunDir:
        """``runs/MODEL-DATA`` (the data's file stem), or ``-2``, ``-3``... when that exists."""
        stem = Path(str(data)).stem if any(c in str(data) for c in "/\\.") else str(data)
        base = Path("runs") / f"{model}-{stem}"
        out, i = base, 2
        while out.exists():
            out, i = Path(f"{base}-{i}"), i + 1
        return cls(out, main)

    @classmethod
    def existing(cls, path: str | os.PathLike, main: bool = True) -> RunDir:
        """An existing run directory.

        Raises:
            FileNotFoundError, NotADirectoryError: naming ``path``.
        """
        d = Path(path)
        if not d.exists():
            raise FileNotFoundError(f"no run directory at {str(path)!r}")
        if not d.is_dir():
            raise NotADirectoryError(f"{str(path)!r} is not a run directory")
        return cls(d, main)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock (re-entrant within a process); no-op on non-main ranks.

        Raises:
            RunLockedError: another live process holds it (names the directory and its pid).
        """
        if not self.main:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [self._acquire(), 1]
        try:
            yield
        finally:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                f = _HELD.pop(key)[0]
                f.close()  # closing the file releases the flock

    def _acquire(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: the pid file alone
            fcntl = None
        path = self.path / LOCK
        f = open(path, "a+")
        try:
            if fcntl is None:
                raise OSError(errno.ENOLCK, "no flock")
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                # No flock on this file system (some network mounts): fall back to the pid file.
                pid = _read_pid(path)
                if pid is None or pid == os.getpid() or not _pid_alive(pid):
                    return self._write_pid(f)
            f.close()
            pid = _read_pid(path)
            who = f" (pid {pid})" if pid is not None else ""
            raise RunLockedError(f"{str(self.path)!r} is in use by another training run{who}; "
                                 "wait for it to finish or choose another --out") from None
        return self._write_pid(f)

    @staticmethod
    def _write_pid(f):
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        return f

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
        """Remove a previous run's files (:data:`RUN_FILES`), so nothing of it can be picked up
        by ``sample``/``eval``/``resume`` if the new run stops early. Hold :meth:`lock` first."""
        if not self.main:
            return
        for name in RUN_FILES:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def has_run(self) -> bool:
        """Whether a previous run left a checkpoint, a model or metrics here."""
        return any((self.path / name).exists() for name in (LAST, BEST, MODEL, METRICS))

    def read_config(self) -> dict:
        f = self.path / CONFIG
        if not f.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} has no config.json (is it a pushforward run directory?)")
        return json.loads(f.read_text())

    def load_model(self, device: Any = None) -> nn.Module:
        """The final model (``model.pt``), else the best or last checkpoint's."""
        from pushforward.models import load

        for name in (MODEL, BEST, LAST):
            if (self.path / name).is_file():
                return load(self.path / name, map_location=device or "cpu")
        raise FileNotFoundError(f"{str(self.path)!r} holds no model.pt, best.pt or last.pt")

    def resume_options(self, config: dict, checkpoint: dict, steps: int | None = None,
                       max_time: float | None = None) -> dict:
        """The ``fit`` options that continue this run from ``checkpoint``: ``config``'s
        (``config.json``'s ``"fit"``) with the budget given, or else what is left of the planned
        one: the remaining steps, or the remaining time.

        Raises:
            ValueError: the planned budget is spent, or was an epoch budget (no step count left).
        """
        planned = config.get("fit", {})
        opts = {k: v for k, v in planned.items() if k not in ("max_time", "steps", "epochs")}
        if steps is not None or max_time is not None:
            return {**opts, "steps": steps, "max_time": max_time}
        if planned.get("steps"):
            left = {"steps": planned["steps"] - int(checkpoint["step"]), "max_time": None}
        elif planned.get("epochs"):
            raise ValueError("this run had an epoch budget; give --steps or --max-time to resume it")
        else:
            left = {"max_time": float(planned.get("max_time") or 60) - float(checkpoint["elapsed"])}
        if (left.get("steps") or 0) <= 0 and (left.get("max_time") or 0) <= 0:
            raise ValueError(f"{str(self.path)!r} already finished its budget (step {checkpoint['step']}); "
                             "give --steps N or --max-time S to train more")
        return {**opts, **left}
