"""Neural spline flows: ``nsf``, rational-quadratic splines on a coupling or MADE conditioner."""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._validate import check_choice
from pushforward.distributions import StandardNormal
from pushforward.flows.autoregressive import autoregressive_layers
from pushforward.flows.base import NormalizingFlow
from pushforward.flows.coupling import coupling_layers
from pushforward.registry import register
from pushforward.transforms.elementwise import Affine, Chain
from pushforward.transforms.splines import RationalQuadraticSpline
from pushforward.transforms.tails import SinhArcsinh

__all__ = ["NeuralSplineFlow"]

KINDS = ("auto", "autoregressive", "coupling")


@register("nsf", "Neural spline flow: rational-quadratic splines, autoregressive or coupling (Durkan et al. 2019)",
          legacy={"tails": False, "scale_bound": 3.0})
class NeuralSplineFlow(NormalizingFlow):
    """Neural spline flow (Durkan et al. 2019): monotone rational-quadratic splines over N(0, I).

    Each layer maps ``[N, dim]`` elementwise by a spline with ``bins`` bins on
    ``[-tail_bound, tail_bound]`` (identity outside). ``kind="coupling"`` (NSF-C; one pass both
    ways, needs ``dim >= 2``, masks as in :class:`pushforward.flows.CouplingFlow`) or
    ``kind="autoregressive"`` (NSF-AR, MADE conditioner with ``order`` as in
    :class:`pushforward.flows.AutoregressiveFlow`; one-pass density, ``dim``-pass sampling;
    ``dim = 1`` works). ``"auto"``: coupling for ``dim >= 2``, else autoregressive (why: the
    "Choices behind the defaults" section of ``docs/concepts/normalizing-flows.md``).
    ``affine=True`` puts a conditioned affine map before each spline (same conditioner), so heavy
    tails outside ``[-B, B]`` can be rescaled (funnel-like data); its log-scale is soft-clamped
    to ``(-scale_bound, scale_bound)`` per layer (default 6: a standardized funnel needs
    log-scales up to about 7 to undo ``x_j = e^(v/2) eps_j``; measured against 3, the bound of
    ``maf``/``realnvp``, in ``benchmarks/results/density_tails.md``). Checkpoints saved before
    the option existed reload with ``scale_bound=3``.
    ``tails=True`` puts a learned per-dimension :class:`pushforward.transforms.SinhArcsinh`
    first (data side), initialised from the first batch: it compresses independent heavy-tailed
    marginals (Student-t) into the splines' range and keeps light-tailed ones, and a scale shared
    across dimensions (funnels), affine. A
    checkpoint whose config lacks ``tails`` (saved before it existed) reloads with
    ``tails=False``, the architecture it was built with.
    """

    def __init__(
        self, dim: int, context_dim: int = 0, *, kind: str = "auto", transforms: int = 4,
        hidden: Sequence[int] = (128, 128), activation: str = "relu", bins: int = 16, tail_bound: float = 5.0,
        mask: str = "alternate", order: str = "alternate", affine: bool = True,
        tails: bool = True, scale_bound: float = 6.0,
    ):
        check_choice(kind, KINDS, "kind")
        f = RationalQuadraticSpline(bins, tail_bound)
        if affine:
            f = Chain(Affine(scale_bound), f)
        if kind == "coupling" or (kind == "auto" and dim >= 2):
            layers = coupling_layers(dim, context_dim, f, transforms, hidden, activation, mask, name="nsf")
        else:
            layers = autoregressive_layers(dim, context_dim, f, transforms, hidden, activation, order)
        if not isinstance(tails, bool):
            raise ValueError(f"tails must be True or False, got {tails!r}")
        if tails:
            layers = [SinhArcsinh(dim), *layers]
        super().__init__(layers, StandardNormal(dim), context_dim=context_dim)
