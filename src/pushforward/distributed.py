"""Multi-process training with PyTorch DDP (launched by ``torchrun``).

``torchrun --nproc_per_node=N -m pushforward train ...`` starts N processes with the
environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` joins them into one process group (NCCL on GPUs, gloo on
CPU). :func:`pushforward.fit` then shards every global batch across the ranks and lets DDP
average the gradients, so N processes take the same steps as one process on the same global
batches, up to floating-point summation order. See ``docs/distributed.md``.

Models expose their objective as ``model.loss(x, context)``, not ``forward``; DDP only reduces
gradients of what runs through its own ``forward``, so :class:`LossModule` is the thin module
whose ``forward`` calls ``model.loss`` and which DDP wraps.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs): the one that writes files and logs."""
    return get_rank() == 0


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (the GPU index on this node), 0 by default."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, otherwise the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None, device: str | torch.device | None = None,
                  timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available and ``device``
            is not a CPU, else gloo.
        device: the device training will use (a CPU device selects gloo).
        timeout_s: collective timeout.

    Returns:
        True when a group with more than one process is (now) initialized; False for a plain
        single-process run (nothing is done then).
    """
    if is_initialized():
        return get_world_size() > 1
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if backend is None:
        on_cpu = device is not None and torch.device(device).type == "cpu"
        backend = "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def setup(distributed: bool | None = None, device: str | torch.device | None = None) -> bool:
    """Whether :func:`pushforward.fit` trains with DDP, joining torchrun's group if needed.

    ``distributed=None`` is automatic: yes when a group of more than one process exists or
    torchrun's ``WORLD_SIZE > 1``; ``True``/``False`` force it (False ignores an existing group).
    """
    want = distributed
    if want is None:
        want = is_initialized() and get_world_size() > 1 or env_world_size() > 1
    if want:
        init_from_env(device=device)
    return bool(want) and is_initialized() and get_world_size() > 1


def cleanup() -> None:
    """Destroy the default process group if one exists."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """In-place sum of ``t`` over ranks (returned for chaining; no-op without a group)."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` (``[obj]`` without a group)."""
    if not (is_initialized() and get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


class LossModule(nn.Module):
    """``forward(x, context) = model.loss(x, context)``, so DDP can wrap a model's objective."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.model.loss(x, context)


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """Wrap ``model.loss`` for training: a DDP module when a multi-process group exists,
    otherwise a plain :class:`LossModule`.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from
    the same weights and the same data standardization. ``find_unused_parameters`` defaults to
    True because some models have parameters that a given loss does not touch (for instance
    sampling-only parts), which would otherwise make DDP wait forever for their gradients.
    """
    module = LossModule(model)
    if not (is_initialized() and get_world_size() > 1):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


class StepSync:
    """The reductions of one training step across ranks; identities in a single process.

    Every decision the loop takes (stop, evaluate, checkpoint, diverge) reads only values that
    pass through here, so every rank takes it at the same step.

    Args:
        enabled: whether a DDP group is in use.
        world: number of processes.
        main: whether this is rank 0, whose clock is the run's clock.
    """

    def __init__(self, enabled: bool = False, world: int = 1, main: bool = True):
        self.enabled, self.world, self.main = enabled, world, main

    def step(self, loss: Tensor, rows: int, global_rows: int, elapsed: float) -> tuple[Tensor, float, bool, float]:
        """``(loss to backpropagate, global-batch mean loss, finite on every rank, elapsed)``.

        ``loss`` is this rank's mean over its ``rows`` of the ``global_rows`` batch. DDP averages
        gradients over ranks; scaling by the shard's share makes that average the gradient of the
        global-batch mean even for uneven shards. ``elapsed`` becomes rank 0's clock.
        """
        local = loss.detach()
        if not self.enabled:
            value = float(local)
            return loss, value, math.isfinite(value), elapsed
        w = rows / global_rows
        stats = torch.stack([
            torch.where(torch.isfinite(local), local * w, torch.zeros_like(local)).double(),
            (~torch.isfinite(local)).double(),
            local.new_tensor(elapsed if self.main else 0.0, dtype=torch.float64),
        ])
        all_reduce_sum(stats)
        return loss * (rows * self.world / global_rows), float(stats[0]), float(stats[1]) == 0, float(stats[2])

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on some rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        return all_reduce_sum(t).item() > 0

    def gather(self, obj: Any) -> list[Any]:
        """``[obj_rank0, obj_rank1, ...]`` (``[obj]`` in a single process)."""
        return all_gather_object(obj) if self.enabled else [obj]
