"""Generic-suite cases: coupling layers (additive, affine, spline, affine+spline), with and
without context, several masks."""

import torch

from _cases import Case
from pushforward.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    SplineCoupling,
    coupling_mask,
)
from pushforward.transforms.elementwise import Affine, Chain
from pushforward.transforms.splines import RationalQuadraticSpline

CASES = [
    Case("coupling_additive_halves", lambda: AdditiveCoupling(coupling_mask(4, "halves"), hidden=(16,)), (4,)),
    Case(
        "coupling_additive_ctx",
        lambda: AdditiveCoupling(coupling_mask(3, "checkerboard", 1), context_dim=2, hidden=(16, 16)),
        (3,),
        context_dim=2,
    ),
    Case("coupling_affine_checkerboard", lambda: AffineCoupling(coupling_mask(5, "checkerboard"), hidden=(16,)), (5,)),
    Case(
        "coupling_affine_ctx_custom_mask",
        lambda: AffineCoupling(torch.tensor([False, True, True, False]), context_dim=3, hidden=(16,), activation="tanh"),
        (4,),
        context_dim=3,
        perturb=0.3,
    ),
    # Identity part [0, 1, 3] is no strided slice: the gather/cat path (built-in masks use views).
    Case(
        "coupling_affine_gather_mask",
        lambda: AffineCoupling(torch.tensor([True, True, False, True, False, False]), hidden=(16,)),
        (6,),
        perturb=0.3,
    ),
    # tail_bound 1.5 with unit-variance inputs: some points fall in the linear tails.
    Case(
        "coupling_spline_tails",
        lambda: SplineCoupling(coupling_mask(4, "halves", 1), hidden=(16,), bins=5, tail_bound=1.5),
        (4,),
        perturb=0.3,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
    Case(
        "coupling_spline_ctx",
        lambda: SplineCoupling(coupling_mask(3), context_dim=2, hidden=(16,), bins=4, tail_bound=3.0),
        (3,),
        context_dim=2,
        perturb=0.3,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
    Case(
        "coupling_affine_spline_chain_ctx",
        lambda: Coupling(coupling_mask(4, "checkerboard"), Chain(Affine(), RationalQuadraticSpline(6, 2.0)), 1, (16,)),
        (4,),
        context_dim=1,
        perturb=0.3,
        data_scale=2.0,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
    Case("coupling_dim2", lambda: AffineCoupling(coupling_mask(2, parity=1), hidden=(8,)), (2,)),
]
