"""Simulation-based inference: simulators, Posterior (prior rejection, embeddings), diagnostics,
C2ST, the conditional flow-matching coupling default, the CLI context file and the sbi plug-in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward.data.simulators import GaussianMixture, LinearGaussian, TwoMoons, get_simulator
from pushforward.diagnostics import (
    expected_coverage,
    plot_sbc,
    posterior_draws,
    posterior_predictive,
    sbc_ranks,
    sbc_uniformity,
    tarp,
)
from pushforward.metrics import c2st
from pushforward.nets.embedding import Conv1dEmbedding, MLPEmbedding, SetEmbedding
from pushforward.posterior import Posterior, build_posterior, in_support


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- simulators
def test_linear_gaussian_posterior_matches_bayes_on_a_grid():
    task = LinearGaussian(dim=1, prior_scale=1.0, noise_scale=0.5)
    x_o = torch.tensor([0.7])
    grid = torch.linspace(-4, 4, 4001, dtype=torch.float64)[:, None]
    log_joint = task.prior.log_prob(grid.float()).double() + torch.distributions.Normal(grid[:, 0], 0.5).log_prob(x_o.double())
    post = torch.softmax(log_joint, 0)
    mean_grid = (post * grid[:, 0]).sum()
    std_grid = ((post * (grid[:, 0] - mean_grid) ** 2).sum()).sqrt()
    mean, std = task.posterior_params(x_o)
    assert float(mean) == pytest.approx(float(mean_grid), abs=1e-6)
    assert std == pytest.approx(float(std_grid), abs=1e-6)
    s = task.posterior_sample(x_o, 20000, gen())
    assert float(s.mean()) == pytest.approx(float(mean), abs=0.01)
    lp = task.posterior_log_prob(grid[1000:1003].float(), x_o)
    assert torch.allclose(lp.double(), (post[1000:1003] / (8 / 4000)).log(), atol=1e-3)


def test_two_moons_likelihood_integrates_to_one_and_matches_simulations():
    task = TwoMoons(grid=400)
    theta = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    h = 0.6 / 600
    c = torch.linspace(-0.3 + h / 2, 0.3 - h / 2, 600, dtype=torch.float64)
    off = task._offset(theta)[0]
    pts = torch.stack(torch.meshgrid(c + off[0] + 0.25, c + off[1], indexing="ij"), -1).reshape(-1, 2)
    mass = task.log_likelihood(theta.expand(pts.shape[0], 2), pts).exp().sum() * h * h
    assert float(mass) == pytest.approx(1.0, abs=0.01)
    x = task.simulate(theta.float().expand(20000, 2), gen())
    assert bool(torch.isfinite(task.log_likelihood(theta.float().expand(20000, 2), x)).all())
    # posterior on the grid: a distribution, its samples inside the prior box and bimodal (symmetry)
    pts, prob = task.posterior_grid(torch.zeros(2))
    assert float(prob.sum()) == pytest.approx(1.0, abs=1e-9)
    s = task.posterior_sample(torch.zeros(2), 5000, gen())
    assert bool((s.abs() <= 1).all())
    d = s[:, 0] + s[:, 1]
    assert 0.35 < float((d > 0).float().mean()) < 0.65


def test_gaussian_mixture_posterior_is_the_truncated_mixture():
    task = GaussianMixture()
    s = task.posterior_sample(torch.tensor([1.0, -2.0]), 40000, gen())
    assert torch.allclose(s.mean(0), torch.tensor([1.0, -2.0]), atol=0.03)
    assert torch.allclose(s.std(0), torch.full((2,), math.sqrt(0.5 + 0.5 * 0.01)), atol=0.02)
    edge = task.posterior_sample(torch.tensor([9.9, 0.0]), 2000, gen())
    assert bool((edge.abs() < 10).all())
    with pytest.raises(ValueError, match="unknown simulator"):
        get_simulator("nope")
    with pytest.raises(ValueError, match="2 values"):
        task.posterior_sample(torch.zeros(3), 5)


# ----------------------------------------------------------------------------- embeddings
def test_embedding_nets_shapes_invariance_and_errors():
    x = torch.randn(4, 7, 3)
    set_net = SetEmbedding(3, 5)
    assert set_net(x).shape == (4, 5)
    assert torch.allclose(set_net(x), set_net(x[:, torch.randperm(7)]), atol=1e-6)
    conv = Conv1dEmbedding(out_dim=6)
    assert conv(torch.randn(4, 50)).shape == (4, 6) and conv(torch.randn(4, 33)).shape == (4, 6)
    assert MLPEmbedding(10, 4)(torch.randn(3, 10)).shape == (3, 4)
    with pytest.raises(ValueError, match="SetEmbedding expects"):
        set_net(torch.randn(4, 3))
    with pytest.raises(ValueError, match="kernel must be odd"):
        Conv1dEmbedding(kernel=4)


# ----------------------------------------------------------------------------- Posterior
class Box:
    """A 'prior' given as a callable: the box [-0.5, 0.5]^2."""

    def __call__(self, theta):
        return (theta.abs() <= 0.5).all(-1)


def test_posterior_rejects_outside_the_prior_and_reports_the_accepted_fraction():
    torch.manual_seed(0)
    inner = pf.build("maf", dim=2, context_dim=1)
    raw = Posterior(inner)
    c = torch.zeros(1)
    free = raw.sample(40000, c, generator=gen(1))
    expected = float(Box()(free).float().mean())
    post = Posterior(inner, prior=Box())
    s = post.sample(3000, c, generator=gen(2))
    assert s.shape == (3000, 2) and bool(Box()(s).all())
    assert post.last_acceptance == pytest.approx(expected, abs=0.03)
    lp = post.log_prob(torch.tensor([[0.1, 0.1], [2.0, 0.0]]), torch.zeros(2, 1))
    assert torch.isfinite(lp[0]) and lp[1] == -math.inf
    # torch.distributions priors: the support decides
    uni = torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
    assert in_support(uni, torch.tensor([[0.0, 0.0], [1.5, 0.0]])).tolist() == [True, False]
    never = Posterior(inner, prior=lambda t: torch.zeros(t.shape[0], dtype=torch.bool), max_rounds=2)
    with pytest.raises(RuntimeError, match="outside the prior's support"):
        never.sample(10, c)


@pytest.mark.slow
def test_posterior_learns_the_conjugate_linear_gaussian_posterior():
    task = LinearGaussian(dim=2, noise_scale=0.5)
    theta, x = task.sample_joint(4000, gen())
    post = build_posterior("maf", 2, 2, prior=task.prior, hidden=(32, 32))
    pf.fit(post, theta, context=x, steps=300, seed=0, lr=3e-3)
    x_o = torch.tensor([0.8, -0.4])
    mean, std = task.posterior_params(x_o)
    with torch.no_grad():
        s = post.sample(8000, x_o, generator=gen(3))
    assert torch.allclose(s.mean(0).double(), mean, atol=0.08)
    assert torch.allclose(s.std(0).double(), torch.full((2,), std, dtype=torch.float64), rtol=0.15)
    assert bool(post.context_stats_set)  # z-scored from the first batch
    assert post.last_acceptance == 1.0  # an unbounded prior accepts everything


@pytest.mark.parametrize("name,net,obs_shape", [("nsf", "set", (6, 2)), ("fm", "conv1d", (16,)), ("realnvp", "mlp", (5,))])
def test_context_nets_train_jointly_with_every_kind_of_model(name, net, obs_shape, tmp_path):
    torch.manual_seed(0)
    post = build_posterior(name, 2, obs_shape, context_net=net, embed_dim=4)
    n = 64
    theta, x = torch.randn(n, 2), torch.randn(n, math.prod(obs_shape))
    post.initialize(theta, x)
    before = [p.detach().clone() for p in post.context_net.parameters()]
    opt = torch.optim.Adam(post.parameters(), lr=1e-2)
    for _ in range(4):  # flows start at the identity: the embedding gets gradients after a step
        opt.zero_grad()
        post.loss(theta, x).backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in post.context_net.parameters())
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, post.context_net.parameters()))
    # observations in their own shape work too, and a single observation is shared
    assert post.log_prob(theta[:3], x[:3].reshape(3, *obs_shape)).shape == (3,)
    assert post.sample(5, x[0].reshape(obs_shape)).shape == (5, 2)
    pf.save(post, tmp_path / "post.pt")
    back = pf.load(tmp_path / "post.pt")
    if name != "fm":
        assert torch.allclose(back.log_prob(theta[:3], x[:3]), post.log_prob(theta[:3], x[:3]), atol=1e-5)


def test_posterior_bad_input_errors():
    with pytest.raises(ValueError, match="conditional FlowModel"):
        Posterior(pf.build("maf", dim=2))
    with pytest.raises(ValueError, match="unknown context_net"):
        build_posterior("maf", 2, 4, context_net="transformer")
    with pytest.raises(ValueError, match="obs_shape"):
        build_posterior("maf", 2, 4, context_net="set")
    post = build_posterior("maf", 2, 3, context_net="mlp", embed_dim=4)
    with pytest.raises(ValueError, match="context must have shape"):
        post.log_prob(torch.zeros(2, 2), torch.zeros(2, 4))


def test_posterior_trains_with_the_wrapped_models_defaults():
    from pushforward.posterior import MATCHING_CONVERGENCE, MATCHING_POSTERIOR_LR
    nsf = build_posterior("nsf", 2, 3)
    # the bug: Posterior did not forward these, so pf.fit used its generic batch 256 for an nsf
    assert nsf.default_batch_size == nsf.model.default_batch_size == 512
    assert nsf.default_lr == nsf.model.default_lr
    for name in ("fm", "ot-fm"):
        post = build_posterior(name, 2, 3)
        assert post.default_lr == MATCHING_POSTERIOR_LR
        assert post.default_convergence == MATCHING_CONVERGENCE  # longer epochs: see its comment
        assert post.default_batch_size == post.model.default_batch_size
    assert nsf.default_convergence["epoch_rows"] == 10_000 and MATCHING_CONVERGENCE["epoch_rows"] == 50_000
    assert pf.build("fm", dim=2).default_lr == 1e-3  # unconditional models keep their own


def test_posterior_fit_without_a_budget_converges_and_keeps_the_best_weights():
    from pushforward.posterior import CONVERGENCE
    task = LinearGaussian(dim=2)
    theta, x = task.sample_joint(60, gen(0))
    val = task.sample_joint(40, gen(1))
    torch.manual_seed(0)
    post = build_posterior("nsf", 2, 2, hidden=(32, 32), transforms=2)
    assert post.default_convergence["epoch_rows"] == 10_000
    post.default_convergence = dict(CONVERGENCE, epoch_rows=60)  # an epoch of 60 rows: 3 steps
    # no budget: train until 20 epochs bring no better validation loss
    h = pf.fit(post, theta, context=x, val_data=val, batch_size=20, lr=1e-2)
    assert h.stopped_reason == "early_stopping"
    assert h.elapsed < CONVERGENCE["max_time"] and h.steps < 2000
    assert h.steps - h.best_step >= CONVERGENCE["patience"] * 3 and (h.steps - h.best_step) % 3 == 0
    # constant between plateaus, a tenth after each of the first two
    assert h.lr[0] == 1e-2 and h.lr[-1] == pytest.approx(1e-4) and sorted({round(v, 8) for v in h.lr}) == [1e-4, 1e-3, 1e-2]
    post.eval()
    with torch.no_grad():  # the posterior holds the best evaluated weights, not the last ones
        assert float(post.loss(*val)) == pytest.approx(h.best_val_loss, rel=1e-5)
    assert min(h["val_loss"]) == pytest.approx(h.best_val_loss) and h["val_loss"][-1] > h.best_val_loss
    # a budget of the user's is the cap instead (early stopping still on); patience=None: fixed budget
    assert pf.fit(build_posterior("nsf", 2, 2, transforms=1), theta, context=x, steps=4).stopped_reason == "steps"
    h = pf.fit(post, theta, context=x, val_data=val, batch_size=20, steps=30, patience=None)
    assert h.stopped_reason == "steps" and h.steps == 30


# ----------------------------------------------------------------------------- diagnostics
class GaussPosterior:
    """The conjugate posterior of LinearGaussian, with its deviation scaled by ``inflate``."""

    def __init__(self, task, inflate=1.0, shift=0.0):
        self.task, self.inflate, self.shift = task, inflate, shift

    def _params(self, x):
        var = 1.0 / (1.0 / self.task.prior_scale**2 + 1.0 / self.task.noise_scale**2)
        return var * x / self.task.noise_scale**2 + self.shift, math.sqrt(var) * self.inflate

    def sample(self, n, context, generator=None):
        m, s = self._params(context)
        return m + s * torch.randn(m.shape, generator=generator)

    def log_prob(self, theta, context):
        m, s = self._params(context)
        return torch.distributions.Normal(m, s).log_prob(theta).sum(-1)


@pytest.fixture(scope="module")
def test_set():
    task = LinearGaussian(dim=2, noise_scale=0.5)
    theta, x = task.sample_joint(500, gen(7))
    return task, theta, x


def test_sbc_passes_a_calibrated_posterior_and_fails_an_overconfident_one(test_set, tmp_path):
    task, theta, x = test_set
    good = sbc_ranks(GaussPosterior(task), theta, x, n_samples=50, seed=1)
    bad = sbc_ranks(GaussPosterior(task, inflate=0.5), theta, x, n_samples=50, seed=1)
    assert good.shape == (500, 2) and good.min() >= 0 and good.max() <= 50
    assert sbc_uniformity(good, 50)["pvalue"].min() > 0.01
    assert sbc_uniformity(bad, 50)["pvalue"].max() < 1e-4
    fig = plot_sbc(good, 50)
    fig.savefig(tmp_path / "sbc.png")


def test_expected_coverage_and_tarp_detect_overconfidence(test_set):
    task, theta, x = test_set
    cov = expected_coverage(GaussPosterior(task), theta, x, n_samples=200, seed=2)
    assert np.abs(cov["coverage"] - cov["level"]).max() < 0.08
    over = expected_coverage(GaussPosterior(task, inflate=0.5), theta, x, n_samples=200, seed=2)
    assert over["coverage"][10] < 0.3  # nominal 0.5 HPD region holds far fewer true values
    t_good = tarp(GaussPosterior(task), theta, x, n_samples=200, seed=3)
    t_bad = tarp(GaussPosterior(task, inflate=0.5), theta, x, n_samples=200, seed=3)
    t_under = tarp(GaussPosterior(task, inflate=2.0), theta, x, n_samples=200, seed=3)
    assert t_good["max_dev"] < 0.08
    assert t_bad["max_dev"] > 0.15 and t_bad["atc"] < 0
    assert t_under["atc"] > 0.05


def test_posterior_predictive_and_draws_shapes(test_set):
    task, _, _ = test_set
    x_o = torch.tensor([0.5, -0.5])
    out = posterior_predictive(GaussPosterior(task), task.simulate, x_o, n=4000)
    assert out["theta"].shape == (4000, 2) and out["x"].shape == (4000, 2)
    assert bool(((out["quantile"] > 0.2) & (out["quantile"] < 0.8)).all())
    shifted = posterior_predictive(GaussPosterior(task, shift=3.0), task.simulate, x_o, n=4000)
    assert bool((shifted["quantile"] < 0.01).all())
    assert posterior_draws(GaussPosterior(task), torch.zeros(3, 2), 7).shape == (3, 7, 2)


def test_c2st_is_half_for_equal_distributions_and_near_one_for_separated():
    a, b = torch.randn(400, 2, generator=gen(1)), torch.randn(400, 2, generator=gen(2))
    assert abs(c2st(a, b, max_iter=300) - 0.5) < 0.07
    assert c2st(a, b + torch.tensor([3.0, 0.0]), max_iter=300) > 0.9
    with pytest.raises(ValueError, match="same dimension"):
        c2st(a, torch.randn(10, 3))


# ----------------------------------------------------------------------------- coupling default
def test_conditional_ot_fm_pairs_only_within_a_condition():
    cond = pf.build("ot-fm", dim=2, context_dim=3)
    assert cond.coupling.by_context and cond.config["by_context"] is True
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2)
    assert torch.equal(cond.coupling(x0, x1, torch.randn(64, 3)), x0)  # continuous contexts: independent
    labels = torch.eye(2)[torch.arange(64) % 2]
    paired = cond.coupling(x0, x1, labels)
    assert not torch.equal(paired, x0)  # discrete contexts: OT within each class
    for c in range(2):
        rows = (torch.arange(64) % 2) == c
        assert sorted(paired[rows].tolist()) == sorted(x0[rows].tolist())
    assert pf.build("ot-fm", dim=2).coupling.by_context is False
    assert pf.build("ot-fm", dim=2, context_dim=3, by_context=False).coupling.by_context is False


# ----------------------------------------------------------------------------- CLI
def test_cli_sample_with_a_context_file(tmp_path):
    from pushforward.cli import main

    post = build_posterior("maf", 2, 3)
    pf.save(post, tmp_path / "post.pt")
    np.save(tmp_path / "xo.npy", np.zeros((1, 3), dtype=np.float32))
    assert main(["sample", str(tmp_path / "post.pt"), "-n", "20", "-o", str(tmp_path / "s.npy"),
                 "--context-file", str(tmp_path / "xo.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 2)


# ----------------------------------------------------------------------------- sbi plug-in
sbi = pytest.importorskip("sbi", reason="the sbi extra is not installed")


def _sbi_data(n=300):
    task = TwoMoons(grid=200)
    theta, x = task.sample_joint(n, gen(5))
    return task, theta, x


@pytest.mark.parametrize("name", ["nsf", "ot-fm"])
def test_posterior_nn_follows_sbis_estimator_interface(name):
    from pushforward.integrations.sbi import PushforwardEstimator, posterior_nn

    _, theta, x = _sbi_data()
    est = posterior_nn(name)(theta, x)
    assert isinstance(est, PushforwardEstimator)
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator

    assert isinstance(est, ConditionalDensityEstimator)
    assert est.input_shape == (2,) and est.condition_shape == (2,)
    # z-scoring as sbi's "independent": column statistics of the batch
    assert torch.allclose(est.net.data_loc, theta.mean(0), atol=1e-5)
    assert torch.allclose(est.net.context_scale, x.std(0), atol=1e-5)
    cond = x[:3]
    assert est.sample(torch.Size([5, 4]), cond).shape == (5, 4, 3, 2)
    assert est.loss(theta[:7], x[:7]).shape == (7,)
    if name == "nsf":
        lp = est.log_prob(theta[:6].reshape(2, 3, 2), cond)
        assert lp.shape == (2, 3)
        assert torch.allclose(lp[1], est.net.log_prob(theta[3:6], cond), atol=1e-5)
        assert torch.allclose(est.loss(theta[:7], x[:7]), -est.net.log_prob(theta[:7], x[:7]), atol=1e-5)


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_npe_and_nle_train_with_the_plug_in(tmp_path, monkeypatch):
    from sbi.inference import NLE, NPE

    monkeypatch.chdir(tmp_path)  # sbi writes its TensorBoard logs to ./sbi-logs

    from pushforward.integrations.sbi import likelihood_nn, posterior_nn

    task, theta, x = _sbi_data()
    npe = NPE(task.prior, density_estimator=posterior_nn("nsf", embedding_net=MLPEmbedding(2, 4)),
              show_progress_bars=False)
    npe.append_simulations(theta, x)
    est = npe.train(max_num_epochs=2)
    assert isinstance(est.embedding_net, MLPEmbedding)
    s = npe.build_posterior().sample((50,), x=x[0], show_progress_bars=False)
    assert s.shape == (50, 2) and bool((s.abs() <= 1).all())
    nle = NLE(task.prior, density_estimator=likelihood_nn("maf"), show_progress_bars=False)
    nle.append_simulations(theta, x)
    lik = nle.train(max_num_epochs=2)
    assert lik.log_prob(x[:4].unsqueeze(0), theta[:4]).shape == (1, 4)


def test_plug_in_bad_options():
    from pushforward.integrations.sbi import posterior_nn

    with pytest.raises(ValueError, match="unknown pushforward model"):
        posterior_nn("not-a-model")
    with pytest.raises(ValueError, match="z_score_theta"):
        posterior_nn("nsf", z_score_theta="robust")
