"""Generic-suite cases: NAF (sigmoidal), UNAF (monotone integral), Bernstein polynomial MADE
layers, circular spline couplings on the torus, and TarFlow blocks."""

import math

import torch

from _cases import Case
from pushforward.transforms.autoregressive import MaskedAutoregressive
from pushforward.transforms.circular import CircularCoupling, CircularSpline
from pushforward.transforms.elementwise import Affine, Chain
from pushforward.transforms.neural import MonotoneIntegral, SigmoidalMap
from pushforward.transforms.polynomial import BernsteinPolynomial
from pushforward.transforms.tarflow import TarFlowBlock


def _angles(shape):
    def fn(n, g):
        return (torch.rand((n, *shape), generator=g) * 2 - 1) * (math.pi - 1e-3)

    return fn


CASES = [
    Case("naf_sigmoidal", lambda: MaskedAutoregressive(3, SigmoidalMap(4, tol=1e-12), 0, (16,)), (3,),
         perturb=0.3, data_scale=2.0, inverse_tol=1e-9, ladj_tol=1e-9),
    Case("naf_sigmoidal_ctx_reversed",
         lambda: MaskedAutoregressive(4, SigmoidalMap(3, tol=1e-12), 2, (16,), order="reversed"), (4,),
         context_dim=2, perturb=0.3, inverse_tol=1e-9, ladj_tol=1e-9),
    Case("naf_dim1_ctx", lambda: MaskedAutoregressive(1, SigmoidalMap(4, tol=1e-12), 2, (8,)), (1,), context_dim=2,
         perturb=0.3, inverse_tol=1e-9, ladj_tol=1e-9),
    # The quadrature only moves z (log g(x) is exact), so autograd's Jacobian of the quadrature
    # differs from the ladj by the quadrature error of the derivative: ~1e-9 at 20 intervals.
    Case("unaf_integral", lambda: MaskedAutoregressive(3, MonotoneIntegral(4, (16,), nodes=20, tol=1e-12), 0, (16,)),
         (3,), perturb=0.3, inverse_tol=1e-9, ladj_tol=1e-7),
    Case("unaf_integral_ctx",
         lambda: MaskedAutoregressive(2, MonotoneIntegral(3, (8, 8), nodes=32, tol=1e-12), 3, (16,), order="reversed"),
         (2,), context_dim=3, perturb=0.3, inverse_tol=1e-9, ladj_tol=1e-7),
    Case("bernstein", lambda: MaskedAutoregressive(3, BernsteinPolynomial(8, 2.0, tol=1e-12), 0, (16,)), (3,),
         perturb=0.3, data_scale=1.5, inverse_tol=1e-9, ladj_tol=1e-9),
    Case("bernstein_affine_ctx",
         lambda: MaskedAutoregressive(3, Chain(Affine(), BernsteinPolynomial(5, 3.0, tol=1e-12)), 2, (16,)), (3,),
         context_dim=2, perturb=0.3, data_scale=2.0, inverse_tol=1e-9, ladj_tol=1e-9),
    Case("circular_coupling", lambda: CircularCoupling(torch.tensor([True, False, True]), CircularSpline(5), 0, (16,)),
         (3,), perturb=0.3, data_fn=_angles((3,)), inverse_tol=1e-9, ladj_tol=1e-9),
    Case("circular_coupling_ctx", lambda: CircularCoupling(torch.tensor([False, True]), CircularSpline(4), 2, (16,)),
         (2,), context_dim=2, perturb=0.3, data_fn=_angles((2,)), inverse_tol=1e-9, ladj_tol=1e-9),
    Case("circular_dim1_noctx", lambda: CircularCoupling(torch.tensor([False]), CircularSpline(4)), (1,),
         perturb=0.3, data_fn=_angles((1,)), inverse_tol=1e-9, ladj_tol=1e-9),
    Case("tarflow_block", lambda: TarFlowBlock((1, 4, 4), 2, width=16, layers=1, heads=2), (1, 4, 4), perturb=0.1,
         inverse_tol=1e-9, ladj_tol=1e-9),
    Case("tarflow_block_reversed_ctx",
         lambda: TarFlowBlock((2, 4, 4), 2, width=16, layers=2, heads=4, reverse=True, context_dim=3),
         (2, 4, 4), context_dim=3, perturb=0.1, inverse_tol=1e-9, ladj_tol=1e-9),
]
