"""The TensorBoard sink: ``pf.fit(..., tensorboard=True)`` writes event files that TensorBoard
itself reads back with the logged losses (``tensorboard`` is part of the ``test`` extra)."""

from __future__ import annotations

import json

import pytest
import torch

import pushforward as pf

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_fit_writes_events_tensorboard_reads_back(tmp_path):
    model = pf.build("realnvp", dim=2, transforms=2, hidden=[8])
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    hist = pf.fit(model, x, steps=12, batch_size=32, log_every=3, val_fraction=0.25, eval_every=6,
                  out_dir=tmp_path, tensorboard=True, seed=0)
    assert hist.steps == 12
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/loss"} <= set(tags), tags
    loss = acc.Scalars("train/loss")
    # The same steps and values as metrics.jsonl, the other sink.
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in loss] == want
    assert all(e.value > 0 for e in acc.Scalars("train/lr"))


def test_tensorboard_false_writes_no_events(tmp_path):
    model = pf.build("realnvp", dim=2, transforms=2, hidden=[8])
    pf.fit(model, torch.randn(64, 2), steps=2, batch_size=32, out_dir=tmp_path, tensorboard=False, val_fraction=0)
    assert not (tmp_path / "tensorboard").exists()
