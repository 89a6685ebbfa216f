"""Posterior estimation for simulation-based inference with any conditional model.

:class:`Posterior` wraps a conditional model ``q(theta | e)`` (any ``pf.build`` name built with
``context_dim=E``) with

- an embedding network ``e = context_net(x)`` for the observations, trained jointly through the
  model's own loss (``pf.fit(posterior, theta, context=x)`` as for any model);
- z-scoring of the observations (per column, from the first training batch or set explicitly);
- a ``prior`` whose support bounds the posterior: samples outside it are rejected and the
  accepted fraction is reported (``posterior.last_acceptance``), as sbi's ``DirectPosterior``
  does for leakage of mass outside a bounded prior.

It is itself a :class:`~pushforward.models.FlowModel` (``loss``, ``log_prob``, ``sample``), so
training, saving, metrics and the CLI treat it like any model. Observations are passed flat,
``[N, prod(obs_shape)]`` (what ``pf.fit`` expects of a context), or in their own shape
``[N, *obs_shape]``; the embedding net sees them as ``[N, *obs_shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward._validate import check_finite, check_int_range
from pushforward.models import FlowModel


def in_support(prior, theta: Tensor) -> Tensor:
    """Whether each row of ``theta`` ``[N, P]`` lies in the support of ``prior`` -> bool ``[N]``.

    ``prior`` is a ``torch.distributions`` distribution (its ``support`` constraint), or any object
    with such a ``support``, or a callable ``theta -> bool [N]``.
    """
    support = getattr(prior, "support", None)
    if support is not None:
        ok = support.check(theta)
        return ok if ok.dim() == 1 else ok.reshape(theta.shape[0], -1).all(-1)
    if callable(prior):
        return torch.as_tensor(prior(theta), dtype=torch.bool, device=theta.device).reshape(theta.shape[0])
    raise TypeError(f"prior must have a .support or be a callable theta -> bool, got {type(prior).__name__}")


# Training defaults that pf.fit reads from the model (train/config.py) and a Posterior takes
# from the model it wraps.
_TRAINING_DEFAULTS = ("default_batch_size", "default_lr", "default_schedule", "default_ema",
                      "default_explode_factor")

# Peak learning rate for flow-matching posteriors (pf.fit's cosine schedule). The conditional
# field must follow observations sharply (two-moons: posterior width ~0.01 of a prior of width
# 2), which Adam at the unconditional default 1e-3 does not reach in a minute. Two-moons, 10k
# simulations, 60 s, C2ST over 2 observations: lr 1e-3 0.765, 3e-3 0.554, 5e-3 0.571, 1e-2 0.514
# (nsf 0.521); 1k simulations: 1e-3 0.753, 1e-2 0.699. Width (256x4: 0.763), batch 1024
# (0.771) and the sampling solver (rk4 64 steps 0.760, dopri5 0.773) did not matter.
MATCHING_POSTERIOR_LR = 1e-2

# How pf.fit trains a posterior when no budget is given (pf.fit's "Training to convergence"):
# validation loss once per epoch (an epoch of at least 10 000 rows), a plateau after `patience`
# epochs without improvement (sbi's stop_after_epochs=20); at the first two plateaus the rate
# drops tenfold from the best weights, the third stops with the best weights; constant rate in
# between (no horizon to anneal over); `max_time` seconds is only a cap. Evidence
# (benchmarks/results/sbi_convergence_tries.md, linear-Gaussian 10-D, 10k simulations): a fixed
# 60 s cosine run overfits after ~12 epochs (expected KL to the exact posterior 0.67 nats);
# stopping at the plateau 0.54-0.56; with the two decays nsf 0.47, fm 0.11 (C2ST 0.522).
CONVERGENCE = {"patience": 20, "max_time": 600.0, "schedule": "constant", "warmup": 0, "epoch_rows": 10_000,
               "lr_decays": 2, "lr_decay_factor": 0.1}

# Flow-matching posteriors converge by the same rule with a longer epoch and a shorter patience:
# their validation loss has a high floor (the conditional-path regression variance) and flattens
# long before the samples stop improving, so 10 000-row epochs stopped them after ~5000 steps
# (two-moons 10k, C2ST 0.731 in 23 s). An epoch of 50 000 rows and patience 10 (two-moons 10k:
# 0.526 in 89 s, 20580 steps; 50 000 rows with patience 20: 0.553 in 169 s; 100 000 rows, patience
# 20: 0.539 in 261 s) is the measured choice (benchmarks/results/sbi_fm_convergence.md).
MATCHING_CONVERGENCE = {**CONVERGENCE, "epoch_rows": 50_000, "patience": 10}


class Posterior(FlowModel):
    """``q(theta | x) = model(theta | context_net(z_score(x)))``, restricted to the prior's support.

    Args:
        model: a conditional :class:`~pushforward.models.FlowModel` over ``theta`` with
            ``context_dim`` = the embedding's output size (the raw observation size without an
            embedding). Its own standardization must be left at the identity: this wrapper folds
            the parameters' standardization in and out.
        context_net: embedding network ``[N, *obs_shape] -> [N, model.context_dim]`` (e.g.
            :class:`~pushforward.nets.embedding.Conv1dEmbedding`), or None (identity).
        obs_shape: shape of one observation (default ``(model.context_dim,)``; needed with an
            embedding whose input is not flat, e.g. ``(M, X)`` for a set of M trials).
        prior: distribution whose ``support`` bounds ``theta`` (``torch.distributions`` or a
            callable ``theta -> bool [N]``); None: unbounded, no rejection.
        max_rounds: rejection rounds before :meth:`sample` gives up (each redraws every rejected row).
    Shapes: theta ``[N, P]``, context ``[N, prod(obs_shape)]`` or ``[N, *obs_shape]``.

    Training: ``pf.fit(posterior, theta, context=x)`` without a budget trains to convergence
    (``default_convergence``, :data:`CONVERGENCE`): the loss on the held-out 10 % is evaluated
    once per epoch (of at least 10 000 rows); after 20 epochs without improvement the learning
    rate drops tenfold from the best weights, twice, and the third such plateau stops training
    (capped at 600 s) with the best validation weights, as sbi's ``NPE.train()`` stops. A
    ``max_time``/``steps``/``epochs`` of the user's replaces the cap; ``patience=None`` trains
    that fixed budget without early stopping.
    """

    default_convergence = CONVERGENCE

    def __init__(self, model: FlowModel, context_net: nn.Module | None = None,
                 obs_shape: Sequence[int] | None = None, prior=None, max_rounds: int = 100):
        if not isinstance(model, FlowModel) or not model.context_dim:
            raise ValueError("Posterior needs a conditional FlowModel (built with context_dim > 0), "
                             f"got {type(model).__name__} with context_dim={getattr(model, 'context_dim', None)}")
        obs_shape = (model.context_dim,) if obs_shape is None else tuple(int(s) for s in obs_shape)
        if not obs_shape or any(s < 1 for s in obs_shape):
            raise ValueError(f"obs_shape must be a non-empty shape of positive sizes, got {obs_shape}")
        super().__init__(model.event_shape, math.prod(obs_shape))
        self.model = model
        self.context_net = context_net if context_net is not None else nn.Identity()
        self.obs_shape = obs_shape
        self.prior = prior
        self.max_rounds = check_int_range(max_rounds, "max_rounds")
        self.standardize_by_default = model.standardize_by_default
        # pf.fit reads its defaults from the model it trains: forward the wrapped model's
        # (an nsf posterior used to train with the generic batch 256 instead of nsf's 512).
        for attr in _TRAINING_DEFAULTS:
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        self.register_buffer("context_loc", torch.zeros(self.context_dim))
        self.register_buffer("context_scale", torch.ones(self.context_dim))
        self.register_buffer("context_stats_set", torch.tensor(False))
        self.last_acceptance: float | None = None
        if context_net is None and model.context_dim != self.context_dim:
            raise ValueError(f"without a context_net the model's context_dim ({model.context_dim}) must equal "
                             f"prod(obs_shape) = {self.context_dim}")

    # ----------------------------------------------------------------- observations
    def _check_context(self, context, n):
        if isinstance(context, Tensor) and context.dim() >= 1 and tuple(context.shape[-len(self.obs_shape):]) == self.obs_shape:
            lead = context.shape[: context.dim() - len(self.obs_shape)]
            if len(lead) == 0 and n is not None:  # one observation shared by every row
                context = context.reshape(1, -1).expand(n, -1)
            elif len(lead) == 1:
                context = context.reshape(lead[0], -1)
        return super()._check_context(context, n)

    @torch.no_grad()
    def set_context_standardization(self, context: Tensor, min_scale: float = 1e-7) -> None:
        """z-score the observations with the column means and deviations of ``context`` [N, ...]."""
        c = check_finite(torch.as_tensor(context).reshape(context.shape[0], -1).to(self.context_loc), "context")
        if c.shape[1] != self.context_dim or c.shape[0] < 2:
            raise ValueError(f"context for standardization must be [N >= 2, {self.context_dim}], got {list(c.shape)}")
        self.context_loc.copy_(c.mean(0))
        self.context_scale.copy_(c.std(0).clamp_min(min_scale))
        self.context_stats_set.fill_(True)

    def embed(self, context: Tensor) -> Tensor:
        """Observations ``[N, prod(obs_shape)]`` -> features ``[N, model.context_dim]``."""
        c = (context - self.context_loc) / self.context_scale
        e = self.context_net(c.reshape(c.shape[0], *self.obs_shape))
        if e.dim() != 2 or e.shape[1] != self.model.context_dim:
            raise ValueError(f"context_net returned shape {list(e.shape)}, but the model expects "
                             f"[N, {self.model.context_dim}] (its context_dim)")
        return e

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """First batch: observation z-scoring (unless set) and the model's data-dependent init."""
        if context is None:
            return
        context = self._check_context(context, x.shape[0])
        if not bool(self.context_stats_set) and context.shape[0] >= 2:
            self.set_context_standardization(context)
        with torch.no_grad():
            self.model.initialize(self.standardize(x), self.embed(context))

    # ----------------------------------------------------------------- contract
    def _loss(self, x, context):
        return self.model.loss(x, self.embed(context))

    def _log_prob(self, x, context, **kwargs):
        return self.model.log_prob(x, self.embed(context), **kwargs)

    def _sample(self, n, context, generator, **kwargs):
        return self.model.sample(n, self.embed(context), generator=generator, **kwargs)

    def log_prob(self, x: Tensor, context: Tensor | None = None, **kwargs) -> Tensor:
        """``log q(theta | x)`` ``[N]``; ``-inf`` outside the prior's support (not renormalised:
        subtract ``log`` of the accepted fraction for the density of the truncated posterior)."""
        lp = super().log_prob(x, context, **kwargs)
        if self.prior is None:
            return lp
        return torch.where(in_support(self.prior, x), lp, torch.full_like(lp, -math.inf))

    def sample(self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None,
               **kwargs) -> Tensor:
        """``n`` samples ``[n, P]``; with a prior, rows outside its support are redrawn (same
        context row) until all are inside, and ``last_acceptance`` records the accepted fraction.

        Raises:
            RuntimeError: when rows are still outside the support after ``max_rounds`` rounds.
        """
        out = super().sample(n, context, generator=generator, **kwargs)
        if self.prior is None or n == 0:
            return out
        context = self._check_context(context, n)
        ok = in_support(self.prior, out)
        drawn, accepted = n, int(ok.sum())
        for _ in range(self.max_rounds):
            if bool(ok.all()):
                break
            idx = torch.nonzero(~ok).squeeze(1)
            redraw = super().sample(idx.numel(), context[idx], generator=generator, **kwargs)
            good = in_support(self.prior, redraw)
            out[idx[good]] = redraw[good]
            ok[idx[good]] = True
            drawn += idx.numel()
            accepted += int(good.sum())
        self.last_acceptance = accepted / drawn
        if not bool(ok.all()):
            raise RuntimeError(f"{int((~ok).sum())} of {n} samples still outside the prior's support after "
                               f"{self.max_rounds} rounds (accepted fraction {self.last_acceptance:.2e}); "
                               "train longer or check the prior")
        return out

    def extra_repr(self) -> str:
        return f"obs_shape={self.obs_shape}, prior={type(self.prior).__name__ if self.prior is not None else None}"


def build_posterior(name: str, theta_dim: int, obs_shape: Sequence[int] | int, *,
                    context_net: str | nn.Module | None = None, embed_dim: int = 16, prior=None,
                    **options) -> Posterior:
    """A :class:`Posterior` around ``pf.build(name, dim=theta_dim, context_dim=E, **options)``.

    ``context_net``: None (raw observations, ``E = prod(obs_shape)``), ``"mlp"`` (flat
    observations), ``"conv1d"`` (``obs_shape = (T,)`` or ``(channels, T)``), ``"set"``
    (``obs_shape = (M, X)``: M i.i.d. trials) with ``E = embed_dim``, or a module (its
    ``out_dim`` attribute gives ``E``).

    ``pf.fit`` trains it with the wrapped model's defaults (batch size, learning rate, schedule),
    except flow-matching models (``fm``, ``ot-fm``, ...): peak learning rate
    ``MATCHING_POSTERIOR_LR`` (1e-2) and, without a budget, ``MATCHING_CONVERGENCE`` (epochs of
    50 000 rows, patience 10; see their comments for the evidence).
    """
    from pushforward.nets.embedding import EMBEDDINGS, Conv1dEmbedding, MLPEmbedding, SetEmbedding
    from pushforward.registry import build

    obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
    if isinstance(context_net, str):
        if context_net not in EMBEDDINGS:
            raise ValueError(f"unknown context_net {context_net!r}; expected one of {sorted(EMBEDDINGS)}, "
                             "None or an nn.Module")
        if context_net == "mlp":
            net: nn.Module = MLPEmbedding(math.prod(obs_shape), embed_dim)
        elif context_net == "conv1d":
            if len(obs_shape) not in (1, 2):
                raise ValueError(f"conv1d needs obs_shape (T,) or (channels, T), got {obs_shape}")
            net = Conv1dEmbedding(1 if len(obs_shape) == 1 else obs_shape[0], embed_dim)
        else:
            if len(obs_shape) != 2:
                raise ValueError(f"set needs obs_shape (M, X) (M trials of X values), got {obs_shape}")
            net = SetEmbedding(obs_shape[1], embed_dim)
        e = embed_dim
    elif context_net is None:
        net, e = None, math.prod(obs_shape)
    elif isinstance(context_net, nn.Module):
        e = getattr(context_net, "out_dim", None)
        if not isinstance(e, int):
            with torch.no_grad():
                e = int(context_net(torch.zeros(2, *obs_shape)).shape[-1])
        net = context_net
    else:
        raise TypeError(f"context_net must be a name, None or an nn.Module, got {type(context_net).__name__}")
    from pushforward.matching.models import FlowMatching

    model = build(name, dim=theta_dim, context_dim=e, **options)
    posterior = Posterior(model, net, obs_shape, prior)
    if isinstance(model, FlowMatching):
        posterior.default_lr = MATCHING_POSTERIOR_LR
        posterior.default_convergence = MATCHING_CONVERGENCE
    return posterior
