"""Glow family: squeeze, 1x1 conv, bits per dim, the image model end to end (8x8 digits)."""

from __future__ import annotations

import math

import pytest
import torch

import pushforward as pf
from pushforward.flows import GlowFlow
from pushforward.transforms.glow import (
    ActNorm2d,
    InvertibleConv1x1,
    MultiScaleGlow,
    Squeeze,
    default_levels,
    squeeze2d,
    unsqueeze2d,
)
from pushforward.transforms.preprocess import Logit, ScaleToUnit, bits_per_dim, uniform_dequantize

LOG2_17 = math.log2(17)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convolutions gain nothing from threads, and on a shared 2-core machine two threads
    # made the training test ~25x slower (measured 42 s vs 1.7 s for 50 steps).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None]  # [1797, 1, 8, 8], 0..16


def _digits_model(**kw) -> GlowFlow:
    torch.manual_seed(0)
    opts = {"num_bins": 17, "hidden_channels": 32, "steps_per_level": 2, **kw}
    return pf.build("glow", image_shape=(1, 8, 8), **opts)


# ------------------------------------------------------------------------- squeeze
def test_squeeze_is_the_documented_permutation():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    z, ladj = Squeeze()(x)
    assert z.shape == (2, 12, 2, 3)
    assert torch.equal(ladj, torch.zeros(2, dtype=torch.float64))
    # A permutation: the same multiset of values, and each one where the docstring says.
    assert torch.equal(z.flatten().sort().values, x.flatten().sort().values)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(unsqueeze2d(z), x)
    assert torch.equal(Squeeze().inverse(z)[0], x)


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        squeeze2d(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        squeeze2d(torch.zeros(1, 16))


# ------------------------------------------------------------------------- 1x1 conv
def test_invconv_logdet_is_hw_logabsdet_of_its_matrix():
    torch.manual_seed(3)
    conv = InvertibleConv1x1(5).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = conv.weight()
    x = torch.randn(3, 5, 4, 7, dtype=torch.float64)
    z, ladj = conv(x)
    expected = 4 * 7 * torch.linalg.slogdet(w)[1]
    assert torch.allclose(ladj, expected.expand(3), atol=1e-10)
    assert torch.allclose(z, torch.einsum("ij,njhw->nihw", w, x), atol=1e-12)
    assert torch.allclose(conv.inverse_weight() @ w, torch.eye(5, dtype=torch.float64), atol=1e-10)


def test_invconv_starts_as_a_rotation():
    conv = InvertibleConv1x1(6, generator=torch.Generator().manual_seed(0))
    w = conv.weight()
    assert torch.allclose(w @ w.T, torch.eye(6), atol=1e-5)
    assert abs(float(conv.log_s.detach().sum())) < 1e-5


def test_actnorm_initialises_to_unit_statistics_once():
    x = 3.0 + 2.0 * torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    act = ActNorm2d(4)
    assert not bool(act.initialized)
    z = act.initialize(x)
    assert bool(act.initialized)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)
    fresh = ActNorm2d(4)
    fresh.load_state_dict(act.state_dict())
    assert bool(fresh.initialized)


# ------------------------------------------------------------------------- preprocessing, bpd
def test_bits_per_dim_hand_computation():
    d = 64
    uniform = torch.full((3,), -d * math.log(17.0))  # uniform density over 17 unit-wide bins
    assert torch.allclose(bits_per_dim(uniform, d), torch.full((3,), LOG2_17), atol=1e-6)
    # The same uniform model in [0, 1] units (bins of width 1/16) has density 16^D / 17^D.
    w = 1 / 16
    uniform01 = torch.full((3,), -d * math.log(17.0 * w))
    assert torch.allclose(bits_per_dim(uniform01, d, bin_width=w), torch.full((3,), LOG2_17), atol=1e-6)
    assert float(bits_per_dim(torch.tensor([-100.0]), 64)) == pytest.approx(100 / (64 * math.log(2)), rel=1e-6)
    with pytest.raises(ValueError):
        bits_per_dim(uniform, 0)


def test_scale_and_logit_chain_log_det_closed_form():
    x = torch.tensor([[[[0.0, 16.0], [3.0, 8.0]]]], dtype=torch.float64)
    p, l1 = ScaleToUnit(17)(x)
    assert torch.allclose(p, (x + 0.5) / 17)
    y, l2 = Logit(0.05)(p)
    s = 0.05 + 0.9 * p
    assert torch.allclose(y, torch.log(s / (1 - s)))
    expected = (-math.log(17) + math.log(0.9) - torch.log(s * (1 - s))).sum()
    assert torch.allclose(l1 + l2, expected.expand(1), atol=1e-12)


def test_uniform_dequantize_stays_in_bins():
    x = torch.randint(0, 17, (500, 1, 8, 8))
    v = uniform_dequantize(x, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.get_default_dtype()
    assert torch.equal(torch.round(v), x.to(v.dtype))
    assert float((v - x).abs().max()) <= 0.5


# ------------------------------------------------------------------------- the model
def test_glow_model_shapes_and_sampling_range(digits):
    model = _digits_model()
    model.initialize(digits[:256])
    lp = model.log_prob(digits[:10])
    assert lp.shape == (10,) and torch.isfinite(lp).all()
    # log_prob is deterministic even in train mode; only loss adds noise, and only in train mode.
    model.train()
    assert torch.equal(model.log_prob(digits[:10]), lp)
    assert model.loss(digits[:32]).item() != model.loss(digits[:32]).item()
    model.eval()
    assert model.loss(digits[:32]).item() == model.loss(digits[:32]).item()
    with torch.no_grad():
        s = model.sample(16, generator=torch.Generator().manual_seed(0))
        q = model.sample(16, quantize=True, temperature=0.7)
    assert s.shape == (16, 1, 8, 8)
    assert float(s.min()) >= 0.0 and float(s.max()) <= 16.0
    assert torch.equal(q, torch.round(q)) and float(q.min()) >= 0 and float(q.max()) <= 16


def test_glow_log_prob_is_a_normalised_density():
    # D = 4, two levels per pixel: integrate exp(log_prob) over the support box by Monte Carlo.
    torch.manual_seed(0)
    model = pf.build("glow", image_shape=(1, 2, 2), num_bins=2, hidden_channels=8, steps_per_level=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lo, hi = model._support
    g = torch.Generator().manual_seed(0)
    x = lo + (hi - lo) * torch.rand(200_000, 1, 2, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        density = torch.exp(model.log_prob(x))
    assert float(density.max() / density.min()) > 10  # not trivially flat
    # Measured over 6 seeds: within 0.003 of 1 (standard error about 0.004).
    assert float(density.mean()) * (hi - lo) ** 4 == pytest.approx(1.0, abs=0.02)
    # Outside the support the density is zero.
    out = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    out[0, 0, 0, 0] = hi + 0.1
    assert float(model.log_prob(out).detach()) == -math.inf


def test_short_training_lowers_bits_per_dim(digits):
    model = _digits_model()
    evalset = digits[:400]
    model.initialize(digits[:256])
    model.eval()
    with torch.no_grad():
        before = model.bits_per_dim(evalset, dequantize=True, generator=torch.Generator().manual_seed(1)).mean()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss = model.loss(digits[torch.randint(0, len(digits), (64,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model.bits_per_dim(evalset, dequantize=True, generator=torch.Generator().manual_seed(1)).mean()
    # Measured: about 3.74 -> 2.41 bits/dim (uniform over the 17 levels: 4.09).
    assert float(after) < float(before) - 0.8, (float(before), float(after))
    assert float(after) < LOG2_17 - 1.0, float(after)
    # The dequantized bound is above the mid-bin value on average, and loss reports bits/dim.
    with torch.no_grad():
        mid_bin = float(model.bits_per_dim(evalset).mean())
        assert mid_bin < float(after)
        assert model.loss(evalset).item() == pytest.approx(mid_bin, rel=1e-5)


def test_first_training_loss_initialises_actnorm(digits):
    model = _digits_model()
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm2d)]
    assert not any(bool(a.initialized) for a in actnorms)
    model.eval()
    model.loss(digits[:64])
    assert not any(bool(a.initialized) for a in actnorms)  # eval mode never initialises
    model.train()
    model.loss(digits[:64])
    assert all(bool(a.initialized) for a in actnorms)
    before = [a.loc.detach().clone() for a in actnorms]
    model.loss(digits[64:128] + 0.0)
    assert all(torch.equal(a.loc, b) for a, b in zip(actnorms, before))


def test_save_load_gives_identical_log_prob(digits, tmp_path):
    model = _digits_model(context_dim=0)
    model.train()
    model.loss(digits[:64])  # initialises ActNorm
    model.eval()
    path = tmp_path / "glow.pt"
    pf.save(model, path)
    loaded = pf.load(path)
    loaded.eval()
    assert isinstance(loaded, GlowFlow)
    assert torch.equal(loaded.log_prob(digits[:20]), model.log_prob(digits[:20]))
    loaded.train()
    loaded.loss(digits[100:164])  # must not re-initialise ActNorm
    loaded.eval()
    assert torch.equal(loaded.log_prob(digits[:20]), model.log_prob(digits[:20]))


def test_unit_range_data_gives_same_bits_per_dim(digits):
    a = _digits_model()
    b = _digits_model(unit_range=True)
    a.initialize(digits[:256])
    b.load_state_dict(a.state_dict())
    x = digits[:16]
    la, lb = a.log_prob(x), b.log_prob(x / 16)
    # Same model, data in units 16x smaller: log-density larger by D log 16.
    assert torch.allclose(lb - la, torch.full((16,), 64 * math.log(16.0)), atol=1e-3)
    assert torch.allclose(a.bits_per_dim(x), b.bits_per_dim(x / 16), atol=1e-5)
    s = b.sample(8).detach()
    assert float(s.min()) >= 0 and float(s.max()) <= 1


def test_conditional_glow_uses_context(digits):
    model = _digits_model(context_dim=10)
    labels = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    model.train()
    model.loss(digits[:8], labels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    lp1 = model.log_prob(digits[:8], labels)
    lp2 = model.log_prob(digits[:8], labels.roll(1, dims=1))
    assert not torch.allclose(lp1, lp2)
    assert model.sample(8, labels).shape == (8, 1, 8, 8)
    with pytest.raises(ValueError, match=r"context of shape \[N, 10\]"):
        model.log_prob(digits[:8])


# ------------------------------------------------------------------------- errors and shapes
def test_wrong_inputs_give_clear_errors(digits):
    model = _digits_model()
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\].*reshape"):
        model.log_prob(digits[:4].reshape(4, 64))
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        model.loss(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="num_bins"):
        model.loss(digits[:4] * 16)  # 0..256 data into a 17-level model
    with pytest.raises(ValueError, match="image_shape"):
        pf.build("glow", dim=64)
    with pytest.raises(ValueError, match="divisible by 2"):
        pf.build("glow", image_shape=(1, 8, 8), levels=4)
    with pytest.raises(ValueError, match="even"):
        pf.build("glow", image_shape=(1, 7, 7))
    with pytest.raises(ValueError, match="dim=10"):
        pf.build("glow", dim=10, image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="num_bins"):
        pf.build("glow", image_shape=(1, 8, 8), num_bins=1)
    with pytest.raises(ValueError, match="alpha"):
        pf.build("glow", image_shape=(1, 8, 8), alpha=0.0)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 16, 16), (3, 32, 32)])
def test_builds_for_common_shapes(shape):
    torch.manual_seed(0)
    model = pf.build("glow", image_shape=shape, steps_per_level=1, hidden_channels=16)
    assert model.standardize_by_default is False
    assert model.config["image_shape"] == shape
    x = torch.randint(0, 256, (2, *shape)).float()
    lp = model.log_prob(x)
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    assert model.sample(2).shape == (2, *shape)


def test_default_levels():
    assert [default_levels(8, 8), default_levels(16, 16), default_levels(32, 32), default_levels(4, 4)] == [2, 3, 3, 1]
    assert default_levels(7, 7) == 0
    assert MultiScaleGlow((1, 8, 8), levels=2).num_levels == 2
