"""Score-based models (pushforward.score): SDE kernels, path conversions, DSM, samplers, PF-ODE density.

Ground truth: for Gaussian data N(mu, diag v) every linear SDE keeps p_s Gaussian,
p_s = N(m(s) mu, m(s)^2 v + sigma(s)^2), so the optimal noise predictor is known in closed form:
E[eps | x_s] = sigma (x_s - m mu) / (m^2 v + sigma^2).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pushforward as pf
from pushforward.distributions import DiagGaussian
from pushforward.matching.paths import AffinePath, CondOTScheduler, expand_time
from pushforward.score import VESDE, VPSDE, ScoreModel, SubVPSDE

D64 = torch.float64
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": lambda: VESDE(sigma_max=6.0)}
MU = torch.tensor([0.5, -1.0], dtype=D64)
VAR = torch.tensor([0.5, 2.0], dtype=D64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


class GaussianEps(nn.Module):
    """The exact E[eps | x_s] for data N(mu, diag v) on a linear SDE (network interface (x, s, c))."""

    def __init__(self, sde, mu=MU, var=VAR):
        super().__init__()
        self.sde = sde
        self.register_buffer("mu", mu.clone())
        self.register_buffer("var", var.clone())

    def marginal(self, s):
        m, sd = self.sde.mean_coeff(s), self.sde.std(s)
        return m * self.mu, m * m * self.var + sd * sd

    def forward(self, x, s, context=None):
        s = s.reshape(-1, 1)
        mean, var = self.marginal(s)
        return self.sde.std(s) * (x - mean) / var


def gaussian_lp(x, mean, var):
    return (-0.5 * (x - mean).pow(2) / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)


def analytic_model(key, exact_prior=True):
    sde = SDES[key]()
    model = ScoreModel(2, sde, net=GaussianEps(sde), gaussian_skip=False).double()
    if exact_prior:
        # The true p_1 as base isolates the ODE/SDE solvers from the prior mismatch (large for VE).
        mean, var = model.net.marginal(torch.tensor(1.0, dtype=D64))
        base = DiagGaussian(2, learnable=False).double()
        with torch.no_grad():
            base.loc.copy_(mean)
            base.log_scale.copy_(0.5 * torch.log(var))
        model.base = base
    return model


# ---------------------------------------------------------------------------- SDEs
@pytest.mark.parametrize("key", list(SDES))
def test_kernel_matches_euler_maruyama_simulation(key):
    """mean/std of p_s(x_s | x_0) against a Monte Carlo of the forward SDE (1000 EM steps)."""
    sde = SDES[key]()
    n, steps = 20000, 1000
    x0 = torch.tensor([1.5, -0.7], dtype=D64).expand(n, 2)
    g = gen(0)
    x = x0.clone()
    if key == "ve":  # the VE kernel has std sigma(s) from s = 0: the process starts from x0 + sigma_min z
        x = x + sde.sigma_min * torch.randn(x.shape, generator=g, dtype=D64)
    h = 1.0 / steps
    checks = {int(0.1 * steps): 0.1, int(0.4 * steps): 0.4, steps: 1.0}
    for k in range(1, steps + 1):
        s = torch.tensor((k - 1) * h, dtype=D64)
        x = x + sde.drift(x, s) * h + sde.diffusion(s) * math.sqrt(h) * torch.randn(x.shape, generator=g, dtype=D64)
        if k in checks:
            st = torch.tensor(checks[k], dtype=D64)
            mean, std = sde.marginal(x0[:1], st)
            emp_mean, emp_std = x.mean(0), x.std(0)
            se = float(std) / math.sqrt(n)
            assert torch.allclose(emp_mean, mean[0], atol=5 * se + 3e-3 * float(mean.abs().max())), (k, emp_mean, mean)
            assert torch.allclose(emp_std, std.expand(2), rtol=5 / math.sqrt(2 * n) + 3e-3), (k, emp_std, std)


@pytest.mark.parametrize("key", list(SDES))
def test_coefficients_are_consistent(key):
    """a = d log m / ds, sigma' by autograd, and d sigma^2/ds = 2 a sigma^2 + g^2 (the kernel's ODE)."""
    sde = SDES[key]()
    s = torch.linspace(0.01, 1.0, 50, dtype=D64, requires_grad=True)
    m, sd = sde.mean_coeff(s), sde.std(s)
    dm = torch.autograd.grad(m.sum(), s)[0] if m.requires_grad else torch.zeros_like(s)  # VE: m = 1
    (dsd,) = torch.autograd.grad(sd.sum(), s)
    s = s.detach()
    assert torch.allclose(sde.dmean_coeff(s), dm, rtol=1e-10, atol=1e-12)
    assert torch.allclose(sde.dstd(s), dsd, rtol=1e-10, atol=1e-12)
    assert torch.allclose(sde.drift_coeff(s), dm / m.detach(), rtol=1e-10)
    lhs = 2 * sd.detach() * dsd
    rhs = 2 * sde.drift_coeff(s) * sd.detach() ** 2 + sde.diffusion(s) ** 2
    assert torch.allclose(lhs, rhs, rtol=1e-9), (lhs - rhs).abs().max()


def test_prior_matches_marginal_at_one():
    for sde in (VPSDE(), SubVPSDE()):
        one = torch.tensor(1.0, dtype=D64)
        assert float(sde.mean_coeff(one)) < 0.01 and abs(float(sde.std(one)) - 1.0) < 1e-4
        assert sde.prior_std == 1.0
    ve = VESDE(sigma_max=6.0)
    assert abs(float(ve.std(torch.tensor(1.0))) - 6.0) < 1e-5 and ve.prior_std == 6.0
    x = torch.randn(5, 2, dtype=D64, generator=gen(1))
    ref = torch.distributions.Normal(0.0, 6.0).log_prob(x).sum(-1)
    assert torch.allclose(ve.prior_log_prob(x), ref)


def test_sde_argument_errors():
    with pytest.raises(ValueError, match="beta_max"):
        VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="s_eps"):
        VPSDE(s_eps=0.0)
    with pytest.raises(ValueError, match="time"):
        expand_time(torch.ones(3), torch.ones(4, 2))


# ---------------------------------------------------------------------------- conversions
# The SDE's path converts in library time t = 1 - s (x_1: data, eps = x_0: noise).
@pytest.mark.parametrize("key", list(SDES))
def test_conversions_round_trip_and_broadcast(key):
    sde = SDES[key]()
    path = sde.path
    g = gen(2)
    x = torch.randn(6, 2, dtype=D64, generator=g)
    eps = torch.randn(6, 2, dtype=D64, generator=g)
    s_vec = torch.rand(6, dtype=D64, generator=g) * 0.9 + 0.05
    for s in (0.3, torch.tensor(0.3, dtype=D64), s_vec, s_vec[:, None]):
        t = 1 - torch.as_tensor(s, dtype=D64)
        sc = path.epsilon_to_score(eps, x, t)
        assert torch.allclose(path.score_to_epsilon(sc, x, t), eps)
        x1 = path.epsilon_to_target(eps, x, t)
        assert torch.allclose(path.target_to_epsilon(x1, x, t), eps)
        assert torch.allclose(path.score_to_target(sc, x, t), x1)
        assert torch.allclose(path.target_to_score(x1, x, t), sc)
        u = path.epsilon_to_velocity(eps, x, t)
        assert torch.allclose(path.score_to_velocity(sc, x, t), u)
        assert torch.allclose(path.target_to_velocity(x1, x, t), u)
        assert torch.allclose(path.velocity_to_epsilon(u, x, t), eps)
        assert torch.allclose(path.velocity_to_score(u, x, t), sc)
        # PF-ODE drift in s (minus the velocity) from the path = f - g^2/2 score from the SDE coefficients
        sb = expand_time(s, x)
        assert torch.allclose(-path.score_to_velocity(sc, x, t), sde.drift(x, s) - 0.5 * sde.diffusion(sb) ** 2 * sc)
    # the same s given as a float, [N] and [N, 1] gives the same rows
    t_vec = 1 - s_vec
    a = path.epsilon_to_velocity(eps, x, t_vec)
    b = path.epsilon_to_velocity(eps, x, t_vec[:, None])
    c = torch.stack([path.epsilon_to_velocity(eps[i:i + 1], x[i:i + 1], 1 - float(s_vec[i]))[0] for i in range(6)])
    assert torch.allclose(a, b) and torch.allclose(a, c)


@pytest.mark.parametrize("key", list(SDES))
def test_conversions_agree_with_the_kernel(key):
    """For a point mass at the data x1, E[eps | x_s] = eps exactly and the PF velocity is the path's derivative."""
    sde = SDES[key]()
    g = gen(3)
    x1 = torch.randn(5, 2, dtype=D64, generator=g)
    eps = torch.randn(5, 2, dtype=D64, generator=g)
    s = torch.rand(5, dtype=D64, generator=g) * 0.8 + 0.1
    xs, _ = sde.perturb(x1, s, eps)
    assert torch.allclose(sde.path.target_to_epsilon(x1, xs, 1 - s), eps)
    h = 1e-6
    path = lambda r: sde.perturb(x1, r, eps)[0]  # noqa: E731
    dxdt = -(path(s + h) - path(s - h)) / (2 * h)  # library time t = 1 - s
    assert torch.allclose(sde.path.target_to_velocity(x1, xs, 1 - s), dxdt, atol=1e-6, rtol=1e-6)
    # Gaussian data: Tweedie's formula gives the Gaussian posterior mean of the data
    est = GaussianEps(sde)
    e = est(xs, s)
    m, sd = sde.mean_coeff(s)[:, None], sde.std(s)[:, None]
    post = MU + m * VAR / (m * m * VAR + sd * sd) * (xs - m * MU)
    assert torch.allclose(sde.path.epsilon_to_target(e, xs, 1 - s), post)


def test_straight_path_velocity_is_the_rectified_flow_target():
    """x = (1 - s) x1 + s eps (the straight path at t = 1 - s): the velocity is x1 - eps."""
    path = AffinePath(CondOTScheduler())
    g = gen(4)
    x1, eps = torch.randn(4, 2, dtype=D64, generator=g), torch.randn(4, 2, dtype=D64, generator=g)
    s = torch.rand(4, dtype=D64, generator=g) * 0.8 + 0.1
    xs = (1 - s[:, None]) * x1 + s[:, None] * eps
    assert torch.allclose(path.target_to_velocity(x1, xs, 1 - s), x1 - eps)


def test_sde_of_any_path_has_the_kernel_of_that_path():
    """The generic SDE of a scheduler: g^2 from the kernel's variance ODE matches the closed forms."""
    s = torch.linspace(0.01, 1.0, 50, dtype=D64)
    for sde in (VPSDE(), SubVPSDE(), VESDE(sigma_max=6.0)):
        generic = pf.score.SDE(sde.scheduler, sde.s_eps, sde.prior_std)
        assert torch.allclose(generic.diffusion(s), sde.diffusion(s), rtol=1e-9)
        assert torch.allclose(generic.drift_coeff(s), sde.drift_coeff(s), rtol=1e-12)
    straight = pf.score.SDE(CondOTScheduler())  # rectified flow's path: g^2 = 2 s / (1 - s)
    s = torch.linspace(0.01, 0.9, 20, dtype=D64)
    assert torch.allclose(straight.diffusion(s) ** 2, 2 * s / (1 - s), rtol=1e-12)


# ---------------------------------------------------------------------------- analytic model
@pytest.mark.parametrize("key", list(SDES))
def test_pf_ode_log_prob_of_the_analytic_score(key):
    model = analytic_model(key)
    x = MU + VAR.sqrt() * torch.randn(40, 2, dtype=D64, generator=gen(5))
    with torch.no_grad():
        lp = model.log_prob(x, atol=1e-7, rtol=1e-7)
        lp_default = model.log_prob(x)
    # exactly p_{s_eps} up to the solver's error, and the data density up to the s_eps blur
    mean, var = model.net.marginal(torch.tensor(model.s_eps, dtype=D64))
    assert torch.allclose(lp, gaussian_lp(x, mean, var), atol=1e-4), (lp - gaussian_lp(x, mean, var)).abs().max()
    assert torch.allclose(lp_default, gaussian_lp(x, MU, VAR), atol=1e-2)


def test_vp_with_its_own_prior_gives_the_data_density():
    """With the N(0, I) prior: centred data (as the model sees after standardization). A mean mu
    leaves m(1) mu ~ 0.0066 mu in p_1 that the prior ignores: ~0.01 nats at |mu| = 1."""
    mu0 = torch.zeros(2, dtype=D64)
    sde = VPSDE()
    model = ScoreModel(2, sde, net=GaussianEps(sde, mu0, VAR), gaussian_skip=False).double()
    x = VAR.sqrt() * torch.randn(40, 2, dtype=D64, generator=gen(6))
    with torch.no_grad():
        lp = model.log_prob(x)
    assert torch.allclose(lp, gaussian_lp(x, mu0, VAR), atol=1e-2), (lp - gaussian_lp(x, mu0, VAR)).abs().max()


@pytest.mark.parametrize("key", list(SDES))
@pytest.mark.parametrize("sampler,steps", [("ode", None), ("em", 200), ("pc", 100)])
def test_samplers_reproduce_the_gaussian(key, sampler, steps):
    model = analytic_model(key)
    n = 4000
    with torch.no_grad():
        s = model.sample(n, sampler=sampler, steps=steps, generator=gen(7))
    se_mean = (VAR / n).sqrt()
    assert torch.allclose(s.mean(0), MU, atol=float(5 * se_mean.max())), s.mean(0)
    rel = s.var(0) / VAR - 1
    assert rel.abs().max() < 5 * math.sqrt(2 / n) + 0.02, s.var(0)


def test_dsm_loss_is_minimised_by_the_analytic_eps():
    sde = VPSDE()
    model = analytic_model("vp")
    n = 20000
    g = gen(8)
    x = MU + VAR.sqrt() * torch.randn(n, 2, dtype=D64, generator=g)
    s = model.s_eps + (1 - model.s_eps) * torch.rand(n, dtype=D64, generator=g)
    noise = torch.randn(n, 2, dtype=D64, generator=g)
    xs, _ = sde.perturb(x, s, noise)
    best = model.net(xs, s)

    def loss(pred):
        return float((pred - noise).pow(2).mean())

    l0 = loss(best)
    for k in range(4):
        gk = gen(20 + k)
        a, b = torch.randn(2, 2, dtype=D64, generator=gk), torch.randn(2, dtype=D64, generator=gk)
        direction = torch.tanh(xs @ a + b) * s[:, None]
        lp, lm = loss(best + 0.1 * direction), loss(best - 0.1 * direction)
        curvature = lp + lm - 2 * l0
        assert lp > l0 and lm > l0, (k, lp, lm, l0)
        assert abs(lp - lm) < 0.3 * curvature, (k, lp, lm, l0)  # stationary at the analytic predictor
    with torch.no_grad():
        assert float(model.dsm_loss(x, s, noise).mean()) == pytest.approx(l0, rel=1e-12)


def test_short_training_approaches_the_analytic_score():
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(2, sde, hidden=(64, 64))
    truth = GaussianEps(sde, MU.float(), VAR.float())
    g = gen(9)
    xt = MU.float() + VAR.float().sqrt() * torch.randn(2000, 2, generator=g)
    st = 0.05 + 0.95 * torch.rand(2000, generator=g)
    xs, _ = sde.perturb(xt, st, generator=g)

    def err():
        with torch.no_grad():
            return float((model.eps_s(xs, st) - truth(xs, st)).pow(2).mean())

    before = err()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        x = MU.float() + VAR.float().sqrt() * torch.randn(512, 2)
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    after = err()
    assert after < 0.1 * before, (before, after)


def test_likelihood_weighting_importance_sampling_is_unbiased():
    """E_q[w/q err] (importance-sampled times) equals E_U[w err] (uniform times)."""
    torch.manual_seed(0)
    sde = VPSDE()
    net = GaussianEps(sde, torch.zeros(2, dtype=D64), torch.ones(2, dtype=D64))  # optimal for N(0, I)...
    x = MU + VAR.sqrt() * torch.randn(200_000, 2, dtype=D64, generator=gen(10))  # ...used on other data
    vals = {}
    for imp in (True, False):
        model = ScoreModel(2, sde, net=net, gaussian_skip=False, weighting="likelihood", importance=imp).double()
        torch.manual_seed(1)
        per = torch.stack([model._loss(chunk, None) for chunk in x.split(20000)])
        vals[imp] = (float(per.mean()), float(per.std() / math.sqrt(len(per))))
    (a, sa), (b, sb) = vals[True], vals[False]
    assert abs(a - b) < 4 * math.hypot(sa, sb) + 1e-3 * abs(b), vals
    assert sa < sb  # and it is the lower-variance estimator


# ---------------------------------------------------------------------------- built models
def perturbed(name, seed=0, **kw):
    torch.manual_seed(seed)
    model = pf.build(name, dim=2, hidden=(32, 32), **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen(seed + 1), dtype=D64))
    return model.eval()


@pytest.mark.parametrize("name", ["score-vp", "score-ve"])
def test_density_integrates_to_one_and_matches_its_ode_sampler(name):
    model = perturbed(name)
    u = torch.linspace(-5.0, 5.0, 60, dtype=D64)
    h = float(u[1] - u[0])
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    with torch.no_grad():
        dens = model.log_prob(pts, atol=1e-4, rtol=1e-4).exp()
        s = model.sample(4000, generator=gen(12), atol=1e-4, rtol=1e-4)
    total = float(dens.sum()) * h * h
    assert abs(total - 1.0) < 2e-2, total
    # half-plane x > 0 (a cell edge of this grid: cells are centred on +-h/2, +-3h/2, ...)
    half = float(dens[pts[:, 0] > 0].sum()) * h * h / total
    freq = float((s[:, 0] > 0).double().mean())
    assert abs(freq - half) < 4 * math.sqrt(half * (1 - half) / 4000) + 5e-3, (freq, half)


def test_trajectory_ends_where_the_ode_sampler_ends():
    model = perturbed("score-subvp")
    x0 = model.base.sample(7, generator=gen(13))
    with torch.no_grad():
        traj = model.trajectory(x0=x0, steps=20, solver="rk4")
        end = model.sample(7, x0=x0, solver="rk4", steps=20)
    assert traj.shape == (21, 7, 2)
    assert torch.allclose(traj[-1], end)
    assert torch.allclose(traj[0], model.unstandardize(x0))


def test_untrained_model_is_the_standard_normal_in_model_units():
    """Gaussian skip + zero last layer: eps = sigma x / (m^2 + sigma^2), the N(0, I) predictor."""
    model = pf.build("score-subvp", dim=2).double()
    x = torch.randn(20, 2, dtype=D64, generator=gen(14))
    with torch.no_grad():
        lp = model.log_prob(x)
    mean, var = GaussianEps(model.sde, torch.zeros(2, dtype=D64), torch.ones(2, dtype=D64)).marginal(
        torch.tensor(model.s_eps, dtype=D64))
    assert torch.allclose(lp, gaussian_lp(x, mean, var), atol=1e-4)


def test_sde_samplers_options_and_nfe():
    model = perturbed("score-vp")
    with torch.no_grad():
        a = model.sample(50, sampler="em", steps=10, generator=gen(15))
        assert model.nfe == 11  # 10 predictor steps + the Tweedie denoising
        b = model.sample(50, sampler="pc", steps=10, corrector_steps=2, denoise_last_step=False, generator=gen(15))
        assert model.nfe == 30
        c = model.sample(50, sampler="em", steps=10, generator=gen(15))
    assert torch.equal(a, c) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="sampler"):
        model.sample(5, sampler="ddim")
    with pytest.raises(ValueError, match="steps"):
        model.sample(5, sampler="em", steps=0)


def test_builder_options_are_checked():
    with pytest.raises(ValueError, match="image_shape"):
        pf.build("score-vp", image_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="weighting"):
        pf.build("score-vp", dim=2, weighting="sigma")
    with pytest.raises(ValueError, match="importance"):
        pf.build("score-vp", dim=2, importance=True)
    with pytest.raises(ValueError, match="parametrization"):
        pf.build("score-ve", dim=2, parametrization="v")
    with pytest.raises(ValueError, match="sigma_max"):
        pf.build("score-ve", dim=2, sigma_max=0.001)
    with pytest.raises(ValueError, match="solver"):
        pf.build("score-subvp", dim=2, solver="rk45")
    ve = pf.build("score-ve", dim=2)
    assert ve.sde.sigma_max == pytest.approx(6.0) and ve.base.std == pytest.approx(6.0)
    assert pf.build("score-vp", dim=2, weighting="likelihood").importance


@pytest.mark.parametrize("param", ["eps", "score"])
def test_parametrizations_train_and_agree_on_the_untrained_field(param):
    model = pf.build("score-vp", dim=2, parametrization=param).double()
    x = torch.randn(16, 2, dtype=D64, generator=gen(16))
    t = torch.full((16,), 0.4, dtype=D64)
    ref = GaussianEps(model.sde, torch.zeros(2, dtype=D64), torch.ones(2, dtype=D64))(x, 1 - t)
    assert torch.allclose(model.eps(x, t), ref)
    assert torch.allclose(model.score(x, t), -ref / model.sde.std(1 - t)[:, None])
    model.loss(x).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fit_lowers_the_loss_and_improves_w2():
    target = pf.data.get_target("ring")
    x = target.sample(6000, generator=gen(17))
    ref = target.sample(1000, generator=gen(18))
    model = pf.build("score-vp", dim=2, hidden=(64, 64, 64))
    model.set_standardization(x.mean(0), x.std(0))
    with torch.no_grad():
        w_before = pf.metrics.w2(model.sample(1000, generator=gen(19), solver="rk4", steps=25), ref)
    hist = pf.fit(model, x, steps=800, max_time=None, seed=0, progress=False, val_fraction=0.0)
    with torch.no_grad():
        w_after = pf.metrics.w2(model.sample(1000, generator=gen(19), solver="rk4", steps=25), ref)
    first, last = sum(hist.loss[:2]) / 2, sum(hist.loss[-2:]) / 2
    assert last < first - 0.02, hist.loss
    assert w_after < 0.7 * w_before, (w_before, w_after)


@pytest.mark.parametrize("name,kw", [
    ("score-vp", {}), ("score-subvp", {"parametrization": "score"}), ("score-ve", {"gaussian_skip": False}),
    ("score-vp", {"time_embed": 8, "activation": "tanh", "context_dim": 2}),
])
def test_exact_divergence_without_autograd_matches_the_loop(name, kw):
    # The default TimeMLP's trace (mlp_divergence) through the eps/score -> velocity conversion.
    torch.manual_seed(0)
    model = pf.build(name, 3, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 3, dtype=D64, generator=gen(0), requires_grad=True)
    ctx = torch.randn(6, 2, dtype=D64, generator=gen(1)) if kw.get("context_dim") else None
    assert model._has_fast_divergence()
    for t in (torch.tensor(0.3, dtype=D64), torch.rand(6, dtype=D64, generator=gen(2)), 1.2):
        u, div = model.velocity_with_divergence(x, t, ctx)
        ref = model.velocity(x, t, ctx)
        assert torch.allclose(u, ref, atol=1e-12)
        assert torch.allclose(div, pf.continuous.divergence_exact(ref, x), atol=1e-9)
    with torch.no_grad():
        fast = model.log_prob(x.detach(), ctx, solver="rk4", steps=4)
        loop = model.log_prob(x.detach(), ctx, solver="rk4", steps=4, exact_method="loop")
    assert torch.allclose(fast, loop, atol=1e-9)


def test_other_networks_use_autograd_for_the_divergence():
    torch.manual_seed(0)
    relu = pf.build("score-vp", 2, activation="relu").double()
    custom = ScoreModel(2, VPSDE(), net=GaussianEps(VPSDE())).double()
    x = torch.randn(5, 2, dtype=D64, generator=gen(0))
    for model in (relu, custom):
        assert not model._has_fast_divergence()
        with pytest.raises(NotImplementedError):
            model.velocity_with_divergence(x, 0.5)
        with torch.no_grad():
            assert torch.isfinite(model.log_prob(x, solver="rk4", steps=4)).all()


def test_an_sde_pickled_before_sdes_held_a_scheduler_still_loads():
    import pickle

    for cls, state in ((VPSDE, {"beta_min": 0.1, "beta_max": 15.0, "s_eps": 1e-3, "prior_std": 1.0}),
                       (VESDE, {"sigma_min": 0.01, "sigma_max": 5.0, "s_eps": 1e-5, "prior_std": 5.0})):
        old = cls.__new__(cls)
        old.__dict__.update(state)  # the attributes the previous version pickled
        new = pickle.loads(pickle.dumps(old))
        assert new == cls(*[state[k] for k in list(state)[:3]])
        assert pickle.loads(pickle.dumps(new)) == new
