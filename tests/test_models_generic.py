"""Every ``pf.build`` name: the FlowModel contract in float64.

Shapes, gradients, save/load, context, standardization folding, clear errors on bad input, and
for 2-D models: the density integrates to 1 and agrees with the model's own sampler.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import pushforward as pf

# Models whose data is not 2-D vectors: build kwargs and event shape for the generic checks.
SPECIAL = {
    "cdf": dict(dim=1),
    "glow": dict(image_shape=(1, 4, 4)),
    "tarflow": dict(image_shape=(1, 4, 4), blocks=2, layers=1, width=16, heads=2),
    # Bisection/quadrature inverses: small conditioners keep the 20000-sample checks quick.
    "naf": dict(dim=2, hidden=(16, 16), transforms=2),
    "unaf": dict(dim=2, hidden=(16, 16), transforms=2, integrand=(8,), nodes=8),
    "bernstein": dict(dim=2, hidden=(16, 16), transforms=2, degree=8),
    # Flow matching: a narrower field keeps the exact-divergence ODE densities on the grid cheap.
    **{n: dict(dim=2, hidden=(32, 32)) for n in ("fm", "ot-fm", "vp-fm", "sb-fm", "rectified")},
    # Score models: a narrower field keeps the exact-divergence PF-ODE densities on the grid cheap.
    **{n: dict(dim=2, hidden=(32, 32)) for n in ("score-vp", "score-subvp", "score-ve")},
    "discrete-fm": dict(dim=4, num_categories=3),
    "sphere-fm": dict(dim=3),
    # Few-step models: the sampler-vs-density check needs the ODE sampler (an untrained network's
    # one-step map is not its ODE's flow map; tests/test_fewstep.py checks both views).
    **{n: dict(dim=2, hidden=(32, 32), sampler="ode") for n in ("meanflow", "shortcut", "consistency")},
}
# Expensive density evaluations (ODE solves) get a coarser grid.
COARSE_GRID = {"ffjord": 140, **dict.fromkeys(("fm", "ot-fm", "vp-fm", "sb-fm", "rectified"), 71)}  # points per axis (default GRID_N; x = 0.3 falls mid-cell)
COARSE_GRID.update(dict.fromkeys(("score-vp", "score-subvp", "score-ve"), 71))
COARSE_GRID.update(dict.fromkeys(("meanflow", "shortcut", "consistency"), 71))
COARSE_GRID.update(dict.fromkeys(("naf", "unaf", "bernstein"), 140))
# Policies are conditional-only models over action chunks [H, A] (the regression baseline has no
# density at all): tests/test_policy.py checks their contract.
NAMES = [n for n in pf.available_models() if not n.endswith("-policy")]
# Models on categorical sequences or on manifolds (their class says so with a ``support`` other
# than Euclidean) do not take real vectors in R^D: tests/test_discrete.py and
# tests/test_manifolds.py run their equivalent of this suite.
NAMES = [n for n in NAMES if getattr(pf.registry.entry(n).factory, "support", "euclidean") == "euclidean"]
# Models on the flat torus: data are angles in [-pi, pi), the density integrates to 1 over that box.
PERIODIC = {"circular-nsf"}
IMAGE = {"glow", "tarflow"}
# Names with more than one training method run every check once per method, as "name:method".
METHODS = {"consistency": ("sct", "cfm")}
NAMES = [f"{n}:{m}" if m else n for n in NAMES for m in METHODS.get(n, (None,))]


def _build_name(case: str) -> str:
    return case.partition(":")[0]


def _kwargs(case: str) -> dict:
    name, _, method = case.partition(":")
    return dict(SPECIAL.get(name, {"dim": 2}), **({"method": method} if method else {}))


def _event_shape(name: str) -> tuple[int, ...]:
    kw = _kwargs(name)
    return tuple(kw["image_shape"]) if "image_shape" in kw else (kw["dim"],)


def _make(name: str, context_dim: int = 0, perturb: float = 0.05, seed: int = 0):
    torch.manual_seed(seed)
    model = pf.build(_build_name(name), context_dim=context_dim, **_kwargs(name)).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.eval()
    return model


def _data(name: str, n: int = 8, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = _event_shape(name)
    if name in IMAGE:
        return torch.randint(0, 256, (n, *shape), generator=g).double()
    if name in PERIODIC:
        return (torch.rand((n, *shape), generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_registry_has_the_promised_names():
    promised = {"planar", "radial", "nice", "realnvp", "glow", "maf", "iaf", "nsf", "residual", "cdf"}
    assert promised <= set(NAMES), sorted(promised - set(NAMES))


def test_log_prob_and_sample_shapes(name):
    model = _make(name)
    x = _data(name)
    lp = model.log_prob(x)
    assert lp.shape == (x.shape[0],) and lp.dtype == torch.float64
    assert torch.isfinite(lp).all()
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *_event_shape(name)) and s.dtype == torch.float64
    assert torch.isfinite(s).all()


def test_sampling_is_reproducible_under_a_generator(name):
    model = _make(name)
    a = model.sample(4, generator=torch.Generator().manual_seed(7))
    b = model.sample(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_every_parameter_gets_a_gradient(name):
    model = _make(name)
    model.train()
    model.loss(_data(name, n=16)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_save_load_round_trip(name, tmp_path):
    model = _make(name)
    x = _data(name)
    with torch.no_grad():
        lp = model.log_prob(x)
    pf.save(model, tmp_path / "m.pt")
    again = pf.load(tmp_path / "m.pt").eval()
    assert type(again) is type(model)
    assert next(again.parameters()).dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(again.log_prob(x), lp, atol=1e-8)
    buf = io.BytesIO()
    torch.save(model, buf)
    (tmp_path / "whole.pt").write_bytes(buf.getvalue())
    with torch.no_grad():
        assert torch.allclose(pf.load(tmp_path / "whole.pt").eval().log_prob(x), lp, atol=1e-8)


def _has_conditional_variant(name: str) -> bool:
    try:
        pf.build(_build_name(name), context_dim=3, **_kwargs(name))
    except (ValueError, NotImplementedError):
        return False
    return True


# Generated only where they apply (no skips); the excluded names are pinned so that a model
# losing its conditional variant or its standardization is noticed.
CONDITIONAL = [n for n in NAMES if _has_conditional_variant(n)]
STANDARDIZED = [n for n in NAMES if pf.build(_build_name(n), **_kwargs(n)).standardize_by_default]


def test_which_names_are_conditional_and_standardized():
    assert sorted(set(NAMES) - set(CONDITIONAL)) == []
    # Images and angles keep their own units (no per-dimension standardization).
    assert sorted(set(NAMES) - set(STANDARDIZED)) == ["circular-nsf", "glow", "tarflow"]


@pytest.mark.parametrize("name", CONDITIONAL)
def test_context_changes_the_density(name):
    model = _make(name, context_dim=3)
    x = _data(name)
    c = torch.randn(x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = model.log_prob(x, c), model.log_prob(x, c + 1.0)
    assert not torch.allclose(a, b)
    s = model.sample(x.shape[0], context=c)
    assert s.shape == x.shape
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x)  # missing context
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x, c[:, :2])  # wrong context width


@pytest.mark.parametrize("name", STANDARDIZED)
def test_standardization_is_folded_into_log_prob_and_sample(name):
    model = _make(name)
    x = _data(name)
    d = x[0].numel()
    with torch.no_grad():
        lp = model.log_prob(x)
        loc, scale = torch.full(_event_shape(name), 3.0), torch.full(_event_shape(name), 10.0)
        model.set_standardization(loc, scale)
        lp_scaled = model.log_prob(x * 10.0 + 3.0)
        s = model.sample(2000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lp_scaled, lp - d * math.log(10.0), atol=1e-8)
    assert (s.mean(0) - 3.0).abs().max() < 10.0  # samples live in user units


@pytest.mark.parametrize("bad", ["dim", "nan", "inf", "rank", "complex"])
def test_bad_input_is_named(name, bad):
    model = _make(name)
    x = _data(name)
    if bad == "dim":
        x = torch.cat([x, x], dim=-1)
        match = "shape"
    elif bad == "rank":
        x = x[0]
        match = "shape"
    elif bad == "complex":
        x = x.to(torch.complex128)
        match = "real"
    else:
        x = x.clone()
        x.view(-1)[3] = float("nan") if bad == "nan" else float("inf")
        match = "non-finite"
    with pytest.raises((ValueError, TypeError), match=match):
        model.log_prob(x)


def test_every_real_dtype_is_cast_to_the_model_dtype(name):
    """The one dtype rule (docs/conventions.md): float32, int64 and bool inputs are cast."""
    model = _make(name)
    x = _data(name)
    with torch.no_grad():
        assert torch.equal(model.log_prob(x.float()), model.log_prob(x.float().double()))
        xi = x.round().clamp(0, 1)  # in range for image models with bounded data
        assert torch.equal(model.log_prob(xi.long()), model.log_prob(xi))
        assert torch.equal(model.log_prob(xi.bool()), model.log_prob(xi))


def test_build_errors():
    with pytest.raises(ValueError, match="unknown model"):
        pf.build("no-such-flow", dim=2)
    with pytest.raises(ValueError, match="dim"):
        pf.build("realnvp", dim=0)
    with pytest.raises(ValueError, match="dim"):
        pf.build("maf", dim=-3)
    with pytest.raises(TypeError, match="option"):
        pf.build("realnvp", dim=2, no_such_option=3)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        pf.load("/nonexistent/model.pt")


# ------------------------------------------------------------------ 2-D density checks
GRID_L, GRID_N = 7.0, 351
TWO_D = [n for n in NAMES if _event_shape(n) == (2,)]


def _grid(dtype=torch.float64, n=GRID_N, half_width=GRID_L):
    u = torch.linspace(-half_width, half_width, n, dtype=dtype)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), (u[1] - u[0]).item()


@pytest.mark.parametrize("name", TWO_D)
def test_density_integrates_to_one_and_matches_sampler(name):
    model = _make(name, perturb=0.05)
    periodic = name in PERIODIC
    # On the torus: a cell-centred grid of [-pi, pi)^2 (the density is periodic, not decaying).
    pts, h = _grid(n=COARSE_GRID.get(_build_name(name), GRID_N), half_width=GRID_L)
    if periodic:
        u = (torch.arange(200, dtype=torch.float64) + 0.5) / 200 * 2 * math.pi - math.pi
        xx, yy = torch.meshgrid(u, u, indexing="ij")
        pts, h = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), 2 * math.pi / 200
    with torch.no_grad():
        dens = torch.cat([model.log_prob(chunk).exp() for chunk in pts.split(20000)])
    total = float(dens.sum() * h * h)
    assert abs(total - 1.0) < 2e-2, total
    # The sampler and the density agree on a half-plane's mass.
    half = float(dens[pts[:, 0] > 0.3].sum() * h * h) / total
    with torch.no_grad():
        s = model.sample(20000, generator=torch.Generator().manual_seed(11))
    freq = float((s[:, 0] > 0.3).double().mean())
    se = math.sqrt(half * (1 - half) / 20000)
    assert abs(freq - half) < 4 * se + 5e-3, (freq, half)


@pytest.mark.parametrize("name", [n for n in ("realnvp", "nsf", "maf") if n in NAMES])
def test_reverse_kl_recovers_a_gaussian_target(name):
    torch.manual_seed(0)
    model = pf.build(name, dim=2).double()
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mean, cov)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        opt.zero_grad()
        loss = model.reverse_kl_loss(target.log_prob, n=256, generator=g)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        s = model.sample(20000, generator=torch.Generator().manual_seed(1))
        final = float(model.reverse_kl_loss(target.log_prob, n=20000, generator=torch.Generator().manual_seed(2)))
    # Reverse KL is >= 0 (log Z = 0 for a normalised target); a wrong log-det sign cannot get here.
    assert -0.01 < final < 0.01, final
    assert torch.allclose(s.mean(0), mean, atol=0.1), s.mean(0)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.1), torch.cov(s.T)


# ------------------------------------------------------------------ recorded defaults
def _build_any(name: str):
    """A small model for every registered name, policies included (action chunks [4, 2] | obs [3])."""
    if name == "vla-policy":  # one 8x8 camera, 6 text bytes, state 2: context 2 + 192 + 6
        return pf.build(name, 2, context_dim=200, image_shape=(3, 8, 8), horizon=4, width=16, depth=1, patch=4,
                        max_text=6)
    if name.endswith("-policy"):
        extra = {"stride": 2} if name.startswith("hierarchical") else {}
        return pf.build(name, 2, context_dim=3, horizon=4, width=16, depth=1, **extra)
    return pf.build(_build_name(name), **_kwargs(name))


class _Unusable:
    """A default that no constructor can use silently (it equals nothing and converts to nothing)."""

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__


@pytest.mark.parametrize("model_name", [f"{n}:{m}" if m else n for n in pf.available_models()
                                        for m in METHODS.get(n, (None,))])
def test_a_reload_uses_no_class_default(model_name, tmp_path, monkeypatch):
    """``build`` records every option, so a later version may change any default: with every
    default of the registered factory made unusable, a saved model still reloads identically."""
    import pushforward.registry as reg

    torch.manual_seed(0)
    model = _build_any(model_name).eval()
    model_name = _build_name(model_name)
    assert set(reg.entry(model_name).options()) <= set(model.config)
    pf.save(model, tmp_path / "m.pt")
    factory = reg.entry(model_name).factory
    fn = factory.__init__ if isinstance(factory, type) else factory
    monkeypatch.setattr(fn, "__kwdefaults__", {k: _Unusable() for k in fn.__kwdefaults__ or {}})
    monkeypatch.setattr(fn, "__defaults__", tuple(_Unusable() for _ in fn.__defaults__ or ()))
    again = pf.load(tmp_path / "m.pt").eval()
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ctx = {"context": torch.randn(3, model.context_dim)} if model.context_dim else {}
    if model_name == "vla-policy":  # a packed context: pixels, state, token ids
        ctx = {"context": model.pack(torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8), torch.randn(3, 2),
                                     ["go", "", "left"])}
    with torch.no_grad():
        torch.testing.assert_close(again.sample(3, generator=torch.Generator().manual_seed(1), **ctx),
                                   model.sample(3, generator=torch.Generator().manual_seed(1), **ctx))


def test_registered_factories_list_every_option():
    import pushforward.registry as reg

    with pytest.raises(TypeError, match="kwargs"):
        reg.register("no-such-model-kwargs", lambda dim, **options: None)
    assert "no-such-model-kwargs" not in pf.available_models()
