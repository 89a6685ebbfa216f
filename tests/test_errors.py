"""Errors that name the problem: unreadable files, a full disk, file permissions, malformed
``--set`` values and options checked before a run directory is written (issue 17, items 9-13)."""

from __future__ import annotations

import errno
import os
import stat
import zipfile

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward import cli
from pushforward.models import atomic_save
from pushforward.train import load_checkpoint

TINY = ["--set", "transforms=2", "--set", "hidden=[8]"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, *fragments, status=2):
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data_file(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 2))
    path = tmp_path / "pts.npy"
    np.save(path, x.astype(np.float32))
    return path


@pytest.fixture
def saved(tmp_path):
    model = pf.build("realnvp", dim=2, transforms=2, hidden=[8])
    path = tmp_path / "model.pt"
    pf.save(model, path)
    return path


def _bad_files(tmp_path, good):
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(300),
             "text": b"hello, I am not a checkpoint\n"}
    out = {}
    for name, content in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(content)
        out[name] = p
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")  # a valid .pt of another kind
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    out["foreign"], out["tensor"] = tmp_path / "foreign.pt", tmp_path / "tensor.pt"
    return out


def test_unreadable_model_files_name_the_file(tmp_path, saved):
    for kind, p in _bad_files(tmp_path, saved).items():
        with pytest.raises(ValueError, match="is not a") as e:
            pf.load(p)
        assert str(p) in str(e.value), (kind, str(e.value))
        with pytest.raises(ValueError, match="is not a (readable )?pushforward training checkpoint") as e:
            load_checkpoint(p)
        assert str(p) in str(e.value), (kind, str(e.value))


def test_cli_sample_and_eval_refuse_unreadable_files(tmp_path, capsys, saved):
    for kind, p in _bad_files(tmp_path, saved).items():
        code, _, err = run(capsys, "sample", p, "-n", 5, "-o", tmp_path / "s.npy")
        one_line(code, err, str(p), "is not a")
        code, _, err = run(capsys, "eval", p, "--data", "moons")
        one_line(code, err, str(p), "is not a")
        assert kind


def test_full_disk_names_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"v": 1}, path)

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="no space left on device") as e:
        atomic_save({"v": 2}, path)
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value) and "previous" in str(e.value)
    monkeypatch.undo()
    assert torch.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save({"v": 1}, tmp_path / "a.pt")
        (tmp_path / "b.txt").write_text("x")
        os.umask(0o077)
        atomic_save({"v": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE((tmp_path / p).stat().st_mode)  # noqa: E731
    assert mode("a.pt") == mode("b.txt") == 0o644
    assert mode("c.pt") == 0o600


def test_malformed_set_values_name_the_key_and_the_form(tmp_path, capsys, data_file):
    cases = {"hidden=[64,64": "hidden: could not parse '[64,64' as a list of integers",
             "fit.lr=[0.1,": "fit.lr: could not parse '[0.1,' as a list of numbers",
             "opts={a:1}": "opts: could not parse '{a:1}' as an object",
             "hidden=64,64]": "hidden: could not parse '64,64]' as a list of integers"}
    for item, msg in cases.items():
        out = tmp_path / item.split("=")[0]
        code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 2, "--out", out, "--set", item)
        one_line(code, err, msg)
        assert not out.exists()
    assert cli.parse_value("[64, 64]", "hidden") == [64, 64] and cli.parse_value("relu") == "relu"


@pytest.mark.parametrize("flags, fragment", [
    (["--max-time", "-5"], "max_time"),
    (["--steps", "0"], "steps"),
    (["--steps", "2", "--batch-size", "0"], "batch_size"),
    (["--steps", "2", "--lr", "-1"], "lr"),
    (["--steps", "2", "--set", "fit.checkpoint_every=0"], "checkpoint_every"),
    (["--steps", "2", "--set", "fit.checkpoint_every=-3"], "checkpoint_every"),
    (["--steps", "2", "--set", "fit.checkpoint_every=0s"], "checkpoint_every"),
    (["--steps", "2", "--set", "fit.ema=2"], "ema"),
    (["--steps", "2", "--set", "fit.val_fraction=1.5"], "val_fraction"),
    (["--steps", "2", "--device", "tpu"], "device"),
    (["--steps", "2", "--set", "transforms=-1"], "transforms"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, data_file, flags, fragment):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--out", out, *TINY, *flags)
    one_line(code, err, fragment)
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_cuda_without_cuda_is_refused_before_anything_is_written(tmp_path, capsys, data_file, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--out", out, "--steps", 2, "--device", "cuda")
    one_line(code, err, "'cuda'", "CUDA is not available")
    assert not out.exists()


def test_checkpoint_every_must_be_positive_in_the_api():
    with pytest.raises(ValueError, match="checkpoint_every"):
        pf.fit(pf.build("realnvp", dim=2, transforms=2, hidden=[8]), torch.randn(64, 2), steps=1,
               checkpoint_every=0)


def test_zip_member_damage_is_reported_as_unreadable(tmp_path, saved):
    # A .pt that is a valid zip archive with a damaged member: torch raises a raw RuntimeError.
    bad = tmp_path / "damaged.pt"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"x" if info.filename.endswith("data.pkl") else src.read(info))
    with pytest.raises(ValueError, match="is not a readable") as e:
        pf.load(bad)
    assert str(bad) in str(e.value)


# ------------------------------------------------------------------ item 8: one dtype rule
def test_fit_casts_int_and_bool_data_and_context_like_the_model_does():
    """fit's data path follows the model's rule: every real input is cast to the model's dtype."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (128, 2), generator=g)
    c = torch.randint(0, 2, (128, 1), generator=g).bool()
    for data in (x, x.double(), x.numpy(), x > 0):
        model = pf.build("realnvp", dim=2, context_dim=1, transforms=2, hidden=[8])
        hist = pf.fit(model, data, c, steps=3, batch_size=32, standardize=False, val_fraction=0)
        assert hist.steps == 3
        with torch.no_grad():
            xd = torch.as_tensor(data).to(torch.float32)
            ref = model.log_prob(xd, c.float())
            assert torch.equal(model.log_prob(torch.as_tensor(data), c), ref)
    with pytest.raises(TypeError, match="real"):
        model.log_prob(x.to(torch.complex64), c)


# ------------------------------------------------------------------ item 9: resume falls back
def test_resume_falls_back_to_best_when_last_is_unreadable(tmp_path, capsys, data_file):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 10, "--out", out, *TINY,
                       "--set", "fit.eval_every=5", "--set", "fit.val_fraction=0.2", "--set", "fit.batch_size=32")
    assert code == 0, err
    best_step = torch.load(out / "best.pt", weights_only=False)["step"]
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="resuming from .*best.pt"):
        code, stdout, err = run(capsys, "resume", out, "--steps", 4)
    assert code == 0, err
    assert f"from step {best_step}" in stdout
    assert torch.load(out / "last.pt", weights_only=False)["step"] == best_step + 4
    # Both unreadable: the error names last.pt.
    (out / "last.pt").write_bytes(b"")
    (out / "best.pt").write_bytes(b"junk")
    code, _, err = run(capsys, "resume", out, "--steps", 4)
    one_line(code, err, str(out / "last.pt"), "not a readable")


def test_full_disk_in_a_json_file_names_the_path(tmp_path, monkeypatch):
    from pathlib import Path

    from pushforward.train.run import write_json

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="no space left on device writing .*config.json"):
        write_json(tmp_path / "config.json", {"a": 1})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_exits_naming_the_path(tmp_path, capsys, data_file, monkeypatch):
    import pushforward.models as models

    real = models.torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("format") == "pushforward-checkpoint":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(models.torch, "save", full)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "realnvp", "--data", data_file, "--steps", 3, "--out", out, *TINY)
    line = one_line(code, err, "no space left on device", str(out / "last.pt"), status=1)
    assert "Traceback" not in line


def test_a_file_whose_unpickling_runs_out_of_memory_is_named(tmp_path, monkeypatch):
    # Random bytes sometimes make the unpickler ask for an absurd allocation (seen in CI): that is
    # a corrupt file too, named as such, not a raw MemoryError.
    import torch

    from pushforward.models import read_torch_file

    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x02garbage")

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", oom)
    with pytest.raises(ValueError, match="garbage.pt.*not a readable.*out of memory"):
        read_torch_file(path)
