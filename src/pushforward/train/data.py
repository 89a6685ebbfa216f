"""Data sources for :func:`~pushforward.train.fit`: tensors/arrays, objects with ``.x``,
map-style Datasets, DataLoaders and simulators, behind one constructor (:func:`make_data`).

A source yields *global* batches sliced to this process's share, ``next() -> (x, context,
n_global)``, and records its position (epoch, batch) so a resumed run continues on the same
batches. Tensor and Dataset orders depend only on ``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pushforward._utils import event_stats, to_tensor
from pushforward._validate import check_finite

_VAL_CAP = 20000  # validation points materialised from a map-style Dataset
_STATS_DRAW = 10000  # rows used for standardization statistics of non-tensor data

Batch = tuple[Tensor, Tensor | None]


def split_item(item: Any) -> tuple[Any, Any]:
    """A batch or item is ``x``, ``(x,)``, ``(x, context)`` or ``{"x": ..., "context": ...}``."""
    if isinstance(item, dict):
        return item["x"], item.get("context")
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise ValueError(f"data items must be x or (x, context); got a tuple of {len(item)}")
    return item, None


def _pair(item: Any, dtype: torch.dtype, what: str = "data", context_name: str = "context") -> Batch:
    """An item as ``(x, context)`` tensors of ``dtype``; a 1-D context becomes ``[N, 1]``."""
    x, c = split_item(item)
    x, c = to_tensor(x, what, dtype), to_tensor(c, context_name, dtype)
    return x, (c[:, None] if c is not None and c.dim() == 1 else c)


def check_data(x: Tensor, context: Tensor | None, model: nn.Module, what: str = "data") -> Tensor:
    """Check ``x`` is ``[N, *model.event_shape]``, finite, and that ``context`` fits the model.

    Returns ``x`` (``[N]`` becomes ``[N, 1]`` for a 1-D model).

    Raises:
        ValueError: naming the shape found and the shape expected, or the first non-finite value.
    """
    event_shape = getattr(model, "event_shape", None)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {list(x.shape)})")
    if event_shape is not None:
        event_shape = tuple(event_shape)
        if x.dim() == 1 and event_shape == (1,):
            x = x[:, None]
        if tuple(x.shape[1:]) != event_shape:
            raise ValueError(
                f"{what} has shape {list(x.shape)} (points of shape {list(x.shape[1:])}) but the model "
                f"expects points of shape {list(event_shape)}, i.e. [N, {', '.join(map(str, event_shape))}]"
            )
    check_finite(x, what)
    context_dim = int(getattr(model, "context_dim", 0) or 0)
    if context is not None:
        if context_dim == 0:
            raise ValueError("a context was given but the model is unconditional (context_dim=0)")
        if context.dim() == 1 and context_dim == 1:
            context = context[:, None]
        if context.dim() != 2 or context.shape[1] != context_dim:
            raise ValueError(f"context has shape {list(context.shape)} but the model expects [N, {context_dim}]")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context has {context.shape[0]} rows but {what} has {x.shape[0]}")
        check_finite(context, "context")
    elif context_dim:
        raise ValueError(f"the model is conditional (context_dim={context_dim}) but no context was given")
    return x


# ============================================================================ sources
class Source:
    """Yields global batches, sliced to this rank's share: ``next() -> (x, context, n_global)``."""

    steps_per_epoch: int | None = None
    epoch: int = 0
    pos: int = 0

    def __init__(self, rank: int, world: int, device: torch.device, dtype: torch.dtype):
        self.rank, self.world, self.device, self.dtype = rank, world, device, dtype

    def _shard(self, t: Tensor | None) -> Tensor | None:
        if t is None or self.world == 1:
            return t
        return t.tensor_split(self.world)[self.rank]

    def _move(self, t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return t.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        raise NotImplementedError

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.steps_per_epoch if self.steps_per_epoch else math.nan


class IndexedSource(Source):
    """Tensors or a map-style Dataset; each epoch is a fresh permutation derived from
    ``(seed, epoch)``, so the data order depends only on the seed and the position."""

    def __init__(self, get: Callable[[Tensor], Batch], n: int, batch_size: int, seed: int, **kw):
        super().__init__(**kw)
        self.get, self.n, self.seed = get, n, seed
        self.bs = min(batch_size, n)
        self.steps_per_epoch = n // self.bs  # the last partial batch is dropped
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * (self.epoch + 1)) % (2**63))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), self.epoch
        return self._perm

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        if self.pos >= self.steps_per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self._permutation()[self.pos * self.bs:(self.pos + 1) * self.bs]
        self.pos += 1
        if self.world > 1:
            idx = idx.tensor_split(self.world)[self.rank]
        x, c = self.get(idx)
        return self._move(x), self._move(c), self.bs


class LoaderSource(Source):
    """A DataLoader (or any re-iterable of batches). Resuming replays the epoch up to the saved
    position, which is exact when the loader's order is deterministic."""

    def __init__(self, loader: Any, **kw):
        super().__init__(**kw)
        self.loader = loader
        try:
            self.steps_per_epoch = len(loader) or None
        except TypeError:
            self.steps_per_epoch = None
        self._it = None

    def _batch(self) -> tuple[Tensor, Tensor | None]:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
                for _ in range(self.pos):
                    next(self._it)
            try:
                x, c = split_item(next(self._it))
                return to_tensor(x, "data", self.dtype), to_tensor(c, "context", self.dtype)
            except StopIteration:
                if self.pos == 0:
                    raise ValueError("the data loader yielded no batches") from None
                self._it, self.epoch, self.pos = None, self.epoch + 1, 0

    def load_state(self, s: dict) -> None:
        super().load_state(s)
        self._it = None

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        x, c = self._batch()
        self.pos += 1
        return self._move(self._shard(x)), self._move(self._shard(c)), x.shape[0]


class SimulatorSource(Source):
    """A callable ``n -> batch``: every step draws fresh data (no epochs). Each rank draws its
    own share of the global batch from its own random stream."""

    def __init__(self, fn: Callable[[int], Any], batch_size: int, **kw):
        super().__init__(**kw)
        self.fn, self.bs = fn, batch_size

    def draw(self, n: int) -> Batch:
        x, c = split_item(self.fn(n))
        x, c = to_tensor(x, "simulator output", self.dtype), to_tensor(c, "simulator context", self.dtype)
        if x.shape[0] != n:
            raise ValueError(f"the simulator was asked for {n} samples and returned {x.shape[0]}")
        return x, c

    def next(self) -> tuple[Tensor, Tensor | None, int]:
        n_local = len(range(self.rank, self.bs, self.world))
        x, c = self.draw(n_local)
        self.pos += 1
        return self._move(x), self._move(c), self.bs


# ============================================================================ one constructor
@dataclass
class TrainingData:
    """What :func:`make_data` returns.

    Attributes:
        source: the training batches.
        val: the validation split ``(x, context)`` or None.
        stats: ``(loc, scale)`` of the training data, ``[*event_shape]`` float64 (None unless asked).
        first: a training batch ``(x, context)`` for data-dependent initialisation.
    """

    source: Source
    val: Batch | None
    stats: tuple[Tensor, Tensor] | None
    first: Batch


def make_data(data: Any, context: Any, model: nn.Module, *, batch_size: int, seed: int,
              val_fraction: float | None, val_data: Any, epochs: int | None, stats: bool, resuming: bool,
              rank: int = 0, world: int = 1, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> TrainingData:
    """The source, validation split and standardization statistics for any kind of ``data``.

    ``data``: ``Tensor``/``ndarray`` ``[N, *event_shape]`` (with ``context`` ``[N, C]``), an object
    with ``.x``/``.context``, a map-style ``Dataset`` or a ``DataLoader`` of ``x`` or
    ``(x, context)`` items, or a simulator ``n -> batch``. ``stats`` asks for the per-coordinate
    mean and std of the training data (all of it for tensors, else a draw of 10 000 rows).

    Raises:
        ValueError, TypeError: bad data, naming the shape or kind found and what was expected.
    """
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is smaller than the number of processes {world}")
    kw = {"rank": rank, "world": world, "device": device or torch.device("cpu"), "dtype": dtype}
    if isinstance(getattr(data, "x", None), (Tensor, np.ndarray)):  # e.g. pushforward.data.load(...)
        context = getattr(data, "context", None) if context is None else context
        data = data.x
    if isinstance(data, (Tensor, np.ndarray)):
        source, val, sample, first = _from_tensors(data, context, model, val_fraction, val_data, batch_size, seed, kw)
    elif isinstance(data, torch.utils.data.DataLoader):
        if context is not None:
            raise ValueError("with a DataLoader, the context comes from its (x, context) items")
        source, val, sample, first = _from_loader(data, model, val_fraction, kw)
    elif isinstance(data, torch.utils.data.Dataset):
        if context is not None:
            raise ValueError("with a Dataset, the context comes from its (x, context) items")
        source, val, sample, first = _from_dataset(data, model, val_fraction, batch_size, seed, kw)
    elif callable(data):
        if epochs is not None:
            raise ValueError("epochs has no meaning for a simulator (data is a callable n -> batch); use steps or max_time")
        if context is not None:
            raise ValueError("a simulator returns its own context: have it return (x, context)")
        source = SimulatorSource(data, batch_size, **kw)
        sx, sc = source.draw(max(_STATS_DRAW, batch_size) if not resuming else batch_size)
        sc = sc[:, None] if sc is not None and sc.dim() == 1 else sc
        check_data(sx, sc, model, "simulator output")
        val, sample, first = None, sx, (sx[:batch_size], None if sc is None else sc[:batch_size])
    else:
        raise TypeError(f"data must be a tensor/array, Dataset, DataLoader or callable, got {type(data).__name__}")
    if val_data is not None:
        vx, vc = _pair(val_data, dtype, "val_data", "val context")
        val = (check_data(vx, vc, model, "val_data"), vc)
    return TrainingData(source, val, event_stats(sample) if stats else None, first)


def _split(n: int, frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(validation indices, training indices)``: a fixed permutation of ``range(n)``."""
    n_val = int(round(frac * n))
    if frac > 0 and (n_val < 1 or n - n_val < 1):
        raise ValueError(f"val_fraction={frac} leaves no validation or training data with N={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 4242))
    return perm[:n_val], perm[n_val:]


def _from_tensors(data: Any, context: Any, model: nn.Module, frac: float | None, val_data: Any,
                  batch_size: int, seed: int, kw: dict) -> tuple[Source, Batch | None, Tensor, Batch]:
    x, c = _pair((data, context), kw["dtype"])
    x = check_data(x, c, model)
    n, val = x.shape[0], None
    if frac is None:
        frac = 0.1 if (n >= 100 and val_data is None) else 0.0
    vi, ti = _split(n, frac, seed)
    if len(vi):
        val = (x[vi], None if c is None else c[vi])
        x, c = x[ti], (None if c is None else c[ti])
    device = kw["device"]
    if device.type != "cpu" and x.numel() * x.element_size() < 2**31:
        x = x.to(device)
        c = None if c is None else c.to(device)

    def get(idx: Tensor) -> Batch:
        idx = idx.to(x.device)
        return x[idx], (None if c is None else c[idx])

    source = IndexedSource(get, x.shape[0], batch_size, seed, **kw)
    ii = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 777))[: source.bs].to(x.device)
    return source, val, x, get(ii)


def _from_loader(loader: Any, model: nn.Module, frac: float | None, kw: dict) -> tuple[Source, None, Tensor, Batch]:
    xs, cs, rows = [], [], 0
    for b in loader:
        bx, bc = _pair(b, kw["dtype"])
        check_data(bx, bc, model, "data batch")
        xs.append(bx)
        cs.append(bc)
        rows += bx.shape[0]
        if rows >= _STATS_DRAW:
            break
    if not xs:
        raise ValueError("the data loader yielded no batches")
    if frac:
        raise ValueError("val_fraction needs tensor data or a Dataset; pass val_data with a DataLoader")
    return LoaderSource(loader, **kw), None, torch.cat(xs), (xs[0], cs[0])


def _from_dataset(ds: Any, model: nn.Module, frac: float | None, batch_size: int, seed: int,
                  kw: dict) -> tuple[Source, Batch | None, Tensor, Batch]:
    try:
        n = len(ds)
    except TypeError:
        raise TypeError("fit needs a map-style Dataset (with __len__); wrap iterable ones in a DataLoader") from None
    if n == 0:
        raise ValueError("the dataset is empty")
    dtype = kw["dtype"]

    def collate(items: list) -> Batch:
        pairs = [split_item(it) for it in items]
        x = torch.stack([to_tensor(p[0], "data", dtype) for p in pairs])
        c = None if pairs[0][1] is None else torch.stack([to_tensor(p[1], "context", dtype) for p in pairs])
        return x, (c[:, None] if c is not None and c.dim() == 1 else c)

    vi, train_idx = _split(n, frac or 0.0, seed)
    val = collate([ds[int(i)] for i in vi[:_VAL_CAP]]) if len(vi) else None

    def get(idx: Tensor) -> Batch:
        return collate([ds[int(i)] for i in train_idx[idx]])

    source = IndexedSource(get, len(train_idx), batch_size, seed, **kw)
    sx, sc = get(torch.arange(min(len(train_idx), _STATS_DRAW)))
    check_data(sx, sc, model, "data items")
    return source, val, sx, (sx[: source.bs], None if sc is None else sc[: source.bs])
