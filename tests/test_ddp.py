"""DDP: 2 CPU processes (gloo) take the same steps as 1 process on the same global batches."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pushforward as pf
from pushforward.train import load_checkpoint

# An odd global batch (63 = 32 + 31) checks the shard weighting of uneven splits; 6 steps cross
# an epoch boundary (240 training points / 63 = 3 batches per epoch); EMA and validation on.
FIT = dict(steps=6, batch_size=63, lr=5e-3, ema=0.9, val_fraction=0.2, eval_every=3, log_every=1, seed=7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> torch.Tensor:
    from test_train import moons_like

    return moons_like(300, seed=4)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from test_train import TinyFlow

    model = TinyFlow()
    try:
        h = pf.fit(model, _data(), out_dir=os.path.join(out, "run"), device="cpu", **FIT)
        assert dist.is_initialized() and dist.get_world_size() == world
        torch.save({"state": model.state_dict(), "history": dict(h)}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    from test_train import TinyFlow

    single = TinyFlow()
    h1 = pf.fit(single, _data(), distributed=False, **FIT)

    ctx = mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 150
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in time")

    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"rank 0 {k}")
        torch.testing.assert_close(r1["state"][k], r0["state"][k], rtol=0, atol=0, msg=f"rank 1 {k}")
    torch.testing.assert_close(torch.tensor(r0["history"]["loss"]), torch.tensor(h1["loss"]), rtol=1e-5, atol=1e-6)
    assert r0["history"]["steps"] == h1["steps"] == 6
    # rank 0 alone writes checkpoints and logs; the checkpoint keeps each rank's RNG state
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == list(range(1, 7))
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 6 and len(ckpt["rng"]) == 2 and ckpt["fit"]["world_size"] == 2
    # the DDP checkpoint resumes in a single process
    resumed = TinyFlow()
    h = pf.fit(resumed, _data(), resume=run, distributed=False, **{**FIT, "steps": 2})
    assert h.steps == 8


def _checkpoint_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from test_train import TinyFlow

    try:
        pf.fit(TinyFlow(), _data(), out_dir=out, device="cpu", steps=7, batch_size=64, checkpoint_every=2, log_every=1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_step_cadence_checkpoints_keep_ranks_in_step(tmp_path):
    # Every rank takes part in each checkpoint (its RNG state is gathered), so every rank must
    # keep the cadence: a rank that did not would wait forever in a gather of its own.
    ctx = mp.spawn(_checkpoint_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in time")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 7 and len(ckpt["rng"]) == 2


def test_loss_module_routes_through_loss():
    from pushforward.distributed import LossModule, wrap
    from test_train import TinyFlow

    m = TinyFlow()
    x = torch.randn(8, 2)
    wrapped = wrap(m, torch.device("cpu"))  # no process group: a plain LossModule
    assert isinstance(wrapped, LossModule)
    torch.testing.assert_close(wrapped(x), m.loss(x))
