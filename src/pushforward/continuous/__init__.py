"""Continuous normalizing flows: ODE integration, divergences, likelihood by the instantaneous
change of variables, and ODE-defined models (t = 0 noise, t = 1 data)."""

from pushforward.continuous.cnf import ContinuousFlow, Field, ode_log_prob
from pushforward.continuous.divergence import (
    EXACT_METHODS,
    activation_and_derivative,
    divergence_exact,
    divergence_hutchinson,
    make_probe,
    mlp_divergence,
    network_divergence,
)
from pushforward.continuous.ffjord import FFJORD, ConcatSquashField
from pushforward.continuous.ode import ADAPTIVE_SOLVERS, FIXED_SOLVERS, SOLVERS, NonFiniteError, odeint

__all__ = [
    "ADAPTIVE_SOLVERS",
    "EXACT_METHODS",
    "FFJORD",
    "FIXED_SOLVERS",
    "SOLVERS",
    "ConcatSquashField",
    "ContinuousFlow",
    "Field",
    "NonFiniteError",
    "activation_and_derivative",
    "divergence_exact",
    "divergence_hutchinson",
    "make_probe",
    "mlp_divergence",
    "network_divergence",
    "ode_log_prob",
    "odeint",
]
