"""Numerical inverses of elementwise monotone maps: bracketing, bisection, implicit gradients.

For a strictly increasing ``f: R -> R`` (given by a map's ``forward(x, theta) -> (z, log f')``),
``x = f^{-1}(z)`` is found by doubling a bracket ``[lo, hi]`` until ``f(lo) <= z <= f(hi)`` and
then refining by Newton steps safeguarded by bisection (a step leaving the bracket is
replaced by its midpoint) until the step, or the bracket, is below ``tol``. Bisection has no gradient, so one Newton step with a
detached derivative is applied last: ``x = x* - (f(x*; theta) - z) / f'(x*)``. Its value is
``x*`` to second order, and its gradient is the implicit-function gradient
``dx/dz = 1/f'(x)``, ``dx/dtheta = -(df/dtheta) / f'(x)``, so sampling stays reparameterised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MAX_EXPAND = 64  # bracket doublings (|x| up to 2^64 times the initial half-width)
MAX_BISECT = 200  # iterations: bisection alone reaches float64 resolution on a 2^64 bracket


def bisect_inverse(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]], z: Tensor, tol: float = 1e-6, width: float = 1.0
) -> Tensor:
    """``x`` with ``fn(x)[0] = z`` for an increasing elementwise ``fn``, to ``|x - x*| < tol``.

    Args:
        fn: ``x [...] -> (f(x) [...], log f'(x) [...])``, strictly increasing, onto ``R``.
        z: target values ``[...]``.
        tol: absolute tolerance on ``x`` (stops when every step or bracket is smaller).
        width: initial half-width of the bracket around 0.

    Returns:
        ``x [...]``, differentiable w.r.t. ``z`` and the parameters inside ``fn`` (implicit
        gradient through one Newton step).
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    with torch.no_grad():
        zd = z.detach()
        lo = torch.full_like(zd, -width)
        hi = torch.full_like(zd, width)
        for _ in range(MAX_EXPAND):
            low_bad = fn(lo)[0] > zd
            high_bad = fn(hi)[0] < zd
            if not bool(low_bad.any() or high_bad.any()):
                break
            # Push the wrong end outwards, doubling its distance from 0 (plus ``width``): the
            # bracket grows geometrically and keeps its valid end.
            lo = torch.where(low_bad, 2 * lo - width, lo)
            hi = torch.where(high_bad, 2 * hi + width, hi)
        # Safeguarded Newton: a Newton step where it stays inside the bracket, else bisection;
        # the bracket shrinks every iteration, so it converges, and quadratically near the root.
        x = (0.5 * (lo + hi)).clamp(-width, width)
        for _ in range(MAX_BISECT):
            fx, ladj = fn(x)
            r = fx - zd
            lo = torch.where(r < 0, x, lo)
            hi = torch.where(r > 0, x, hi)
            new = x - r / torch.exp(ladj)
            outside = ~((new > lo) & (new < hi))
            new = torch.where(outside, 0.5 * (lo + hi), new)
            done = bool(((new - x).abs() < tol).all()) or bool(((hi - lo) < tol).all())
            x = new
            if done:
                break
    fx, ladj = fn(x)
    return x - (fx - z) / torch.exp(ladj).detach()
