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
from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward._validate import check_choice, check_positive_int
from pushforward.continuous.ode import SOLVERS, odeint
from pushforward.matching.couplings import IndependentCoupling
from pushforward.matching.models import FlowMatching
from pushforward.registry import register
from pushforward.train.control import make_optimizer


class RectifiedFlow(FlowMatching):
    """Rectified flow (Liu et al. 2023): :class:`FlowMatching` on the straight path, with the whole
    recipe inside one :func:`pushforward.fit` budget.

    ``pf.fit(model, x, max_time=T | steps=S)`` runs the stages of :meth:`fit_stages`
    (``pushforward.train.stages``): ``1-rf`` (flow matching on the data), then ``reflow_rounds``
    rounds ``reflow-k`` (at the stage's start ``reflow_pairs`` noise/data pairs are drawn from the
    model's own ODE, :func:`generate_pairs`, and the model, warm-started, trains on them with the
    straight-path loss), then, with ``distill=True``, ``distill`` (one-step regression
    ``v(x_0, 0) -> x_1 - x_0`` on fresh pairs; afterwards ``sample(n)`` takes one Euler step).
    ``budget_split`` gives the stages' shares of the budget (default: 1-RF 0.5, the rest split
    evenly); pair generation is paid from the stage it starts and, under a time budget, takes at
    most half of that stage's share (fewer than ``reflow_pairs`` pairs then; ``history["stages"]``
    records the count). A resumed run continues its stage
    (the pairs and the stage index are part of the model's state).

    Options as :class:`FlowMatching` (``path`` must be ``"ot"`` with ``sigma_min = 0``), plus:

    Args:
        reflow_rounds: reflow rounds after 1-RF (0: plain 1-rectified flow).
        distill: end with one-step distillation.
        budget_split: the stages' fractions (as many as stages, summing to 1) or None.
        reflow_pairs: pairs drawn at each reflow/distillation stage.
        pair_solver, pair_steps: the ODE solver of the pairs (default adaptive ``dopri5``, 1e-4).

    Registered as ``rectified`` (Euler, 32 steps by default, one reflow round); the functions
    :func:`reflow`, :func:`distill` do the same steps by hand.
    """

    straight_path_only = True

    def __init__(
        self,
        dim: int | Sequence[int] | None = None,
        context_dim: int = 0,
        image_shape: Sequence[int] | None = None,
        *,
        reflow_rounds: int = 1,
        distill: bool = False,
        budget_split: Sequence[float] | None = None,
        reflow_pairs: int = 10_000,
        pair_solver: str = "dopri5",
        pair_steps: int | None = None,
        **options,  # FlowMatching's (the registry records them from its signature)
    ):
        super().__init__(dim, context_dim, image_shape, **options)
        if isinstance(reflow_rounds, bool) or not isinstance(reflow_rounds, int) or reflow_rounds < 0:
            raise ValueError(f"reflow_rounds must be an int >= 0, got {reflow_rounds!r}")
        check_choice(pair_solver, SOLVERS, "pair_solver")
        self.reflow_rounds, self.distill_stage = reflow_rounds, bool(distill)
        self.reflow_pairs = check_positive_int(reflow_pairs, "reflow_pairs")
        self.pair_solver, self.pair_steps = pair_solver, pair_steps
        names = self.stage_names()
        if budget_split is None:
            rest = len(names) - 1
            budget_split = [1.0] if rest == 0 else [0.5] + [0.5 / rest] * rest
        split = [float(f) for f in budget_split]
        if len(split) != len(names) or any(not f > 0 for f in split) or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"budget_split must be {len(names)} fractions > 0 summing to 1 for the stages "
                             f"{names}, got {budget_split!r}")
        self.budget_split = split
        # The recipe's state, saved with the model: the stage and the current stage's pairs.
        self.register_buffer("_fit_stage", torch.zeros((), dtype=torch.long))
        for name in ("pairs_x0", "pairs_x1", "pairs_c"):
            self.register_buffer(name, torch.zeros(0))

    # ----------------------------------------------------------------- the staged recipe
    def stage_names(self) -> list[str]:
        """``["1-rf", "reflow-2", ..., ("distill")]`` (reflow-k trains the k-rectified flow)."""
        return (["1-rf"] + [f"reflow-{k + 2}" for k in range(self.reflow_rounds)]
                + (["distill"] if self.distill_stage else []))

    def fit_stages(self) -> list[tuple[str, float]]:
        """The stages and their budget fractions (the ``pf.fit`` hook, ``pushforward.train.stages``)."""
        return list(zip(self.stage_names(), self.budget_split))

    @property
    def fit_stage(self) -> int:
        """The index of the stage the model is in (0: 1-RF)."""
        return int(self._fit_stage)

    @fit_stage.setter
    def fit_stage(self, value: int) -> None:
        self._fit_stage.fill_(int(value))

    @torch.no_grad()
    def begin_stage(self, index: int, name: str, draw, max_time: float | None = None) -> dict:
        """Draw ``reflow_pairs`` pairs of the current flow (contexts from ``draw()`` batches), or as
        many as ``max_time`` seconds allow (at least one batch); returns ``{"pairs": n}``."""
        context = None
        if self.context_dim:
            cs, n = [], 0
            while n < self.reflow_pairs:
                _, cb = draw()
                cs.append(cb)
                n += cb.shape[0]
            context = torch.cat(cs)[:self.reflow_pairs]
        was = self.training
        self.eval()
        x0, x1 = generate_pairs(self, self.reflow_pairs, context, solver=self.pair_solver, steps=self.pair_steps,
                                max_time=max_time)
        self.train(was)
        context = None if context is None else context[:x0.shape[0]]
        self.pairs_x0, self.pairs_x1 = x0, x1
        self.pairs_c = context if context is not None else torch.zeros(0, device=x0.device, dtype=x0.dtype)
        if name != "distill":
            self.reflow_round = index + 1
        return {"pairs": int(x0.shape[0])}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The pairs' shapes are the saved ones (empty in a freshly built model).
        for name in ("pairs_x0", "pairs_x1", "pairs_c"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.fit_stage == 0 or self.pairs_x0.numel() == 0:
            return super()._loss(x, context)
        idx = torch.randint(0, self.pairs_x0.shape[0], (x.shape[0],), device=self.pairs_x0.device)
        x0, x1 = self.pairs_x0[idx], self.pairs_x1[idx]
        c = self.pairs_c[idx] if self.pairs_c.numel() else None
        if self.stage_names()[self.fit_stage] == "distill":
            t = x0.new_zeros(x0.shape[0])
            return (self.velocity_field(c, guidance=1.0).velocity(x0, t) - (x1 - x0)).pow(2).mean()
        return self.paired_loss(x0, x1, c)

    def _sample(self, n, context, generator=None, steps=None, solver=None, **options):
        if steps is None and solver is None and self.distill_stage and self.fit_stage == len(self.stage_names()) - 1:
            steps, solver = 1, "euler"  # a distilled model is a one-step generator
        return super()._sample(n, context, generator, steps=steps, solver=solver, **options)


register("rectified", RectifiedFlow,
         "Rectified flow (Liu et al. 2023): straight path; pf.fit runs 1-RF then reflow (2-RF)",
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
    max_time: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Noise/data pairs ``(x_0, x_1 = Z_1(x_0))`` of the model's flow, in standardized units.

    x_0 ``[n, ...]`` ~ the base; x_1 ``[n, ...]`` by solving the ODE (default adaptive ``dopri5``
    at 1e-4: reflow needs the flow's own coupling, not its discretisation error).
    context ``[n, C]`` for conditional models (one pair per row).
    ``max_time``: stop after the batch that would otherwise run past this many seconds (batches of
    at most 1024 then; at least one): the first ``m <= n`` pairs are returned.
    """
    context = _context(model, context, n)
    x0 = model.base.sample(n, context, generator)
    if max_time is not None:
        batch_size = min(batch_size, 1024)
    out, start, done = [], time.perf_counter(), 0
    for i in range(0, n, batch_size):
        t0 = time.perf_counter()
        c = None if context is None else context[i:i + batch_size]
        xs = odeint(model.velocity_field(c), x0[i:i + batch_size], [0.0, 1.0],
                    solver=solver, steps=steps, atol=atol, rtol=rtol)
        out.append(xs[-1])
        done = i + xs.shape[1]
        now = time.perf_counter()
        # the next batch is predicted to take as long as this one
        if max_time is not None and now - start + (now - t0) > max_time:
            break
    return x0[:done], torch.cat(out)


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
    opt = make_optimizer(params, lr)
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
