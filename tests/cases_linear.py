"""Generic-suite cases: permutations, LU-linear, ActNorm (with data-dependent init)."""

from _cases import Case
from pushforward.transforms.linear import ActNorm, LULinear, Permutation

CASES = [
    Case("permutation_reverse", lambda: Permutation.reverse(4), (4,)),
    Case("permutation_random", lambda: Permutation.random(5, seed=2), (5,)),
    Case("lu_linear", lambda: LULinear(4), (4,), perturb=0.3),
    Case("lu_linear_random_perm_bias", lambda: LULinear(5, permutation="random", seed=1, bias=True), (5,), perturb=0.3),
    # D = 1: L and U have no off-diagonal entries, so those parameters get no gradient.
    Case("lu_linear_dim1", lambda: LULinear(1), (1,), perturb=0.3, grads_all=False),
    Case("actnorm", lambda: ActNorm(3), (3,), data_scale=3.0, init_data=True),
    Case("actnorm_uninitialized", lambda: ActNorm(2), (2,), perturb=0.5),
]
