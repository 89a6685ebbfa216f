"""Training curves from a history, a run folder or a ``metrics.jsonl`` file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from pushforward.viz._common import DATA_COLOR, SAMPLE_COLOR, _figure, _save

_CURVE_SKIP = {"step", "time", "epoch", "wall", "elapsed", "val_step"}


def _records(history: Any) -> list[dict]:
    """Normalise a history (jsonl path, dict of lists, list of dicts, or an object with
    ``records``/``history``/``as_dict``/``to_dict``) to a list of per-row dicts with a step."""
    if isinstance(history, (str, os.PathLike)):
        p = Path(history)
        if p.is_dir():
            p = p / "metrics.jsonl"
        if not p.is_file():
            raise FileNotFoundError(f"no metrics file at {str(p)!r}")
        rows = []
        for k, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(p)!r} line {k + 1} is not JSON: {e}") from None
        return [dict(r, step=r.get("step", i)) for i, r in enumerate(rows)]
    for attr in ("as_dict", "to_dict"):
        if callable(getattr(history, attr, None)):
            return _records(getattr(history, attr)())
    for attr in ("records", "history"):
        if hasattr(history, attr) and not isinstance(history, Mapping):
            return _records(getattr(history, attr))
    if isinstance(history, Mapping):
        if "records" in history and isinstance(history["records"], list):
            return _records(history["records"])
        lists = {k: list(v) for k, v in history.items() if isinstance(v, (list, tuple, np.ndarray, Tensor))}
        if not lists:
            raise ValueError("history dict has no lists of values")
        base = lists.get("step")
        n = len(base) if base is not None else max(len(v) for v in lists.values())
        steps = list(base) if base is not None else list(range(n))
        rows: dict[float, dict] = {}
        for k, vals in lists.items():
            if k == "step" or not vals:
                continue
            if len(vals) == len(steps):
                st = steps
            elif f"{k}_step" in lists or (k.startswith("val") and "val_step" in lists):
                st = lists.get(f"{k}_step", lists.get("val_step"))
            else:  # recorded less often and without its own steps: spread over the run
                st = list(np.linspace(steps[0], steps[-1], len(vals))) if steps else list(range(len(vals)))
            for s, v in zip(st, vals):
                rows.setdefault(float(s), {"step": float(s)})[k] = v
        return [rows[s] for s in sorted(rows)]
    if isinstance(history, Iterable):
        return [dict(r, step=r.get("step", i)) for i, r in enumerate(history)]
    raise TypeError(f"cannot read a training history from {type(history).__name__}")


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = []
    for r in rows:
        v = r.get(key)
        if v is None or isinstance(v, (str, bool, dict, list)):
            continue
        try:
            pt = (float(r["step"]), float(v))
        except (TypeError, ValueError):
            continue
        if math.isfinite(pt[1]):  # NaN marks "not evaluated at this step" (fit's History)
            pts.append(pt)
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts)
    return a[:, 0], a[:, 1]


def _ema(v: np.ndarray, span: int) -> np.ndarray:
    alpha, out, m = 2.0 / (span + 1), np.empty_like(v), np.nan
    for i, x in enumerate(v):
        m = x if not np.isfinite(m) else (m if not np.isfinite(x) else (1 - alpha) * m + alpha * x)
        out[i] = m
    return out


def plot_training_curves(
    history_or_metrics_path: Any,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Training loss (raw and smoothed), validation loss and learning rate against step.

    Args:
        history_or_metrics_path: a dict of lists (``step``, ``loss``, optionally ``val_loss``,
            ``lr``, ``time``; a shorter ``val_loss`` uses ``val_step`` or is spread over the
            run), a list of per-step dicts, a run folder, or a ``metrics.jsonl`` file (one JSON
            object per line with ``step``, ``loss``, optionally ``val_loss``, ``lr``, ``time``).

    A third panel shows ``grad_norm`` when recorded. Losses can be negative (NLL), so the y
    axis is linear; outlying early spikes (beyond ``q90 + 5 (q90 - q10)``) are cut off so they do
    not flatten the rest of the curve. More than 100 points also get an EMA-smoothed line.
    """
    rows = _records(history_or_metrics_path)
    s_loss, loss = _series(rows, "loss")
    s_val, val = _series(rows, "val_loss")
    s_lr, lr = _series(rows, "lr")
    s_gn, gn = _series(rows, "grad_norm")
    if loss.size == 0 and val.size == 0:
        keys = sorted({k for r in rows for k in r} - _CURVE_SKIP)
        raise ValueError(f"history has no 'loss' or 'val_loss' values (keys: {keys})")
    panels = ["loss"] + (["lr"] if lr.size else []) + (["grad_norm"] if gn.size else [])
    fig, axes = _figure(len(panels), 4.2, 3.4)
    ax = axes[0]
    if loss.size:
        smooth = loss.size > 100  # few points: an EMA would mostly show its own lag
        ax.plot(s_loss, loss, color=DATA_COLOR, alpha=0.3 if smooth else 1.0, lw=0.8 if smooth else 1.4,
                label="train loss")
        if smooth:
            ax.plot(s_loss, _ema(loss, max(5, loss.size // 50)), color=DATA_COLOR, lw=1.6, label="train (EMA)")
    if val.size:
        ax.plot(s_val, val, color=SAMPLE_COLOR, lw=1.6, marker="o" if val.size < 40 else None, ms=3, label="val loss")
    fin = np.concatenate([loss[np.isfinite(loss)], val[np.isfinite(val)]])
    if fin.size:  # keep a few huge early losses from flattening the rest of the curve
        lo, q10, q90, hi = np.percentile(fin, [0, 10, 90, 100])
        hi = min(hi, q90 + 5 * (q90 - q10)) if q90 > q10 else hi
        span = max(hi - lo, 1e-6)
        ax.set_ylim(lo - 0.05 * span, hi + 0.08 * span)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    for name, ax in zip(panels[1:], axes[1:]):
        sx, sv = (s_lr, lr) if name == "lr" else (s_gn, gn)
        ax.plot(sx, sv, color="0.2", lw=1.2)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate" if name == "lr" else "grad norm")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "training", fontsize=10)
    return _save(fig, path, dpi)
