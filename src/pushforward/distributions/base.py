"""Base distributions: ``nn.Module``s with ``log_prob(x, context) -> [N]`` and
``sample(n, context, generator) -> [n, *event_shape]`` (reparameterised: gradients flow to
parameters through samples)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward.transforms.base import sum_except_batch

LOG_2PI = math.log(2 * math.pi)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"event shape must be positive integers, got {shape}")
    return shape


class Distribution(nn.Module):
    """Base class. ``event_shape`` is the shape of one draw."""

    event_shape: tuple[int, ...]

    def __init__(self, event_shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = _shape(event_shape)
        # Tracks the module's device and dtype for parameter-free distributions.
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    @property
    def _like(self) -> dict:
        return {"device": self._ref.device, "dtype": self._ref.dtype}

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` ``[N, *event_shape]`` -> ``[N]``."""
        raise NotImplementedError

    def sample(
        self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` samples ``[n, *event_shape]`` (reparameterised)."""
        raise NotImplementedError

    def _randn(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn((n, *self.event_shape), generator=generator, **self._like)

    def _rand(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.rand((n, *self.event_shape), generator=generator, **self._like)


class StandardNormal(Distribution):
    """N(0, I) over ``event_shape``."""

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # Constants added after the reduction: one pass over [N, D] instead of four.
        return -0.5 * x.pow(2).flatten(1).sum(1) - 0.5 * LOG_2PI * math.prod(x.shape[1:])

    def sample(self, n, context=None, generator=None):
        return self._randn(n, generator)


class DiagGaussian(Distribution):
    """N(loc, diag(scale²)) with learnable ``loc`` and ``log_scale`` (init: standard normal)."""

    def __init__(self, event_shape: int | Sequence[int], learnable: bool = True):
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape), requires_grad=learnable)
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape), requires_grad=learnable)

    def log_prob(self, x, context=None):
        u = (x - self.loc) * torch.exp(-self.log_scale)
        return sum_except_batch(-0.5 * u.pow(2) - self.log_scale - 0.5 * LOG_2PI)

    def sample(self, n, context=None, generator=None):
        eps = torch.randn((n, *self.event_shape), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + torch.exp(self.log_scale) * eps


class GaussianMixture(Distribution):
    """Mixture of ``k`` diagonal Gaussians in ``dim`` dimensions with learnable weights.

    Sampling picks components by their weights (not differentiable w.r.t. the weights), then
    reparameterises within the component.
    """

    def __init__(self, dim: int, k: int = 8, spread: float = 1.0, seed: int = 0):
        super().__init__(dim)
        g = torch.Generator().manual_seed(seed)
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(spread * torch.randn(k, dim, generator=g))
        self.log_scale = nn.Parameter(torch.zeros(k, dim))

    def log_prob(self, x, context=None):
        u = (x[:, None, :] - self.loc) * torch.exp(-self.log_scale)
        comp = (-0.5 * u.pow(2) - self.log_scale - 0.5 * LOG_2PI).sum(-1)  # [N, k]
        return torch.logsumexp(comp + F.log_softmax(self.logits, -1), dim=-1)

    def sample(self, n, context=None, generator=None):
        probs = F.softmax(self.logits, -1).detach()
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.event_shape[0]), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc[idx] + torch.exp(self.log_scale[idx]) * eps


class Uniform(Distribution):
    """Uniform on the box ``[low, high]^event_shape`` (default the unit cube)."""

    def __init__(self, event_shape: int | Sequence[int], low: float = 0.0, high: float = 1.0):
        super().__init__(event_shape)
        if not high > low:
            raise ValueError(f"Uniform needs high > low, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def log_prob(self, x, context=None):
        inside = ((x >= self.low) & (x <= self.high)).reshape(x.shape[0], -1).all(-1)
        d = math.prod(self.event_shape)
        lp = torch.full((x.shape[0],), -d * math.log(self.high - self.low), dtype=x.dtype, device=x.device)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def sample(self, n, context=None, generator=None):
        return self.low + (self.high - self.low) * self._rand(n, generator)


class Logistic(Distribution):
    """Standard logistic distribution, independent over ``event_shape``."""

    def log_prob(self, x, context=None):
        return sum_except_batch(-x - 2 * F.softplus(-x))

    def sample(self, n, context=None, generator=None):
        u = self._rand(n, generator).clamp(1e-7, 1 - 1e-7)
        return torch.log(u) - torch.log1p(-u)


class ConditionalDiagGaussian(Distribution):
    """N(mu(c), diag(sigma(c)²)) whose mean and log-scale are an MLP of the context ``[N, C]``.

    Zero-initialised output layer: starts as N(0, I) for every context.
    """

    def __init__(self, dim: int, context_dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__(dim)
        from pushforward.nets import MLP

        self.context_dim = context_dim
        self.net = MLP(context_dim, 2 * dim, hidden, zero_last=True)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError(f"ConditionalDiagGaussian needs a context of shape [N, {self.context_dim}]")
        loc, log_scale = self.net(context).chunk(2, dim=-1)
        return loc, log_scale.clamp(-7.0, 7.0)

    def log_prob(self, x, context=None):
        loc, log_scale = self._params(context)
        u = (x - loc) * torch.exp(-log_scale)
        return (-0.5 * u.pow(2) - log_scale - 0.5 * LOG_2PI).sum(-1)

    def sample(self, n, context=None, generator=None):
        loc, log_scale = self._params(context)
        if loc.shape[0] != n:
            raise ValueError(f"context has {loc.shape[0]} rows but {n} samples were asked for")
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + torch.exp(log_scale) * eps
