"""FFJORD (pf.build("ffjord", dim)): density, sampler, gradients, training, options."""

from __future__ import annotations

import math

import pytest
import torch

import pushforward as pf
from pushforward.continuous import divergence_exact
from pushforward.continuous.ffjord import FFJORD, ConcatSquashField

D64 = torch.float64


def _model(context_dim=0, perturb=0.3, seed=0, **kw):
    torch.manual_seed(seed)
    model = pf.build("ffjord", 2, context_dim=context_dim, hidden=(16, 16), **kw).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _grid(n=80, half=6.0):
    u = torch.linspace(-half, half, n, dtype=D64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), float(u[1] - u[0])


@pytest.mark.parametrize("context_dim", [0, 2])
def test_density_integrates_to_one_and_matches_the_sampler(context_dim):
    model = _model(context_dim)
    pts, h = _grid()
    ctx = None
    if context_dim:
        ctx = torch.tensor([0.7, -1.2], dtype=D64)
    with torch.no_grad():
        dens = model.log_prob(pts, None if ctx is None else ctx.expand(len(pts), -1)).exp()
        n = 4000
        s = model.sample(n, context=ctx, generator=torch.Generator().manual_seed(3))
    mass = float(dens.sum()) * h * h
    assert abs(mass - 1.0) < 1e-2, mass
    # The model is far from N(0, I): the test would not pass with a wrong divergence sign.
    with torch.no_grad():
        base = -0.5 * (pts**2).sum(-1) - math.log(2 * math.pi)
        assert float((dens.log() - base).abs().max()) > 0.3
    half = float(dens[pts[:, 0] > 0.2].sum()) * h * h / mass
    freq = float((s[:, 0] > 0.2).double().mean())
    assert abs(freq - half) < 4 * math.sqrt(half * (1 - half) / n) + 5e-3, (freq, half)


@pytest.mark.parametrize("context_dim,time_embed,activation", [(0, 0, "tanh"), (3, 4, "softplus"), (0, 2, "silu"), (1, 0, "elu")])
def test_fast_exact_divergence_matches_autograd(context_dim, time_embed, activation):
    torch.manual_seed(0)
    field = ConcatSquashField(3, context_dim, (8, 8), time_embed, activation).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(5, 3, dtype=D64, requires_grad=True)
    ctx = torch.randn(5, context_dim, dtype=D64) if context_dim else None
    for t in (torch.tensor(0.3, dtype=D64), torch.rand(5, dtype=D64)):
        u, div = field.forward_with_divergence(x, t, ctx)
        u_ref = field(x, t, ctx)
        assert torch.allclose(u, u_ref, atol=1e-12)
        assert torch.allclose(div, divergence_exact(u_ref, x), atol=1e-10)


def test_log_prob_paths_agree():
    model = _model()
    x = torch.randn(6, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model.log_prob(x)
        loop = model.log_prob(x, exact_method="loop")
        default_exact = model.log_prob(x, exact=True)
        # 400 independent probes per point in one solve (each row of the batch has its own).
        est = model.log_prob(x.repeat(400, 1), exact=False, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fast, loop, atol=1e-8)
    assert torch.equal(fast, default_exact)  # exact is the default in 2-D
    est = est.reshape(400, 6)
    assert not torch.allclose(est[0], fast, atol=1e-6)  # Hutchinson really is stochastic
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - fast).abs() < 4 * se + 1e-6).all()


@pytest.mark.parametrize("context_dim,hidden", [(0, (16, 16, 16)), (2, (8, 12)), (0, (8, 8, 8, 8, 8))])
def test_fast_exact_log_prob_and_its_parameter_gradients_match_the_loop(context_dim, hidden):
    # The meet-in-the-middle trace (mlp_divergence) against the per-dimension autograd loop, in
    # float64, for the log-likelihood *and* d log p / d theta (training through the exact trace).
    torch.manual_seed(0)
    model = pf.build("ffjord", 3, context_dim=context_dim, hidden=hidden).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(7, 3, dtype=D64, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(7, context_dim, dtype=D64) if context_dim else None
    out = {}
    for method in ("auto", "loop"):
        model.zero_grad()
        lp = model.log_prob(x, ctx, exact=True, exact_method=method, solver="rk4", steps=4)
        lp.sum().backward()
        out[method] = lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    assert torch.allclose(out["auto"][0], out["loop"][0], atol=1e-10)
    for name, g in out["loop"][1].items():
        assert torch.allclose(out["auto"][1][name], g, atol=1e-9), name
    assert sum(float(g.abs().sum()) for g in out["loop"][1].values()) > 1.0


def test_log_prob_defaults_to_hutchinson_in_high_dimension():
    torch.manual_seed(0)
    model = pf.build("ffjord", 12, hidden=(16,)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        x = torch.randn(3, 12, dtype=D64)
        a = model.log_prob(x, generator=torch.Generator().manual_seed(0))
        b = model.log_prob(x, generator=torch.Generator().manual_seed(1))
        c = model.log_prob(x, exact=True)
    assert not torch.allclose(a, b)
    assert ((a - c).abs() < 1.0).all()


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(divergence):
    x = torch.randn(16, 2, dtype=D64, generator=torch.Generator().manual_seed(0))

    def grads(adjoint):
        model = _model(perturb=0.2, divergence=divergence, adjoint=adjoint, kinetic=0.1, jacobian=0.1,
                       atol=1e-9, rtol=1e-9).train()
        torch.manual_seed(5)  # the same Hutchinson probe in both runs
        model.loss(x).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    direct, adjoint = grads(False), grads(True)
    for name, g in direct.items():
        assert torch.allclose(g, adjoint[name], atol=1e-6, rtol=1e-5), name
    assert sum(float(g.abs().sum()) for g in direct.values()) > 0


def test_regularisers_add_to_the_loss():
    x = torch.randn(64, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    losses = {}
    for kin, jac in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
        model = _model(kinetic=kin, jacobian=jac).train()
        torch.manual_seed(0)
        losses[(kin, jac)] = float(model.loss(x).detach())
    assert losses[(1.0, 0.0)] > losses[(0.0, 0.0)] + 1e-3
    assert losses[(0.0, 1.0)] > losses[(0.0, 0.0)] + 1e-3


def test_validation_loss_is_the_exact_nll():
    model = _model()
    x = torch.randn(32, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert math.isclose(float(model.loss(x)), float(-model.log_prob(x).mean()), rel_tol=1e-10)


def test_short_training_lowers_the_nll():
    g = torch.Generator().manual_seed(0)
    # A correlated, shifted Gaussian: the identity initial flow fits it badly.
    z = torch.randn(4096, 2, generator=g)
    x = z @ torch.tensor([[1.0, 0.0], [0.9, 0.4]]).T + torch.tensor([0.5, -0.5])
    torch.manual_seed(0)
    model = pf.build("ffjord", 2, hidden=(32, 32), atol=1e-3, rtol=1e-3, kinetic=0.01, jacobian=0.01)
    test = x[:1024]
    with torch.no_grad():
        before = float(-model.eval().log_prob(test).mean())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, 4096, (256,), generator=g)
        opt.zero_grad()
        model.loss(x[idx]).backward()
        opt.step()
    with torch.no_grad():
        after = float(-model.eval().log_prob(test).mean())
    exact = float(0.5 * (z[:1024] ** 2).sum(-1).mean() + math.log(2 * math.pi) + math.log(0.4))
    assert after < before - 0.5, (before, after, exact)
    assert after > exact - 0.1  # no "improvement" past the true entropy


def test_train_and_eval_tolerances():
    model = pf.build("ffjord", 2, atol=1e-3, rtol=1e-3, eval_atol=1e-6, eval_rtol=1e-7)
    assert (model.train().default_atol, model.default_rtol) == (1e-3, 1e-3)
    assert (model.eval().default_atol, model.default_rtol) == (1e-6, 1e-7)
    assert isinstance(model, FFJORD) and model.default_solver == "dopri5"


def test_fixed_step_solver_and_nfe():
    model = _model(solver="rk4", steps=5)
    x = torch.randn(4, 2, dtype=D64)
    with torch.no_grad():
        model.log_prob(x)
        assert model.nfe == 20
        model.sample(3, steps=2, solver="euler")
        assert model.nfe == 2


@pytest.mark.parametrize("kw,match", [
    (dict(activation="relu"), "activation"),
    (dict(solver="rk5"), "solver"),
    (dict(divergence="trace"), "divergence"),
    (dict(probe="uniform"), "probe"),
    (dict(atol=0.0), "atol"),
    (dict(rtol=-1e-3), "rtol"),
    (dict(kinetic=-1.0), "kinetic"),
    (dict(jacobian=float("nan")), "jacobian"),
    (dict(steps=0), "steps"),
    (dict(hidden=()), "hidden"),
    (dict(time_embed=3), "time_embed"),
    (dict(image_shape=(1, 2, 2)), "image_shape"),
])
def test_builder_rejects_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        pf.build("ffjord", 2, **kw)


def test_ffjord_is_registered_as_its_class_with_every_option_recorded():
    import inspect

    import pushforward.registry as reg

    assert reg.entry("ffjord").factory is FFJORD
    model = pf.build("ffjord", 2, hidden=[8, 8])
    options = [k for k in inspect.signature(FFJORD).parameters if k not in ("dim", "context_dim")]
    assert len(options) == 14 and all(k in model.config for k in options)
    assert model.field.linears[0].out_features == 8
    with pytest.raises(ValueError, match="atol"):
        FFJORD(2, atol=0.0)
