"""Generic-suite cases: MAF layers (affine, spline, affine+spline), IAF layers, orderings,
context, and dim 1."""

from _cases import Case
from pushforward.transforms.autoregressive import (
    AffineAutoregressive,
    MaskedAutoregressive,
    SplineAutoregressive,
    inverse_autoregressive,
)
from pushforward.transforms.elementwise import Affine, Chain
from pushforward.transforms.splines import RationalQuadraticSpline

CASES = [
    Case("maf_affine_natural", lambda: AffineAutoregressive(4, hidden=(16, 16)), (4,), perturb=0.3),
    Case(
        "maf_affine_random_ctx",
        lambda: AffineAutoregressive(5, context_dim=2, hidden=(20,), order="random", seed=3, activation="tanh"),
        (5,),
        context_dim=2,
        perturb=0.3,
    ),
    Case(
        "maf_spline_reversed_ctx",
        lambda: SplineAutoregressive(3, context_dim=2, hidden=(16,), order="reversed", bins=4, tail_bound=2.0),
        (3,),
        context_dim=2,
        perturb=0.3,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
    Case(
        "maf_affine_spline_permutation",
        lambda: MaskedAutoregressive(4, Chain(Affine(), RationalQuadraticSpline(5, 3.0)), 0, (16,), order=[2, 0, 3, 1]),
        (4,),
        perturb=0.3,
        data_scale=2.0,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
    Case("maf_dim1_ctx", lambda: SplineAutoregressive(1, context_dim=2, hidden=(8,), bins=4), (1,), context_dim=2, perturb=0.3),
    # Without context a 1-D MADE's input weights are masked out entirely (nothing may precede
    # the only dimension): the layer is a learned fixed map, those weights get no gradient.
    Case("maf_dim1_noctx", lambda: AffineAutoregressive(1, hidden=(8,)), (1,), perturb=0.3, grads_all=False),
    Case("iaf_affine", lambda: inverse_autoregressive(AffineAutoregressive(4, hidden=(16,))), (4,), perturb=0.3),
    Case(
        "iaf_spline_ctx",
        lambda: inverse_autoregressive(SplineAutoregressive(3, context_dim=1, hidden=(16,), bins=4, tail_bound=2.0)),
        (3,),
        context_dim=1,
        perturb=0.3,
        inverse_tol=1e-6,
        ladj_tol=1e-6,
    ),
]
