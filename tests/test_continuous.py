"""The ODE layer (pushforward.continuous): solvers, divergences, likelihood, errors.

Closed forms: a linear field ``u_t(x) = a(t) A x`` has flow map ``x_t = expm(A (s(t) - s(t0))) x``
with ``s(t) = int a``, divergence ``a(t) tr A`` and, from N(0, I) at t=0, a Gaussian marginal.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pushforward.continuous import (
    ADAPTIVE_SOLVERS,
    FIXED_SOLVERS,
    ContinuousFlow,
    NonFiniteError,
    divergence_exact,
    divergence_hutchinson,
    make_probe,
    ode_log_prob,
    odeint,
)
from pushforward.continuous.divergence import activation_and_derivative, mlp_divergence
from pushforward.nets import TimeMLP

D64 = torch.float64
A = torch.tensor([[-0.3, 0.8, 0.1], [-0.5, 0.2, 0.0], [0.3, -0.2, 0.4]], dtype=D64)


def rate(t):
    """a(t) = 1 + t: a time-dependent field exercises the time argument in both directions."""
    return 1.0 + t


def integral(t):
    return t + 0.5 * t * t


def linear_field(t, x):
    return rate(t) * (x @ A.T)


def flow_map(x, t_from, t_to):
    return x @ torch.linalg.matrix_exp(A * (integral(t_to) - integral(t_from))).T


def std_normal_lp(z):
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def exact_lp(x):
    """x_1 = M x_0, M = expm(A * s(1)): log p_1(x) = log N(M^{-1} x) - log|det M|."""
    minv = torch.linalg.matrix_exp(-A * integral(1.0))
    return std_normal_lp(x @ minv.T) - integral(1.0) * torch.trace(A)


def points(n=6, seed=0):
    return torch.randn(n, 3, dtype=D64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- solvers
@pytest.mark.parametrize("solver", list(FIXED_SOLVERS) + list(ADAPTIVE_SOLVERS))
def test_likelihood_of_linear_field_matches_closed_form(solver):
    x = points()
    steps = 500 if solver == "euler" else 200
    # Low-order adaptive solvers need many steps at tight tolerances: loosen theirs.
    solve_tol = {"adaptive_heun": 1e-6, "fehlberg2": 1e-6, "bosh3": 1e-8}.get(solver, 1e-9)
    lp, nfe = ode_log_prob(lambda y, t: linear_field(t, y), x, std_normal_lp, solver=solver, steps=steps,
                           atol=solve_tol, rtol=solve_tol)
    tol = {"euler": 1e-2, "midpoint": 1e-5, "heun": 1e-5, "adaptive_heun": 2e-3, "fehlberg2": 2e-3}.get(solver, 1e-6)
    assert torch.allclose(lp, exact_lp(x), atol=tol), (lp - exact_lp(x)).abs().max()
    assert nfe > 0


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_solvers_converge_at_their_order(solver, order):
    x0 = points()
    ref = flow_map(x0, 0.0, 1.0)
    base = 8 if order < 4 else 4
    errs = []
    for steps in (base, 2 * base, 4 * base):
        out = odeint(linear_field, x0, [0.0, 1.0], solver=solver, steps=steps)[-1]
        errs.append(float((out - ref).abs().max()))
    for coarse, fine in zip(errs[:-1], errs[1:]):
        observed = math.log2(coarse / fine)
        assert abs(observed - order) < 0.35, (errs, observed)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_forward_backward_and_multiple_output_times(solver):
    x0 = points()
    times = [0.0, 0.25, 0.5, 1.0]
    kw = dict(solver=solver, steps=400 if solver == "euler" else 40, atol=1e-9, rtol=1e-9)
    tol = 2e-2 if solver == "euler" else 1e-6
    xs = odeint(linear_field, x0, times, **kw)
    assert xs.shape == (4, *x0.shape)
    for k, t in enumerate(times):
        assert torch.allclose(xs[k], flow_map(x0, 0.0, t), atol=tol), (t, (xs[k] - flow_map(x0, 0.0, t)).abs().max())
    # Backward in time from t=1 recovers x0, through the same grid points.
    back = odeint(linear_field, xs[-1], times[::-1], **kw)
    for k, t in enumerate(times[::-1]):
        assert torch.allclose(back[k], flow_map(x0, 0.0, t), atol=2 * tol)
    assert torch.allclose(back[-1], x0, atol=2 * tol)


def test_tuple_state_and_nfe_counter():
    x0 = points()
    (xs, ls), nfe = odeint(lambda t, s: (linear_field(t, s[0]), s[1] + 1.0), (x0, torch.zeros(6, dtype=D64)),
                           [0.0, 1.0], solver="rk4", steps=10, return_nfe=True)
    assert nfe == 40  # 4 stages x 10 steps
    assert torch.allclose(ls[-1], torch.full((6,), math.e - 1, dtype=D64), atol=1e-5)  # l' = l + 1
    assert torch.allclose(xs[-1], flow_map(x0, 0.0, 1.0), atol=1e-6)


def test_likelihood_between_arbitrary_times():
    x = points()
    lp, _ = ode_log_prob(lambda y, t: linear_field(t, y), x, std_normal_lp, t0=0.5, t1=1.0, atol=1e-10, rtol=1e-10)
    m = torch.linalg.matrix_exp(A * (integral(1.0) - integral(0.5)))
    expect = std_normal_lp(x @ torch.linalg.inv(m).T) - (integral(1.0) - integral(0.5)) * torch.trace(A)
    assert torch.allclose(lp, expect, atol=1e-7)


class LinearFlow(ContinuousFlow):
    """``u_t(x) = a(t) A x`` as a model, over a custom time span."""

    default_atol = default_rtol = 1e-10

    def velocity(self, x, t, context=None):
        return linear_field(t, x)


@pytest.mark.parametrize("span", [(0.2, 1.7), (1.7, 0.2)])
def test_custom_time_span_flow_matches_closed_form(span):
    # The model's own log_prob / sample / trajectory run over t_span, forwards or backwards:
    # x_end = M x_start with M = expm(A (s(end) - s(start))), log p = log N(M^-1 x) - log|det M|.
    model = LinearFlow((3,), t_span=span).double()
    assert model.t_span == span
    m = torch.linalg.matrix_exp(A * (integral(span[1]) - integral(span[0])))
    x = points()
    with torch.no_grad():
        lp = model.log_prob(x)
        expect = std_normal_lp(x @ torch.linalg.inv(m).T) - (integral(span[1]) - integral(span[0])) * torch.trace(A)
        assert torch.allclose(lp, expect, atol=1e-7)
        assert not torch.allclose(lp, model.log_prob(x, solver="rk4", steps=1))  # the span matters
        z = points(seed=1)
        assert torch.allclose(model.sample(6, x0=z), z @ m.T, atol=1e-7)
        traj = model.trajectory(x0=z, steps=40, solver="rk4")
    assert traj.shape == (41, 6, 3)
    assert torch.allclose(traj[0], z) and torch.allclose(traj[-1], z @ m.T, atol=1e-6)
    mid = torch.linalg.matrix_exp(A * (integral(sum(span) / 2) - integral(span[0])))
    assert torch.allclose(traj[20], z @ mid.T, atol=1e-6)


@pytest.mark.parametrize("span", [(0.5, 0.5), (0.0, math.inf), (1.0,), "ab"])
def test_bad_time_span(span):
    with pytest.raises(ValueError, match="t_span"):
        LinearFlow((3,), t_span=span)


# ---------------------------------------------------------------------------- divergences
def _net(dim=3, seed=0):
    torch.manual_seed(seed)
    return TimeMLP(dim, hidden=(16, 16), activation="tanh").double()


def _reference_divergence(net, x, t):
    """From the full Jacobian, independently of the code under test."""
    jac = torch.autograd.functional.jacobian(lambda y: net(y, t).sum(0), x)  # [D, N, D]
    return torch.einsum("ini->n", jac)


@pytest.mark.parametrize("method", ["loop", "batched", "auto"])
def test_exact_divergence_matches_the_jacobian_trace(method):
    net = _net()
    x = points(8).requires_grad_(True)
    t = torch.tensor(0.3, dtype=D64)
    u = net(x, t)
    div = divergence_exact(u, x, method=method)
    assert torch.allclose(div, _reference_divergence(net, x.detach(), t), atol=1e-10)


def test_exact_divergence_of_image_shaped_fields():
    w = torch.randn(12, 12, dtype=D64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 3, 2, 2, dtype=D64, requires_grad=True)
    u = torch.tanh(x.reshape(4, 12) @ w.T).reshape(4, 3, 2, 2)
    jac = torch.autograd.functional.jacobian(lambda y: torch.tanh(y.reshape(4, 12) @ w.T).sum(0), x.detach())
    ref = torch.stack([torch.trace(jac[:, i].reshape(12, 12)) for i in range(4)])
    for method in ("loop", "batched"):
        assert torch.allclose(divergence_exact(u, x, method=method), ref, atol=1e-10)


@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu", "elu"])
def test_forward_mode_mlp_divergence_matches_autograd(activation):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(8, 5, generator=g, dtype=D64), torch.randn(8, 8, generator=g, dtype=D64),
          torch.randn(3, 8, generator=g, dtype=D64)]
    bs = [torch.randn(w.shape[0], generator=g, dtype=D64) for w in ws]
    gates = [torch.rand(1, w.shape[0], generator=g, dtype=D64) for w in ws]
    shifts = [torch.randn(4, w.shape[0], generator=g, dtype=D64) for w in ws]
    extra = torch.randn(4, 2, generator=g, dtype=D64)
    x = torch.randn(4, 3, generator=g, dtype=D64, requires_grad=True)
    u, div = mlp_divergence(x, ws, bs, activation, gates, shifts, extra_input=extra)
    h = torch.cat([x, extra], -1)
    for k, (w, b) in enumerate(zip(ws, bs)):
        a = (h @ w.T + b) * gates[k] + shifts[k]
        h = a if k == 2 else activation_and_derivative(activation, a)[0]
    assert torch.allclose(u, h, atol=1e-12)
    assert torch.allclose(div, divergence_exact(h, x), atol=1e-10)
    # The derivative itself agrees with autograd.
    a = torch.linspace(-3, 3, 41, dtype=D64, requires_grad=True)
    val, der = activation_and_derivative(activation, a)
    assert torch.allclose(der, torch.autograd.grad(val.sum(), a)[0], atol=1e-12)


@pytest.mark.parametrize("hidden", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("per_sample_gate", [False, True])
def test_mlp_divergence_every_depth(hidden, per_sample_gate):
    # 1-2 hidden layers with a shared output gate take the cyclic-trace shortcut, the rest the
    # meet-in-the-middle columns: both must equal the autograd trace, with different widths.
    g = torch.Generator().manual_seed(hidden)
    widths = [4 + 1, *[7 + 2 * k for k in range(hidden)], 4]
    ws = [torch.randn(widths[k + 1], widths[k], generator=g, dtype=D64).requires_grad_() for k in range(len(widths) - 1)]
    bs = [torch.randn(w.shape[0], generator=g, dtype=D64) for w in ws]
    rows = 6 if per_sample_gate else 1
    gates = [torch.rand(rows, w.shape[0], generator=g, dtype=D64) + 0.5 for w in ws]
    extra = torch.randn(6, 1, generator=g, dtype=D64)
    x = torch.randn(6, 4, generator=g, dtype=D64, requires_grad=True)
    u, div = mlp_divergence(x, ws, bs, "tanh", gates, None, extra_input=extra)
    h = torch.cat([x, extra], -1)
    for k, (w, b) in enumerate(zip(ws, bs)):
        a = (h @ w.T + b) * gates[k]
        h = a if k == len(ws) - 1 else torch.tanh(a)
    assert torch.allclose(u, h, atol=1e-12)
    assert torch.allclose(div, divergence_exact(h, x), atol=1e-10)
    # Differentiable in the weights (training through the exact trace).
    gw = torch.autograd.grad(div.sum(), ws[0])[0]
    ref = torch.autograd.grad(divergence_exact(h, x, create_graph=True).sum(), ws[0])[0]
    assert torch.allclose(gw, ref, atol=1e-9)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(kind):
    net = _net()
    x = points(4)
    n_probes = 4000
    xr = x.repeat(n_probes, 1).requires_grad_(True)  # every row gets its own probe
    t = torch.tensor(0.6, dtype=D64)
    u = net(xr, t)
    eps = make_probe(xr.shape, kind, torch.Generator().manual_seed(3), dtype=D64)
    est = divergence_hutchinson(u, xr, eps).reshape(n_probes, 4)
    x1 = x.clone().requires_grad_(True)
    exact = divergence_exact(net(x1, t), x1, method="loop")
    mean, se = est.mean(0), est.std(0) / math.sqrt(n_probes)
    assert ((mean - exact).abs() < 4 * se + 1e-12).all(), (mean, exact, se)
    assert (se > 0).all()  # a real estimator, not the exact trace in disguise
    if kind == "rademacher":  # Rademacher has lower variance than Gaussian for the same field
        eps_g = make_probe(xr.shape, "gaussian", torch.Generator().manual_seed(3), dtype=D64)
        var_g = divergence_hutchinson(u, xr, eps_g).reshape(n_probes, 4).var(0)
        assert (est.var(0) < var_g).all()


def test_hutchinson_likelihood_is_unbiased():
    x = points(3)
    n = 1000
    xr = x.repeat(n, 1)
    g = torch.Generator().manual_seed(0)
    field = lambda y, t: torch.tanh(linear_field(t, y))  # noqa: E731 - nonlinear: trace varies along paths
    est, _ = ode_log_prob(field, xr, std_normal_lp, exact=False, probe="gaussian", generator=g, solver="rk4", steps=20)
    ref, _ = ode_log_prob(field, x, std_normal_lp, exact=True, solver="rk4", steps=20)
    est = est.reshape(n, 3)
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    assert ((mean - ref).abs() < 4 * se).all(), (mean, ref, se)


def test_exact_methods_give_the_same_likelihood():
    net = _net()
    x = points(5)
    out = {}
    for m in ("loop", "batched", "auto"):
        out[m] = ode_log_prob(lambda y, t: net(y, t), x, std_normal_lp, exact_method=m, solver="rk4", steps=10)[0]
    assert torch.allclose(out["loop"], out["batched"], atol=1e-12)
    assert torch.allclose(out["loop"], out["auto"], atol=1e-12)


def test_regularisers_of_a_linear_field():
    """Kinetic ``int ||A_t x_t||^2 dt`` (quadrature on the closed-form path) and Frobenius
    ``int ||eps^T A_t||^2 dt`` with the same Rademacher probe (probe drawn from the generator)."""
    x = points(4)
    lp, _, kin, frob = ode_log_prob(lambda y, t: linear_field(t, y), x, std_normal_lp, regularize=True,
                                    generator=torch.Generator().manual_seed(5), atol=1e-10, rtol=1e-10)
    assert torch.allclose(lp, exact_lp(x), atol=1e-6)
    ts = torch.linspace(0, 1, 2001, dtype=D64)
    x0 = flow_map(x, 1.0, 0.0)
    speed = torch.stack([(rate(t) * flow_map(x0, 0.0, t) @ A.T).pow(2).sum(-1) for t in ts])
    kin_ref = torch.trapezoid(speed, ts, dim=0)
    assert torch.allclose(kin, kin_ref, rtol=1e-5)
    eps = make_probe(x.shape, "rademacher", torch.Generator().manual_seed(5), dtype=D64)
    frob_ref = (eps @ A).pow(2).sum(-1) * torch.trapezoid(rate(ts) ** 2, ts)
    assert torch.allclose(frob, frob_ref, rtol=1e-5)


# ---------------------------------------------------------------------------- gradients
class LinearModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(A.clone())
        self.b = nn.Parameter(torch.tensor([0.1, -0.2, 0.05], dtype=D64))

    def forward(self, t, x):
        return torch.tanh(x @ self.w.T) * (1 + t) + self.b


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_adjoint_and_direct_gradients_agree(solver):
    f = LinearModule()
    x = points(5)

    def grads(adjoint):
        f.zero_grad()
        lp, _ = ode_log_prob(lambda y, t: f(t, y), x, std_normal_lp, solver=solver, steps=20, atol=1e-10,
                             rtol=1e-10, adjoint=adjoint, adjoint_params=tuple(f.parameters()) if adjoint else None)
        lp.sum().backward()
        return [p.grad.clone() for p in f.parameters()]

    direct, adj = grads(False), grads(True)
    for a, b in zip(direct, adj):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6), (a, b)
    assert all(float(g.abs().sum()) > 0 for g in direct)


def test_gradients_flow_under_training_and_not_under_no_grad():
    f = LinearModule()
    x = points(3)
    lp, _ = ode_log_prob(lambda y, t: f(t, y), x, std_normal_lp, solver="rk4", steps=5)
    assert lp.requires_grad
    with torch.no_grad():
        lp2, _ = ode_log_prob(lambda y, t: f(t, y), x, std_normal_lp, solver="rk4", steps=5)
    assert not lp2.requires_grad
    assert torch.allclose(lp.detach(), lp2, atol=1e-12)


# ---------------------------------------------------------------------------- bad input
def test_field_with_wrong_output_shape_is_named():
    x = points(4)
    with pytest.raises(ValueError, match=r"output \[4, 2\].*input \[4, 3\]"):
        ode_log_prob(lambda y, t: y[:, :2], x, std_normal_lp)

    class Bad(ContinuousFlow):
        def velocity(self, x, t, context=None):
            return torch.cat([x, x], -1)

    model = Bad((3,)).double()
    with pytest.raises(ValueError, match=r"output \[5, 6\].*input \[5, 3\]"):
        model.sample(5)
    with pytest.raises(ValueError, match=r"output \[4, 6\].*input \[4, 3\]"):
        model.log_prob(x)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_non_finite_values_name_t_and_solver(solver):
    def blow_up(t, x):
        return torch.where(t < 0.5, x, torch.full_like(x, float("nan")))

    with pytest.raises(NonFiniteError, match=rf"t=0\.5.*{solver}"):
        odeint(blow_up, points(), [0.0, 1.0], solver=solver, steps=10)


def test_bad_solver_arguments():
    x = points()
    with pytest.raises(ValueError, match="unknown solver 'rk5'"):
        odeint(linear_field, x, [0.0, 1.0], solver="rk5")
    for atol, rtol in ((0.0, 1e-5), (1e-5, -1.0)):
        with pytest.raises(ValueError, match="tolerances must be > 0"):
            odeint(linear_field, x, [0.0, 1.0], atol=atol, rtol=rtol)
        with pytest.raises(ValueError, match="tolerances must be > 0"):
            ode_log_prob(lambda y, t: y, x, std_normal_lp, atol=atol, rtol=rtol)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        odeint(linear_field, x, [0.0, 1.0], solver="euler", steps=0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        odeint(linear_field, x, [0.0, 1.0], solver="euler", steps=0, adjoint=True, adjoint_params=())
    with pytest.raises(ValueError, match="monoton"):
        odeint(linear_field, x, [0.0, 1.0, 0.5], solver="euler", steps=10)
    with pytest.raises(ValueError, match="not on the 10-step grid"):
        odeint(linear_field, x, [0.0, 0.33, 1.0], solver="euler", steps=10)
    with pytest.raises(ValueError, match="unknown probe kind"):
        ode_log_prob(lambda y, t: y, x, std_normal_lp, exact=False, probe="uniform")
    with pytest.raises(ValueError, match="unknown exact_method"):
        ode_log_prob(lambda y, t: y, x, std_normal_lp, exact_method="jacrev")
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        ode_log_prob(lambda y, t: y, x, std_normal_lp, t0=1.0, t1=1.0)


def test_forward_mode_mlp_divergence_in_chunks(monkeypatch):
    import pushforward.continuous.divergence as dv

    monkeypatch.setattr(dv, "_CHUNK_ELEMENTS", 40)  # 40 // (3 * 8) = 1 row per chunk
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(8, 4, generator=g, dtype=D64), torch.randn(3, 8, generator=g, dtype=D64)]
    bs = [torch.randn(8, generator=g, dtype=D64), None]
    gates = [torch.rand(5, 8, generator=g, dtype=D64), torch.rand(1, 3, generator=g, dtype=D64)]
    extra = torch.randn(5, 1, generator=g, dtype=D64)
    x = torch.randn(5, 3, generator=g, dtype=D64, requires_grad=True)
    u, div = mlp_divergence(x, ws, bs, "tanh", gates, None, extra_input=extra)
    h = torch.tanh((torch.cat([x, extra], -1) @ ws[0].T + bs[0]) * gates[0])
    ref = (h @ ws[1].T) * gates[1]
    assert torch.allclose(u, ref, atol=1e-12)
    assert torch.allclose(div, divergence_exact(ref, x), atol=1e-10)
