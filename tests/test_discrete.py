"""Discrete flow matching: mixture paths, the path ELBO (bound and tightness), the jump sampler,
the model contract on LongTensor data, guidance, and the sequence data generators."""

from __future__ import annotations

import io
import math
from itertools import product

import pytest
import torch

import pushforward as pf
from pushforward.data.sequences import MarkovChainTarget, docstring_text, quantized_digits, zen_text
from pushforward.discrete import MixturePath, path_elbo

D64 = torch.float64
K, L = 3, 2


def _q():
    """A fixed joint distribution on {0,1,2}^2 (not a product: the positions are dependent)."""
    q = torch.tensor([[0.30, 0.05, 0.02], [0.03, 0.20, 0.05], [0.10, 0.05, 0.20]], dtype=D64)
    return q / q.sum()


ALL = torch.tensor(list(product(range(K), repeat=L)))  # [9, 2], row-major like _q().reshape(-1)


def _exact_denoiser(path: MixturePath, q: torch.Tensor):
    """The true posterior marginals ``p(x_1^i | x_t)`` of the data ``q`` under ``path``."""
    qf = q.reshape(-1)

    def den(xt, t):
        kap = path.scheduler.kappa(t.to(D64))[:, None, None]  # [N, 1, 1]
        eye = torch.eye(K, path.vocab, dtype=D64)
        src = torch.zeros(K, path.vocab, dtype=D64)
        if path.source == "mask":
            src[:, K] = 1.0
        else:
            src[:, :K] = 1.0 / K
        M = kap * eye + (1 - kap) * src  # [N, K, V]: p(x_t^i = v | x_1^i)
        w = qf.expand(xt.shape[0], -1).clone()
        for i in range(L):
            w = w * M[:, ALL[:, i], :].gather(-1, xt[:, i, None, None].expand(-1, ALL.shape[0], 1)).squeeze(-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.stack([torch.zeros(xt.shape[0], K, dtype=D64).index_add_(1, ALL[:, i], w) for i in range(L)], 1)
        return out.clamp_min(1e-300).log()

    return den


def _chain_terminal(path: MixturePath, den, steps: int) -> torch.Tensor:
    """The exact distribution of the jump sampler's output over {0..K-1}^L (all states enumerated)."""
    states = torch.tensor(list(product(range(path.vocab), repeat=L)))
    index = {tuple(s.tolist()): j for j, s in enumerate(states)}
    p = torch.zeros(len(states), dtype=D64)
    if path.source == "mask":
        p[index[(K,) * L]] = 1.0
    else:
        for s in ALL:
            p[index[tuple(s.tolist())]] = 1.0 / K**L
    ts = torch.linspace(0, 1, steps + 1, dtype=D64)
    kap = path.scheduler.kappa(ts)
    for k in range(steps):
        jump = float((kap[k + 1] - kap[k]) / (1 - kap[k])) if k < steps - 1 else 1.0
        pr = den(states, ts[k].expand(len(states))).exp()  # [S, L, K]
        pr = torch.cat([pr, torch.zeros(len(states), L, path.vocab - K, dtype=D64)], -1)
        stay = torch.nn.functional.one_hot(states, path.vocab).to(D64)
        per = (1 - jump) * stay + jump * pr  # [S, L, V]: per-position transition
        T = torch.stack([per[:, i][:, states[:, i]] for i in range(L)]).prod(0)  # [S, S']
        p = p @ T
    return torch.stack([p[index[tuple(s.tolist())]] for s in ALL])


# ------------------------------------------------------------------ paths and schedulers
@pytest.mark.parametrize("scheduler", ["linear", "kinetic"])
def test_schedulers_run_from_source_to_data_and_invert(scheduler):
    path = MixturePath(K, "mask", scheduler)
    t = torch.linspace(0, 1, 11, dtype=D64)
    k = path.scheduler.kappa(t)
    assert float(k[0]) == 0 and abs(float(k[-1]) - 1) < 1e-12 and bool((k.diff() > 0).all())
    assert torch.allclose(path.scheduler.t_of_kappa(k), t, atol=1e-7)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_path_samples_match_their_marginals(source):
    path = MixturePath(4, source, "kinetic")
    x1 = torch.tensor([[0, 3, 1]]).expand(40000, 3)
    kap = torch.full((40000,), 0.3, dtype=D64)
    xt = path.sample_xt(x1, kap, torch.Generator().manual_seed(0))
    freq = torch.nn.functional.one_hot(xt, path.vocab).double().mean(0)
    assert torch.allclose(freq, path.position_probs(x1[:1], kap[:1])[0], atol=0.012)


# ------------------------------------------------------------------ the ELBO on a closed form
def test_elbo_is_tight_for_the_masked_source_with_the_true_posterior():
    q = _q()
    for scheduler in ("linear", "kinetic"):
        path = MixturePath(K, "mask", scheduler)
        elbo = path_elbo(path, _exact_denoiser(path, q), ALL, times=4, samples=None)
        # the integrand is a polynomial of degree L - 1 in kappa: 4 Gauss nodes are exact
        torch.testing.assert_close(elbo, q.reshape(-1).log(), atol=1e-10, rtol=0)


def test_elbo_is_a_strict_bound_for_the_uniform_source_with_the_true_posterior():
    q = _q()
    path = MixturePath(K, "uniform", "linear")
    den = _exact_denoiser(path, q)
    elbo = path_elbo(path, den, ALL, times=48, samples=None)
    gap = q.reshape(-1).log() - elbo
    assert bool((gap > 1e-3).all()) and float(gap.max()) < 1.5, gap
    # the sampler with the true posterior reproduces q (up to the step error of the factorised jumps)
    p1 = _chain_terminal(path, den, steps=400)
    assert (p1 - q.reshape(-1)).abs().max() < 5e-3, p1


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_elbo_bounds_the_exact_likelihood_of_a_random_network(source):
    torch.manual_seed(0)
    model = pf.build("discrete-fm", dim=L, num_categories=K, source=source, hidden=(32,)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
        den = lambda xt, t: model.log_denoiser(xt, t)  # noqa: E731
        p1 = _chain_terminal(model.path, den, steps=800)  # the model's own distribution
        assert abs(float(p1.sum()) - 1) < 1e-10
        elbo = model.log_prob(ALL, times=48, samples=None)
    assert bool((elbo <= p1.log() + 2e-3).all()), (elbo, p1.log())


def test_monte_carlo_elbo_agrees_with_the_exact_sum():
    torch.manual_seed(0)
    model = pf.build("discrete-fm", dim=L, num_categories=K, hidden=(32,)).double().eval()
    x = ALL[[0, 4, 8]]
    with torch.no_grad():
        exact = model.log_prob(x, times=8, samples=None)
        mc = model.log_prob(x, times=8, samples=4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mc, exact, atol=0.03), (mc, exact)


def test_the_sampler_with_the_true_posterior_reproduces_the_data():
    q = _q()
    model = pf.build("discrete-fm", dim=L, num_categories=K, source="mask", scheduler="linear").double()
    model.log_denoiser = lambda xt, t, context=None, guidance=None: _exact_batched(model, q, xt, t)  # noqa: E731
    s = model.sample(20000, generator=torch.Generator().manual_seed(0), steps=50)
    assert s.dtype == torch.long and s.shape == (20000, L)
    freq = torch.zeros(K**L, dtype=D64).index_add_(0, s[:, 0] * K + s[:, 1], torch.ones(20000, dtype=D64)) / 20000
    se = (q.reshape(-1) * (1 - q.reshape(-1)) / 20000).sqrt()
    assert bool(((freq - q.reshape(-1)).abs() < 4 * se + 1e-2).all()), (freq, q.reshape(-1))


def _exact_batched(model, q, xt, t):
    t = torch.as_tensor(t, dtype=D64).expand(xt.shape[0])
    return _exact_denoiser(model.path, q)(xt, t)


# ------------------------------------------------------------------ the contract
def _make(context_dim=0, **kw):
    torch.manual_seed(0)
    return pf.build("discrete-fm", dim=4, num_categories=5, context_dim=context_dim, hidden=(32, 32), **kw).double()


def _tokens(n=8, seed=3):
    return torch.randint(0, 5, (n, 4), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_shapes_dtypes_and_reproducible_sampling(source):
    model = _make(source=source)
    lp = model.log_prob(_tokens(), generator=torch.Generator().manual_seed(0))
    assert lp.shape == (8,) and lp.dtype == D64 and torch.isfinite(lp).all() and bool((lp < 0).all())
    s = model.sample(6, generator=torch.Generator().manual_seed(1), steps=8)
    assert s.dtype == torch.long and s.shape == (6, 4) and int(s.min()) >= 0 and int(s.max()) < 5
    assert torch.equal(s, model.sample(6, generator=torch.Generator().manual_seed(1), steps=8))


def test_every_parameter_gets_a_gradient_and_fit_trains_it():
    model = _make(context_dim=2, cond_drop=0.2).train()
    c = torch.randn(64, 2, dtype=D64)
    torch.manual_seed(1)
    model.loss(_tokens(64), c).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    hist = pf.fit(_make(), _tokens(200), steps=3, batch_size=32, progress=False)
    assert hist is not None


def test_save_load_round_trip(tmp_path):
    model = _make().eval()
    x = _tokens()
    with torch.no_grad():
        lp = model.log_prob(x, samples=None, times=4)
    pf.save(model, tmp_path / "m.pt")
    again = pf.load(tmp_path / "m.pt")
    assert type(again) is type(model) and next(again.parameters()).dtype == D64
    with torch.no_grad():
        assert torch.allclose(again.log_prob(x, samples=None, times=4), lp, atol=1e-10)
    buf = io.BytesIO()
    torch.save(model, buf)
    (tmp_path / "w.pt").write_bytes(buf.getvalue())
    with torch.no_grad():
        assert torch.allclose(pf.load(tmp_path / "w.pt").log_prob(x, samples=None, times=4), lp, atol=1e-10)


def test_context_and_classifier_free_guidance():
    model = _make(context_dim=3, cond_drop=0.1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _tokens(4)
    c = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model.log_prob(x, c, samples=None, times=4)
        assert not torch.allclose(a, model.log_prob(x, c + 1.0, samples=None, times=4))
        # guidance 1 is the conditional model; 0 the unconditional one (the null context)
        null = model.null_context.expand(4, -1)
        assert torch.allclose(model.log_prob(x, c, samples=None, times=4, guidance=0.0),
                              model.log_prob(x, null, samples=None, times=4), atol=1e-10)
        assert torch.allclose(model.log_prob(x, c, samples=None, times=4, guidance=1.0), a)
    assert model.sample(4, context=c, guidance=2.0, steps=4).shape == (4, 4)
    with pytest.raises(ValueError, match="context"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="context"):
        model.sample(4, context=c[:, :2])
    with pytest.raises(ValueError, match="cond_drop"):
        _make(context_dim=3).sample(2, context=c[:2], guidance=2.0)


@pytest.mark.parametrize("bad", ["float", "range", "negative", "shape", "rank", "bool"])
def test_bad_input_is_named(bad):
    model = _make()
    x = _tokens()
    x, match = {"float": (x.double(), "integer"), "range": (x + 5, "outside 0..4"),
                "negative": (x - 5, "outside 0..4"), "shape": (torch.cat([x, x], 1), "shape"),
                "rank": (x[0], "shape"), "bool": (x > 2, "integer")}[bad]
    with pytest.raises((ValueError, TypeError), match=match):
        model.log_prob(x)
    if bad != "float":  # loss also takes integer-valued floats (pf.fit casts batches)
        with pytest.raises((ValueError, TypeError), match=match):
            model.loss(x)
    with pytest.raises(TypeError, match="integer"):
        model.loss(x.double() + 0.5 if bad == "float" else torch.rand(8, 4, dtype=D64))


def test_options_are_checked():
    with pytest.raises(ValueError, match="num_categories"):
        pf.build("discrete-fm", dim=4, num_categories=1)
    with pytest.raises(ValueError, match="source"):
        pf.build("discrete-fm", dim=4, source="gaussian")
    with pytest.raises(ValueError, match="scheduler"):
        pf.build("discrete-fm", dim=4, scheduler="cosine")
    with pytest.raises(ValueError, match="cond_drop"):
        pf.build("discrete-fm", dim=4, cond_drop=0.1)


# ------------------------------------------------------------------ data
def test_markov_chain_target_is_normalised_and_matches_its_sampler():
    target = MarkovChainTarget(length=3, num_categories=3, seed=1)
    states = torch.tensor(list(product(range(3), repeat=3)))
    p = target.log_prob(states).exp()
    assert abs(float(p.sum()) - 1) < 1e-12
    assert math.isclose(target.entropy(), float(-(p * p.log()).sum()), rel_tol=1e-10)
    s = target.sample(30000, torch.Generator().manual_seed(0))
    freq = torch.zeros(27, dtype=D64).index_add_(0, s[:, 0] * 9 + s[:, 1] * 3 + s[:, 2], torch.ones(30000, dtype=D64))
    assert (freq / 30000 - p).abs().max() < 4 * math.sqrt(0.25 / 30000)


def test_digits_and_text_are_token_sequences():
    x, y = quantized_digits(levels=2)
    assert x.shape == (1797, 64) and x.dtype == torch.long and set(x.unique().tolist()) == {0, 1}
    assert y.shape == (1797,)
    t, vocab = zen_text(length=12, stride=4)
    assert t.dtype == torch.long and t.shape[1] == 12 and int(t.max()) < len(vocab)
    assert "".join(vocab[i] for i in t[0]) == "the zen of p"
    train, test, vocab = docstring_text(length=16, stride=16)
    assert len(vocab) == 32 and train.shape[1] == test.shape[1] == 16 and len(train) > 5 * len(test) > 0
    assert train.dtype == torch.long and int(max(train.max(), test.max())) < 32
    # windows are contiguous text: consecutive non-overlapping train windows join without a gap
    text = "".join(vocab[i] for i in train[:3].reshape(-1))
    assert "  " not in text and text == text.lower()
    with pytest.raises(ValueError, match="test_fraction"):
        docstring_text(test_fraction=1.0)


@pytest.mark.slow
def test_training_on_a_markov_chain_gets_close_to_its_entropy():
    torch.manual_seed(0)
    target = MarkovChainTarget(length=6, num_categories=4, seed=0)
    data = target.sample(8192, torch.Generator().manual_seed(0))
    model = pf.build("discrete-fm", dim=6, num_categories=4, hidden=(128, 128))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(500):
        opt.zero_grad()
        model.loss(data[torch.randint(0, 8192, (256,))]).backward()
        opt.step()
    test = target.sample(1000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        nelbo = -model.log_prob(test, samples=8, generator=torch.Generator().manual_seed(2)).mean()
    h = -target.log_prob(test).mean()
    # the negative ELBO bounds the model's NLL >= H; uniform would be 6 log 4 = 8.3 nats
    assert float(nelbo) > float(h) - 0.05 and float(nelbo - h) < 0.35, (float(nelbo), float(h))
