"""Rectified flow: reflow straightens the flow and improves few-step sampling; distillation."""

from __future__ import annotations

import pytest
import torch

import pushforward as pf
from pushforward.matching import FlowMatching, distill, generate_pairs, reflow, straightness
from pushforward.nets import TimeMLP


def _target(n, seed):
    g = torch.Generator().manual_seed(seed)
    side = 2.0 * torch.randint(0, 2, (n, 1), generator=g) - 1.0
    return torch.cat([2.0 * side, 0.5 * side], -1) + 0.3 * torch.randn(n, 2, generator=g)


@pytest.fixture(scope="module")
def flows():
    torch.manual_seed(0)
    model = FlowMatching((2,), net=TimeMLP(2, hidden=(64, 64)), solver="euler", steps=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for _ in range(800):
        opt.zero_grad()
        model.loss(_target(256, torch.randint(0, 10**6, ()).item())).backward()
        opt.step()
        sched.step()
    model.eval()
    g = torch.Generator().manual_seed(1)
    model2 = reflow(model, n=4000, steps=800, lr=2e-3, generator=g)
    return model, model2


def _w2_at(model, steps, seed=3):
    with torch.no_grad():
        s = model.sample(1000, steps=steps, solver="euler", generator=torch.Generator().manual_seed(seed))
    return pf.metrics.w2(s, _target(1000, 99))


def test_reflow_straightens_and_improves_few_step_sampling(flows):
    model, model2 = flows
    x0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    s1, s2 = straightness(model, x0=x0), straightness(model2, x0=x0)
    assert s2 < 0.5 * s1, (s1, s2)
    assert model2.reflow_round == 2 and not hasattr(model, "reflow_round")
    w1, w2 = _w2_at(model, 1), _w2_at(model2, 1)
    assert w2 < 0.7 * w1, (w1, w2)
    # reflow keeps the marginal: its many-step samples are about as good as the 1-rectified flow's.
    w32_1, w32_2 = _w2_at(model, 32), _w2_at(model2, 32)
    assert w32_2 < 1.25 * w32_1, (w32_1, w32_2)


def test_straightness_is_zero_for_a_straight_flow():
    class Constant(torch.nn.Module):
        def forward(self, x, t, context=None):
            return torch.ones_like(x) * 2.0

    model = FlowMatching((2,), net=Constant())
    assert straightness(model, n=50) == pytest.approx(0.0, abs=1e-10)
    assert straightness(pf.build("fm", dim=2), n=50) > 0


def test_generate_pairs_follow_the_flow(flows):
    _, model2 = flows
    x0, x1 = generate_pairs(model2, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        again = model2.sample(64, x0=x0, solver="dopri5", atol=1e-4, rtol=1e-4)
    assert torch.allclose(x1, again, atol=1e-5)


def test_distillation_gives_a_one_step_generator(flows):
    model, model2 = flows
    student = distill(model2, n=3000, steps=500, lr=2e-3, generator=torch.Generator().manual_seed(2))
    assert student.default_steps == 1 and student.default_solver == "euler"
    with torch.no_grad():
        student.sample(10)
    assert student.nfe == 1
    assert _w2_at(student, 1) < 0.7 * _w2_at(model, 1)


def test_reflow_of_a_built_model_keeps_a_loadable_config(tmp_path):
    # An OT coupling: build records every default, so the default "independent" would not show the change.
    model = pf.build("rectified", dim=2, hidden=(16,), coupling="ot")
    new = reflow(model, n=64, steps=2)
    assert new.config["coupling"] == "independent" and model.config.get("coupling") != "independent"
    pf.save(new, tmp_path / "m.pt")
    again = pf.load(tmp_path / "m.pt")
    x = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.allclose(again.velocity(x, 0.5), new.velocity(x, 0.5))


# ------------------------------------------------------------------ the staged recipe in pf.fit
def _recipe(**kw):
    torch.manual_seed(0)
    return pf.build("rectified", dim=2, hidden=(32, 32), **{"reflow_pairs": 1000, **kw})


def test_fit_runs_the_whole_recipe_in_its_budget():
    model = _recipe(distill=True)
    h = pf.fit(model, _target(2000, 0), steps=200, progress=False)
    # Default split: 1-RF half the budget, reflow and distillation a quarter each.
    assert [(s["stage"], s["step"]) for s in h["stages"]] == [("reflow-2", 100), ("distill", 150)]
    assert h.steps == 200 and model.fit_stage == 2 and model.pairs_x0.shape == (1000, 2)
    # The reflow pairs are the flow's own: x_1 is data-like, x_0 the base noise.
    model.sample(7)
    assert model.nfe == 1  # a distilled model samples in one step by default
    assert model.stage_names() == ["1-rf", "reflow-2", "distill"]


def test_pair_generation_stays_inside_a_time_budget():
    # generate_pairs with a time cap stops after the batch that reaches it (batches of 1024)
    model = _recipe()
    x0, x1 = generate_pairs(model, 5000, solver="euler", steps=4, max_time=0.0)
    assert x0.shape == x1.shape == (1024, 2)
    # in a timed recipe the reflow pairs get at most half the stage's share: 1e6 pairs do not fit
    # in 2 s, so the stage starts with fewer and the history records how many
    model = _recipe(reflow_pairs=1_000_000, pair_solver="rk4", pair_steps=64)
    h = pf.fit(model, _target(2000, 0), max_time=2.0, progress=False)
    (entry,) = h["stages"]
    assert 1024 <= entry["pairs"] < 1_000_000 and model.pairs_x0.shape == (entry["pairs"], 2)
    assert model.pairs_x1.shape == model.pairs_x0.shape


def test_reflow_rounds_zero_is_plain_rectified_flow():
    model = _recipe(reflow_rounds=0)
    h = pf.fit(model, _target(1000, 0), steps=30, progress=False)
    assert "stages" not in h and model.fit_stage == 0 and model.pairs_x0.numel() == 0


def test_resuming_resumes_the_stage(tmp_path):
    x = _target(2000, 1)
    straight = _recipe(budget_split=(0.4, 0.6))
    h_straight = pf.fit(straight, x, steps=120, progress=False, val_fraction=0)
    first = _recipe(budget_split=(0.4, 0.6))
    pf.fit(first, x, steps=120, progress=False, val_fraction=0, out_dir=tmp_path,
           callback=lambda step, rec: step >= 80, log_every=10)
    assert first.fit_stage == 1  # stopped inside reflow
    again = _recipe(budget_split=(0.4, 0.6))
    h = pf.fit(again, x, steps=40, progress=False, val_fraction=0, resume=tmp_path, log_every=10)
    def entries(hist):
        return [(s["stage"], s["step"]) for s in hist["stages"]]

    assert again.fit_stage == 1 and entries(h) == entries(h_straight) == [("reflow-2", 48)]
    torch.testing.assert_close(again.pairs_x1, straight.pairs_x1)
    for a, b in zip(again.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b)


def test_recipe_state_survives_save_and_load(tmp_path):
    model = _recipe()
    pf.fit(model, _target(1000, 0), steps=20, progress=False)
    pf.save(model, tmp_path / "m.pt")
    again = pf.load(tmp_path / "m.pt")
    assert again.fit_stage == 1
    torch.testing.assert_close(again.pairs_x0, model.pairs_x0)


@pytest.mark.parametrize(("bad", "match"), [({"budget_split": (0.5, 0.3)}, "budget_split"),
                                            ({"budget_split": (1.0,)}, "budget_split"),
                                            ({"reflow_rounds": -1}, "reflow_rounds"),
                                            ({"reflow_pairs": 0}, "reflow_pairs"),
                                            ({"pair_solver": "rk45"}, "pair_solver")])
def test_bad_recipe_options_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        pf.build("rectified", dim=2, **bad)
