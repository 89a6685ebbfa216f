"""NAF, UNAF, Bernstein, circular splines on the torus and TarFlow: closed forms, the inverse
tolerance, implicit gradients, periodicity, the KV cache, guidance and denoising."""

from __future__ import annotations

import math

import pytest
import torch

import pushforward as pf
from _cases import loss_before_after
from pushforward.transforms.circular import CircularSpline, wrap_angle
from pushforward.transforms.monotone import bisect_inverse
from pushforward.transforms.neural import MonotoneIntegral, SigmoidalMap, clenshaw_curtis
from pushforward.transforms.polynomial import BernsteinPolynomial

D64 = torch.float64


def test_promised_names_are_registered():
    assert {"naf", "unaf", "bernstein", "tarflow", "circular-nsf"} <= set(pf.available_models())


# ------------------------------------------------------------------ monotone maps
@pytest.mark.parametrize("n", [2, 8, 20])
def test_clenshaw_curtis_is_exact_for_polynomials_up_to_degree_n(n):
    s, w = clenshaw_curtis(n)
    for k in range(n + 1):
        exact = 0.0 if k % 2 else 2.0 / (k + 1)
        assert abs(float((w * s**k).sum()) - exact) < 1e-13, k
    with pytest.raises(ValueError, match="even"):
        clenshaw_curtis(7)


def test_unaf_integral_matches_a_closed_form():
    # With the integrand's last layer at zero, g = softplus(bias + c); set the bias so that
    # g = e^1 is constant: z = beta + e x exactly.
    f = MonotoneIntegral(embed=2, hidden=(4,), nodes=8).double()
    with torch.no_grad():
        f.net[-1].bias.fill_(math.log(math.expm1(math.e)) - math.log(math.expm1(1.0)))
    x = torch.linspace(-4, 4, 9, dtype=D64)[:, None]
    theta = torch.zeros(9, 1, f.num_params, dtype=D64)
    theta[..., 0] = 0.5
    z, ladj = f(x, theta)
    assert torch.allclose(z, 0.5 + math.e * x, atol=1e-12)
    assert torch.allclose(ladj, torch.ones_like(ladj), atol=1e-12)


def test_sigmoidal_map_is_a_logit_of_a_sigmoid_mixture():
    f = SigmoidalMap(hidden=3)
    theta = torch.randn(5, 2, f.num_params, dtype=D64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 2, dtype=D64)
    a = torch.nn.functional.softplus(theta[..., :3] + math.log(math.expm1(1.0)))
    b = theta[..., 3:6] + torch.tensor([-2.0, 0.0, 2.0], dtype=D64)
    w = torch.softmax(theta[..., 6:], -1)
    s = (w * torch.sigmoid(a * x[..., None] + b)).sum(-1)
    assert torch.allclose(f(x, theta)[0], torch.logit(s), atol=1e-12)
    # The tails are finite and monotone far out (log-space evaluation, no saturation).
    far = torch.tensor([[-60.0, 60.0]], dtype=D64)
    zf, lf = f(far, theta[:1])
    assert torch.isfinite(zf).all() and torch.isfinite(lf).all() and zf[0, 0] < zf[0, 1]


def test_bernstein_is_the_identity_at_zero_and_linear_outside():
    f = BernsteinPolynomial(degree=5, bound=2.0)
    x = torch.linspace(-6, 6, 25, dtype=D64)[:, None]
    z, ladj = f(x, torch.zeros(25, 1, 6, dtype=D64))
    assert torch.allclose(z, x, atol=1e-12) and ladj.abs().max() < 1e-12
    theta = torch.randn(1, 1, 6, dtype=D64, generator=torch.Generator().manual_seed(1)).expand(25, 1, 6)
    z, ladj = f(x, theta)
    assert (z[1:] > z[:-1]).all()
    out = x[:, 0] > 2.0
    slopes = torch.diff(z[out, 0]) / torch.diff(x[out, 0])
    assert torch.allclose(slopes, ladj[out, 0][1:].exp(), atol=1e-10)


@pytest.mark.parametrize("tol", [1e-3, 1e-9])
def test_the_inverse_meets_its_tolerance(tol):
    f = SigmoidalMap(hidden=4, tol=tol)
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(200, 1, f.num_params, dtype=D64, generator=g)
    x = 5 * torch.randn(200, 1, dtype=D64, generator=g)
    z, _ = f(x, theta)
    x2, _ = f.inverse(z, theta)
    assert (x2 - x).abs().max() < tol
    with pytest.raises(ValueError, match="tol"):
        SigmoidalMap(tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        bisect_inverse(lambda v: (v, torch.zeros_like(v)), z, tol=-1.0)


def test_the_inverse_has_implicit_gradients():
    f = BernsteinPolynomial(degree=6, bound=3.0, tol=1e-12)
    theta = torch.randn(6, 2, f.num_params, dtype=D64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    z = torch.randn(6, 2, dtype=D64).requires_grad_()
    x, ladj = f.inverse(z, theta)
    (dz,) = torch.autograd.grad(x.sum(), z, retain_graph=True)
    assert torch.allclose(dz, ladj.exp(), atol=1e-9)  # dx/dz = 1 / f'(x)
    (dtheta,) = torch.autograd.grad(x.sum(), theta)

    def solve(th):
        return f.inverse(z.detach(), th)[0].sum()

    num = torch.zeros_like(theta)
    eps = 1e-6
    for idx in [(0, 0, 0), (1, 1, 3), (5, 0, 6)]:
        tp, tm = theta.detach().clone(), theta.detach().clone()
        tp[idx] += eps
        tm[idx] -= eps
        num[idx] = (solve(tp) - solve(tm)) / (2 * eps)
        assert abs(float(dtheta[idx] - num[idx])) < 1e-6, idx


@pytest.mark.slow
def test_naf_reverse_kl_trains_through_the_bisection():
    torch.manual_seed(0)
    model = pf.build("naf", dim=2, hidden=(16, 16), transforms=2).double()
    target = torch.distributions.MultivariateNormal(torch.tensor([1.0, -1.0], dtype=D64), 0.5 * torch.eye(2, dtype=D64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = model.reverse_kl_loss(target.log_prob, n=128, generator=g)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    with torch.no_grad():
        final = float(model.reverse_kl_loss(target.log_prob, n=4000, generator=torch.Generator().manual_seed(1)))
    assert first > 0.5 and final < 0.1, (first, final)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["naf", "unaf", "bernstein"])
def test_maximum_likelihood_fits_two_moons_like_data(name):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2000, generator=g) * math.pi
    data = torch.stack([torch.cos(u), torch.sin(u)], -1) + 0.1 * torch.randn(2000, 2, generator=g)
    torch.manual_seed(0)
    model = pf.build(name, dim=2, hidden=(32, 32), transforms=2)
    before, after = loss_before_after(model, data, steps=150, lr=3e-3, batch=256, generator=g)
    assert after < before - 0.5, (before, after)


# ------------------------------------------------------------------ torus
def test_circular_spline_is_a_c1_circle_map():
    f = CircularSpline(bins=5)
    theta = torch.randn(1, 1, f.num_params, dtype=D64, generator=torch.Generator().manual_seed(4))
    ends = torch.tensor([[-math.pi], [math.pi - 1e-12]], dtype=D64)
    z, ladj = f(ends, theta.expand(2, 1, -1))
    # Both ends of [-pi, pi) map to the same point of the circle, with the same derivative.
    assert abs(float(wrap_angle(z[1] - z[0]))) < 1e-9
    assert abs(float(ladj[1] - ladj[0])) < 1e-9


def test_circular_flow_density_is_periodic_normalised_and_matches_its_sampler():
    torch.manual_seed(0)
    model = pf.build("circular-nsf", dim=1, context_dim=0).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
        u = (torch.arange(4000, dtype=D64) + 0.5) / 4000 * 2 * math.pi - math.pi
        dens = model.log_prob(u[:, None]).exp()
        assert abs(float(dens.sum() * 2 * math.pi / 4000) - 1.0) < 1e-4  # midpoint rule, C^1 spline
        assert torch.allclose(model.log_prob(u[:, None] + 2 * math.pi), model.log_prob(u[:, None]), atol=1e-9)
        s = model.sample(20000, generator=torch.Generator().manual_seed(5))
    assert s.min() >= -math.pi and s.max() < math.pi
    p_mass = float(dens[u > 0.5].sum() * 2 * math.pi / 4000)
    freq = float((s[:, 0] > 0.5).double().mean())
    assert abs(freq - p_mass) < 4 * math.sqrt(p_mass * (1 - p_mass) / 20000) + 1e-3, (freq, p_mass)


@pytest.mark.slow
def test_circular_flow_learns_a_von_mises_on_the_torus():
    g = torch.Generator().manual_seed(0)
    vm = torch.distributions.VonMises(torch.tensor([2.5, -1.0]), torch.tensor([4.0, 2.0]))
    data = wrap_angle(vm.sample((2000,)))
    torch.manual_seed(0)
    model = pf.build("circular-nsf", dim=2, hidden=(32, 32))
    before, after = loss_before_after(model, data, steps=150, lr=3e-3, batch=256, generator=g)
    exact = float(-vm.log_prob(data).sum(-1).mean())
    assert abs(before - 2 * math.log(2 * math.pi)) < 0.05  # starts uniform on the torus
    assert after < exact + 0.15, (after, exact)


# ------------------------------------------------------------------ TarFlow
def _tarflow(context_dim=0, **kw):
    torch.manual_seed(0)
    m = pf.build("tarflow", image_shape=(1, 4, 4), context_dim=context_dim, blocks=2, layers=1, width=16, heads=2,
                 num_bins=17, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def test_tarflow_sampling_with_and_without_the_kv_cache_is_identical():
    m = _tarflow(context_dim=3)
    c = torch.randn(6, 3, dtype=D64)
    with torch.no_grad():
        a = m.sample(6, c, generator=torch.Generator().manual_seed(0), cache=True, denoise=False)
        b = m.sample(6, c, generator=torch.Generator().manual_seed(0), cache=False, denoise=False)
        ga = m.sample(6, c, generator=torch.Generator().manual_seed(0), guidance=1.5, cache=True)
        gb = m.sample(6, c, generator=torch.Generator().manual_seed(0), guidance=1.5, cache=False)
    assert torch.allclose(a, b, atol=1e-12, rtol=0) and torch.allclose(ga, gb, atol=1e-10, rtol=0)
    assert not torch.allclose(a, ga)


def test_tarflow_guidance_needs_a_context_and_zero_guidance_is_plain_sampling():
    m = _tarflow(context_dim=2)
    c = torch.randn(4, 2, dtype=D64)
    with torch.no_grad():
        a = m.sample(4, c, generator=torch.Generator().manual_seed(1), guidance=0.0)
        b = m.sample(4, c, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="guidance"):
        _tarflow().sample(2, guidance=1.0)


def test_tarflow_denoising_is_tweedie_with_the_flows_own_score():
    # At initialisation every block is the identity: p(y) = N(0, I) in the [-1, 1] units, so
    # Tweedie's denoiser is y (1 - sigma^2).
    torch.manual_seed(0)
    m = pf.build("tarflow", image_shape=(1, 4, 4), blocks=2, layers=1, width=16, heads=2, noise_std=0.3).double()
    y = torch.randn(3, 1, 4, 4, dtype=D64)
    assert torch.allclose(m.denoise(y), y * (1 - 0.09), atol=1e-12)
    with torch.no_grad():
        raw = m.sample(3, generator=torch.Generator().manual_seed(2), denoise=False)
        den = m.sample(3, generator=torch.Generator().manual_seed(2), denoise=True)
    y_raw = raw / 127.5 - 1
    expected = ((y_raw * 0.91 + 1) * 127.5).clamp(0, 255)
    inside = (raw > 0) & (raw < 255)
    assert torch.allclose(den[inside], expected[inside], atol=1e-9)


def test_tarflow_training_noise_and_context_dropout_only_in_train_mode():
    m = _tarflow(context_dim=2, p_uncond=0.5)
    x = torch.randint(0, 17, (8, 1, 4, 4)).double()
    c = torch.randn(8, 2, dtype=D64)
    with torch.no_grad():
        assert float(m.loss(x, c)) == float(m.loss(x, c))  # eval: deterministic
        m.train()
        assert float(m.loss(x, c)) != float(m.loss(x, c))
    with pytest.raises(ValueError, match="range"):
        m.loss(x + 20, c)
    with pytest.raises(ValueError, match="p_uncond"):
        pf.build("tarflow", image_shape=(1, 4, 4), p_uncond=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        pf.build("tarflow", image_shape=(1, 5, 5))
    with pytest.raises(ValueError, match="image_shape"):
        pf.build("tarflow", dim=16)


@pytest.mark.slow
def test_tarflow_bits_per_dim_of_a_uniform_model_and_learning_digits():
    torch.manual_seed(0)
    m = pf.build("tarflow", image_shape=(1, 8, 8), num_bins=17, blocks=2, layers=1, width=32, heads=2, noise_std=0.0)
    x = torch.randint(0, 17, (4, 1, 8, 8)).float()
    # Identity blocks: N(0, I) on y = x/8 - 1, so bpd = -(log N(y) + D log(1/8)) / (D ln 2) exactly.
    y = x / 8 - 1
    expected = -(torch.distributions.Normal(0, 1).log_prob(y).sum((1, 2, 3)) + 64 * math.log(1 / 8)) / (64 * math.log(2))
    assert torch.allclose(m.bits_per_dim(x), expected, atol=1e-4)
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().images[:512], dtype=torch.float32)[:, None]
    before, after = loss_before_after(m, data, steps=60, lr=2e-3, batch=64, generator=torch.Generator().manual_seed(0))
    assert after < before - 0.3, (before, after)
