"""pushforward models as density estimators inside the ``sbi`` package (optional extra ``sbi``).

:func:`posterior_nn` and :func:`likelihood_nn` mirror sbi's factories of the same names: they
return a builder ``build_fn(batch_theta, batch_x) -> estimator`` that sbi's ``NPE`` / ``NLE``
accept as ``density_estimator=...``. The estimator wraps any conditional ``pf.build`` name (nsf,
maf, realnvp, ot-fm, fm, ffjord, ...) in sbi's ``ConditionalDensityEstimator`` interface:

- ``loss(input [B, *input_shape], condition [B, *condition_shape]) -> [B]`` (negative
  log-likelihood per row for flows; the model's own objective, e.g. the flow-matching loss,
  spread over the rows otherwise);
- ``log_prob(input [S, B, *input_shape] or [B, ...], condition [B, ...]) -> [S, B]``;
- ``sample(sample_shape, condition [B, ...]) -> [*sample_shape, B, *input_shape]``.

Conventions follow sbi's: ``z_score_theta`` / ``z_score_x`` in ``"independent"`` (per column,
default), ``"structured"`` (one mean and deviation for all entries) or ``"none"``, computed from
the batch the builder receives; ``embedding_net`` embeds the (z-scored) condition and is trained
jointly. The input's z-scoring is folded into the model with its Jacobian (pushforward's own
standardization), so ``log_prob`` is in the user's units.

>>> from sbi.inference import NPE                                        # doctest: +SKIP
>>> from pushforward.integrations.sbi import posterior_nn                 # doctest: +SKIP
>>> npe = NPE(prior, density_estimator=posterior_nn("nsf", hidden=(64, 64)))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("pushforward.integrations.sbi needs the sbi package: pip install 'pushforward[sbi]'") from err

from pushforward.models import FlowModel
from pushforward.posterior import Posterior

Z_SCORES = ("independent", "structured", "none")


def _z_score(batch: Tensor, how: str | None, what: str) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` over the rows of ``batch`` [N, ...] (flattened), or None for no z-scoring."""
    if how is None or how == "none":
        return None
    if how not in Z_SCORES:
        raise ValueError(f"z_score_{what} must be one of {Z_SCORES} or None, got {how!r}")
    flat = batch.reshape(batch.shape[0], -1).double()
    if flat.shape[0] < 2:
        raise ValueError(f"z-scoring {what} needs at least 2 simulations, got {flat.shape[0]}")
    if how == "independent":
        loc, scale = flat.mean(0), flat.std(0)
    else:
        loc, scale = flat.mean().expand(flat.shape[1]), flat.std().expand(flat.shape[1])
    # sbi's min_std: constant columns stay as they are instead of dividing by zero.
    scale = torch.where(scale < 1e-14, torch.ones_like(scale), scale)
    return loc.float(), scale.float()


class PushforwardEstimator(ConditionalDensityEstimator):
    """sbi ``ConditionalDensityEstimator`` around a :class:`~pushforward.posterior.Posterior`.

    Args:
        net: the wrapped posterior (model, embedding net, condition z-scoring).
        input_shape, condition_shape: event shapes of the input (theta for NPE) and condition.
    """

    def __init__(self, net: Posterior, input_shape: torch.Size, condition_shape: torch.Size):
        super().__init__(net, torch.Size(input_shape), torch.Size(condition_shape))
        # A flow's loss is its per-row NLL; other objectives (flow matching) are batch means.
        self._per_row_nll = type(net.model)._loss is FlowModel._loss

    @property
    def embedding_net(self) -> nn.Module:
        return self.net.context_net

    def _flat(self, input: Tensor, condition: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        input, condition, batch_dim = self._broadcast_and_align(input, condition)
        s = input.shape[0]
        return (input.reshape(s * batch_dim, *self.input_shape),
                condition.reshape(s * batch_dim, -1), (s, batch_dim))

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        """``[S, B, *input_shape]`` (or ``[B, ...]``) and ``[B, *condition_shape]`` -> ``[S, B]``."""
        self._check_condition_shape(condition)
        self._check_input_shape(input)
        x, c, (s, b) = self._flat(input, condition)
        return self.net.log_prob(x, c, **kwargs).reshape(s, b)

    def loss(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        """Training loss per row ``[B]`` for ``input`` ``[B, *input_shape]``, ``condition`` ``[B, ...]``."""
        c = condition.reshape(condition.shape[0], -1)
        if self._per_row_nll:
            return -self.net.log_prob(input, c)
        return self.net.loss(input, c).expand(input.shape[0])

    def sample(self, sample_shape: torch.Size, condition: Tensor, **kwargs) -> Tensor:
        """``[*sample_shape, B, *input_shape]`` for conditions ``[B, *condition_shape]``."""
        self._check_condition_shape(condition)
        sample_shape = torch.Size(sample_shape)
        cond = condition.reshape(-1, *self.condition_shape)
        b, n = cond.shape[0], math.prod(sample_shape)
        c = cond.reshape(b, -1).repeat(n, 1)  # row k * b + j: condition j
        out = self.net.sample(n * b, c, **kwargs)
        return out.reshape(*sample_shape, b, *self.input_shape)


def _builder(kind: str, model: str, z_score_theta: str | None, z_score_x: str | None,
             embedding_net: nn.Module | None, options: dict[str, Any]) -> Callable[[Tensor, Tensor], PushforwardEstimator]:
    from pushforward.registry import available_models

    if model not in available_models():
        raise ValueError(f"unknown pushforward model {model!r}; see pushforward.available_models()")
    for how, what in ((z_score_theta, "theta"), (z_score_x, "x")):
        if how is not None and how not in Z_SCORES:
            raise ValueError(f"z_score_{what} must be one of {Z_SCORES} or None, got {how!r}")

    def build_fn(batch_theta: Tensor, batch_x: Tensor) -> PushforwardEstimator:
        """sbi calls this with a batch of training pairs; NPE models theta | x, NLE x | theta."""
        from pushforward.registry import build

        inp, cond = (batch_theta, batch_x) if kind == "posterior" else (batch_x, batch_theta)
        z_in, z_cond = (z_score_theta, z_score_x) if kind == "posterior" else (z_score_x, z_score_theta)
        if inp.dim() != 2:
            raise ValueError(f"pushforward estimators model vectors: the {'theta' if kind == 'posterior' else 'x'} "
                             f"batch must be [N, D], got {list(inp.shape)}")
        net = embedding_net if embedding_net is not None else nn.Identity()
        with torch.no_grad():
            e = net(cond[:2].float()).reshape(min(2, cond.shape[0]), -1).shape[1]
        flow = build(model, dim=inp.shape[1], context_dim=e, **options)
        post = Posterior(flow, net, tuple(cond.shape[1:]))
        stats = _z_score(inp, z_in, "theta" if kind == "posterior" else "x")
        if stats is not None:
            post.set_standardization(*stats)
        cstats = _z_score(cond, z_cond, "x" if kind == "posterior" else "theta")
        if cstats is not None:
            post.context_loc.copy_(cstats[0])
            post.context_scale.copy_(cstats[1])
        post.context_stats_set.fill_(True)
        with torch.no_grad():
            post.initialize(inp.float(), cond.reshape(cond.shape[0], -1).float())
        return PushforwardEstimator(post, inp.shape[1:], cond.shape[1:])

    return build_fn


def posterior_nn(model: str = "nsf", z_score_theta: str | None = "independent",
                 z_score_x: str | None = "independent", embedding_net: nn.Module | None = None,
                 **options: Any) -> Callable[[Tensor, Tensor], PushforwardEstimator]:
    """A builder of ``q(theta | x)`` for sbi's ``NPE(density_estimator=...)``.

    Args:
        model: any conditional ``pf.build`` name (``nsf``, ``maf``, ``ot-fm``, ...).
        z_score_theta, z_score_x: ``"independent"``, ``"structured"`` or ``"none"`` (sbi's flags).
        embedding_net: network embedding ``x`` ``[N, *x_shape] -> [N, E]``, trained jointly.
        **options: ``pf.build`` options of that name (``hidden``, ``layers``, ``coupling``, ...).
    Returns:
        ``build_fn(batch_theta, batch_x) -> PushforwardEstimator``.
    """
    return _builder("posterior", model, z_score_theta, z_score_x, embedding_net, options)


def likelihood_nn(model: str = "nsf", z_score_theta: str | None = "independent",
                  z_score_x: str | None = "independent", embedding_net: nn.Module | None = None,
                  **options: Any) -> Callable[[Tensor, Tensor], PushforwardEstimator]:
    """A builder of ``q(x | theta)`` for sbi's ``NLE(density_estimator=...)``; ``embedding_net``
    embeds ``theta``. Arguments as :func:`posterior_nn`."""
    return _builder("likelihood", model, z_score_theta, z_score_x, embedding_net, options)
