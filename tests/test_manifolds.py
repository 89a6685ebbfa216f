"""Riemannian flow matching on the sphere and the flat torus, geometry, solvers and targets."""

from __future__ import annotations

import io
import math

import pytest
import torch

import pushforward as pf
from pushforward.data.manifolds import SphereMixture, TorusMixture
from pushforward.manifolds import FlatTorus, Sphere, manifold_odeint, wrap

D64 = torch.float64
NAMES = {"sphere-fm": 3, "torus-fm": 2}


def _points(name: str, n: int = 8, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if name == "sphere-fm":
        return Sphere().uniform_sample(n, 3, g, dtype=D64)
    return FlatTorus().uniform_sample(n, 2, g, dtype=D64)


def _make(name: str, context_dim: int = 0, perturb: float = 0.1, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = pf.build(name, dim=NAMES[name], context_dim=context_dim, hidden=(32, 32), **kw).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


# ------------------------------------------------------------------ geometry
def test_sphere_exp_log_round_trip_and_geodesic():
    s, g = Sphere(), torch.Generator().manual_seed(0)
    x, y = s.uniform_sample(50, 3, g, dtype=D64), s.uniform_sample(50, 3, g, dtype=D64)
    u = s.logmap(x, y)
    assert torch.allclose((u * x).sum(-1), torch.zeros(50, dtype=D64), atol=1e-12)  # tangent
    assert torch.allclose(s.expmap(x, u), y, atol=1e-10)
    assert torch.allclose(u.norm(dim=-1), torch.arccos((x * y).sum(-1)), atol=1e-10)
    t = torch.rand(50, generator=g, dtype=D64)
    xt, dxt = s.geodesic(x, y, t)
    assert torch.allclose(xt.norm(dim=-1), torch.ones(50, dtype=D64), atol=1e-12)
    assert torch.allclose(s.geodesic(x, y, torch.zeros(50, dtype=D64))[0], x, atol=1e-12)
    assert torch.allclose(s.geodesic(x, y, torch.ones(50, dtype=D64))[0], y, atol=1e-10)
    h = 1e-6  # the velocity is the time derivative of the path
    fd = (s.geodesic(x, y, t + h)[0] - s.geodesic(x, y, t - h)[0]) / (2 * h)
    assert torch.allclose(dxt, fd, atol=1e-6)
    assert math.isclose(s.log_volume(3), math.log(4 * math.pi))


def test_torus_maps_wrap_and_take_the_short_way():
    t = FlatTorus()
    x = torch.tensor([[3.0, -3.0]], dtype=D64)
    y = torch.tensor([[-3.0, 3.0]], dtype=D64)
    u = t.logmap(x, y)
    assert torch.allclose(u, torch.tensor([[2 * math.pi - 6.0, 6.0 - 2 * math.pi]], dtype=D64))
    assert torch.allclose(t.expmap(x, u), y)
    assert bool(((wrap(torch.linspace(-20, 20, 101)) >= -math.pi) & (wrap(torch.linspace(-20, 20, 101)) < math.pi)).all())


def test_riemannian_divergence_of_a_known_field_on_the_sphere():
    # v = P_x a is the gradient of f(x) = a.x; on S^2 the Laplacian of a linear function is -2 f.
    model = _make("sphere-fm")
    a = torch.tensor([0.3, -1.2, 0.7], dtype=D64)
    model.velocity = lambda x, t, context=None: a - (x @ a)[:, None] * x
    x = _points("sphere-fm", 20)
    v, div = model.velocity_and_divergence(x, 0.5)
    assert torch.allclose(div, -2 * (x @ a), atol=1e-10)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("step", ["exp", "project"])
def test_solvers_follow_a_rotation_on_the_sphere(solver, step):
    w = torch.tensor([0.0, 0.0, 1.5], dtype=D64)  # rotation about z at 1.5 rad per unit time
    x0 = Sphere().uniform_sample(10, 3, torch.Generator().manual_seed(1), dtype=D64)
    x1, _ = manifold_odeint(lambda x, t: (torch.cross(w.expand_as(x), x, dim=-1), None), x0, Sphere(),
                            steps=40, solver=solver, step=step)
    c, s = math.cos(1.5), math.sin(1.5)
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=D64)
    err = (x1 - x0 @ rot.T).abs().max()
    assert torch.allclose(x1.norm(dim=-1), torch.ones(10, dtype=D64), atol=1e-12)
    # "exp" projects later stages to T_x: second order on the sphere (see manifolds/solvers.py)
    tol = {"euler": 3e-2, "midpoint": 1e-3, "rk4": 1e-6 if step == "project" else 1e-3}[solver]
    assert err < tol, err


def test_solver_rejects_unknown_names():
    with pytest.raises(ValueError, match="solver"):
        manifold_odeint(lambda x, t: (x, None), torch.zeros(1, 2), FlatTorus(), solver="dopri5")
    with pytest.raises(ValueError, match="step"):
        manifold_odeint(lambda x, t: (x, None), torch.zeros(1, 2), FlatTorus(), step="retract")


# ------------------------------------------------------------------ targets
def test_sphere_mixture_density_integrates_to_one_and_matches_its_sampler():
    target = SphereMixture()
    pts, area = _sphere_grid(200)
    dens = target.log_prob(pts).exp()
    assert abs(float((dens * area).sum()) - 1) < 2e-3
    s = target.sample(40000, torch.Generator().manual_seed(0))
    assert torch.allclose(s.norm(dim=-1), torch.ones(40000, dtype=D64), atol=1e-10)
    half = float((dens * area)[pts[:, 2] > 0.3].sum())
    freq = float((s[:, 2] > 0.3).double().mean())
    assert abs(freq - half) < 4 * math.sqrt(half * (1 - half) / 40000) + 2e-3, (freq, half)


def test_torus_mixture_density_integrates_to_one_and_matches_its_sampler():
    target = TorusMixture()
    pts, h = _torus_grid(200)
    dens = target.log_prob(pts).exp()
    assert abs(float(dens.sum() * h * h) - 1) < 1e-6
    s = target.sample(40000, torch.Generator().manual_seed(0))
    assert bool(((s >= -math.pi) & (s < math.pi)).all())
    half = float(dens[pts[:, 0] > 0.3].sum() * h * h)
    freq = float((s[:, 0] > 0.3).double().mean())
    assert abs(freq - half) < 4 * math.sqrt(half * (1 - half) / 40000), (freq, half)


# ------------------------------------------------------------------ density on a grid
def _sphere_grid(n: int):
    """Midpoint grid in (polar, azimuth) with the area element sin(polar) d polar d azimuth."""
    th = (torch.arange(n, dtype=D64) + 0.5) * math.pi / n
    ph = (torch.arange(2 * n, dtype=D64) + 0.5) * math.pi / n - math.pi
    T, P = torch.meshgrid(th, ph, indexing="ij")
    pts = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], -1).reshape(-1, 3)
    return pts, (T.sin() * (math.pi / n) ** 2).reshape(-1)


def _torus_grid(n: int):
    u = (torch.arange(n, dtype=D64) + 0.5) * 2 * math.pi / n - math.pi
    A, B = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([A.reshape(-1), B.reshape(-1)], -1), 2 * math.pi / n


@pytest.mark.parametrize("name", list(NAMES))
def test_density_integrates_to_one_and_matches_the_sampler(name):
    model = _make(name, perturb=0.3)
    if name == "sphere-fm":
        pts, w = _sphere_grid(40)
        region = lambda x: x[:, 2] > 0.3  # noqa: E731
    else:
        pts, h = _torus_grid(60)
        w = torch.full((pts.shape[0],), h * h, dtype=D64)
        region = lambda x: x[:, 0] > 0.3  # noqa: E731
    with torch.no_grad():
        dens = model.log_prob(pts, steps=10).exp()
    assert dens.std() / dens.mean() > 0.05  # the perturbed field is far from the uniform base
    total = float((dens * w).sum())
    assert abs(total - 1.0) < 1e-2, total
    mass = float((dens * w)[region(pts)].sum()) / total
    s = model.sample(20000, generator=torch.Generator().manual_seed(11), steps=10)
    freq = float(region(s).double().mean())
    assert abs(freq - mass) < 4 * math.sqrt(mass * (1 - mass) / 20000) + 5e-3, (freq, mass)


def test_solver_options_agree_on_log_prob():
    model = _make("sphere-fm", perturb=0.3)
    x = _points("sphere-fm")
    with torch.no_grad():
        ref = model.log_prob(x, steps=40, solver="rk4", step="exp")
        for solver, step in [("rk4", "project"), ("midpoint", "exp")]:
            assert torch.allclose(model.log_prob(x, steps=40, solver=solver, step=step), ref, atol=5e-3)


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", list(NAMES))
def test_shapes_reproducibility_and_points_on_the_manifold(name):
    model = _make(name)
    x = _points(name)
    lp = model.log_prob(x)
    assert lp.shape == (8,) and lp.dtype == D64 and torch.isfinite(lp).all()
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, NAMES[name]) and s.dtype == D64
    assert torch.equal(s, model.sample(5, generator=torch.Generator().manual_seed(0)))
    if name == "sphere-fm":
        assert torch.allclose(s.norm(dim=-1), torch.ones(5, dtype=D64), atol=1e-10)
    else:
        assert bool(((s >= -math.pi) & (s < math.pi)).all())


@pytest.mark.parametrize("name", list(NAMES))
def test_every_parameter_gets_a_gradient_from_loss_and_log_prob(name):
    model = _make(name).train()
    model.loss(_points(name, 16)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.zero_grad()
    (-model.log_prob(_points(name, 4), steps=4).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(NAMES))
def test_save_load_round_trip(name, tmp_path):
    model = _make(name)
    x = _points(name)
    with torch.no_grad():
        lp = model.log_prob(x)
    pf.save(model, tmp_path / "m.pt")
    again = pf.load(tmp_path / "m.pt").eval()
    assert type(again) is type(model) and next(again.parameters()).dtype == D64
    with torch.no_grad():
        assert torch.allclose(again.log_prob(x), lp, atol=1e-10)
    buf = io.BytesIO()
    torch.save(model, buf)
    (tmp_path / "whole.pt").write_bytes(buf.getvalue())
    assert torch.allclose(pf.load(tmp_path / "whole.pt").log_prob(x).detach(), lp, atol=1e-10)


@pytest.mark.parametrize("name", list(NAMES))
def test_context_changes_the_density(name):
    model = _make(name, context_dim=3)
    x = _points(name)
    c = torch.randn(8, 3, dtype=D64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert not torch.allclose(model.log_prob(x, c), model.log_prob(x, c + 1.0))
    assert model.sample(8, context=c).shape == x.shape
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x, c[:, :2])


@pytest.mark.parametrize("bad", ["off", "shape", "rank", "nan", "int", "complex"])
@pytest.mark.parametrize("name", list(NAMES))
def test_bad_input_is_named(name, bad):
    model = _make(name)
    x = _points(name)
    match = {"off": "sphere" if name == "sphere-fm" else r"\[-pi, pi\)", "shape": "shape", "rank": "shape",
             "nan": "non-finite", "int": "floating-point", "complex": "complex"}[bad]
    if bad == "off":
        x = x * 1.1 if name == "sphere-fm" else x + 2 * math.pi
    elif bad == "shape":
        x = torch.cat([x, x], -1)
    elif bad == "rank":
        x = x[0]
    elif bad == "nan":
        x = x.clone()
        x[2, 1] = float("nan")
    elif bad == "int":
        x = x.long()
    else:
        x = x.to(torch.complex128)
    with pytest.raises((ValueError, TypeError), match=match):
        model.log_prob(x)
    with pytest.raises((ValueError, TypeError), match=match):
        model.loss(x)


@pytest.mark.parametrize("name", list(NAMES))
def test_other_float_dtypes_follow_the_project_rule_and_are_cast(name):
    # docs/conventions.md: real inputs are cast to the model's dtype.
    model = _make(name)
    x = _points(name)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x.float()), model.log_prob(x.float().to(x.dtype)))


def test_sphere_needs_an_ambient_dimension_of_at_least_two_and_options_are_checked():
    with pytest.raises(ValueError, match="dim"):
        pf.build("sphere-fm", dim=1)
    with pytest.raises(ValueError, match="solver"):
        pf.build("torus-fm", dim=2, solver="dopri5")
    with pytest.raises(ValueError, match="step"):
        pf.build("torus-fm", dim=2, step="retract")


@pytest.mark.slow
def test_training_on_a_sphere_mixture_approaches_its_entropy():
    torch.manual_seed(0)
    target = SphereMixture(concentrations=[6.0] * 4)
    data = target.sample(4096, torch.Generator().manual_seed(0)).float()
    model = pf.build("sphere-fm", dim=3, hidden=(64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        idx = torch.randint(0, 4096, (256,))
        opt.zero_grad()
        model.loss(data[idx]).backward()
        opt.step()
    test = target.sample(500, torch.Generator().manual_seed(1))
    with torch.no_grad():
        nll = -model.double().log_prob(test, steps=10).mean()
    h = -target.log_prob(test).mean()
    # KL(target || model) = NLL - H; uniform on S^2 is log(4 pi) = 2.53 nats, H ~ 1.23
    assert float(nll - h) < 0.25, (float(nll), float(h))


def test_sphere_and_torus_plots_are_written(tmp_path):
    from pushforward import viz

    sphere, torus = _make("sphere-fm"), _make("torus-fm")
    p = viz.plot_sphere(tmp_path / "s.png", model=sphere, samples=sphere.sample(200, steps=4),
                        data=SphereMixture().sample(200), grid=12)
    q = viz.plot_torus(tmp_path / "t.png", model=torus, samples=torus.sample(200, steps=4), grid=16)
    assert p.stat().st_size > 1000 and q.stat().st_size > 1000
    with pytest.raises(ValueError, match="unit vectors"):
        viz.plot_sphere(tmp_path / "x.png", samples=torch.zeros(5, 2))
