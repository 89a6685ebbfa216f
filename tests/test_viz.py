"""pushforward.viz: every plot writes a real, non-empty image (tiny sizes to stay fast)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import pushforward as pf
from pushforward import viz
from pushforward.data import get_target, load
from pushforward.transforms.base import FixedAffine, Transform
from pushforward.viz.training import _records, _series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_size=(60, 60)):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    im = Image.open(path)
    assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    # not a blank canvas: several distinct colours were drawn
    assert len(np.unique(np.asarray(im.convert("L")))) > 5


class Swirl(Transform):
    """Volume-preserving rotation by an angle that decays with radius (a nonlinear bijection)."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def _rot(self, x, sign):
        th = sign * self.a * torch.exp(-(x**2).sum(-1) / 2)
        c, s = torch.cos(th), torch.sin(th)
        return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], -1), x.new_zeros(x.shape[0])

    def forward(self, x, context=None):
        return self._rot(x, 1.0)

    def inverse(self, z, context=None):
        return self._rot(z, -1.0)


class CondGauss(torch.nn.Module):
    """x | c ~ N(c, 0.5^2 I) in 2-D: a conditional model for context handling."""

    context_dim = 2
    event_shape = (2,)

    def __init__(self):
        super().__init__()
        self.seen = []

    def log_prob(self, x, context=None):
        self.seen.append(context[0].clone())
        return torch.distributions.Normal(context, 0.5).log_prob(x).sum(-1)

    def sample(self, n, context=None, generator=None):
        return context + 0.5 * torch.randn(n, 2, generator=generator)


@pytest.fixture(scope="module")
def flow():
    f = pf.NormalizingFlow([FixedAffine(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.5])), Swirl(2.0), Swirl(-1.5)],
                           pf.distributions.StandardNormal(2))
    f.set_standardization(torch.tensor([1.0, -1.0]), torch.tensor([1.5, 1.5]))
    return f


def test_plot_density_2d_with_data_and_samples(tmp_path, flow):
    out = viz.plot_density(flow, tmp_path / "sub" / "d.png", data=load("moons", n=200), n_grid=30, samples=50, dpi=40)
    assert out == tmp_path / "sub" / "d.png"
    _check_png(out)


def test_plot_density_of_targets_and_1d(tmp_path):
    _check_png(viz.plot_density(get_target("checkerboard"), tmp_path / "c.png", n_grid=24, samples=0, dpi=40))
    _check_png(viz.plot_density(get_target("gauss1d"), tmp_path / "g.png", data=load("gauss1d", n=300),
                                samples=100, dpi=40))
    with pytest.raises(ValueError, match="dimension 10"):
        viz.plot_density(get_target("gmm10"), tmp_path / "x.png")


def test_plot_density_conditional_uses_fixed_context_row(tmp_path):
    m = CondGauss()
    c = torch.tensor([[1.0, -2.0], [3.0, 3.0]])
    ds = pf.data.Dataset(torch.randn(2, 2), c)
    _check_png(viz.plot_density(m, tmp_path / "a.png", data=ds, n_grid=20, samples=20, dpi=40))
    assert all(torch.equal(s, c[0]) for s in m.seen)  # default: the data's first context row
    m.seen.clear()
    _check_png(viz.plot_density(m, tmp_path / "b.png", context=[3.0, 3.0], n_grid=20, bounds=5, dpi=40))
    assert all(torch.equal(s, torch.tensor([3.0, 3.0])) for s in m.seen)


def test_plot_samples_scatter_hist_images(tmp_path):
    x = load("moons", n=300)
    _check_png(viz.plot_samples(torch.randn(300, 2), tmp_path / "s.png", data=x, dpi=40))
    _check_png(viz.plot_samples(torch.randn(300, 5), tmp_path / "s5.png", dpi=40))
    _check_png(viz.plot_samples(torch.randn(300), tmp_path / "s1.png", data=load("gauss1d", n=300), dpi=40))
    dig = load("digits8x8", n=20)
    _check_png(viz.plot_samples(dig.x + torch.rand_like(dig.x), tmp_path / "img.png", data=dig, n_images=16, dpi=40))
    _check_png(viz.plot_samples(torch.rand(9, 3, 6, 6), tmp_path / "rgb.png", dpi=40))
    with pytest.raises(ValueError, match="event shapes"):
        viz.plot_samples(torch.randn(10, 2), tmp_path / "bad.png", data=torch.randn(10, 3))


def test_plot_grid_deformation_flow_and_callable(tmp_path, flow):
    _check_png(viz.plot_grid_deformation(flow, tmp_path / "g.png", bounds=3, n_lines=7, n_points=30, dpi=40))
    swirl = Swirl(2.0)
    _check_png(viz.plot_grid_deformation(swirl.inverse, tmp_path / "g2.png", bounds=(-2, 2), n_lines=5, dpi=40))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        viz.plot_grid_deformation(lambda z: z[:, :1], tmp_path / "bad.png")


def test_plot_quiver_float_and_tensor_time(tmp_path):
    def field(x, t):
        return torch.stack([-x[:, 1], x[:, 0]], -1) * (1 - t) + (2 - x) * t

    _check_png(viz.plot_quiver(field, tmp_path / "q.png", t=(0, 0.5, 1), bounds=3, n_grid=8, dpi=40))

    def tensor_time_field(x, t):
        return x * t[:, None]  # fails for a float t

    _check_png(viz.plot_quiver(tensor_time_field, tmp_path / "q2.png", t=0.7, n_grid=6, dpi=40))


def test_trajectories_and_hist_over_time(tmp_path):
    ts = torch.linspace(0, 1, 8)[:, None, None]
    x0, x1 = torch.randn(100, 2), load("8gaussians", n=100).x
    _check_png(viz.plot_trajectories((1 - ts) * x0 + ts * x1, tmp_path / "t.png", dpi=40))
    z = torch.randn(400, 1)
    traj1 = (1 - ts) * z + ts * (2 + 0.5 * z)
    _check_png(viz.plot_trajectories(traj1, tmp_path / "t1.png", dpi=40))
    _check_png(viz.plot_hist_over_time(traj1, tmp_path / "h.png", times=np.linspace(0, 1, 8),
                                       source=pf.distributions.StandardNormal(1), target=get_target("gauss1d"), dpi=40))
    _check_png(viz.plot_hist_over_time(traj1[..., 0], tmp_path / "h2.png", times=[0, 0.5, 1], dpi=40))
    with pytest.raises(ValueError, match=r"\[T, N, 1\]"):
        viz.plot_hist_over_time(torch.randn(3, 10, 2), tmp_path / "bad.png", times=[0, 1])


def test_training_curves_from_jsonl_and_dict(tmp_path):
    rows = [{"step": s, "loss": 3 * math.exp(-s / 50) + 0.1 * math.sin(s), "lr": 1e-3 * (1 - s / 300),
             "time": 0.1 * s} for s in range(0, 300, 5)]
    for r in rows[::10]:
        r["val_loss"] = r["loss"] + 0.2
    p = tmp_path / "run" / "metrics.jsonl"
    p.parent.mkdir()
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _check_png(viz.plot_training_curves(p, tmp_path / "c.png", dpi=40))
    _check_png(viz.plot_training_curves(p.parent, tmp_path / "c_dir.png", dpi=40))  # a run folder
    hist = {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows], "val_loss": [1.0, 0.8, 0.7]}
    _check_png(viz.plot_training_curves(hist, tmp_path / "c2.png", dpi=40))
    _check_png(viz.plot_training_curves(rows, tmp_path / "c3.png", dpi=40))
    with pytest.raises(ValueError, match="no 'loss'"):
        viz.plot_training_curves({"step": [1, 2], "lr": [1, 2]}, tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        viz.plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "bad.png")


def test_records_skip_nan_val_loss_like_fit_history():
    nan = float("nan")
    hist = {"step": [1, 2, 3, 4], "loss": [4.0, 3.0, 2.0, 1.0], "val_loss": [nan, 2.5, nan, 1.5], "steps": 4}
    steps, val = _series(_records(hist), "val_loss")
    assert steps.tolist() == [2, 4] and val.tolist() == [2.5, 1.5]


def test_records_align_val_loss_on_its_own_steps():
    rows = _records({"step": [0, 10, 20, 30], "loss": [4, 3, 2, 1], "val_loss": [3.5, 1.5], "val_step": [10, 30]})
    steps, val = _series(rows, "val_loss")
    assert steps.tolist() == [10, 30] and val.tolist() == [3.5, 1.5]


def test_flow_frames_and_gif(tmp_path, flow):
    frames = viz.flow_frames(flow, 64)
    assert len(frames) == 4 and all(f.shape == (64, 2) for f in frames)  # base + 3 layers
    ref = flow.sample(64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frames[-1], ref, atol=1e-5)  # the last frame is a model sample
    base = flow.base.sample(64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frames[0], flow.unstandardize(base), atol=1e-6)  # in user units
    out = viz.animate_flow(frames, tmp_path / "f.gif", fps=5, hold=0.0, size=2.0, dpi=40)
    im = Image.open(out)
    assert im.format == "GIF" and im.n_frames == 4

    class ODEish:
        def trajectory(self, n, steps):
            ts = torch.linspace(0, 1, steps)[:, None, None]
            return (1 - ts) * torch.randn(n, 2) + ts * torch.ones(n, 2)

    frames = viz.flow_frames(ODEish(), 30, steps=6)
    assert len(frames) == 6 and torch.allclose(frames[-1], torch.ones(30, 2))
    out = viz.animate_flow(torch.stack(frames), tmp_path / "o.gif", fps=10, size=2.0, dpi=40, data=torch.randn(50, 2))
    assert Image.open(out).n_frames == 6  # the held last frame is merged into one longer frame
    with pytest.raises(TypeError, match="trajectory"):
        viz.flow_frames(object(), 10)


def test_plots_for_chooses_by_model_type(tmp_path, flow):
    from pushforward.data import Dataset

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')

    def names(m, ds, **kw):
        return [n for n, _ in viz.plots_for(m, ds, tmp_path, metrics=tmp_path / "metrics.jsonl", **kw)]

    xy = Dataset(torch.randn(20, 2))
    assert names(flow, xy) == ["density", "samples", "training curves", "grid deformation", "flow animation"]
    assert names(flow, xy, gif=False)[-1] == "grid deformation"
    assert names(pf.build("fm", dim=2), xy) == ["density", "samples", "training curves", "flow animation"]
    assert names(pf.build("nsf", dim=2, context_dim=2), Dataset(torch.randn(20, 2), torch.randn(20, 2))) == [
        "density", "samples", "training curves"]
    assert names(pf.build("maf", dim=5), Dataset(torch.randn(20, 5))) == ["samples", "training curves", "flow animation"]
    policy = pf.policy.FlowPolicy(obs_dim=3, action_dim=2, horizon=4)
    assert names(policy, Dataset(torch.randn(20, 8), torch.randn(20, 3))) == ["training curves"]
    # nothing is drawn until a figure is asked for
    assert not list(tmp_path.glob("*.png"))


def test_plots_for_draws_manifold_and_discrete_models_in_their_own_geometry(tmp_path):
    """sphere-fm, torus-fm, circular-nsf and discrete-fm get the sphere / torus / category
    figure (never the Euclidean density grid or the generic scatter, which would be wrong for
    them), and each figure is written."""
    from pushforward.data import Dataset

    torch.manual_seed(0)
    sph = torch.nn.functional.normalize(torch.randn(30, 3) + torch.tensor([0.0, 0.0, 2.0]), dim=1)
    ang = torch.rand(30, 2) * 2 * math.pi - math.pi
    seq = torch.randint(0, 3, (30, 4))
    cases = [(pf.build("sphere-fm", dim=3, hidden=(8,), steps=2), Dataset(sph), "sphere"),
             (pf.build("torus-fm", dim=2, hidden=(8,), steps=2), Dataset(ang), "torus"),
             (pf.build("circular-nsf", dim=2), Dataset(ang), "torus"),
             (pf.build("discrete-fm", dim=4, num_categories=3), Dataset(seq), "categories")]
    for model, ds, kind in cases:
        plots = viz.plots_for(model.eval(), ds, tmp_path / kind)
        assert [n for n, _ in plots] == [kind], type(model).__name__
        path = plots[0][1]()
        assert path.name == f"{kind}.png" and Image.open(path).size[0] > 100


def test_category_frequencies_count_exactly_and_name_bad_values(tmp_path):
    x = torch.tensor([[0, 2], [1, 2], [0, 0], [0, 2]])
    f = viz.category_frequencies(x, 3)
    assert np.array_equal(f, [[0.75, 0.25, 0.0], [0.25, 0.0, 0.75]])
    with pytest.raises(ValueError, match="0..1"):
        viz.category_frequencies(x, 2)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        viz.category_frequencies(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="same length"):
        viz.plot_categories(tmp_path / "c.png", x, x[:, :1], 3)
    assert viz.plot_categories(tmp_path / "c.png", x, x, 3).is_file()


def test_importing_viz_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, pushforward, pushforward.viz; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
