"""2-D toy data sets (the FFJORD / TorchCFM set), generated in torch from a seeded generator.

Definitions follow Grathwohl et al. (2019, FFJORD, ``lib/toy_data.py``) and TorchCFM; points
are sampled (random angles/positions rather than evenly spaced ones) and land roughly in
``[-4, 4]^2``. All functions: ``(n, generator) -> (x [n, 2] float32, labels [n] int64 or None)``; labels
name the component a point came from (moon, circle, ring, Gaussian, arm, spiral) and serve
as a class context (``load("moons", context="label")``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pushforward.data.targets import CheckerboardTarget, eight_gaussians


def _randn(n: int, d: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, d, generator=g)


def _rand(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g)


def _shuffle(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    p = torch.randperm(x.shape[0], generator=g)
    return x[p], y[p]


Labelled = tuple[Tensor, "Tensor | None"]


def moons(n: int, g: torch.Generator) -> Labelled:
    """Two interleaving half circles (``sklearn.make_moons``, noise 0.1), ``x * 2 + (-1, -0.2)``."""
    n_out = n // 2
    n_in = n - n_out
    a_out = _rand(n_out, g) * math.pi
    a_in = _rand(n_in, g) * math.pi
    outer = torch.stack([torch.cos(a_out), torch.sin(a_out)], -1)
    inner = torch.stack([1 - torch.cos(a_in), 1 - torch.sin(a_in) - 0.5], -1)
    x = torch.cat([outer, inner]) + 0.1 * _randn(n, 2, g)
    y = torch.cat([torch.zeros(n_out, dtype=torch.long), torch.ones(n_in, dtype=torch.long)])
    return _shuffle(x * 2 + torch.tensor([-1.0, -0.2]), y, g)


def circles(n: int, g: torch.Generator) -> Labelled:
    """Two concentric circles of radii 3 and 1.5 (``make_circles(factor=0.5, noise=0.08) * 3``)."""
    n_out = n // 2
    y = torch.cat([torch.zeros(n_out, dtype=torch.long), torch.ones(n - n_out, dtype=torch.long)])
    r = 1.0 - 0.5 * y.float()
    a = _rand(n, g) * 2 * math.pi
    x = r[:, None] * torch.stack([torch.cos(a), torch.sin(a)], -1) + 0.08 * _randn(n, 2, g)
    return _shuffle(x * 3, y, g)


def rings(n: int, g: torch.Generator) -> Labelled:
    """Four concentric rings of radii 0.75, 1.5, 2.25, 3 with noise 0.08."""
    k = torch.randint(0, 4, (n,), generator=g)
    r = 0.75 * (k + 1).float()
    a = _rand(n, g) * 2 * math.pi
    return r[:, None] * torch.stack([torch.cos(a), torch.sin(a)], -1) + 0.08 * _randn(n, 2, g), k


def eight_gaussians_toy(n: int, g: torch.Generator) -> Labelled:
    """Eight Gaussians on a circle of radius ``4/1.414`` with std ``0.5/1.414`` (closed form: target)."""
    return eight_gaussians().sample_with_components(n, g)


def checkerboard(n: int, g: torch.Generator) -> Labelled:
    """Uniform on the 8 dark squares of a 4x4 board on ``[-4, 4]^2`` (closed form: target)."""
    return CheckerboardTarget().sample(n, g), None


def pinwheel(n: int, g: torch.Generator) -> Labelled:
    """Five curved arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2."""
    n_classes, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    rads = torch.arange(n_classes) * (2 * math.pi / n_classes)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    f = _randn(n, 2, g) * torch.tensor([radial_std, tangential_std]) + torch.tensor([1.0, 0.0])
    angles = rads[labels] + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [n, 2, 2]
    return 2 * torch.einsum("ni,nij->nj", f, rot), labels


def two_spirals(n: int, g: torch.Generator) -> Labelled:
    """Two interleaved spirals (FFJORD ``2spirals``), noise 0.1."""
    m = n // 2
    t = torch.sqrt(_rand(m, g)) * 540 * (2 * math.pi) / 360
    d1x = -torch.cos(t) * t + _rand(m, g) * 0.5
    d1y = torch.sin(t) * t + _rand(m, g) * 0.5
    arm = torch.stack([d1x, d1y], -1)
    x = torch.cat([arm, -arm]) / 3
    y = torch.cat([torch.zeros(m, dtype=torch.long), torch.ones(m, dtype=torch.long)])
    if n - 2 * m:  # odd n: one more point on the first arm
        x = torch.cat([x, arm[:1] / 3])
        y = torch.cat([y, y[:1]])
    return _shuffle(x + 0.1 * _randn(n, 2, g), y, g)


def swissroll(n: int, g: torch.Generator) -> Labelled:
    """Swiss roll (``sklearn.make_swiss_roll(noise=1.0)``, coordinates (x, z)) divided by 5."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], -1) + _randn(n, 2, g)
    return x / 5, None


TOYS: dict[str, Callable[[int, torch.Generator], Labelled]] = {
    "moons": moons,
    "circles": circles,
    "8gaussians": eight_gaussians_toy,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
    "rings": rings,
    "swissroll": swissroll,
}

# Number of label classes of each labelled toy (for one-hot contexts).
TOY_CLASSES: dict[str, int] = {"moons": 2, "circles": 2, "rings": 4, "8gaussians": 8, "pinwheel": 5, "2spirals": 2}
