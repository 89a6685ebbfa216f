"""Continuous normalizing flows: ODE integration, divergences, likelihood by the instantaneous
change of variables, and ODE-defined models (t = 0 noise, t = 1 data)."""

from pushforward.continuous.cnf import ContinuousFlow, ode_log_prob
from pushforward.continuous.divergence import divergence_exact, divergence_hutchinson, make_probe
from pushforward.continuous.ode import ADAPTIVE_SOLVERS, FIXED_SOLVERS, SOLVERS, NonFiniteError, odeint

__all__ = [
    "ADAPTIVE_SOLVERS",
    "FIXED_SOLVERS",
    "SOLVERS",
    "ContinuousFlow",
    "NonFiniteError",
    "divergence_exact",
    "divergence_hutchinson",
    "make_probe",
    "ode_log_prob",
    "odeint",
]
