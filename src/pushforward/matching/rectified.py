"""Rectified flow: reflow, straightness, and one-step distillation (Liu et al. 2023, "Flow
Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow").

A trained flow ``Z`` defines a deterministic coupling ``(Z_0, Z_1)`` of noise and data. Training
a new flow on those pairs with the straight path (*reflow*, k-rectified flow) keeps the marginals
and does not increase any convex transport cost, and the paths get straighter, so few Euler steps
(eventually one) suffice. Straightness (Liu et al. eq. 8):

    S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_t/dt ||^2 dt ,

zero exactly for straight trajectories. All functions work in the model's standardized units.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import Tensor

from pushforward.continuous.ode import odeint
from pushforward.matching.couplings import IndependentCoupling
from pushforward.matching.models import FlowMatching
from pushforward.registry import register


class RectifiedFlow(FlowMatching):
    """1-rectified flow (Liu et al. 2023): :class:`FlowMatching` on the straight path only.

    Same options as :class:`FlowMatching`; ``path`` must be ``"ot"`` with ``sigma_min = 0``.
    Registered as ``rectified`` with Euler sampling (32 steps) by default;
    :func:`reflow` returns the next rectified flow trained on the model's own noise/data pairs,
    :func:`distill` a one-step generator.
    """

    straight_path_only = True


register("rectified", RectifiedFlow,
         "Rectified flow (Liu et al. 2023): straight path; use pf.matching.reflow to straighten",
         preset={"solver": "euler", "steps": 32})


def _context(model: FlowMatching, context: Tensor | None, n: int) -> Tensor | None:
    return model._check_context(context, n)


@torch.no_grad()
def generate_pairs(
    model: FlowMatching,
    n: int,
    context: Tensor | None = None,
    *,
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    batch_size: int = 8192,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Noise/data pairs ``(x_0, x_1 = Z_1(x_0))`` of the model's flow, in standardized units.

    x_0 ``[n, ...]`` ~ the base; x_1 ``[n, ...]`` by solving the ODE (default adaptive ``dopri5``
    at 1e-4: reflow needs the flow's own coupling, not its discretisation error).
    context ``[n, C]`` for conditional models (one pair per row).
    """
    context = _context(model, context, n)
    x0 = model.base.sample(n, context, generator)
    out = []
    for i in range(0, n, batch_size):
        c = None if context is None else context[i:i + batch_size]
        xs = odeint(model.velocity_field(c), x0[i:i + batch_size], [0.0, 1.0],
                    solver=solver, steps=steps, atol=atol, rtol=rtol)
        out.append(xs[-1])
    return x0, torch.cat(out)


@torch.no_grad()
def straightness(
    model: FlowMatching,
    n: int = 1000,
    context: Tensor | None = None,
    *,
    steps: int = 64,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Liu et al.'s straightness ``S = int_0^1 E ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt`` (0: straight).

    Estimated on ``n`` Euler trajectories of ``steps`` steps (the Riemann sum of the integral),
    in standardized units, squared norm summed over dimensions.
    """
    context = _context(model, context, n if x0 is None else x0.shape[0])
    if x0 is None:
        x0 = model.base.sample(n, context, generator)
    times = torch.linspace(0.0, 1.0, steps + 1).tolist()
    traj = odeint(model.velocity_field(context), x0, times, solver="euler", steps=steps)
    disp = traj[-1] - traj[0]
    vel = (traj[1:] - traj[:-1]) * steps
    dev = (vel - disp[None]).pow(2).reshape(steps, x0.shape[0], -1).sum(-1)
    return float(dev.mean())


def _train_on_pairs(model, x0, x1, context, *, steps, max_time, batch_size, lr, at_zero, generator):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = x0.shape[0]
    start = time.perf_counter()
    losses = []
    for k in range(steps):
        # Cosine decay over the budget: steps, or the time budget when it binds first.
        p = k / steps if max_time is None else max(k / steps, (time.perf_counter() - start) / max_time)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(x0.device)
        c = None if context is None else context[idx]
        if at_zero:
            # One-step distillation: v(x_0, 0) regresses onto the displacement x_1 - x_0.
            t = x0.new_zeros(idx.shape[0])
            loss = (model.velocity_field(c, guidance=1.0).velocity(x0[idx], t) - (x1[idx] - x0[idx])).pow(2).mean()
        else:
            loss = model.paired_loss(x0[idx], x1[idx], c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if max_time is not None and time.perf_counter() - start > max_time:
            break
    model.eval()
    return losses


def _retrain(model: FlowMatching, n: int, context: Tensor | None, *, at_zero: bool, steps: int,
             max_time: float | None, batch_size: int | None, lr: float | None, pair_solver: str,
             pair_steps: int | None, generator: torch.Generator | None, reset: bool = False) -> FlowMatching:
    """A copy of ``model`` trained on ``n`` of its own noise/data pairs (reflow or distillation)."""
    x0, x1 = generate_pairs(model, n, context, solver=pair_solver, steps=pair_steps, generator=generator)
    context = _context(model, context, n)
    new = copy.deepcopy(model)
    if reset:
        for m in new.net.modules():
            if hasattr(m, "reset_parameters") and m is not new.net:
                m.reset_parameters()
    new.history = _train_on_pairs(new, x0, x1, context, steps=steps, max_time=max_time,
                                  batch_size=batch_size or model.default_batch_size,
                                  lr=lr or model.default_lr, at_zero=at_zero, generator=generator)
    return new


def reflow(model: FlowMatching, n: int = 10_000, context: Tensor | None = None, *, steps: int = 2000,
           max_time: float | None = None, batch_size: int | None = None, lr: float | None = None,
           warm_start: bool = True, pair_solver: str = "dopri5", pair_steps: int | None = None,
           generator: torch.Generator | None = None) -> FlowMatching:
    """k-rectified flow -> (k+1)-rectified flow: retrain on the model's own noise/data pairs.

    Draws ``n`` pairs with :func:`generate_pairs` (context ``[n, C]`` for conditional models),
    then trains a copy of ``model`` (``warm_start``, as Liu et al. do; else re-initialised) with
    the straight-path loss on the fixed pairs for ``steps`` Adam steps (cosine learning rate) or
    ``max_time`` seconds. Returns the new model (``reflow_round`` counts the rounds); ``model``
    is unchanged. The coupling of the result is independent: the pairs are already coupled.
    """
    new = _retrain(model, n, context, at_zero=False, steps=steps, max_time=max_time, batch_size=batch_size, lr=lr,
                   pair_solver=pair_solver, pair_steps=pair_steps, generator=generator, reset=not warm_start)
    new.coupling = IndependentCoupling()
    new.reflow_round = getattr(model, "reflow_round", 1) + 1
    if new.config is not None:
        new.config = {**new.config, "coupling": "independent"}
    return new


def distill(model: FlowMatching, n: int = 10_000, context: Tensor | None = None, *, steps: int = 2000,
            max_time: float | None = None, batch_size: int | None = None, lr: float | None = None,
            pair_solver: str = "dopri5", generator: torch.Generator | None = None) -> FlowMatching:
    """Distil a (rectified) flow into a one-step generator ``x_1 = x_0 + v(x_0, 0)`` (Liu et al. sec. 2.3).

    Trains a copy of ``model`` on its own pairs with ``E ||(x_1 - x_0) - v(x_0, 0)||^2``; the
    result samples with one Euler step by default (``sample(n)``). Its ``log_prob`` is not a
    meaningful density (only ``v(., 0)`` was trained).
    """
    student = _retrain(model, n, context, at_zero=True, steps=steps, max_time=max_time, batch_size=batch_size,
                       lr=lr, pair_solver=pair_solver, pair_steps=None, generator=generator)
    student.default_solver, student.default_steps = "euler", 1
    if student.config is not None:
        student.config = {**student.config, "solver": "euler", "steps": 1}
    return student
