"""Score-based models: forward SDEs (VP, sub-VP, VE), denoising score matching, reverse-SDE and
predictor-corrector samplers, and the probability-flow ODE (Song et al. 2021).

Diffusion time ``s`` (``s = 0`` data, ``s = 1`` noise) inside this package; the library's time
is ``t = 1 - s`` (``t = 0`` noise, ``t = 1`` data). See :mod:`pushforward.score.sde`.
"""

from pushforward.score import conversions
from pushforward.score.conversions import (
    GaussianPath,
    eps_from_score,
    eps_from_velocity,
    eps_from_x0,
    pf_ode_drift,
    score_from_eps,
    score_from_velocity,
    score_from_x0,
    velocity_from_eps,
    velocity_from_score,
    velocity_from_x0,
    x0_from_eps,
    x0_from_score,
)
from pushforward.score.model import ScoreModel
from pushforward.score.sde import SDE, VESDE, VPSDE, SDEPrior, SubVPSDE, broadcast_time, default_sigma_max

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "GaussianPath",
    "SDEPrior",
    "ScoreModel",
    "SubVPSDE",
    "broadcast_time",
    "conversions",
    "default_sigma_max",
    "eps_from_score",
    "eps_from_velocity",
    "eps_from_x0",
    "pf_ode_drift",
    "score_from_eps",
    "score_from_velocity",
    "score_from_x0",
    "velocity_from_eps",
    "velocity_from_score",
    "velocity_from_x0",
    "x0_from_eps",
    "x0_from_score",
]
