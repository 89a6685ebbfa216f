"""Generic-suite cases for planar, radial, residual and CDF transforms."""

from _cases import Case
from pushforward.transforms.cdf import MixtureCDF
from pushforward.transforms.planar import Planar, Radial
from pushforward.transforms.residual import ResidualBlock, ScaleShift

CASES = [
    # Planar/radial start at the identity: perturb enough that the root finds do real work.
    Case("planar", lambda: Planar(3), (3,), perturb=0.5),
    Case("planar_context", lambda: Planar(3, context_dim=2, hidden=(8,)), (3,), context_dim=2, perturb=0.5),
    Case("planar_1d", lambda: Planar(1), (1,), perturb=0.5),
    Case("radial", lambda: Radial(3), (3,), perturb=0.5),
    Case("radial_context", lambda: Radial(3, context_dim=2, hidden=(8,)), (3,), context_dim=2, perturb=0.5),
    # Residual blocks: fixed-point inverse, so the round trip is looser than 1e-7 only by choice.
    Case("residual_exact", lambda: ResidualBlock(3, hidden=(16, 16), logdet="exact"), (3,), perturb=0.3, inverse_tol=1e-9),
    Case(
        "residual_exact_context",
        lambda: ResidualBlock(3, context_dim=2, hidden=(16,), logdet="exact"),
        (3,), context_dim=2, perturb=0.3, inverse_tol=1e-9,
    ),
    Case("scale_shift", lambda: ScaleShift(3), (3,)),
    Case("cdf_logistic", lambda: MixtureCDF(4, "logistic"), (1,), perturb=0.3, inverse_tol=1e-9),
    Case("cdf_gaussian", lambda: MixtureCDF(4, "gaussian"), (1,), perturb=0.3, inverse_tol=1e-9),
    Case(
        "cdf_context",
        lambda: MixtureCDF(3, "logistic", context_dim=2, hidden=(8,)),
        (1,), context_dim=2, perturb=0.3, inverse_tol=1e-9,
    ),
]
