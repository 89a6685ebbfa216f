"""pushforward gallery: every family on one 2-D target, PNGs, a table, one self-contained HTML page."""

from __future__ import annotations

import json
import math

import pytest

from pushforward.cli import main
from pushforward.gallery import DEFAULT_MODELS, markdown_table, run_gallery


def test_gallery_writes_figures_table_and_self_contained_html(tmp_path):
    rows = run_gallery(tmp_path, data="8gaussians", models=("realnvp", "fm"), max_time=1.0, n_train=2000,
                       n_eval=300, n_grid=24, progress=False)
    assert [r["model"] for r in rows] == ["realnvp", "fm"]
    for r in rows:
        assert r["error"] is None, r
        assert (tmp_path / f"{r['model']}.png").stat().st_size > 10_000
        for k in ("kl", "nll", "w2", "train_s", "sample_s"):
            assert math.isfinite(r[k]), (k, r)
        # 1 s of training beats nothing: the KL to 8 Gaussians from N(0, I) is several nats.
        assert r["kl"] < 5.0 and r["w2"] < 3.0
    assert rows[0]["nfe"] is None and rows[1]["nfe"] >= 1  # bijection vs ODE sampling
    saved = json.loads((tmp_path / "gallery.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["realnvp", "fm"] and saved["meta"]["data"] == "8gaussians"
    page = (tmp_path / "index.html").read_text()
    # Self-contained: every figure inline, no file references.
    assert page.count('src="data:image/png;base64,') == 3 and 'src="realnvp.png"' not in page
    assert "<table>" in page and "realnvp" in page
    assert (tmp_path / "comparison.png").is_file()
    assert markdown_table(rows).count("\n") == 4


def test_gallery_keeps_going_when_a_model_fails(tmp_path):
    rows = run_gallery(tmp_path, models=("no-such-model", "realnvp"), max_time=0.3, n_train=500, n_eval=100,
                       n_grid=10, progress=False)
    assert rows[0]["error"] is not None and "no-such-model" in rows[0]["error"]
    assert rows[1]["error"] is None
    assert "failed" in (tmp_path / "index.html").read_text()


def test_gallery_rejects_a_target_that_is_not_2d(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        run_gallery(tmp_path, data="gmm10", models=("fm",), max_time=0.1, progress=False)


def test_cli_gallery_and_demo_gallery(tmp_path, capsys):
    assert main(["gallery", "--out", str(tmp_path / "g"), "--models", "realnvp", "--max-time", "0.5"]) == 0
    assert (tmp_path / "g" / "index.html").is_file() and (tmp_path / "g" / "realnvp.png").is_file()
    assert main(["demo", "--gallery", "--out", str(tmp_path / "d"), "--models", "nice", "--max-time", "0.3"]) == 0
    assert (tmp_path / "d" / "nice.png").is_file() and not (tmp_path / "d" / "density.png").exists()
    assert main(["gallery", "--data", "no-such-target", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-target" in capsys.readouterr().err


def test_default_models_are_registered():
    import pushforward as pf

    assert set(DEFAULT_MODELS) <= set(pf.available_models())
