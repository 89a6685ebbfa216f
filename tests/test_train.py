"""pf.fit: budgets, reproducibility, exact resume, divergence, validation, standardization."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pushforward as pf
from pushforward.train import (
    EMA,
    FitConfig,
    History,
    RunDir,
    TrainingDivergedError,
    load_checkpoint,
    lr_factor,
)
from pushforward.train.control import StopRule, clip_gradients, make_optimizer


class TinyFlow(pf.FlowModel):
    """A 2-D affine coupling flow small enough for unit tests.

    ``z1 = (x1 - a) e^{-b}``, ``z2 = (x2 - m(x1, c)) e^{-s(x1, c)}`` with ``m, s`` from an MLP
    (``s`` bounded by tanh), so ``log p(x) = log N(z) - b - s``.
    """

    def __init__(self, context_dim: int = 0, hidden: int = 16):
        super().__init__((2,), context_dim)
        self.a = nn.Parameter(torch.zeros(1))
        self.b = nn.Parameter(torch.zeros(1))
        g = torch.Generator().manual_seed(123)
        self.net = nn.Sequential(nn.Linear(1 + context_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def _ms(self, x1, context):
        h = x1 if context is None else torch.cat([x1, context], -1)
        m, s = self.net(h).unbind(-1)
        return m, 2.0 * torch.tanh(s / 2.0)

    def _log_prob(self, x, context=None):
        x1, x2 = x[:, :1], x[:, 1]
        z1 = (x1[:, 0] - self.a) * torch.exp(-self.b)
        m, s = self._ms(x1, context)
        z2 = (x2 - m) * torch.exp(-s)
        z = torch.stack([z1, z2], -1)
        return -0.5 * (z**2).sum(-1) - math.log(2 * math.pi) - self.b - s

    def _sample(self, n, context, generator=None):
        z = torch.randn(n, 2, generator=generator, dtype=self.a.dtype, device=self.a.device)
        x1 = (z[:, :1] * torch.exp(self.b) + self.a)
        m, s = self._ms(x1, context)
        return torch.cat([x1, (z[:, 1] * torch.exp(s) + m)[:, None]], -1)


class NaNAfter(TinyFlow):
    """Its loss becomes NaN from the k-th training call on."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.calls = k, 0

    def _loss(self, x, context):
        self.calls += 1
        loss = super()._loss(x, context)
        return loss * math.nan if self.calls > self.k else loss


class Drift(pf.FlowModel):
    """loss = theta * mean(x): theta falls on positive training data, so the loss on negative
    validation data rises (drives early stopping deterministically)."""

    standardize_by_default = False

    def __init__(self):
        super().__init__((1,))
        self.theta = nn.Parameter(torch.zeros(()))

    def _loss(self, x, context):
        return self.theta * x.mean()


def moons_like(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(t), torch.sin(t)], -1) + 0.1 * torch.randn(n, 2, generator=g)
    return x * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -3.0])


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- basics
def test_fit_reduces_loss_and_returns_history(tmp_path):
    x = moons_like()
    model = TinyFlow()
    before = -model.log_prob(x).mean().item()
    h = pf.fit(model, x, steps=60, batch_size=64, lr=1e-2, val_fraction=0.2, out_dir=tmp_path)
    after = -model.log_prob(x).mean().item()
    assert isinstance(h, History)
    assert h.stopped_reason == "steps" and h.steps == 60
    assert h["step"] == sorted(h["step"]) and h["step"][-1] == 60
    assert len(h["loss"]) == len(h["lr"]) == len(h["time"]) == len(h["val_loss"])
    assert math.isfinite(h.best_val_loss) and h.best_val_loss == min(v for v in h["val_loss"] if not math.isnan(v))
    assert after < before - 0.5
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == h["step"]
    assert all({"step", "loss", "lr", "time"} <= r.keys() for r in lines)
    assert any("val_loss" in r for r in lines)
    assert {"last.pt", "best.pt"} <= {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob("*.tmp"))


def test_budgets_time_and_epochs():
    x = moons_like(400)
    h = pf.fit(TinyFlow(), x, max_time=0.5, batch_size=100, val_fraction=0, log_every=2)
    assert h.stopped_reason == "max_time" and 0.5 <= h.elapsed < 3.0
    # time-fraction schedule: the cosine anneals over the run
    assert h["lr"][-1] < 0.5 * max(h["lr"])
    h = pf.fit(TinyFlow(), x, epochs=3, batch_size=100, val_fraction=0)
    assert h.stopped_reason == "epochs" and h.steps == 12 and h.epochs == pytest.approx(3.0)
    with pytest.raises(ValueError, match="budget"):
        pf.fit(TinyFlow(), x, max_time=None)


def test_reproducible_under_seed():
    x = moons_like()
    runs = []
    for seed in (0, 0, 1):
        m = TinyFlow()
        h = pf.fit(m, x, steps=30, batch_size=32, seed=seed, ema=0.9)
        runs.append((h["loss"], h["val_loss"], params_of(m)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert_same_weights(runs[0][2], runs[1][2])
    assert runs[0][0] != runs[2][0]


def test_fit_leaves_global_rng_alone():
    model, x = TinyFlow(), moons_like(200)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    pf.fit(model, x, steps=3, batch_size=32)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- resume
FIT = dict(batch_size=32, lr=5e-3, ema=0.95, val_fraction=0.2, schedule="cosine", warmup=3, log_every=3)


def test_interrupted_run_resumes_exactly(tmp_path):
    x = moons_like(300)
    straight = TinyFlow()
    h_straight = pf.fit(straight, x, steps=20, **FIT)

    def interrupt(step, metrics):
        if step >= 9:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    interrupted = TinyFlow()
    h_int = pf.fit(interrupted, x, steps=20, out_dir=run, callback=interrupt, **FIT)
    assert h_int.stopped_reason == "interrupted" and h_int.steps == 9
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 9 and ckpt["optimizer"]["state"]  # Adam moments are saved

    # the interrupted checkpoint holds the optimizer state a straight run has at step 9
    straight_ckpt = {}

    def grab(step, metrics):
        if step == 12:
            straight_ckpt.update(load_checkpoint(tmp_path / "straight"))

    pf.fit(TinyFlow(), x, steps=20, out_dir=tmp_path / "straight", checkpoint_every=9, callback=grab, **FIT)
    assert straight_ckpt["step"] == 9
    for i, st in ckpt["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[k], straight_ckpt["optimizer"]["state"][i][k])
    for k, v in ckpt["ema"]["shadow"].items():
        assert torch.equal(v, straight_ckpt["ema"]["shadow"][k])

    resumed = TinyFlow()  # fresh weights: everything must come from the checkpoint
    h_res = pf.fit(resumed, x, steps=11, resume=run, out_dir=run, **FIT)
    assert h_res.steps == 20
    assert h_res["step"] == h_straight["step"]
    assert h_res["loss"] == h_straight["loss"]
    np.testing.assert_array_equal(h_res["val_loss"], h_straight["val_loss"])
    assert_same_weights(params_of(resumed), params_of(straight))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == h_straight["step"]

    # The test can fail: resuming with a fresh optimizer (no Adam moments) changes the weights.
    ckpt["optimizer"]["state"] = {}
    torch.save(ckpt, tmp_path / "no_opt.pt")
    other = TinyFlow()
    pf.fit(other, x, steps=11, resume=tmp_path / "no_opt.pt", **FIT)
    assert not torch.equal(params_of(other)["net.0.weight"], params_of(straight)["net.0.weight"])


def test_n_plus_m_steps_equals_straight(tmp_path):
    x = moons_like(300)
    kw = dict(batch_size=48, lr=3e-3, schedule="constant", warmup=0, ema=None, val_fraction=0)
    straight = TinyFlow()
    h = pf.fit(straight, x, steps=14, **kw)
    first = TinyFlow()
    pf.fit(first, x, steps=6, out_dir=tmp_path, **kw)
    second = TinyFlow()
    h2 = pf.fit(second, x, steps=8, resume=tmp_path / "last.pt", **kw)
    assert h2["loss"] == h["loss"]
    assert_same_weights(params_of(second), params_of(straight))


def test_resume_rejects_other_architecture(tmp_path):
    x = moons_like(200)
    pf.fit(TinyFlow(), x, steps=2, batch_size=32, out_dir=tmp_path)
    with pytest.raises(ValueError, match="does not fit this model"):
        pf.fit(TinyFlow(hidden=8), x, steps=2, resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pf.fit(TinyFlow(), x, steps=2, resume=tmp_path / "missing")


def test_checkpoint_keeps_raw_and_ema_weights(tmp_path):
    x = moons_like(200)
    m = TinyFlow()
    pf.fit(m, x, steps=15, batch_size=32, lr=1e-2, ema=0.9, val_fraction=0, out_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path)
    shadow = ckpt["ema"]["shadow"]
    # the model ends with the EMA weights; the raw training weights differ from them
    for name, p in m.named_parameters():
        assert torch.equal(p.detach(), shadow[name])
    assert not torch.equal(ckpt["train_state"]["a"], shadow["a"])
    assert torch.equal(ckpt["model"]["module"].a.detach(), shadow["a"])
    loaded = pf.load(tmp_path / "last.pt")
    torch.testing.assert_close(loaded.log_prob(x), m.log_prob(x))


# --------------------------------------------------------------------------- failure paths
def test_nan_loss_stops_with_clear_error(tmp_path):
    x = moons_like(200)
    model = NaNAfter(k=7)
    with pytest.raises(TrainingDivergedError, match="at step 7") as info:
        pf.fit(model, x, steps=20, batch_size=32, val_fraction=0, log_every=2, checkpoint_every=2,
               out_dir=tmp_path)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step == 7 and math.isfinite(err.last_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # restored to the weights logged at step 6 (the last good), and last.pt from step 6 is kept
    assert load_checkpoint(tmp_path)["step"] == 6
    ckpt_model = load_checkpoint(tmp_path)["model"]["module"]
    for (_, p), (_, q) in zip(model.named_parameters(), ckpt_model.named_parameters()):
        assert torch.equal(p, q)


def test_bad_data_is_rejected_up_front():
    x = moons_like(200)
    bad = x.clone()
    bad[17, 1] = math.nan
    bad[40, 0] = math.inf
    with pytest.raises(ValueError, match=r"2 non-finite.*\(17, 1\)"):
        pf.fit(TinyFlow(), bad, steps=1)
    with pytest.raises(ValueError, match=r"\[200, 3\].*\[2\]"):
        pf.fit(TinyFlow(), torch.randn(200, 3), steps=1)
    with pytest.raises(ValueError, match="context has 10 rows but data has 200"):
        pf.fit(TinyFlow(context_dim=1), x, torch.randn(10, 1), steps=1)
    with pytest.raises(ValueError, match="conditional"):
        pf.fit(TinyFlow(context_dim=1), x, steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        pf.fit(TinyFlow(), x, torch.randn(200, 1), steps=1)
    with pytest.raises(ValueError, match="schedule"):
        pf.fit(TinyFlow(), x, steps=1, schedule="linear")


# --------------------------------------------------------------------------- data kinds
def test_numpy_dataset_dataloader_and_simulator():
    x = moons_like(256)
    c = x[:, :1].clone() * 0.5
    h = pf.fit(TinyFlow(), x.double().numpy(), steps=3, batch_size=32)
    assert h.steps == 3

    ds = torch.utils.data.TensorDataset(x, c)
    m = TinyFlow(context_dim=1)
    h = pf.fit(m, ds, steps=5, batch_size=32, val_fraction=0.25)
    assert h.steps == 5 and math.isfinite(h.best_val_loss)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
    h = pf.fit(TinyFlow(context_dim=1), dl, epochs=2)
    assert h.steps == 8 and h.stopped_reason == "epochs"

    def simulator(n):
        return torch.randn(n, 2) * 3 + 1

    m = TinyFlow()
    h = pf.fit(m, simulator, steps=4, batch_size=64)
    assert h.steps == 4 and math.isnan(h.epochs)
    torch.testing.assert_close(m.data_loc, torch.ones(2), atol=0.15, rtol=0)  # stats from a large draw
    torch.testing.assert_close(m.data_scale, torch.full((2,), 3.0), atol=0.15, rtol=0)
    with pytest.raises(ValueError, match="epochs has no meaning"):
        pf.fit(TinyFlow(), simulator, epochs=1)


def test_standardization_is_folded_into_the_model():
    x = moons_like(400)
    d = x.shape[1]
    m1, m2 = TinyFlow(), TinyFlow()
    kw = dict(steps=40, batch_size=64, lr=5e-3, val_fraction=0, ema=None)
    pf.fit(m1, x, **kw)
    pf.fit(m2, 1000.0 * x, **kw)
    lp1 = m1.log_prob(x)
    lp2 = m2.log_prob(1000.0 * x)
    torch.testing.assert_close(lp2, lp1 - d * math.log(1000.0), rtol=1e-4, atol=1e-3)
    s = m2.sample(2000, generator=torch.Generator().manual_seed(0))
    assert 300 < s[:, 0].std() < 3000  # samples come out in the user's (scaled) units
    # without standardization the model does not see the same problem
    m3 = TinyFlow()
    pf.fit(m3, x, standardize=False, **kw)
    assert torch.equal(m3.data_scale, torch.ones(2))


# --------------------------------------------------------------------------- options
def test_early_stopping_keeps_best_weights():
    x = torch.ones(64, 1)
    m = Drift()
    h = pf.fit(m, x, val_data=-torch.ones(16, 1), steps=50, batch_size=16, lr=0.1, schedule="constant",
               warmup=0, patience=2, eval_every=1, ema=None, clip_grad=None)
    assert h.stopped_reason == "early_stopping"
    assert h.best_step == 1 and h.steps == 3
    assert m.theta.item() == pytest.approx(-0.1, abs=1e-6)  # Adam's first step: -lr


def test_models_that_train_to_convergence_stop_on_a_validation_plateau():
    class Converging(Drift):
        default_convergence = {"patience": 3, "max_time": 30.0, "schedule": "constant", "warmup": 0}

    x = torch.ones(64, 1)
    kw = dict(val_data=-torch.ones(16, 1), batch_size=16, lr=0.1, ema=None, clip_grad=None)
    m = Converging()
    h = pf.fit(m, x, **kw)  # no budget: per-epoch validation (4 steps), patience 3, cap 30 s
    assert h.stopped_reason == "early_stopping" and h.best_step == 4 and h.steps == 16
    vals = [v for v in h["val_loss"] if v is not None and not math.isnan(v)]
    assert len(vals) == 4 and vals == sorted(vals)  # evaluated at steps 4, 8, 12, 16, rising
    assert m.theta.item() == pytest.approx(-0.4, abs=0.05)  # the best (step 4) weights, not step 16's
    assert set(h["lr"]) == {0.1}  # the model's constant schedule and no warm-up
    # a user's budget replaces the cap; patience=None turns early stopping off
    assert pf.fit(Converging(), x, steps=6, **kw).stopped_reason == "steps"
    assert pf.fit(Converging(), x, steps=40, patience=None, **kw).steps == 40
    assert pf.fit(Converging(), x, eval_every=2, **kw).steps == 2 + 3 * 2
    assert pf.fit(Converging(), x, patience=2, **kw).steps == 4 + 2 * 4  # still once per epoch
    # an epoch counts at least epoch_rows rows: 16 rows at batch 16 still evaluate every 4 steps
    Converging.default_convergence = dict(Converging.default_convergence, epoch_rows=64)
    h = pf.fit(Converging(), x[:16], **kw)
    assert h.best_step == 4 and h.steps == 16
    # lr_decays: a plateau first restarts from the best weights at a tenth of the rate
    Converging.default_convergence = dict(Converging.default_convergence, lr_decays=1)
    m = Converging()
    h = pf.fit(m, x, **kw)
    assert h.stopped_reason == "early_stopping" and h.best_step == 4 and h.steps == 28
    assert h["lr"][-1] == pytest.approx(0.01) and m.theta.item() == pytest.approx(-0.4, abs=0.05)
    # an ordinary model keeps the old defaults (60 s, no early stopping)
    h = pf.fit(Drift(), x, steps=20, **kw)
    assert h.stopped_reason == "steps" and h.steps == 20
    with pytest.raises(ValueError, match="eval_every"):
        pf.fit(Drift(), x, steps=2, eval_every="often")


def test_lr_schedules():
    assert lr_factor("constant", 0.5, 10, 0, False, 100) == 1.0
    assert lr_factor("cosine", 0.0, 0, 10, False, 100) == pytest.approx(0.1)
    assert lr_factor("cosine", 0.5, 50, 10, False, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0, 100, 10, False, 100) == pytest.approx(0.0)
    assert lr_factor("onecycle", 0.0, 0, 0.3, False, 100) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", 0.3, 30, 0.3, False, 100) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0, 100, 0.3, False, 100) == pytest.approx(1e-4)
    assert lr_factor("cosine", 0.01, 0, 0.02, True, None) == pytest.approx(0.5, abs=1e-3)
    h = pf.fit(TinyFlow(), moons_like(200), steps=20, batch_size=32, schedule="onecycle", lr=1e-2, log_every=1)
    assert max(h["lr"]) == pytest.approx(1e-2, rel=0.05) and h["lr"][-1] < 1e-3
    assert np.argmax(h["lr"]) in (4, 5, 6)


def test_amp_gradient_checkpointing_and_adamw():
    x = moons_like(200)
    h = pf.fit(TinyFlow(), x, steps=5, batch_size=32, amp=True, optimizer="adamw", weight_decay=1e-2)
    assert h.steps == 5 and all(math.isfinite(v) for v in h["loss"])
    with pytest.warns(UserWarning, match="gradient checkpointing"):
        pf.fit(TinyFlow(), x, steps=1, batch_size=32, gradient_checkpointing=True)
    m = TinyFlow()
    m.gradient_checkpointing = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pf.fit(m, x, steps=1, batch_size=32, gradient_checkpointing=True)
    assert m.gradient_checkpointing is True
    with pytest.raises(ValueError, match="fp16"):
        pf.fit(TinyFlow(), x, steps=1, amp="fp16")


def test_quiet_without_terminal_and_callback_can_stop(capsys):
    seen = []

    def cb(step, metrics):
        seen.append((step, sorted(metrics)))
        return step >= 4

    h = pf.fit(TinyFlow(), moons_like(200), steps=50, batch_size=32, log_every=2, callback=cb)
    assert h.stopped_reason == "callback" and h.steps == 4
    assert seen[0] == (2, ["loss", "lr", "step", "time"])
    assert capsys.readouterr().err == ""
    pf.fit(TinyFlow(), moons_like(200), steps=5, batch_size=32, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "step" in err


def test_ema_helper():
    m = nn.Linear(2, 1)
    ema = EMA(m, 0.5)
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)  # warm-up decay min(0.5, 1/10) = 0.1
    before = m.weight.detach().clone()
    with ema.swapped(m):
        torch.testing.assert_close(m.weight, before - 0.1)
    assert torch.equal(m.weight, before)
    with pytest.raises(ValueError, match="decay"):
        EMA(m, 1.5)


# --------------------------------------------------------------------------- collaborators
def test_fit_config_takes_model_defaults_and_keeps_user_values_on_resume():
    import inspect

    options = {k: p.default for k, p in inspect.signature(pf.fit).parameters.items()
               if k not in ("model", "data", "context")}
    m = TinyFlow()
    m.default_batch_size, m.default_lr, m.default_ema = 77, 2e-3, 0.5
    cfg = FitConfig.resolve(m, options)
    assert (cfg.batch_size, cfg.lr, cfg.ema, cfg.schedule, cfg.warmup) == (77, 2e-3, 0.5, "cosine", 0.02)
    assert (cfg.checkpoint_steps, cfg.checkpoint_secs, cfg.checkpoint_auto) == (None, None, True)
    resumed = cfg.continuing({"batch_size": 12, "lr": 0.1})
    assert (resumed.batch_size, resumed.lr) == (12, 0.1)
    mine = FitConfig.resolve(m, {**options, "batch_size": 5}).continuing({"batch_size": 12, "lr": 0.1})
    assert (mine.batch_size, mine.lr) == (5, 0.1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        FitConfig.resolve(m, {**options, "checkpoint_every": "often"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


def test_stop_rule_budgets_and_requests():
    rule = StopRule(start=10, steps=5, epochs=2, steps_per_epoch=2, elapsed_before=3.0, max_time=1.0, patience=2)
    assert rule.horizon_steps == 14 and rule.horizon_time is None
    assert rule.spent(13, 3.5) is None and rule.spent(14, 3.5) == "epochs" and rule.spent(13, 4.0) == "max_time"
    assert rule.requested(2, True) == "early_stopping" and rule.requested(1, True) == "callback"
    with pytest.raises(ValueError, match="known length"):
        StopRule(0, None, 1, None, 0.0, None, None)


def test_run_dir_resume_budget(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"fit": {"steps": 20, "lr": 1e-3}})
    cfg = run.read_config()
    assert run.resume_options(cfg, {"step": 8, "elapsed": 1.0}) == {"lr": 1e-3, "steps": 12, "max_time": None}
    assert run.resume_options(cfg, {"step": 20, "elapsed": 1.0}, steps=3) == {"lr": 1e-3, "steps": 3, "max_time": None}
    with pytest.raises(ValueError, match="already finished"):
        run.resume_options(cfg, {"step": 20, "elapsed": 1.0})
    timed = {"fit": {"max_time": 30}}
    assert run.resume_options(timed, {"step": 8, "elapsed": 10.0}) == {"max_time": 20.0}
    with pytest.raises(ValueError, match="epoch budget"):
        run.resume_options({"fit": {"epochs": 3}}, {"step": 8, "elapsed": 1.0})
    assert not RunDir(tmp_path, main=False).has_run()
    RunDir(tmp_path / "other", main=False).write_config({})  # other ranks write nothing
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match="no run directory"):
        RunDir.existing(tmp_path / "missing")


# --------------------------------------------------------------------------- nothing lost, nothing silent
def test_signal_stops_at_a_boundary_checkpoints_and_resumes_exactly(tmp_path):
    import os
    import signal

    x = moons_like(300)
    straight = TinyFlow()
    h_straight = pf.fit(straight, x, steps=20, **FIT)
    before = signal.getsignal(signal.SIGTERM)

    def term(step, metrics):
        if step == 9:
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout`, `docker stop` and Slurm send

    run = tmp_path / "run"
    h = pf.fit(TinyFlow(), x, steps=20, out_dir=run, callback=term, **FIT)
    assert (h.stopped_reason, h.signal, h.steps) == ("interrupted", "SIGTERM", 9)
    assert load_checkpoint(run)["step"] == 9
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only installed during fit
    resumed = TinyFlow()
    h_res = pf.fit(resumed, x, steps=11, resume=run, out_dir=run, **FIT)
    assert h_res["loss"] == h_straight["loss"] and h_res.signal is None
    assert_same_weights(params_of(resumed), params_of(straight))


def test_first_checkpoint_after_one_step_and_cadence_tied_to_the_budget(tmp_path):
    x = moons_like(300)
    seen = {}

    def grab(step, metrics):
        seen[step] = load_checkpoint(tmp_path)["step"] if (tmp_path / "last.pt").exists() else None

    # default cadence, a 40-step budget: after step 1, then every 4 steps (a tenth of the budget)
    pf.fit(TinyFlow(), x, steps=40, batch_size=32, val_fraction=0, log_every=3, out_dir=tmp_path, callback=grab)
    assert seen[3] == 1 and seen[6] == 4 and seen[9] == 8 and seen[39] == 36
    # an explicit cadence is kept; the early checkpoint does not shift it
    seen.clear()
    pf.fit(TinyFlow(), x, steps=12, batch_size=32, val_fraction=0, log_every=3, checkpoint_every=5,
           out_dir=tmp_path / "b", callback=lambda s, m: seen.update({s: load_checkpoint(tmp_path / "b")["step"]}))
    assert seen == {3: 1, 6: 5, 9: 5, 12: 10}
    # time budgets: a tenth of it, at least 1 s, at most 60 s
    from pushforward.train.checkpoint import auto_cadence

    assert auto_cadence(30, None) == (None, 3.0) and auto_cadence(3600, None) == (None, 60.0)
    assert auto_cadence(5, None) == (None, 1.0) and auto_cadence(None, 1000) == (100, 60.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        pf.fit(TinyFlow(), x, steps=2, checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        pf.fit(TinyFlow(), x, steps=2, checkpoint_every="-5s")


def test_run_directory_lock_refuses_a_live_run_and_takes_over_a_dead_ones(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from pushforward.train.run import RunLockedError

    run, x = tmp_path / "run", moons_like(200)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pushforward.train import RunDir\n"
         "with RunDir(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by another training run \\(pid {holder.pid}\\)"):
            pf.fit(TinyFlow(), x, steps=2, out_dir=run)
        assert not (run / "last.pt").exists()  # nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the dead process's lock (and its stale pid file) is taken over
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    pf.fit(TinyFlow(), x, steps=2, out_dir=run)
    assert load_checkpoint(run)["step"] == 2
    # re-entrant within a process: the CLI holds the lock while fit takes it again
    with pf.train.RunDir(run).lock():
        pf.fit(TinyFlow(), x, steps=2, out_dir=run)


FAMILIES = {"nsf": dict(transforms=2, hidden=(16,)), "realnvp": dict(transforms=2, hidden=(16,)),
            "ot-fm": dict(hidden=(16, 16)), "ffjord": dict(hidden=(16,), solver="rk4", steps=4),
            "score-vp": dict(hidden=(16, 16))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_seed_same_model_for_several_families(name):
    x = moons_like(200)

    def train(seed):
        torch.manual_seed(seed)  # pf.fit(seed=) does not re-initialise a built model
        m = pf.build(name, dim=2, **FAMILIES[name])
        pf.fit(m, x, steps=3, batch_size=32, val_fraction=0, seed=seed)
        return params_of(m)

    a, b = train(4), train(4)
    assert_same_weights(a, b)
    other = train(5)  # the test can fail: another seed gives another model
    assert any(not torch.equal(a[k], other[k]) for k in a)


class NaNParamAfter(TinyFlow):
    """From the k-th training call on, a parameter the loss does not use is NaN: the loss stays
    finite, so only a check of the parameters can see it."""

    def __init__(self, k: int):
        super().__init__()
        self.spare = nn.Parameter(torch.zeros(3))
        self.k, self.calls = k, 0

    def _loss(self, x, context):
        self.calls += 1
        if self.calls == self.k:
            with torch.no_grad():
                self.spare.fill_(math.nan)
        return super()._loss(x, context)


def test_rollback_keeps_only_verified_weights_and_names_existing_files(tmp_path):
    x = moons_like(200)
    kw = dict(steps=20, batch_size=32, val_fraction=0, log_every=2)
    # NaN from step 6 on: the log at step 8 takes no candidate and last.pt is not overwritten
    model = NaNParamAfter(k=7)
    with pytest.raises(TrainingDivergedError, match="a parameter became non-finite by step 8") as info:
        pf.fit(model, x, checkpoint_every=2, out_dir=tmp_path, **kw)
    msg = str(info.value)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 6 and f"{tmp_path / 'last.pt'} (step 6)" in msg and "from step 6" in msg
    assert all(torch.isfinite(v).all() for v in ckpt["train_state"].values())
    assert_same_weights(params_of(model), ckpt["train_state"])
    # no out_dir, or no checkpoint yet: the message names no file
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written") as info:
        pf.fit(NaNAfter(k=3), x, checkpoint_every=None, out_dir=tmp_path / "none", **kw)
    assert "last.pt" not in str(info.value) and not (tmp_path / "none" / "last.pt").exists()


class Climb(TinyFlow):
    """Its loss is multiplied by 1e4 on training calls ``start <= call < stop``."""

    def __init__(self, start: int, stop: int = 10**9):
        super().__init__()
        self.start, self.stop, self.calls = start, stop, 0

    def _loss(self, x, context):
        self.calls += 1
        loss = super()._loss(x, context)
        return loss * 1e4 if self.start <= self.calls < self.stop else loss


def test_explosion_is_caught_and_a_short_spike_is_not():
    x = moons_like(200)
    kw = dict(steps=60, batch_size=32, val_fraction=0, log_every=2, lr=1e-3)
    model = Climb(start=21)
    with pytest.raises(TrainingDivergedError, match="the loss exploded.*at 5 logs in a row") as info:
        pf.fit(model, x, **kw)
    assert info.value.step == 30 and info.value.history.stopped_reason == "diverged"
    assert pf.fit(Climb(start=21), x, explode_factor=None, **kw).stopped_reason == "steps"
    assert pf.fit(Climb(start=21, stop=27), x, **kw).stopped_reason == "steps"  # 3 high logs < window 5
    with pytest.raises(ValueError, match="explode_window"):
        pf.fit(TinyFlow(), x, steps=2, explode_window=0)
    with pytest.raises(ValueError, match="explode_factor"):
        pf.fit(TinyFlow(), x, steps=2, explode_factor=-1.0)


@pytest.mark.slow
def test_nsf_at_lr_0_3_is_caught():
    from pushforward import data as pdata

    x = pdata.load("moons", n=2000, seed=0).x
    torch.manual_seed(0)
    model = pf.build("nsf", dim=2)
    with pytest.raises(TrainingDivergedError, match="the loss exploded") as info:
        pf.fit(model, x, steps=400, lr=0.3, seed=0)
    assert info.value.step < 100
    with torch.no_grad():
        assert float(-model.log_prob(x).mean()) < 10  # the restored weights are sane ones


def test_a_step_budget_alone_runs_in_full():
    # max_time="auto" adds no 60 s cut under a user's step or epoch budget
    from pushforward.train.config import _convergence

    base = {"patience": None, "eval_every": None, "schedule": None, "warmup": None, "epochs": None}
    model = pf.build("nsf", dim=2)
    assert _convergence(model, {**base, "max_time": "auto", "steps": 10})["max_time"] is None
    assert _convergence(model, {**base, "max_time": "auto", "steps": None})["max_time"] == 60.0
    assert _convergence(model, {**base, "max_time": 5.0, "steps": 10})["max_time"] == 5.0


def test_clip_gradients_matches_torch_and_leaves_small_norms_alone():
    torch.manual_seed(0)
    for scale, max_norm in [(1.0, 0.5), (1e-3, 10.0), (1.0, math.inf)]:
        a = [nn.Parameter(torch.randn(5, 3, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))]
        b = [nn.Parameter(p.detach().clone()) for p in a]
        grads = [scale * torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        norm = clip_gradients(a, max_norm)
        ref = torch.nn.utils.clip_grad_norm_(b, max_norm)
        assert norm == pytest.approx(float(ref), rel=1e-12)
        for p, q in zip(a, b):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
        if norm <= max_norm:  # untouched, not multiplied by ~1
            assert all(torch.equal(p.grad, g) for p, g in zip(a, grads))
    bad = [nn.Parameter(torch.zeros(2))]
    bad[0].grad = torch.tensor([1.0, math.inf])
    assert clip_gradients(bad, 1.0) == math.inf and bad[0].grad[0] == 1.0
    assert clip_gradients([nn.Parameter(torch.zeros(2))], 1.0) == 0.0  # no gradients yet


def test_make_optimizer_fused_is_the_adam_update():
    torch.manual_seed(0)
    for adamw in (False, True):
        net = nn.Linear(4, 3).double()
        ref = nn.Linear(4, 3).double()
        ref.load_state_dict(net.state_dict())
        opt = make_optimizer(list(net.parameters()), 1e-2, 0.1 if adamw else 0.0, adamw)
        assert opt.param_groups[0]["fused"] and isinstance(opt, torch.optim.AdamW if adamw else torch.optim.Adam)
        ref_opt = (torch.optim.AdamW if adamw else torch.optim.Adam)(ref.parameters(), 1e-2,
                                                                    weight_decay=0.1 if adamw else 0.0)
        for _ in range(5):
            x = torch.randn(8, 4, dtype=torch.float64)
            for m, o in ((net, opt), (ref, ref_opt)):
                o.zero_grad()
                m(x).pow(2).sum().backward()
                o.step()
        for p, q in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    meta = [nn.Parameter(torch.zeros(2, device="meta"))]
    assert not make_optimizer(meta, 1e-3).param_groups[0]["fused"]  # no fused kernel there: the loop
