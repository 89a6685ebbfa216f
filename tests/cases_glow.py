import torch

from _cases import Case
from pushforward.transforms import Compose, Inverse
from pushforward.transforms.glow import (
    ActNorm2d,
    AffineCoupling2d,
    GlowStep,
    InvertibleConv1x1,
    MultiScaleGlow,
    Squeeze,
)
from pushforward.transforms.preprocess import Logit, ScaleToUnit


def _unit(shape, lo=0.05, hi=0.95):
    def fn(n, g):
        return lo + (hi - lo) * torch.rand((n, *shape), generator=g)

    return fn


def _bins(shape, num_bins):
    def fn(n, g):
        return torch.rand((n, *shape), generator=g) * num_bins - 0.5

    return fn


CASES = [
    # The generic suite wants shape-preserving maps: squeeze, mix channels, unsqueeze.
    Case("glow_squeeze_conv_1x4x4", lambda: Compose(Squeeze(), InvertibleConv1x1(4), Inverse(Squeeze())), (1, 4, 4)),
    Case("glow_squeeze_conv_2x4x4", lambda: Compose(Squeeze(), InvertibleConv1x1(8), Inverse(Squeeze())), (2, 4, 4)),
    Case("glow_actnorm_4x2x2", lambda: ActNorm2d(4), (4, 2, 2), init_data=True, data_scale=3.0),
    Case("glow_invconv_4x2x2", lambda: InvertibleConv1x1(4), (4, 2, 2)),
    Case("glow_invconv_2x4x4", lambda: InvertibleConv1x1(2), (2, 4, 4)),
    Case("glow_coupling_4x2x2", lambda: AffineCoupling2d(4, hidden_channels=8), (4, 2, 2)),
    Case("glow_coupling_odd_3x2x2", lambda: AffineCoupling2d(3, hidden_channels=8), (3, 2, 2)),
    Case("glow_coupling_ctx_2x4x4", lambda: AffineCoupling2d(2, hidden_channels=8, context_dim=3), (2, 4, 4), context_dim=3),
    Case("glow_step_4x2x2", lambda: GlowStep(4, hidden_channels=8), (4, 2, 2), init_data=True),
    Case("glow_scale_to_unit", lambda: ScaleToUnit(17), (1, 2, 2), data_fn=_bins((1, 2, 2), 17)),
    Case("glow_scale_to_unit_range", lambda: ScaleToUnit(256, 1 / 255), (3,), data_fn=_unit((3,), 0.0, 1.0)),
    Case("glow_logit", lambda: Logit(0.05), (1, 2, 2), data_fn=_unit((1, 2, 2), 0.0, 1.0)),
    Case(
        "glow_multiscale_1x4x4",
        lambda: MultiScaleGlow((1, 4, 4), levels=2, steps_per_level=1, hidden_channels=8),
        (1, 4, 4),
        init_data=True,
    ),
    Case(
        "glow_multiscale_ctx_2x4x4",
        lambda: MultiScaleGlow((2, 4, 4), levels=2, steps_per_level=1, hidden_channels=8, context_dim=2),
        (2, 4, 4),
        context_dim=2,
    ),
    Case(
        "glow_multiscale_noprior_1x4x4",
        lambda: MultiScaleGlow((1, 4, 4), levels=1, steps_per_level=2, hidden_channels=8, split_prior=False),
        (1, 4, 4),
    ),
]
