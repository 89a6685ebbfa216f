"""Score-based models: forward SDEs (VP, sub-VP, VE), denoising score matching, reverse-SDE and
predictor-corrector samplers, and the probability-flow ODE (Song et al. 2021).

An SDE is a Gaussian path of :mod:`pushforward.matching.paths` plus its diffusion coefficient;
the conversions between noise, score, data and velocity are the path's, in library time. Inside
this package the SDE and the network run in diffusion time ``s`` (``s = 0`` data, ``s = 1``
noise); the library's time is ``t = 1 - s`` (``t = 0`` noise, ``t = 1`` data), converted at
:class:`ScoreModel`'s boundary. See :mod:`pushforward.score.sde`.
"""

from pushforward.score.model import ScoreModel
from pushforward.score.sde import SDE, SDES, VESDE, VPSDE, SDEPrior, SubVPSDE, default_sigma_max, make_sde

__all__ = [
    "SDE",
    "SDES",
    "VESDE",
    "VPSDE",
    "SDEPrior",
    "ScoreModel",
    "SubVPSDE",
    "default_sigma_max",
    "make_sde",
]
