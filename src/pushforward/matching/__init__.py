"""Flow matching: probability paths, couplings, time samplers, models and rectified flow.

Time convention: t = 0 is the source (noise), t = 1 is the data (Lipman et al. 2024, "Flow
Matching Guide and Code"; TorchCFM). Build models by name: ``pf.build("fm" | "ot-fm" | "vp-fm" |
"sb-fm" | "rectified", dim)``; straighten them with :func:`reflow` and :func:`distill`.
"""

from pushforward.matching.couplings import (
    IndependentCoupling,
    OTCoupling,
    PairCoupling,
    SinkhornCoupling,
    get_coupling,
    transport_cost,
)
from pushforward.matching.models import FlowMatching
from pushforward.matching.paths import (
    AffinePath,
    BrownianBridgePath,
    CondOTScheduler,
    CosineScheduler,
    PathSample,
    PolynomialScheduler,
    Scheduler,
    SubVPScheduler,
    VEScheduler,
    VPScheduler,
    expand_time,
    get_scheduler,
)
from pushforward.matching.rectified import RectifiedFlow, distill, generate_pairs, reflow, straightness
from pushforward.matching.time_samplers import (
    BetaTime,
    LogitNormalTime,
    PowerTime,
    TimeSampler,
    UniformTime,
    get_time_sampler,
)

__all__ = [
    "AffinePath",
    "BetaTime",
    "PowerTime",
    "BrownianBridgePath",
    "CondOTScheduler",
    "CosineScheduler",
    "FlowMatching",
    "IndependentCoupling",
    "LogitNormalTime",
    "OTCoupling",
    "PairCoupling",
    "PathSample",
    "PolynomialScheduler",
    "RectifiedFlow",
    "Scheduler",
    "SinkhornCoupling",
    "SubVPScheduler",
    "TimeSampler",
    "UniformTime",
    "VEScheduler",
    "VPScheduler",
    "distill",
    "expand_time",
    "generate_pairs",
    "get_coupling",
    "get_scheduler",
    "get_time_sampler",
    "reflow",
    "straightness",
    "transport_cost",
]
