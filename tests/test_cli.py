"""The ``pushforward`` command line: end to end, config resolution and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward import cli

TINY = ["--set", "transforms=2", "--set", "hidden=[16]"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def data_file(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(300, 2)) * [2.0, 0.5] + [1.0, -1.0]
    path = tmp_path / "pts.csv"
    np.savetxt(path, x, delimiter=",", header="a,b", comments="")
    return path


@pytest.mark.slow
def test_train_sample_eval_plot_resume(tmp_path, capsys, data_file):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 20, "--out", out,
                            *TINY, "--set", "fit.lr=3e-3", "--set", "fit.batch_size=64", "--seed", 3)
    assert code == 0, err
    assert "20 steps" in stdout
    for name in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "model.pt"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "realnvp" and cfg["options"] == {"transforms": 2, "hidden": [16]}
    assert cfg["fit"]["lr"] == 3e-3 and cfg["fit"]["steps"] == 20 and cfg["seed"] == 3 and cfg["dim"] == 2
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 20
    model = pf.load(out / "model.pt")
    x = torch.as_tensor(np.loadtxt(data_file, delimiter=",", skiprows=1), dtype=torch.float32)
    assert torch.isfinite(model.log_prob(x)).all()

    code, stdout, err = run(capsys, "sample", out, "-n", 50, "-o", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    code, _, err = run(capsys, "sample", out, "-n", 7, "-o", tmp_path / "s.csv")
    assert code == 0, err
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (7, 2)

    code, stdout, err = run(capsys, "eval", out, "--n-samples", 300)
    assert code == 0, err
    res = json.loads(stdout.strip())
    assert len(stdout.strip().splitlines()) == 1
    assert {"nll", "bpd", "w2"} <= res.keys() and np.isfinite(res["nll"])
    assert res["nll"] == pytest.approx(-model.log_prob(x).mean().item(), rel=1e-4)

    code, stdout, err = run(capsys, "plot", out, "--no-gif")
    assert code == 0, err
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert {"density.png", "samples.png", "training_curves.png", "grid_deformation.png"} <= pngs

    code, stdout, err = run(capsys, "resume", out, "--steps", 10)
    assert code == 0, err
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 30 and [r["step"] for r in lines] == sorted({r["step"] for r in lines})
    assert "30 steps" in stdout
    code, _, err = run(capsys, "resume", out)  # its budget (20 steps) is spent
    assert_one_line_error(code, err, "already finished")


def test_config_file_and_set_precedence(tmp_path, capsys, data_file):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"model": "realnvp", "data": str(data_file), "options": {"transforms": 2},
                                "hidden": [8], "fit": {"lr": 1e-3, "batch_size": 32}, "fit.ema": 0.9}))
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--config", conf, "--set", "fit.lr=2e-3", "--steps", 3, "--out", out)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["options"] == {"transforms": 2, "hidden": [8]}
    assert cfg["fit"] == {"lr": 2e-3, "batch_size": 32, "ema": 0.9, "steps": 3, "max_time": None}
    if sys.version_info >= (3, 11):
        toml = tmp_path / "c.toml"
        toml.write_text(f'model = "realnvp"\ndata = "{data_file}"\n[options]\ntransforms = 2\nhidden = [8]\n'
                        '[fit]\nbatch_size = 32\n')
        code, _, err = run(capsys, "train", "--config", toml, "--steps", 2, "--out", tmp_path / "run2")
        assert code == 0, err
    assert cli.parse_sets(["a=[1,2]", "b=true", "c=relu", "d=3e-4", "e=None"]) == {
        "a": [1, 2], "b": True, "c": "relu", "d": 3e-4, "e": None}


def test_refuses_to_overwrite_a_run(tmp_path, capsys, data_file):
    out = tmp_path / "run"
    assert run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY)[0] == 0
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY)
    assert_one_line_error(code, err, "already holds a run")


def test_error_paths_exit_2_with_one_line(tmp_path, capsys, data_file):
    nan_file = tmp_path / "nan.csv"
    x = np.random.default_rng(0).normal(size=(50, 2))
    x[7, 1] = np.nan
    np.savetxt(nan_file, x, delimiter=",")
    cases = [
        (("train", "realnvp", "--data", tmp_path / "missing.csv", "--steps", 2), ["missing.csv"]),
        (("train", "realnvp", "--data", nan_file, "--steps", 2), ["NaN"]),
        (("train", "no-such-model", "--data", "moons", "--steps", 2), ["unknown model", "no-such-model"]),
        (("train", "realnvp", "--data", "no-such-data", "--steps", 2), ["no-such-data"]),
        (("train", "realnvp", "--data", data_file, "--set", "hidden"), ["bad --set", "key=value"]),
        (("train", "realnvp", "--data", data_file, "--set", "fit.nope=1"), ["unknown fit option", "fit.nope"]),
        (("train", "realnvp", "--data", data_file, "--set", "wings=3", "--steps", 1), ["wings"]),
        (("train", "realnvp", "--data", data_file, "--set", "fit.lr=-1", "--steps", 1), ["lr"]),
        (("train", "realnvp", "--steps", 2), ["--data"]),
        (("train", "realnvp", "--data", data_file, "--config", tmp_path / "nope.json"), ["nope.json"]),
        (("resume", tmp_path / "no-run"), ["no run directory"]),
        (("sample", tmp_path / "no-run", "-n", 3, "-o", tmp_path / "s.npy"), ["no run directory"]),
        (("eval", tmp_path / "no-run"), ["no run directory"]),
        (("plot", tmp_path / "no-run"), ["no run directory"]),
        (("sample", tmp_path, "-n", 3, "-o", tmp_path / "s.npy"), ["no model.pt"]),
        (("train", "realnvp", "--data", data_file, "--steps", "many"), ["--steps", "invalid int"]),
        (("frobnicate",), ["invalid choice"]),
    ]
    for argv, fragments in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, *fragments)
    for argv in (["--debug", "train", "nope", "--data", "moons"], ["train", "nope", "--data", "moons", "--debug"]):
        with pytest.raises(ValueError, match="unknown model"):
            cli.main(argv)


def test_wrong_dimension_for_a_resumed_model(tmp_path, capsys, data_file):
    out = tmp_path / "run"
    assert run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY)[0] == 0
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).normal(size=(100, 3)))
    code, _, err = run(capsys, "resume", out, "--steps", 2, "--data", wide)
    assert_one_line_error(code, err, "[100, 3]", "[2]")
    code, _, err = run(capsys, "eval", out, "--data", wide)
    assert_one_line_error(code, err, "3")
    code, _, err = run(capsys, "sample", out, "-n", 3, "-o", tmp_path / "s.txt")
    assert_one_line_error(code, err, ".npy or .csv")
    code, _, err = run(capsys, "sample", out, "-n", 3, "-o", tmp_path / "s.npy", "--context", "[1]")
    assert_one_line_error(code, err, "unconditional")


def test_listing_commands(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "realnvp" in out and "nsf" in out
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "moons" in out.split()


def test_bench_without_a_checkout(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_find_bench", lambda: None)
    code, _, err = run(capsys, "bench")
    assert_one_line_error(code, err, "benchmarks/density.py")


def test_real_process_exit_codes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pushforward", "train", "no-such-model", "--data", "moons"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "unknown model" in p.stderr
    p = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr


@pytest.mark.slow
def test_demo_writes_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--out", out, "--max-time", 2, "--no-gif")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "nsf" and np.isfinite(summary["nll"]) and np.isfinite(summary["w2"])
    assert {"density.png", "samples.png", "training_curves.png"} <= {p.name for p in (out / "plots").iterdir()}
    assert str(Path(out) / "plots") in stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.*")), ids=lambda p: p.name)
def test_example_configs_train(config, tmp_path, capsys):
    if config.suffix == ".toml" and sys.version_info < (3, 11):
        pytest.skip("TOML configs need Python >= 3.11")
    code, _, err = run(capsys, "train", "--config", config, "--steps", 2, "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] and cfg["fit"]["steps"] == 2


# --------------------------------------------------------------------------- nothing lost, nothing silent
def _start_training(tmp_path, data_file, out, *extra):
    """A real `pushforward train` process, returned once its first checkpoint exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pushforward", "train", "realnvp", "--data", str(data_file), "--max-time", "60",
           "--out", str(out), *TINY, *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    for _ in range(600):
        if (out / "last.pt").exists() or p.poll() is not None:
            break
        time.sleep(0.05)
    assert (out / "last.pt").exists(), p.communicate()  # the early first checkpoint
    return p


@pytest.mark.slow
def test_sigterm_checkpoints_says_where_and_exits_143(tmp_path, capsys, data_file):
    import signal

    out = tmp_path / "run"
    p = _start_training(tmp_path, data_file, out)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)  # what `timeout`, `docker stop` and Slurm send
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "training interrupted by SIGTERM" in err and f"checkpoint {out / 'last.pt'}" in err
    assert "Traceback" not in err
    step = pf.train.load_checkpoint(out)["step"]
    assert f"(step {step})" in err and step >= 1
    c, stdout, e = run(capsys, "resume", out, "--steps", 3)
    assert c == 0, e
    assert f"{step + 3} steps" in stdout


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_every_stop_signal_exits_128_plus_its_number(tmp_path, capsys, data_file, monkeypatch, name, code):
    import signal

    real_fit = pf.fit

    def fit_and_signal(*args, **kwargs):
        def send(step, metrics):
            if step >= 2:
                os.kill(os.getpid(), getattr(signal, name))
        return real_fit(*args, **kwargs, callback=send, log_every=1)

    monkeypatch.setattr(pf, "fit", fit_and_signal)
    out = tmp_path / "run"
    c, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 50, "--out", out, *TINY)
    assert c == code, err
    assert f"interrupted by {name} at step 2; checkpoint {out / 'last.pt'} (step 2)" in err
    assert pf.train.load_checkpoint(out)["step"] == 2


@pytest.mark.slow
def test_second_run_into_one_out_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys, data_file):
    import signal

    out = tmp_path / "run"
    first = _start_training(tmp_path, data_file, out)
    try:
        for extra in ([], ["--overwrite"]):
            code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 3, "--out", out,
                               *TINY, *extra)
            assert_one_line_error(code, err, "in use by another training run", f"pid {first.pid}")
        assert (out / "last.pt").exists() and (out / "config.json").exists()  # the first run's files stay
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: no cleanup, the lock file stays behind
        first.communicate()
    assert (out / ".lock").read_text().strip() == str(first.pid)
    # killed outright within seconds, the run still resumes from its early checkpoint
    code, stdout, err = run(capsys, "resume", out, "--steps", 2)
    assert code == 0 and "resuming realnvp from step" in stdout, err
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 3, "--out", out, *TINY,
                       "--overwrite")
    assert code == 0, err
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3  # only the new run's records


def test_overwrite_removes_the_old_run_before_writing(tmp_path, capsys, data_file, monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY)[0] == 0
    assert (out / "model.pt").exists() and (out / "history.json").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(pf, "fit", crash)
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY, "--overwrite")
    assert code == 1 and "simulated crash" in err
    for name in ("model.pt", "last.pt", "best.pt", "metrics.jsonl", "history.json"):
        assert not (out / name).exists(), name  # nothing of the old run for sample/eval/resume to pick up


@pytest.mark.parametrize("model", ["nsf", "ot-fm"])
def test_train_seed_seeds_the_initial_weights(tmp_path, capsys, data_file, model):
    opts = ["--set", "hidden=[16,16]"] + (["--set", "transforms=2"] if model == "nsf" else [])

    def train(seed, name):
        code, _, err = run(capsys, "train", model, "--data", data_file, "--steps", 3, "--seed", seed,
                           "--out", tmp_path / name, *opts)
        assert code == 0, err
        return torch.load(tmp_path / name / "model.pt", weights_only=False)["state_dict"]

    a, b, c = train(7, "a"), train(7, "b"), train(8, "c")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the test can fail: another seed, another model


def test_resume_takes_the_model_from_the_checkpoint(tmp_path, capsys, data_file):
    out = tmp_path / "run"
    assert run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, *TINY)[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "model": "nsf"}))
    code, _, err = run(capsys, "resume", out, "--steps", 2)
    assert_one_line_error(code, err, "holds a 'realnvp' model", "names 'nsf'", "last.pt", "config.json")
    (out / "config.json").write_text(json.dumps(cfg))
    code, stdout, err = run(capsys, "resume", out, "--steps", 2)
    assert code == 0 and "resuming realnvp from step 2" in stdout, err
