"""The ``slow`` marker is registered in pyproject.toml and ``-m "not slow"`` really deselects
the slow tests (checked on a small test file run with the project's pytest configuration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest


@pytest.mark.slow
def test_a_slow_one():
    pass


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_slow_parametrized(k):
    pass


def test_a_fast_one():
    pass
'''


def _collect(folder: Path, *args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "--strict-markers", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(folder),
                        *args, str(folder / "test_sample.py")],
                       cwd=folder, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 5), r.stdout[-2000:] + r.stderr[-2000:]  # 5: nothing collected
    return {line.strip().split("::", 1)[1] for line in r.stdout.splitlines() if "::" in line}


def test_not_slow_deselects_exactly_the_slow_tests(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    slow = {"test_a_slow_one", "test_slow_parametrized[1]", "test_slow_parametrized[2]"}
    assert _collect(tmp_path) == slow | {"test_a_fast_one"}
    assert _collect(tmp_path, "-m", "not slow") == {"test_a_fast_one"}
    assert _collect(tmp_path, "-m", "slow") == slow
