"""Flows on manifolds: the sphere and the flat torus (Riemannian flow matching)."""

from pushforward.manifolds.geometry import FlatTorus, Manifold, Sphere, wrap
from pushforward.manifolds.models import RiemannianFlowMatching, SphereFlowMatching, TorusFlowMatching
from pushforward.manifolds.solvers import manifold_odeint

__all__ = ["FlatTorus", "Manifold", "RiemannianFlowMatching", "Sphere", "SphereFlowMatching",
           "TorusFlowMatching", "manifold_odeint", "wrap"]
