"""The tail-aware nsf default (and old checkpoints without it), pf.fit(compile=True), and the
policy's opt-in fast act path: identical results with the fast path on and off."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import pushforward as pf
from pushforward.transforms import SinhArcsinh
from pushforward.transforms.tails import _shared_scale


# ------------------------------------------------------------------ tail layer
def test_sinh_arcsinh_matches_closed_form_t_density():
    # A Student-t with 3 dof pushed through the layer: log p(x) = log N(z) + log|dz/dx|.
    g = torch.Generator().manual_seed(0)
    t = SinhArcsinh(1).double()
    with torch.no_grad():
        t.loc.fill_(0.3)
        t.log_scale.fill_(math.log(2.0))
        t.log_delta.fill_(-0.4)
    x = torch.randn(50, 1, generator=g, dtype=torch.float64) * 4
    z, ladj = t(x)
    u = (x - 0.3) / 2.0
    delta = torch.exp(3.0 * torch.tanh(torch.tensor(-0.4 / 3.0, dtype=torch.float64)))
    z_ref = torch.sinh(delta * torch.asinh(u))
    d_ref = delta * torch.cosh(delta * torch.asinh(u)) / torch.sqrt(1 + u * u) / 2.0
    assert torch.allclose(z, z_ref, atol=1e-12)
    assert torch.allclose(ladj, torch.log(d_ref).sum(-1), atol=1e-12)


def test_sinh_arcsinh_init_compresses_heavy_tails_keeps_gaussian():
    g = torch.Generator().manual_seed(1)
    n = 4000
    gauss = torch.randn(n, 1, generator=g)
    cauchy = torch.distributions.Cauchy(0.0, 1.0).icdf(torch.rand(n, 1, generator=g).clamp(1e-4, 1 - 1e-4))
    t = SinhArcsinh(2)
    z = t.initialize(torch.cat([gauss * 3 + 1, cauchy], 1))
    delta = t._delta().detach()
    assert delta[0] > 0.85 and delta[1] < 0.6, delta
    assert z.abs().max() < 10  # the Cauchy column lands in a spline's range
    assert abs(float(t.loc[0].detach()) - 1) < 0.2 and abs(float(t.log_scale[0].detach().exp()) - 3) < 0.3


def test_sinh_arcsinh_init_on_ties_stays_finite():
    # A binary column (MAD 0) and a constant one: finite outputs, exact round trip.
    x = torch.cat([(torch.arange(64) % 5 == 0).float()[:, None], torch.ones(64, 1)], 1)
    t = SinhArcsinh(2)
    z = t.initialize(x)
    assert torch.isfinite(z).all() and torch.isfinite(t(x)[1]).all()
    assert torch.allclose(t.inverse(z)[0], x, atol=1e-4)


def test_sinh_arcsinh_rejects_bad_batch():
    with pytest.raises(ValueError, match=r"\[N >= 2, 3\]"):
        SinhArcsinh(3).initialize(torch.randn(1, 3))
    with pytest.raises(ValueError, match="log_delta_bound"):
        SinhArcsinh(3, log_delta_bound=0.0)


# ------------------------------------------------------------------ nsf default and old checkpoints
def test_nsf_default_has_tail_layer_and_records_it():
    m = pf.build("nsf", dim=3)
    assert isinstance(m.transform[0], SinhArcsinh) and m.config["tails"] is True
    off = pf.build("nsf", dim=3, tails=False)
    assert not isinstance(off.transform[0], SinhArcsinh)
    with pytest.raises(ValueError, match="tails must be True or False"):
        pf.build("nsf", dim=3, tails="yes")


def test_old_nsf_checkpoint_without_tails_reloads_old_architecture(tmp_path):
    # A checkpoint written before the option existed: its config has no "tails" key.
    torch.manual_seed(0)
    old = pf.build("nsf", dim=3, tails=False, hidden=(16,), transforms=2)
    del old.config["tails"]
    path = tmp_path / "old.pt"
    pf.save(old, path)
    back = pf.load(path)
    assert back.config["tails"] is False
    assert not isinstance(back.transform[0], SinhArcsinh)
    x = torch.randn(7, 3)
    assert torch.equal(back.log_prob(x), old.log_prob(x))
    # A new checkpoint keeps its layer.
    new = pf.build("nsf", dim=3, hidden=(16,), transforms=2)
    new.transform[0].initialize(torch.randn(64, 3))
    pf.save(new, tmp_path / "new.pt")
    back = pf.load(tmp_path / "new.pt")
    assert isinstance(back.transform[0], SinhArcsinh) and torch.equal(back.log_prob(x), new.log_prob(x))


def test_tail_layer_init_keeps_a_shared_scale_affine():
    # Neal's funnel, x_j = e^(v/2) eps_j: every x_j is heavy-tailed marginally, but its scale is
    # shared with (predicted by) the other columns, which the conditioned affine maps of the
    # coupling layers undo; compressing the marginals bent each conditional (funnel5 at 60 s: KL
    # 0.044 compressed against 0.017 affine). The init keeps those columns affine (delta = 1)
    # and still compresses independent heavy tails (a Student-t column next to them).
    g = torch.Generator().manual_seed(0)
    x = pf.data.get_target("funnel10").sample(4096, generator=g)
    t2 = torch.distributions.StudentT(2.0)
    with torch.random.fork_rng():
        torch.manual_seed(123)  # not 0: the funnel's v is drawn from a stream seeded 0
        x = torch.cat([x, t2.sample((4096, 1))], 1)
    x = (x - x.mean(0)) / x.std(0)
    t = SinhArcsinh(11)
    z = t.initialize(x)
    delta = t._delta().detach()
    assert (delta[1:10] > 0.99).all(), delta
    assert delta[10] < 0.6, delta
    assert torch.allclose(z.std(0), torch.ones(11), atol=1e-3)
    shared = _shared_scale(x / x.abs().median(0).values, SinhArcsinh.shared_scale_corr)
    assert shared[1:10].all() and not shared[0] and not shared[10]


def test_shared_scale_is_false_for_independent_and_one_dimensional_data():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(512, 6, generator=g)
    cauchy = z / torch.randn(512, 6, generator=g).abs()  # independent heavy tails
    assert not _shared_scale(cauchy, 0.3).any()
    assert not _shared_scale(torch.randn(64, 1, generator=g), 0.3).any()
    # One scale for all columns: a shared tail.
    assert _shared_scale(z * torch.exp(2 * torch.randn(512, 1, generator=g)), 0.3).all()


def test_nsf_scale_bound_default_and_old_checkpoints(tmp_path):
    m = pf.build("nsf", dim=3, hidden=(16,), transforms=2)
    assert m.config["scale_bound"] == 6.0
    assert m.transform[1].elementwise.maps[0].scale_bound == 6.0
    # A checkpoint saved before the option existed was built with the Affine's bound of 3.
    torch.manual_seed(0)
    old = pf.build("nsf", dim=3, hidden=(16,), transforms=2, scale_bound=3.0)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.5 * torch.randn_like(p))  # large log-scales, where the bound matters
    del old.config["scale_bound"]
    pf.save(old, tmp_path / "old.pt")
    back = pf.load(tmp_path / "old.pt")
    assert back.config["scale_bound"] == 3.0
    x = torch.randn(7, 3)
    assert torch.equal(back.log_prob(x), old.log_prob(x))


@pytest.mark.slow
def test_nsf_default_fits_student_t_near_closed_form():
    # 2-D product Student-t (2 dof, infinite variance): held-out NLL against the exact density.
    t2 = torch.distributions.StudentT(2.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x, x_test = t2.sample((4000, 2)), t2.sample((4000, 2))
    exact = float(-t2.log_prob(x_test).sum(-1).mean())
    torch.manual_seed(0)
    m = pf.build("nsf", dim=2, hidden=(32, 32), transforms=2, bins=8)
    pf.fit(m, x, steps=300, seed=0, progress=False, val_fraction=0.0)
    with torch.no_grad():
        nll = float(-m.log_prob(x_test).mean())
    assert 0 < nll - exact < 0.08, (nll, exact)


# ------------------------------------------------------------------ fit(compile=True)
def test_fit_compile_is_validated():
    m = pf.build("nsf", dim=2, hidden=(8,), transforms=1)
    with pytest.raises(ValueError, match="compile must be True or False"):
        pf.fit(m, torch.randn(64, 2), steps=1, compile="yes", progress=False)


def _light_compile(monkeypatch) -> list:
    """torch.compile through dynamo + AOTAutograd without inductor's code generation (minutes
    on a loaded CPU): the graph capture and wiring are tested, quickly. Returns the call log."""
    real, calls = torch.compile, []

    def compile(fn, **kwargs):
        calls.append(kwargs)
        return real(fn, backend="aot_eager", fullgraph=kwargs.get("fullgraph", False))

    monkeypatch.setattr(torch, "compile", compile)
    return calls


@pytest.mark.slow
def test_fit_compile_matches_eager_on_cpu(monkeypatch):
    x = torch.randn(256, 2) * torch.tensor([1.0, 3.0])
    calls = _light_compile(monkeypatch)
    params = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        m = pf.build("realnvp", dim=2, hidden=(8,), transforms=2)
        h = pf.fit(m, x, steps=5, max_time=None, batch_size=64, seed=0, progress=False, val_fraction=0.0,
                   compile=compiled)
        assert h.steps == 5
        params[compiled] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert len(calls) == 1
    assert torch.allclose(params[True], params[False], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ policy fast path
def _policy(**kw):
    torch.manual_seed(0)
    p = pf.policy.FlowPolicy(obs_dim=3, action_dim=2, horizon=4, **kw)
    with torch.no_grad():  # a non-trivial field: the zero-initialised output layer would give x0
        for q in p.parameters():
            q.add_(0.05 * torch.randn_like(q))
    return p.eval()


@pytest.mark.parametrize("net", ["mlp", "transformer"])
@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_fast_act_cpu_fallback_is_bit_equal(net, solver):
    p = _policy(net=net, width=16, depth=1)
    obs = torch.randn(5, 3)
    ref = p.act(obs, generator=torch.Generator().manual_seed(3), solver=solver, steps=4)
    for mode in ("reduce-overhead", "eager"):  # reduce-overhead on CPU: the eager fallback
        p.set_fast_path(mode)
        out = p.act(obs, generator=torch.Generator().manual_seed(3), solver=solver, steps=4)
        assert torch.equal(out, ref), mode
    prefix = ref[:, :2]
    p.set_fast_path(None)
    ref_p = p.act(obs, generator=torch.Generator().manual_seed(4), prefix=prefix)
    s_ref = p.sample(3, context=obs[:3], generator=torch.Generator().manual_seed(5))
    p.set_fast_path("reduce-overhead")
    assert torch.equal(p.act(obs, generator=torch.Generator().manual_seed(4), prefix=prefix), ref_p)
    assert torch.equal(p.sample(3, context=obs[:3], generator=torch.Generator().manual_seed(5)), s_ref)
    assert torch.allclose(ref_p[:, :2], prefix, atol=1e-5)


def test_fast_path_validates_and_is_not_saved(tmp_path):
    p = _policy(net="mlp", width=8)
    with pytest.raises(ValueError, match="mode"):
        p.set_fast_path("turbo")
    p.set_fast_path("eager")
    with pytest.raises(ValueError, match="fixed-grid"):
        p.act(torch.zeros(1, 3), solver="dopri5")
    pf.save(p, tmp_path / "p.pt")
    assert pf.load(tmp_path / "p.pt").fast_path is None


@pytest.mark.slow
def test_fast_act_compiled_on_cpu_matches_eager(monkeypatch):
    calls = _light_compile(monkeypatch)
    p = _policy(net="mlp", width=16)
    obs = torch.randn(4, 3)
    ref = p.act(obs, generator=torch.Generator().manual_seed(0))
    p.set_fast_path("default")  # compiles on any device
    out = p.act(obs, generator=torch.Generator().manual_seed(0))
    again = p.act(obs, generator=torch.Generator().manual_seed(0))  # cached, not recompiled
    assert calls == [{"mode": "default", "dynamic": False, "fullgraph": True}]
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5) and torch.equal(out, again)


def _vla(**kw):
    torch.manual_seed(0)
    p = pf.policy.VLAPolicy(image_shape=(3, 8, 8), state_dim=2, action_dim=2, horizon=4, width=16, depth=1,
                            patch=4, max_text=6, **kw)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(0.05 * torch.randn_like(q))
    return p.eval()


@pytest.mark.parametrize("net", ["mlp", "transformer"])
def test_fast_path_chunk_traces_as_one_graph(net):
    """A graph break (a host sync, a Python-side cache) would silently split the compiled solve
    into one graph per flow step and give back most of its gain."""
    from pushforward.policy.flow import _chunk_fn, expert_field
    from pushforward.policy.vla import vla_field

    p = _policy(net=net, width=16, depth=1)
    with torch.inference_mode():
        fn = _chunk_fn(functools.partial(expert_field, p.net), *p.t_span)
        e = torch._dynamo.explain(fn)(torch.randn(2, 3), None, None, torch.randn(2, 4, 2), 3, "euler")
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
        v = _vla()
        parts = (torch.randn(1, 2), [torch.rand(1, 3, 8, 8)], v.tokenizer.encode(["go left"]))
        for w in (1.0, 2.0):
            fn = _chunk_fn(functools.partial(vla_field, v.net), *v.t_span)
            e = torch._dynamo.explain(fn)(parts, w, True, None, torch.randn(1, 4, 2), 3, "midpoint")
            assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons


@pytest.mark.slow
def test_vla_fast_act_compiled_on_cpu_matches_eager(monkeypatch):
    calls = _light_compile(monkeypatch)
    p = _vla(instruction_drop=0.1)
    img, st = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), torch.randn(2, 2)
    kw = {"images": img, "state": st, "instruction": ["go left", ""]}
    refs = {w: p.act(**kw, guidance=w, generator=torch.Generator().manual_seed(0)) for w in (1.0, 2.0)}
    pre = refs[1.0][:, :1]
    ref_pre = p.act(**kw, prefix=pre, generator=torch.Generator().manual_seed(1))
    p.set_fast_path("default")
    for w, ref in refs.items():
        out = p.act(**kw, guidance=w, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), w
    out = p.act(**kw, prefix=pre, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, ref_pre, atol=1e-5, rtol=1e-5) and torch.allclose(out[:, :1], pre, atol=1e-5)
    assert calls == [{"mode": "default", "dynamic": False, "fullgraph": True}]  # one compile, cached
    # sample() over packed contexts takes the same compiled solve.
    ctx = p.pack(img, st, ["go left", ""])
    s_fast = p.sample(2, context=ctx, generator=torch.Generator().manual_seed(2))
    p.set_fast_path(None)
    assert torch.allclose(s_fast, p.sample(2, context=ctx, generator=torch.Generator().manual_seed(2)), atol=1e-5)
