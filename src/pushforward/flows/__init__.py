"""Normalizing flows: a bijection composed with a base distribution.

``log p(x) = log p_base(z) + log|det dz/dx|`` with ``z = T(x)`` (change of variables).
:class:`NormalizingFlow` takes any stack of :mod:`pushforward.transforms`; the named models of
``pf.build`` are its subclasses, one module per family, each registering its names:

==================  ==============================================  =========================
module              classes                                         names
==================  ==============================================  =========================
``coupling``        :class:`CouplingFlow`, :class:`NICE`,            ``nice``, ``realnvp``
                    :class:`RealNVP`
``autoregressive``  :class:`AutoregressiveFlow`, :class:`MAF`,       ``maf``, ``iaf``
                    :class:`IAF`
``spline``          :class:`NeuralSplineFlow`                       ``nsf``
``elementary``      :class:`PlanarFlow`, :class:`RadialFlow`,        ``planar``, ``radial``,
                    :class:`ResidualFlow`, :class:`CDFFlow`          ``residual``, ``cdf``
``glow``            :class:`GlowFlow`                               ``glow``
``neural``          :class:`NeuralAutoregressiveFlow`,              ``naf``, ``unaf``
                    :class:`UnconstrainedNeuralAutoregressiveFlow`
``polynomial``      :class:`BernsteinFlow`                          ``bernstein``
``circular``        :class:`CircularSplineFlow`                     ``circular-nsf``
``tarflow``         :class:`TarFlow`                                ``tarflow``
==================  ==============================================  =========================
"""

from pushforward.flows.autoregressive import IAF, MAF, AutoregressiveFlow
from pushforward.flows.base import ImageFlow, NormalizingFlow
from pushforward.flows.circular import CircularSplineFlow
from pushforward.flows.coupling import NICE, CouplingFlow, RealNVP
from pushforward.flows.elementary import CDFFlow, PlanarFlow, RadialFlow, ResidualFlow
from pushforward.flows.glow import GlowFlow
from pushforward.flows.neural import NeuralAutoregressiveFlow, UnconstrainedNeuralAutoregressiveFlow
from pushforward.flows.polynomial import BernsteinFlow
from pushforward.flows.spline import NeuralSplineFlow
from pushforward.flows.tarflow import TarFlow

__all__ = [
    "BernsteinFlow",
    "CircularSplineFlow",
    "NeuralAutoregressiveFlow",
    "TarFlow",
    "UnconstrainedNeuralAutoregressiveFlow",
    "IAF",
    "MAF",
    "NICE",
    "AutoregressiveFlow",
    "CDFFlow",
    "CouplingFlow",
    "GlowFlow",
    "NeuralSplineFlow",
    "ImageFlow",
    "NormalizingFlow",
    "PlanarFlow",
    "RadialFlow",
    "RealNVP",
    "ResidualFlow",
]
