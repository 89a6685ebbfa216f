"""Generic-suite cases: the tail-aware sinh-arcsinh layer (identity, perturbed, data-initialised)."""

import torch

from _cases import Case
from pushforward.transforms.tails import SinhArcsinh


def _heavy(n, g):
    # Student-t columns with 2 dof (Gaussian / sqrt(chi2_2 / 2), chi2_2 / 2 ~ Exp(1)).
    z = torch.randn(n, 3, generator=g)
    return z / torch.sqrt(-torch.log(torch.rand(n, 3, generator=g).clamp_min(1e-6)))


CASES = [
    Case("sinh_arcsinh", lambda: SinhArcsinh(3), (3,), perturb=0.3, data_scale=3.0),
    Case("sinh_arcsinh_init", lambda: SinhArcsinh(3), (3,), data_fn=_heavy, init_data=True),
]
