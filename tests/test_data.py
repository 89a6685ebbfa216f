"""pushforward.data: toys, closed-form targets, bundled sets and user files."""

import math

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward.data import Dataset, available_datasets, get_target, load
from pushforward.data.targets import available_targets
from pushforward.data.toys import TOY_CLASSES, TOYS

TOY_NAMES = ["moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings", "swissroll"]
TARGETS_2D = ["ring", "spiral", "checkerboard", "8gaussians"]


# --------------------------------------------------------------------------- toys
def test_all_promised_names_are_available():
    names = available_datasets()
    for n in TOY_NAMES + ["ring", "spiral", "gmm10", "funnel10", "gauss1d", "iris", "wine",
                          "breast_cancer", "diabetes", "digits", "digits8x8"]:
        assert n in names
    assert set(TOYS) == set(TOY_NAMES)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shape_dtype_reproducible_and_scaled(name):
    a = load(name, n=501, seed=3)
    b = load(name, n=501, seed=3)
    c = load(name, n=501, seed=4)
    assert isinstance(a, Dataset) and a.name == name
    assert a.x.shape == (501, 2) and a.x.dtype == torch.float32
    assert torch.equal(a.x, b.x)
    assert not torch.allclose(a.x, c.x)
    assert torch.isfinite(a.x).all()
    # roughly [-4, 4]^2: the bulk inside [-4.5, 4.5], and it is not collapsed
    assert (a.x.abs() < 4.5).float().mean() > 0.98
    assert a.x.std(0).min() > 0.5
    assert len(load(name)) == 10_000


@pytest.mark.parametrize("name", sorted(TOY_CLASSES))
def test_labelled_toys_give_one_hot_context(name):
    ds = load(name, n=400, context="label")
    k = TOY_CLASSES[name]
    assert ds.context.shape == (400, k) and ds.context.dtype == torch.float32
    assert torch.equal(ds.context.sum(1), torch.ones(400))
    assert (ds.context.sum(0) > 0).all()  # every class occurs
    assert torch.equal(ds.x, load(name, n=400).x)  # context does not change the data


def test_moons_labels_match_geometry():
    ds = load("moons", n=2000, context="label")
    upper = ds.x[ds.context[:, 0] == 1]  # label 0: the upper moon
    lower = ds.x[ds.context[:, 1] == 1]
    assert upper[:, 1].mean() > lower[:, 1].mean() + 1.0


def test_unlabelled_toy_rejects_context():
    with pytest.raises(ValueError, match="swissroll"):
        load("swissroll", context="label")


def test_toy_targets_attached():
    assert load("checkerboard", n=10).target.name == "checkerboard"
    assert load("8gaussians", n=10).target.name == "8gaussians"
    assert load("moons", n=10).target is None


# --------------------------------------------------------------------------- targets
def _grid_integral(target, half=8.0, m=400):
    h = 2 * half / m
    c = -half + h * (torch.arange(m, dtype=torch.float64) + 0.5)  # cell midpoints
    xx, yy = torch.meshgrid(c, c, indexing="xy")
    pts = torch.stack([xx.ravel(), yy.ravel()], -1)
    lp = target.log_prob(pts)
    p = torch.exp(lp)
    mass = float(p.sum() * h * h)
    plogp = torch.where(p > 0, p * lp, torch.zeros_like(p))
    entropy = -float(plogp.sum() * h * h)
    return mass, entropy, pts, p, h


@pytest.mark.parametrize("name", TARGETS_2D)
def test_2d_target_normalised_and_sampler_agrees(name):
    t = get_target(name)
    assert t.dim == 2
    mass, entropy, pts, p, h = _grid_integral(t)
    assert mass == pytest.approx(1.0, abs=2e-3)
    x = t.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    lp = t.log_prob(x.double())
    assert torch.isfinite(lp).all()
    # -E_p[log p] on its own samples equals the grid entropy -int p log p
    assert -float(lp.mean()) == pytest.approx(entropy, abs=0.03)
    # and the samples put the right mass in a quadrant-like region
    region = lambda z: (z[:, 0] > 0.3) & (z[:, 1] > -0.7)  # noqa: E731
    frac_samples = float(region(x).double().mean())
    frac_density = float((p * region(pts)).sum() * h * h)
    assert frac_samples == pytest.approx(frac_density, abs=0.015)


def test_checkerboard_support():
    t = get_target("checkerboard")
    inside = torch.tensor([[-3.0, -3.0], [-1.0, -1.0], [1.0, 1.0], [3.0, -1.0]])
    outside = torch.tensor([[-3.0, -1.0], [1.0, -1.0], [5.0, 5.0], [-1.0, 1.0]])
    assert torch.allclose(t.log_prob(inside), torch.full((4,), -math.log(32.0)))
    assert torch.isinf(t.log_prob(outside)).all()


def test_gauss1d_target():
    t = get_target("gauss1d")
    x = torch.linspace(-3, 7, 20001, dtype=torch.float64)[:, None]
    p = t.log_prob(x).exp()
    assert float(torch.trapezoid(p, x[:, 0])) == pytest.approx(1.0, abs=1e-6)
    ref = torch.distributions.Normal(2.0, 0.5).log_prob(x[:, 0])
    assert torch.allclose(t.log_prob(x), ref, atol=1e-10)
    ds = load("gauss1d", n=20_000)
    assert ds.x.shape == (20_000, 1) and ds.target is not None
    assert float(ds.x.mean()) == pytest.approx(2.0, abs=0.02)
    assert float(ds.x.std()) == pytest.approx(0.5, abs=0.01)


def test_gmm10_normalised_by_importance_sampling():
    t = get_target("gmm10")
    assert t.dim == 10
    # proposal: the same mixture with every component 1.5x wider (heavier tails than p)
    mix = torch.distributions.Categorical(probs=t.weights)
    comp = torch.distributions.Independent(torch.distributions.Normal(t.means, 1.5 * t.scales), 1)
    q = torch.distributions.MixtureSameFamily(mix, comp)
    torch.manual_seed(0)
    z = q.sample((40_000,))
    w = torch.exp(t.log_prob(z) - q.log_prob(z))
    assert float(w.mean()) == pytest.approx(1.0, abs=0.03)
    # sampler agrees with the parameters: mean of the mixture
    x = t.sample(40_000, generator=torch.Generator().manual_seed(1)).double()
    mean = (t.weights[:, None] * t.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.05)
    # log_prob against torch.distributions
    assert torch.allclose(t.log_prob(x[:100]), _mix_lp(t, x[:100]), atol=1e-9)


def _mix_lp(t, x):
    mix = torch.distributions.Categorical(probs=t.weights)
    comp = torch.distributions.Independent(torch.distributions.Normal(t.means, t.scales), 1)
    return torch.distributions.MixtureSameFamily(mix, comp).log_prob(x)


def test_funnel10_exact_and_normalised():
    t = get_target("funnel10")
    assert t.dim == 10
    x = t.sample(40_000, generator=torch.Generator().manual_seed(0)).double()
    v, rest = x[:, 0], x[:, 1:]
    ref = torch.distributions.Normal(0.0, 3.0).log_prob(v) + torch.distributions.Normal(
        0.0, torch.exp(v / 2)[:, None]).log_prob(rest).sum(-1)
    assert torch.allclose(t.log_prob(x), ref, atol=1e-8)
    # sampler: v ~ N(0, 9) and x_i e^{-v/2} ~ N(0, 1)
    assert float(v.std()) == pytest.approx(3.0, abs=0.05)
    assert float((rest * torch.exp(-v / 2)[:, None]).pow(2).mean()) == pytest.approx(1.0, abs=0.02)
    # normalisation by importance sampling with a wider conditional proposal
    g = torch.Generator().manual_seed(2)
    vq = torch.randn(40_000, generator=g, dtype=torch.float64) * 3
    xq = torch.randn(40_000, 9, generator=g, dtype=torch.float64) * 1.5 * torch.exp(vq / 2)[:, None]
    log_q = torch.distributions.Normal(0.0, 3.0).log_prob(vq) + torch.distributions.Normal(
        0.0, 1.5 * torch.exp(vq / 2)[:, None]).log_prob(xq).sum(-1)
    w = torch.exp(t.log_prob(torch.cat([vq[:, None], xq], -1)) - log_q)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.07)


def test_targets_by_name_and_errors():
    assert set(available_targets()) >= {"ring", "spiral", "checkerboard", "gmm10", "funnel10", "gauss1d"}
    for name in ("ring", "spiral", "gmm10", "funnel10"):
        ds = load(name, n=50)
        assert ds.target is not None and ds.x.shape == (50, ds.target.dim)
    with pytest.raises(ValueError, match="available"):
        get_target("nope")
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        get_target("ring").log_prob(torch.zeros(3, 3))


# --------------------------------------------------------------------------- bundled sets
@pytest.mark.parametrize("name,shape,k", [("iris", (150, 4), 3), ("wine", (178, 13), 3),
                                           ("breast_cancer", (569, 30), 2), ("digits", (1797, 64), 10)])
def test_sklearn_sets_with_labels(name, shape, k):
    ds = load(name, context="label")
    assert ds.x.shape == shape and ds.x.dtype == torch.float32
    assert ds.context.shape == (shape[0], k)
    assert torch.equal(ds.context.sum(1), torch.ones(shape[0]))
    assert load(name).context is None


def test_diabetes_target_context():
    ds = load("diabetes", context="target")
    assert ds.x.shape == (442, 10) and ds.context.shape == (442, 1)
    with pytest.raises(ValueError, match="no class labels"):
        load("diabetes", context="label")


def test_digits8x8_images():
    ds = load("digits8x8", context="label")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.meta["num_bins"] == 17
    assert torch.equal(ds.x, ds.x.round()) and ds.x.min() == 0 and ds.x.max() == 16
    assert torch.equal(ds.x.reshape(1797, 64), load("digits").x)
    assert ds.event_shape == (1, 8, 8) and ds.dim == 64


def test_tabular_context_columns():
    ds = load("wine", context=["alcohol", 1])
    assert ds.x.shape == (178, 11) and ds.context.shape == (178, 2)
    full = load("wine").x
    assert torch.equal(ds.context, full[:, :2]) and torch.equal(ds.x, full[:, 2:])
    assert ds.meta["context_columns"] == ["alcohol", "malic_acid"]
    assert torch.equal(load("wine", context="0,1").context, ds.context)
    with pytest.raises(ValueError, match="unknown context column 'nope'"):
        load("wine", context="nope")


def test_subset_n_and_split():
    a = load("iris", n=50, seed=1)
    assert a.x.shape == (50, 4) and torch.equal(a.x, load("iris", n=50, seed=1).x)
    with pytest.raises(ValueError, match="150 rows"):
        load("iris", n=151)
    tr, va = load("iris", context="label").split(0.2, seed=0)
    assert len(tr) == 120 and len(va) == 30 and va.context.shape == (30, 3)
    both = torch.cat([tr.x, va.x])
    full = load("iris").x
    # a partition of the rows: same multiset of rows
    assert torch.equal(both[torch.argsort(both @ torch.tensor([1e3, 1e2, 1e1, 1.0]))],
                       full[torch.argsort(full @ torch.tensor([1e3, 1e2, 1e1, 1.0]))])


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="moons") as e:
        load("moonz")
    assert "path" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere/data.csv"):
        load("nowhere/data.csv")
    with pytest.raises(ValueError, match="positive integer"):
        load("moons", n=0)


# --------------------------------------------------------------------------- files
def test_csv_with_header_comma(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,c\n1,2,3\n4,5,6\n7,8,9\n")
    ds = load(p)
    assert ds.x.shape == (3, 3) and ds.meta["columns"] == ["a", "b", "c"] and ds.name == "d"
    assert torch.equal(ds.x[0], torch.tensor([1.0, 2.0, 3.0]))
    ds = load(str(p), context="b")
    assert torch.equal(ds.context[:, 0], torch.tensor([2.0, 5.0, 8.0]))
    assert ds.meta["columns"] == ["a", "c"]
    assert torch.equal(load(p, context="a,c").x[:, 0], torch.tensor([2.0, 5.0, 8.0]))
    assert torch.equal(load(p, context=[0, 2]).context, load(p, context="a,c").context)
    with pytest.raises(ValueError, match="unknown context column 'z'"):
        load(p, context="z")
    with pytest.raises(ValueError, match="at least one must remain"):
        load(p, context="a,b,c")


def test_csv_without_header_and_other_delimiters(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1.5;2\n-3e-1;4\n")
    ds = load(p)
    assert ds.x.shape == (2, 2) and ds.meta["columns"] == ["0", "1"]
    assert torch.allclose(ds.x, torch.tensor([[1.5, 2.0], [-0.3, 4.0]]))
    t = tmp_path / "d.tsv"
    t.write_text("x\ty\n1\t2\n3\t4\n")
    assert load(t).meta["columns"] == ["x", "y"]
    w = tmp_path / "d.txt"
    w.write_text("# comment\n1 2  3\n4   5 6\n\n")
    assert torch.equal(load(w).x, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    q = tmp_path / "q.csv"
    q.write_text('"u","v"\n1,2\n')
    assert load(q).meta["columns"] == ["u", "v"]


def test_csv_nan_and_bad_values(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("a,b\n1,2\n3,nan\n5,inf\n")
    with pytest.raises(ValueError, match=r"2 non-finite.*row 1 \(line 3\), column 1 \('b'\)"):
        load(p)
    e = tmp_path / "empty.csv"
    e.write_text("a,b\n1,2\n3,\n")
    with pytest.raises(ValueError, match="line 3, column 1.*empty field"):
        load(e)
    s = tmp_path / "str.csv"
    s.write_text("a,b\n1,2\n3,cat\n")
    with pytest.raises(ValueError, match="non-numeric value 'cat'"):
        load(s)
    r = tmp_path / "ragged.csv"
    r.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="line 2"):
        load(r)


def test_npy_and_npz(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.save(tmp_path / "a.npy", x)
    ds = load(tmp_path / "a.npy", context=[2])
    assert ds.x.shape == (20, 2) and ds.context.shape == (20, 1)
    assert np.allclose(ds.context[:, 0].numpy(), x[:, 2])
    y = np.arange(20) % 4
    np.savez(tmp_path / "b.npz", x=x, y=y)
    ds = load(tmp_path / "b.npz", context="label")
    assert ds.x.shape == (20, 3) and ds.context.shape == (20, 4)
    assert torch.equal(ds.context.argmax(1), torch.as_tensor(y))
    np.savez(tmp_path / "c.npz", data=x, context=x[:, :2])
    assert load(tmp_path / "c.npz", context="label").context.shape == (20, 2)
    np.savez(tmp_path / "d.npz", whatever=x)
    assert load(tmp_path / "d.npz").x.shape == (20, 3)
    np.savez(tmp_path / "e.npz", p=x, q=x)
    with pytest.raises(ValueError, match="'x' or 'data'"):
        load(tmp_path / "e.npz")
    with pytest.raises(ValueError, match="context='label' needs"):
        load(tmp_path / "a.npy", context="label")
    imgs = np.zeros((5, 8, 8))
    np.save(tmp_path / "img.npy", imgs)
    assert load(tmp_path / "img.npy").x.shape == (5, 1, 8, 8)
    bad = x.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"1 non-finite.*row 3, column 1"):
        load(tmp_path / "bad.npy")


def test_lazy_module_access():
    assert pf.data.load is load
