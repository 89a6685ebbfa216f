"""Transform test cases: each family's ``tests/cases_<family>.py`` defines ``CASES``, a list of
:class:`Case`; ``test_transforms_generic.py`` runs every check on every case."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pushforward.transforms import Transform


@dataclass
class Case:
    name: str
    make: Callable[[], Transform]  # builds the transform (float32; the suite casts it)
    event_shape: tuple[int, ...]
    context_dim: int = 0
    perturb: float = 0.1  # std of noise added to every parameter so identity inits are not trivial
    inverse_tol: float = 1e-7  # round-trip tolerance in float64 (iterative inverses need more)
    ladj_tol: float = 1e-7  # |ladj - slogdet(J)| tolerance in float64
    data_scale: float = 1.0  # std of test inputs (e.g. small for bounded domains)
    data_fn: Callable | None = None  # optional (n, generator) -> inputs (e.g. for the unit interval)
    init_data: bool = False  # call .initialize(x) on a batch first (ActNorm)
    grads_all: bool = True  # every parameter must get a gradient
    extra: dict = field(default_factory=dict)


def loss_before_after(model, data, steps: int, lr: float, batch: int, generator) -> tuple[float, float]:
    """Full-data ``model.loss`` before and after ``steps`` Adam steps on random minibatches."""
    import torch

    with torch.no_grad():
        start = float(model.loss(data))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(data[torch.randint(0, data.shape[0], (batch,), generator=generator)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return start, float(model.loss(data))
