"""Data sets bundled with scikit-learn (read from its installed files; nothing is downloaded).

- ``iris`` [150, 4], ``wine`` [178, 13], ``breast_cancer`` [569, 30]: class labels.
- ``diabetes`` [442, 10]: a regression target (disease progression), no class label.
- ``digits`` [1797, 64]: 8x8 digit images as vectors; ``digits8x8`` [1797, 1, 8, 8]: the same
  as images. Pixel values are integers 0..16 stored as float (17 levels); dequantization
  (adding uniform noise) is the model's job, not the loader's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Bundled:
    """One scikit-learn set as arrays: data ``x [N, D]`` (or ``[N, 1, 8, 8]``), column names, labels or a
    regression target, and the source's description."""

    x: np.ndarray
    columns: list[str]
    labels: np.ndarray | None  # int class labels [N]
    class_names: list[str] | None
    target: np.ndarray | None  # regression target [N] (diabetes)
    description: str


SKLEARN_SETS = ("iris", "wine", "breast_cancer", "diabetes", "digits", "digits8x8")


def load_sklearn(name: str) -> Bundled:
    """Load one of :data:`SKLEARN_SETS` as float64 arrays."""
    from sklearn import datasets

    loader = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
        "digits8x8": datasets.load_digits,
    }[name]
    b = loader()
    x = np.asarray(b.data, dtype=np.float64)
    names = getattr(b, "feature_names", None)
    columns = [str(c) for c in names] if names is not None else [f"x{j}" for j in range(x.shape[1])]
    if name == "digits8x8":
        x = x.reshape(-1, 1, 8, 8)
    if name == "diabetes":
        return Bundled(x, columns, None, None, np.asarray(b.target, dtype=np.float64), "sklearn diabetes")
    names = getattr(b, "target_names", None)
    class_names = [str(c) for c in names] if names is not None else None
    return Bundled(x, columns, np.asarray(b.target, dtype=np.int64), class_names, None, f"sklearn {name}")
