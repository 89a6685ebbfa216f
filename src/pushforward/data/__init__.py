"""Data sets, targets with closed-form densities, and user files, behind one :func:`load`.

>>> import pushforward as pf
>>> ds = pf.data.load("moons", n=1000, seed=0)
>>> ds.x.shape, ds.x.dtype
(torch.Size([1000, 2]), torch.float32)
>>> pf.data.load("iris", context="label").context.shape
torch.Size([150, 3])

Nothing is downloaded: toys and targets are generated, the tabular sets and 8x8 digits ship
with scikit-learn, files are read from disk. See :func:`available_datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward._utils import to_tensor
from pushforward.data import files as _files
from pushforward.data.tabular import SKLEARN_SETS, load_sklearn
from pushforward.data.targets import (
    CheckerboardTarget,
    FunnelTarget,
    GaussianMixtureTarget,
    Target,
    available_targets,
    get_target,
)
from pushforward.data.toys import TOY_CLASSES, TOYS

DEFAULT_N = 10_000

# Targets loadable by name that are not also toys (8gaussians/checkerboard are both).
_TARGET_SETS = ("ring", "spiral", "gmm10", "funnel10", "gauss1d")
_TOY_TARGETS = {"8gaussians", "checkerboard"}

ContextSpec = str | int | Sequence[str | int] | None


@dataclass(repr=False)
class Dataset:
    """A data set in memory.

    Attributes:
        x: data, float32, ``[N, D]`` or ``[N, C, H, W]``.
        context: conditioning ``[N, C]`` float32, or None.
        name: the name or file stem it was loaded from.
        target: a closed-form density (:class:`~pushforward.data.targets.Target`) when the data
            were sampled from one, else None.
        meta: anything else: ``columns``, ``context_columns``, ``class_names``, ``num_bins``
            (images), ``kind`` (``toy``, ``target``, ``tabular``, ``image``, ``file``), ``path``.
    """

    x: Tensor
    context: Tensor | None = None
    name: str = ""
    target: Target | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor):
            self.x = to_tensor(self.x, "Dataset.x", dtype=torch.float32)
        if self.x.dim() < 2:
            raise ValueError(f"Dataset.x must be [N, D] or [N, C, H, W], got shape {list(self.x.shape)}")
        if self.context is not None:
            if not isinstance(self.context, Tensor):
                self.context = to_tensor(self.context, "Dataset.context", dtype=torch.float32)
            if self.context.dim() == 1:
                self.context = self.context[:, None]
            if self.context.shape[0] != self.x.shape[0]:
                raise ValueError(
                    f"context has {self.context.shape[0]} rows but x has {self.x.shape[0]}"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one data point, e.g. ``(2,)`` or ``(1, 8, 8)``."""
        return tuple(self.x.shape[1:])

    @property
    def dim(self) -> int:
        """Number of scalars per data point (``prod(event_shape)``)."""
        return int(np.prod(self.event_shape))

    @property
    def context_dim(self) -> int:
        """Size of the context vector (0 without context)."""
        return 0 if self.context is None else int(self.context.shape[1])

    def subset(self, index: Tensor | Sequence[int]) -> Dataset:
        """The rows ``index`` as a new Dataset (same name, target and meta)."""
        index = torch.as_tensor(index, dtype=torch.long)
        ctx = None if self.context is None else self.context[index]
        return Dataset(self.x[index], ctx, self.name, self.target, dict(self.meta))

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A seeded random (train, validation) split; validation gets ``ceil(val_fraction * N)``
        rows (at least 1, at most N - 1)."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        n = len(self)
        if n < 2:
            raise ValueError(f"cannot split a data set of {n} row(s)")
        n_val = min(n - 1, max(1, int(np.ceil(val_fraction * n))))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_val:]), self.subset(perm[:n_val])

    def __repr__(self) -> str:
        ctx = "None" if self.context is None else str(list(self.context.shape))
        tgt = "None" if self.target is None else self.target.name
        return f"Dataset(name={self.name!r}, x={list(self.x.shape)}, context={ctx}, target={tgt})"


def available_datasets() -> list[str]:
    """Names accepted by :func:`load` (besides file paths): 2-D toys, closed-form targets,
    the scikit-learn sets and ``digits8x8``."""
    return sorted({*TOYS, *_TARGET_SETS, *SKLEARN_SETS})


# --------------------------------------------------------------------------- helpers
def _one_hot(labels: np.ndarray | Tensor, num_classes: int | None = None) -> Tensor:
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"class labels must be non-negative integers, got min {int(labels.min())}")
    return F.one_hot(labels, num_classes).float()


def _parse_columns(spec: ContextSpec) -> list[str | int]:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return [int(spec)]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
    elif isinstance(spec, Sequence):
        parts = list(spec)
    else:
        raise TypeError(f"context must be 'label', a column name/index or a list of them, got {type(spec).__name__}")
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"empty column name in context specification {spec!r}")
    return parts


def _resolve_columns(spec: ContextSpec, columns: list[str] | None, width: int, where: str) -> list[int]:
    """Column indices named by ``spec`` (names, indices, or a comma-separated string)."""
    out: list[int] = []
    for p in _parse_columns(spec):
        if isinstance(p, str) and columns is not None and p in columns:
            j = columns.index(p)
        elif isinstance(p, (int, np.integer)) and not isinstance(p, bool) or (isinstance(p, str) and p.lstrip("-").isdigit()):
            j = int(p)
            if not -width <= j < width:
                raise ValueError(f"{where}: context column index {j} is out of range for {width} columns")
            j %= width
        else:
            names = f"columns {columns}" if columns is not None else f"no column names (use indices 0..{width - 1})"
            raise ValueError(f"{where}: unknown context column {p!r}; the data have {names}")
        if j in out:
            raise ValueError(f"{where}: context column {p!r} given twice")
        out.append(j)
    if len(out) >= width:
        raise ValueError(f"{where}: context takes all {width} columns; at least one must remain as data")
    return out


def _split_columns(
    x: np.ndarray, spec: ContextSpec, columns: list[str] | None, where: str
) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str]]:
    if x.ndim != 2:
        raise ValueError(f"{where}: context columns need tabular data [N, D], got shape {list(x.shape)}")
    idx = _resolve_columns(spec, columns, x.shape[1], where)
    keep = [j for j in range(x.shape[1]) if j not in idx]
    names = columns if columns is not None else [str(j) for j in range(x.shape[1])]
    kept = [names[j] for j in keep] if columns is not None else None
    return x[:, keep], x[:, idx], kept, [names[j] for j in idx]


def _check_finite(a: np.ndarray, where: str, columns: list[str] | None = None, lines: list[int] | None = None) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        first = np.argwhere(bad)[0]
        r = int(first[0])
        loc = f"row {r}" + (f" (line {lines[r]})" if lines is not None else "")
        if a.ndim == 2:
            c = int(first[1])
            loc += f", column {c}" + (f" ({columns[c]!r})" if columns is not None else "")
        elif a.ndim > 2:
            loc += f", index {tuple(int(i) for i in first[1:])}"
        raise ValueError(
            f"{where}: {int(bad.sum())} non-finite value(s) (NaN or inf, e.g. missing entries); first at {loc}"
        )


def _floats(a: np.ndarray, name: str) -> Tensor:
    return to_tensor(a, name, dtype=torch.float32).contiguous()


def _subsample(n: int | None, total: int, seed: int, where: str) -> Tensor | None:
    """Row indices for ``n`` of ``total`` rows (seeded), or None for all rows."""
    if n is None:
        return None
    n = _n_generated(n)
    if n > total:
        raise ValueError(f"{where} has {total} rows; cannot take n={n}")
    if n == total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _n_generated(n: int | None) -> int:
    """``n`` as an int (:data:`DEFAULT_N` for None); raises unless it is a positive integer."""
    if n is None:
        return DEFAULT_N
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- loaders
def _load_generated(name: str, n: int | None, seed: int, context: ContextSpec) -> Dataset:
    n = _n_generated(n)
    g = torch.Generator().manual_seed(seed)
    if name in TOYS:
        x, labels = TOYS[name](n, g)
        target = get_target(name) if name in _TOY_TARGETS else None
        meta: dict[str, Any] = {"kind": "toy"}
    else:
        target = get_target(name)
        x, labels = target.sample(n, g), None
        meta = {"kind": "target"}
    ctx = None
    if context is not None:
        if context != "label" or labels is None:
            have = "context='label' (component index, one-hot)" if labels is not None else "no context"
            raise ValueError(f"{name!r}: unsupported context {context!r}; this data set supports {have}")
        ctx = _one_hot(labels, TOY_CLASSES[name])
        meta["context_columns"] = ["label"]
        meta["num_classes"] = TOY_CLASSES[name]
    return Dataset(x.float(), ctx, name, target, meta)


def _load_bundled(name: str, n: int | None, seed: int, context: ContextSpec) -> Dataset:
    b = load_sklearn(name)
    x, columns = b.x, list(b.columns)
    meta: dict[str, Any] = {"kind": "image" if name == "digits8x8" else "tabular", "source": b.description}
    if b.class_names is not None:
        meta["class_names"] = b.class_names
    if name in ("digits", "digits8x8"):
        meta["num_bins"] = 17
    ctx = None
    if context == "label":
        if b.labels is None:
            raise ValueError(f"{name!r} has no class labels; use context='target' for its regression target "
                             f"or name columns {columns}")
        ctx = _one_hot(b.labels, len(b.class_names) if b.class_names else None)
        meta["context_columns"] = ["label"]
    elif context == "target":
        if b.target is None:
            raise ValueError(f"{name!r} has no regression target; use context='label'")
        ctx = _floats(b.target[:, None], "context")
        meta["context_columns"] = ["target"]
    elif context is not None:
        x, c, columns, meta["context_columns"] = _split_columns(x, context, columns, repr(name))
        ctx = _floats(c, "context")
    if x.ndim == 2:
        meta["columns"] = columns
    ds = Dataset(_floats(x, "data"), ctx, name, None, meta)
    idx = _subsample(n, len(ds), seed, repr(name))
    return ds if idx is None else ds.subset(idx)


def _load_file(path: Path, n: int | None, seed: int, context: ContextSpec) -> Dataset:
    where = repr(str(path))
    raw = _files.read(path)
    x = raw.x
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 3:  # [N, H, W] grayscale images
        x = x[:, None]
    _check_finite(x, where, raw.columns if x.ndim == 2 else None, raw.lines)
    meta: dict[str, Any] = {"kind": "file" if x.ndim == 2 else "image", "path": str(path)}
    ctx = None
    columns = raw.columns
    if context is not None:
        if context == "label" and raw.labels is not None:
            lab = raw.labels
            if lab.shape[0] != x.shape[0]:
                raise ValueError(f"{where}: {raw.labels_key!r} has {lab.shape[0]} rows but the data have {x.shape[0]}")
            if lab.dtype.kind in "biu" and lab.ndim == 1:
                ctx = _one_hot(lab)
                meta["num_classes"] = ctx.shape[1]
            else:
                lab = np.asarray(lab, dtype=np.float64).reshape(lab.shape[0], -1)
                _check_finite(lab, f"{where} key {raw.labels_key!r}")
                ctx = _floats(lab, "context")
            meta["context_columns"] = [raw.labels_key]
        else:
            if context == "label" and (columns is None or "label" not in columns):
                keys = ", ".join(repr(k) for k in _files._LABEL_KEYS)
                raise ValueError(
                    f"{where}: context='label' needs an .npz key ({keys}) or a column named 'label'; "
                    f"otherwise name the context columns (names or indices)"
                )
            x, c, columns, meta["context_columns"] = _split_columns(x, context, columns, where)
            ctx = _floats(c, "context")
    if x.ndim == 2:
        meta["columns"] = columns if columns is not None else [str(j) for j in range(x.shape[1])]
    ds = Dataset(_floats(x, "data"), ctx, path.stem, None, meta)
    _check_finite(ds.x.numpy(), f"{where} (as float32)")
    idx = _subsample(n, len(ds), seed, where)
    return ds if idx is None else ds.subset(idx)


def load(
    name_or_path: str | os.PathLike,
    n: int | None = None,
    seed: int = 0,
    context: ContextSpec = None,
) -> Dataset:
    """Load a named data set or a data file as a :class:`Dataset`.

    Args:
        name_or_path: a name from :func:`available_datasets` or a path to ``.npy``, ``.npz``,
            ``.csv``/``.tsv``/``.txt`` (see :mod:`pushforward.data.files` for the rules:
            header detection, delimiter sniffing, npz keys ``x``/``data``/the only array).
        n: number of points. Generated sets (toys, targets): default 10 000. Real data: all
            rows by default; a smaller ``n`` takes a seeded random subset of rows.
        seed: seeds generation and subsetting; the same arguments give the same data.
        context: conditioning, removed from ``x`` and returned as ``Dataset.context [N, C]``:
            ``"label"``: one-hot class labels (labelled toys: component index; iris, wine,
            breast_cancer, digits, digits8x8; ``.npz`` files: the ``context``/``y``/``label``/
            ``labels`` array, one-hot when it is a 1-D integer array, else as is);
            ``"target"``: the diabetes regression target ``[N, 1]``;
            columns: a name, an index, a list of them, or a comma-separated string
            (``"a,b"`` or ``"0,3"``) for tabular data and text/npy/npz files.

    Raises:
        ValueError: unknown name (the message lists the names); bad context; NaN/inf in a file
            (count and first row/column); non-numeric or ragged text rows.
        FileNotFoundError: a path (with a data-file suffix or a folder part) that does not exist.
    """
    if isinstance(name_or_path, Dataset):
        return name_or_path
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and s in available_datasets():
        if s in SKLEARN_SETS:
            return _load_bundled(s, n, seed, context)
        return _load_generated(s, n, seed, context)
    path = Path(s).expanduser()
    if path.is_file():
        return _load_file(path, n, seed, context)
    if path.exists():
        raise ValueError(f"{s!r} is not a file")
    if not isinstance(name_or_path, str) or path.suffix.lower() in _files.SUFFIXES or os.sep in s or "/" in s:
        raise FileNotFoundError(f"no data file at {s!r}")
    raise ValueError(
        f"unknown data set {s!r}; available: {', '.join(available_datasets())}; "
        f"or give a path to an existing .npy, .npz or .csv file"
    )


__all__ = [
    "CheckerboardTarget",
    "Dataset",
    "FunnelTarget",
    "GaussianMixtureTarget",
    "Target",
    "available_datasets",
    "available_targets",
    "get_target",
    "load",
]
