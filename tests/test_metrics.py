"""pushforward.metrics against closed forms."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import pushforward as pf
from pushforward.data import Dataset, get_target, load
from pushforward.metrics import bits_per_dim, energy_distance, evaluate, kl, mmd, nll, sliced_w2, w2
from pushforward.transforms.base import FixedAffine


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


class Wrapper(torch.nn.Module):
    """A model that *is* a given target: log_prob and sample delegate to it."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def log_prob(self, x, context=None):
        return self.target.log_prob(x)

    def sample(self, n, context=None, generator=None):
        return self.target.sample(n, generator=generator)


class SampleOnly(torch.nn.Module):
    """No likelihood, counts function evaluations like an ODE model."""

    def __init__(self, shape=(2,)):
        super().__init__()
        self.shape = shape
        self.nfe = 0

    def log_prob(self, x, context=None):
        raise NotImplementedError

    def sample(self, n, context=None, generator=None):
        self.nfe += 17
        return torch.randn(n, *self.shape, generator=generator)


class Conditional(torch.nn.Module):
    """x | c ~ N(3 c, 0.1^2 I): sample one point per context row."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.shift = shift
        self.context_dim = 2

    def log_prob(self, x, context=None):
        return torch.distributions.Normal(3 * context + self.shift, 0.1).log_prob(x).sum(-1)

    def sample(self, n, context=None, generator=None):
        return 3 * context + self.shift + 0.1 * torch.randn(n, 2, generator=generator)


def gaussian_flow(loc, scale):
    """A NormalizingFlow N(loc, diag(scale^2)) (one fixed affine layer)."""
    loc, scale = torch.as_tensor(loc), torch.as_tensor(scale)
    return pf.NormalizingFlow([FixedAffine(loc, scale)], pf.distributions.StandardNormal(loc.shape[0]))


# --------------------------------------------------------------------------- W2
def test_w2_gaussians_exact_matches_closed_form():
    # W2^2(N(0, I), N(m, s^2 I)) = |m|^2 + d (1 - s)^2
    m, s = torch.tensor([1.0, 2.0]), 0.5
    x = torch.randn(1000, 2, generator=_g(0))
    y = torch.randn(1000, 2, generator=_g(1)) * s + m
    assert w2(x, y) == pytest.approx(math.sqrt(5.0 + 2 * 0.25), abs=0.08)


def test_w2_of_a_set_with_itself_is_zero_and_symmetric():
    x = torch.randn(300, 3, generator=_g(0))
    y = torch.randn(200, 3, generator=_g(1)) + 1
    assert w2(x, x) == pytest.approx(0.0, abs=1e-7)
    assert w2(x, y) == pytest.approx(w2(y, x), rel=1e-9)
    assert w2(x, x[torch.randperm(300, generator=_g(2))]) == pytest.approx(0.0, abs=1e-7)


def test_w2_1d_exact_any_size():
    # W2(N(0,1), N(2, 0.5^2)) = sqrt(4 + 0.25), even beyond max_exact (sorted quantiles)
    x = torch.randn(20_000, 1, generator=_g(0))
    y = 2 + 0.5 * torch.randn(20_000, 1, generator=_g(1))
    assert w2(x, y, max_exact=100) == pytest.approx(math.sqrt(4.25), abs=0.03)
    import ot

    a, b = x[:300].double().numpy(), y[:170].double().numpy()  # unequal sizes vs POT's simplex
    ref = math.sqrt(ot.emd2(np.full(300, 1 / 300), np.full(170, 1 / 170), ot.dist(a, b)))
    assert w2(x[:300], y[:170]) == pytest.approx(ref, rel=1e-9)


def test_sliced_beyond_max_exact():
    # a pure shift by m: each projection's W2 is |theta . m|, so SW2 = |m| / sqrt(d)
    x = torch.randn(400, 2, generator=_g(0))
    m = torch.tensor([3.0, -4.0])
    assert w2(x, x + m, max_exact=100) == pytest.approx(5.0 / math.sqrt(2), rel=0.08)
    assert w2(x, x + m, max_exact=100) == sliced_w2(x, x + m)
    assert w2(x, x + m) == pytest.approx(5.0, rel=1e-6)  # exact path: W2 of a shift is |m|


# --------------------------------------------------------------------------- MMD / energy
def test_mmd_closed_form_and_zero():
    # Gaussians N(0, I), N(delta, I), one RBF kernel of bandwidth h in d = 2:
    # MMD^2 = 2 c (1 - exp(-|delta|^2 / (2 (h^2 + 2)))) with c = h^2 / (h^2 + 2)
    h, d2 = 1.0, 1.0
    x = torch.randn(1500, 2, generator=_g(0))
    y = torch.randn(1500, 2, generator=_g(1)) + torch.tensor([1.0, 0.0])
    c = h * h / (h * h + 2)
    exact = 2 * c * (1 - math.exp(-d2 / (2 * (h * h + 2))))
    assert mmd(x, y, bandwidths=[h]) == pytest.approx(exact, abs=0.015)
    same = mmd(x, torch.randn(1500, 2, generator=_g(2)))
    assert abs(same) < 0.005
    assert mmd(x, y) > 20 * abs(same)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, y, kernel="laplace")


def test_energy_distance_closed_form_1d():
    # X ~ N(0,1), Y ~ N(1,1): E|X-Y| with X-Y ~ N(-1, 2); E|X-X'| = 2 / sqrt(pi)
    sz, delta = math.sqrt(2.0), 1.0
    e_xy = sz * math.sqrt(2 / math.pi) * math.exp(-(delta**2) / (2 * sz * sz)) + delta * (1 - 2 * norm.cdf(-delta / sz))
    exact = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    x = torch.randn(3000, 1, generator=_g(0))
    y = torch.randn(3000, 1, generator=_g(1)) + delta
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.03)
    assert abs(energy_distance(x, torch.randn(3000, 1, generator=_g(2)))) < 0.01


# --------------------------------------------------------------------------- likelihood and KL
def test_nll_and_bits_per_dim():
    flow = gaussian_flow([1.0, -1.0], [2.0, 0.5])
    x = torch.randn(1000, 2, generator=_g(0))
    ref = -torch.distributions.Normal(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])).log_prob(x).sum(-1).mean()
    assert nll(flow, x) == pytest.approx(float(ref), rel=1e-5)
    assert nll(flow, x, batch_size=7) == pytest.approx(nll(flow, x), rel=1e-6)
    assert bits_per_dim(2.0 * math.log(2), 2) == pytest.approx(1.0)


def test_kl_of_target_with_itself_is_zero_and_gaussian_closed_form():
    t = get_target("gauss1d")
    assert kl(t, Wrapper(t)) == pytest.approx(0.0, abs=1e-6)  # float32 vs float64 log_prob
    # KL(N(2, .5^2) || N(2, 1)) = log 2 + 0.25 / 2 - 1/2
    q = gaussian_flow([2.0], [1.0])
    assert kl(t, q, n=20_000) == pytest.approx(math.log(2) + 0.125 - 0.5, abs=0.01)
    ring = get_target("ring")
    assert kl(ring, Wrapper(ring), n=500) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_model_equal_to_target():
    ds = load("gauss1d", n=3000)
    flow = gaussian_flow([2.0], [0.5])
    flow.train()
    res = evaluate(flow, ds, n_samples=1000)
    assert set(res) >= {"nll", "bpd", "w2", "mmd", "energy", "kl", "sample_time_s"}
    assert "nfe" not in res
    json.dumps(res)
    assert all(isinstance(v, float) for v in res.values())
    entropy = 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert res["nll"] == pytest.approx(entropy, abs=0.04)
    assert res["bpd"] == pytest.approx(res["nll"] / math.log(2))
    assert abs(res["kl"]) < 1e-5
    assert res["w2"] < 0.08 and abs(res["mmd"]) < 0.01
    assert flow.training  # mode restored
    bad = evaluate(gaussian_flow([0.0], [1.0]), ds, n_samples=1000)
    assert bad["kl"] > 0.5 and bad["w2"] > 1.5 and bad["mmd"] > 0.1 and bad["nll"] > res["nll"] + 0.5


def test_evaluate_without_log_prob_reports_nfe():
    x = torch.randn(500, 2, generator=_g(0))
    res = evaluate(SampleOnly(), x, n_samples=300)
    assert "nll" not in res and "bpd" not in res
    assert res["nfe"] == 17.0
    assert res["w2"] < 0.4


def test_evaluate_conditional_uses_data_contexts():
    c = torch.randn(600, 2, generator=_g(0))
    x = 3 * c + 0.1 * torch.randn(600, 2, generator=_g(1))
    ds = Dataset(x, c, "cond")
    good, off = evaluate(Conditional(), ds, n_samples=400), evaluate(Conditional(shift=1.0), ds, n_samples=400)
    assert good["w2"] < 0.3 < 0.9 < off["w2"]
    assert good["nll"] < off["nll"]


def test_evaluate_images_flattened():
    ds = load("digits8x8", n=200)
    res = evaluate(SampleOnly((1, 8, 8)), ds.x, n_samples=100)
    assert res["w2"] > 10 and res["mmd"] > 0.1  # noise is far from digits


def test_evaluate_nonfinite_samples_reported():
    class Broken(SampleOnly):
        def sample(self, n, context=None, generator=None):
            s = super().sample(n, generator=generator)
            return torch.where(torch.arange(n)[:, None] % 4 == 0, torch.nan, s)

    res = evaluate(Broken(), torch.randn(400, 2, generator=_g(0)), n_samples=200)
    assert res["nonfinite_frac"] == pytest.approx(0.25)
    assert math.isfinite(res["w2"])


def test_lazy_evaluate_export():
    assert pf.evaluate is evaluate
