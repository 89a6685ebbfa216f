"""Every tutorial in examples/ runs with its quick budget, writes its figures, and its key number is sane."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _tutorial(name: str):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pngs_exist(out: Path, names: list[str]) -> None:
    for n in names:
        p = out / n
        assert p.is_file() and p.stat().st_size > 5000, f"{n} missing or empty"


def test_every_tutorial_has_main_and_quick_flag():
    files = sorted(EXAMPLES.glob("0*_*.py"))
    assert len(files) >= 5
    for f in files:
        text = f.read_text()
        assert "def main(out_dir" in text and "--quick" in text and "--out" in text, f.name


def test_01_change_of_variables(tmp_path):
    res = _tutorial("01_change_of_variables").main(str(tmp_path), budget=0.15)
    _pngs_exist(tmp_path, ["01_linear_volume.png", "01_cdf_flow.png", "01_mixture_high_dim.png"])
    lin = res["linear"]
    assert lin["area_ratio"] == pytest.approx(lin["abs_det"], abs=1e-6)
    assert lin["density_error"] < 1e-6
    # A trained CDF flow maps the data onto Uniform(0, 1): KS distance small (0.19 untrained).
    assert res["cdf"]["ks_uniform"] < 0.05
    mix = res["mixture"]
    # The mixture is fine in 1-2 D and falls behind as the number of modes 2^D outgrows K = 8.
    assert mix["gmm_gap"][0] < 0.05 and mix["gmm_gap"][-1] > 0.15
    assert mix["gmm_off_mode"][-1] > 2 * mix["true_off_mode"][-1]


def test_02_coupling_autoregressive(tmp_path):
    res = _tutorial("02_coupling_autoregressive").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["02_coupling_grid.png", "02_maf_vs_iaf.png", "02_moons_density.png"])
    c = res["coupling"]
    assert c["scratch_error"] < 1e-10 and c["compose_error"] < 1e-10 and c["sum_error"] < 1e-12
    t = res["timing"]
    # D = 16: IAF samples in one pass, MAF in 16; the reverse for density evaluation.
    assert t["iaf"]["sample"] < t["maf"]["sample"]
    assert t["maf"]["log_prob"] < t["iaf"]["log_prob"]
    assert all(math.isfinite(v) and v < 4.0 for v in res["nll"].values())


@pytest.mark.slow
def test_05_continuous_flows(tmp_path):
    res = _tutorial("05_continuous_flows").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["05_nfe_vs_accuracy.png", "05_hutchinson.png", "05_ffjord_density.png",
                           "05_ffjord_trajectories.png"])
    assert res["liouville"]["error"] < 1e-6
    h = res["hutchinson"]
    for kind in ("rademacher", "gaussian"):
        assert abs(h[kind]["mean"] - h["exact"]) < 4 * h[kind]["se"], (kind, h)
    # Higher order buys accuracy per function evaluation: at the largest NFE, rk4 < midpoint < euler.
    errs = {k: v[-1][1] for k, v in res["nfe"].items()}
    assert errs["rk4"] < errs["midpoint"] < errs["euler"]
    assert math.isfinite(res["ffjord"]["nll"])


@pytest.mark.slow
def test_07_flow_matching(tmp_path):
    res = _tutorial("07_flow_matching").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["07_gaussian_velocity.png", "07_hist_over_time.png", "07_euler_vs_midpoint.png",
                           "07_quiver.png", "07_ot_vs_diffusion_paths.png"])
    g = res["gaussian"]
    assert abs(g["mean"] - 2.0) < 0.15 and abs(g["std"] - 0.5) < 0.15 and g["w2"] < 0.2
    e, m = res["solvers"]["euler"], res["solvers"]["midpoint"]
    # Order 1 vs (at least) order 2: doubling the steps halves Euler's error and at least
    # quarters the midpoint's (on this affine-in-x field it does better still).
    assert 1.6 < e[-2] / e[-1] < 2.4 and m[-2] / m[-1] > 3.2
    assert m[-1] < 1e-3 < e[-1]


@pytest.mark.slow
def test_08_rectified_flow(tmp_path):
    res = _tutorial("08_rectified_flow").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["08_reflow.png"])
    s1, s2 = res["straightness"]
    assert s2 < 0.5 * s1
    # Reflow improves one-step sampling.
    assert res["w2"]["2-rectified"][0] < res["w2"]["1-rectified"][0]
    # Every few-step model beats the 1-rectified flow's one Euler step.
    for name, w2 in res["few"].items():
        assert w2[0] < res["w2"]["1-rectified"][0], (name, w2)


@pytest.mark.slow
def test_03_glow_digits(tmp_path):
    res = _tutorial("03_glow_digits").main(str(tmp_path), budget=0.03)
    _pngs_exist(tmp_path, ["03_glow_samples.png", "03_glow_training.png"])
    lay = res["layers"]
    assert lay["conv_error"] < 1e-10 and lay["actnorm_mean"] < 1e-4 and lay["actnorm_std"] < 1e-2
    assert lay["squeezed"] == [2, 4, 4, 4]
    tr = res["train"]
    assert tr["bpd_after"] < tr["bpd_before"] - 0.3 and tr["bpd_after"] < tr["bpd_uniform"]


@pytest.mark.slow
def test_04_residual_flows(tmp_path):
    res = _tutorial("04_residual_flows").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["04_fixed_point.png", "04_russian_roulette.png", "04_residual_density.png"])
    for c, r in res["inverse"].items():
        assert r["block_max_lipschitz"] <= c + 1e-9 and r["block_inverse_error"] < 1e-10
        # geometric with rate <= c in the 2-norm (sqrt 2 for the max-norm we record)
        assert r["errors"][-1] <= 1.5 * r["errors"][0] * c ** 59 + 1e-15
    ro = res["roulette"]
    assert abs(ro["mean"] - ro["exact"]) < 4 * ro["se"]
    assert abs(ro["block_mean"] - ro["block_exact"]) < 4 * ro["block_se"]
    assert ro["block_exact"] == pytest.approx(ro["block_autograd"], abs=1e-8)
    assert math.isfinite(res["train"]["nll"])


@pytest.mark.slow
def test_06_score_based(tmp_path):
    res = _tutorial("06_score_based").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["06_sde_vs_ode_exact.png", "06_samplers.png"])
    ex = res["exact"]
    # With the exact score both reverse processes return the data law (KS noise ~ 0.022 at n = 2000).
    assert ex["ks_sde"] < 0.06 and ex["ks_ode"] < 0.06 and ex["ks_forward_noise"] < 0.06
    assert all(math.isfinite(r["w2"]) and r["w2"] < 1.5 for r in res["learned"].values())


@pytest.mark.slow
def test_09_flow_policy(tmp_path):
    res = _tutorial("09_flow_policy").main(str(tmp_path), budget=0.05)
    _pngs_exist(tmp_path, ["09_multimodal_chunks.png", "09_latency.png"])
    # Chunks from the decision point go both ways; the MSE policy's single chunk stays in the middle.
    assert res["left"] > 0.1 and res["right"] > 0.1
    assert abs(res["regression_end_x"]) < 0.2
    lat = res["latency_ms"]
    assert all(math.isfinite(v) and v > 0 for v in lat.values()) and lat[20] > lat[1]
    vla = res["vla"]  # the VLA step runs end to end (its success needs the full budget)
    assert vla["samples"] > 20 and 0 <= vla["told"] <= 1 and 0 <= vla["untold"] <= 1 and vla["act_ms"] > 0
