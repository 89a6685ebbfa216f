"""Discrete flow matching (Gat et al. 2024) for sequences ``[N, L]`` of categories ``0..K-1``.

The network is a probability denoiser ``p_{1|t}(x_1^i | x_t)`` (x1-prediction) trained by
cross-entropy on the mixture path of :mod:`pushforward.discrete.paths`; sampling runs the jump
process from the source to t = 1; ``log_prob`` is the path's evidence lower bound (a lower bound
on log p, see :func:`~pushforward.discrete.paths.path_elbo`). Time: t = 0 source, t = 1 data.

Classifier-free guidance (as in :mod:`pushforward.matching.models`): train with ``cond_drop`` (the
context is replaced by a learned null context), sample with ``guidance=w``:
``log p_w = log_softmax(w log p(.|x_t, c) + (1 - w) log p(.|x_t, null))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward._validate import (
    check_choice,
    check_embed_size,
    check_int_range,
    check_positive_int,
    check_widths,
)
from pushforward.discrete.paths import SCHEDULERS, SOURCES, MixturePath, path_elbo
from pushforward.models import FlowModel
from pushforward.nets.mlp import MLP
from pushforward.nets.time import SinusoidalEmbedding
from pushforward.registry import register


class CategoricalDenoiser(nn.Module):
    """``(x_t [N, L], t [N], context [N, C]) -> logits [N, L, K]``: token + position embeddings,
    flattened, with the time embedding and the context, through an MLP."""

    def __init__(self, length: int, vocab: int, num_categories: int, context_dim: int, hidden, embed: int,
                 time_embed: int, activation: str):
        super().__init__()
        self.length, self.K = length, num_categories
        self.tokens = nn.Embedding(vocab, embed)
        self.position = nn.Parameter(0.02 * torch.randn(length, embed))
        self.time = SinusoidalEmbedding(time_embed, scale=100.0) if time_embed else None
        self.mlp = MLP(length * embed + (time_embed or 1) + context_dim, length * num_categories, hidden, activation)

    def forward(self, xt: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:  # noqa: D102
        h = (self.tokens(xt) + self.position).flatten(1)
        te = self.time(t) if self.time is not None else t[:, None]
        parts = [h, te.to(h.dtype)] + ([context] if context is not None else [])
        return self.mlp(torch.cat(parts, -1)).view(-1, self.length, self.K)


class DiscreteFlowMatching(FlowModel):
    """Discrete flow matching on ``[N, L]`` integer sequences with values in ``0..K-1``.

    Args:
        dim: sequence length L.
        num_categories: K.
        context_dim: conditioning size C (0: unconditional).
        source: ``"mask"`` (all-mask source, an extra token) or ``"uniform"``.
        scheduler: ``"kinetic"`` (``kappa_t = sin^2(pi t/2)``) or ``"linear"`` (``kappa_t = t``).
        hidden, embed, time_embed, activation: the denoiser (token embedding size ``embed``).
        steps: default jump-process steps of :meth:`sample`.
        cond_drop, guidance: classifier-free guidance (training dropout, default scale).
        elbo_times, elbo_samples: default quadrature nodes and Monte Carlo draws of ``log_prob``.

    ``sample`` returns a LongTensor; ``loss`` takes integer tensors, or float tensors holding
    integers (what :func:`pushforward.fit` passes after casting to the parameters' dtype);
    ``log_prob`` requires an integer tensor.
    """

    standardize_by_default = False
    support = "categorical"

    def __init__(self, dim: int, num_categories: int = 2, context_dim: int = 0, source: str = "mask",
                 scheduler: str = "kinetic", hidden=(256, 256), embed: int = 16, time_embed: int = 32,
                 activation: str = "silu", steps: int = 64, cond_drop: float = 0.0, guidance: float = 1.0,
                 elbo_times: int = 16, elbo_samples: int = 4):
        super().__init__((dim,), context_dim)
        self.num_categories = check_int_range(num_categories, "num_categories", 2)
        self.path = MixturePath(num_categories, check_choice(source, SOURCES, "source"),
                                check_choice(scheduler, tuple(SCHEDULERS), "scheduler"))
        check_embed_size(time_embed)
        self.steps = check_positive_int(steps, "steps")
        self.elbo_times = check_positive_int(elbo_times, "elbo_times")
        self.elbo_samples = check_positive_int(elbo_samples, "elbo_samples")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be a probability in [0, 1), got {cond_drop!r}")
        if cond_drop > 0 and context_dim == 0:
            raise ValueError(f"cond_drop={cond_drop} needs a conditional model (context_dim > 0)")
        self.cond_drop, self.guidance = float(cond_drop), float(guidance)
        self.null_context = nn.Parameter(torch.zeros(context_dim)) if cond_drop > 0 else None
        self.denoiser = CategoricalDenoiser(dim, self.path.vocab, num_categories, context_dim,
                                            check_widths(hidden), check_positive_int(embed, "embed"), time_embed,
                                            activation)

    # ------------------------------------------------------------------ denoiser
    def log_denoiser(self, xt: Tensor, t: Tensor | float, context: Tensor | None = None,
                     guidance: float | None = None) -> Tensor:
        """``log p_{1|t}(. | x_t)`` ``[N, L, K]`` (x_t ``[N, L]`` long, may hold the mask token).

        With the masked source an unmasked position keeps its token (probability 1).
        """
        p = next(self.parameters())
        t = torch.as_tensor(t, dtype=p.dtype, device=xt.device)
        t = t.expand(xt.shape[0]) if t.dim() == 0 else t
        w = self.guidance if guidance is None else float(guidance)
        lp = F.log_softmax(self.denoiser(xt, t, context), -1)
        if context is not None and w != 1.0:
            if self.null_context is None:
                raise ValueError(f"guidance={w} needs a model trained with cond_drop > 0 (it has no null context)")
            null = self.null_context.expand_as(context)
            lp = F.log_softmax(w * lp + (1 - w) * F.log_softmax(self.denoiser(xt, t, null), -1), -1)
        if self.path.source == "mask":
            known = xt < self.num_categories
            keep = F.one_hot(xt.clamp(max=self.num_categories - 1), self.num_categories).bool()
            fixed = torch.where(keep, torch.zeros_like(lp), torch.full_like(lp, float("-inf")))
            lp = torch.where(known[..., None], fixed, lp)
        return lp

    # ------------------------------------------------------------------ checks
    def _check_tokens(self, x: Tensor, name: str = "x", allow_float: bool = False) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of category indices, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            if not (allow_float and x.is_floating_point() and bool((x == x.round()).all())):
                raise TypeError(f"{name} must be an integer tensor (torch.long) of categories in "
                                f"0..{self.num_categories - 1}, got dtype {x.dtype}")
        L = self.event_shape[0]
        if x.dim() != 2 or x.shape[1] != L:
            raise ValueError(f"{name} must have shape [N, {L}], got {list(x.shape)}")
        x = x.long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_categories):
            bad = int(x.min()) if int(x.min()) < 0 else int(x.max())
            raise ValueError(f"{name} holds category {bad}, outside 0..{self.num_categories - 1} "
                             f"(num_categories={self.num_categories})")
        return x

    # ------------------------------------------------------------------ contract
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Cross-entropy of the denoiser on ``x_t ~ p_t(. | x_1)``, ``t ~ U(0, 1)``, per token."""
        x1 = self._check_tokens(x, allow_float=True)
        context = self._check_context(context, x1.shape[0])
        n = x1.shape[0]
        p = next(self.parameters())
        t = torch.rand(n, dtype=p.dtype, device=x1.device)
        xt = self.path.sample_xt(x1, self.path.scheduler.kappa(t))
        if context is not None and self.cond_drop > 0:
            drop = torch.rand(n, device=x1.device) < self.cond_drop
            context = torch.where(drop[:, None], self.null_context.to(context).expand_as(context), context)
        lp = self.log_denoiser(xt, t, context, guidance=1.0)
        logits_x1 = lp.gather(-1, x1[..., None]).squeeze(-1)
        if self.path.source == "mask":
            # unmasked positions are known (log p = 0): average over the masked ones only
            masked = (xt == self.path.mask_token).to(lp.dtype)
            return -(logits_x1.nan_to_num(0.0) * masked).sum() / masked.sum().clamp_min(1.0)
        return -logits_x1.mean()

    def log_prob(self, x: Tensor, context: Tensor | None = None, times: int | None = None,
                 samples: int | None = -1, generator: torch.Generator | None = None,
                 guidance: float | None = None) -> Tensor:
        """The path ELBO, a lower bound on ``log p(x)`` in nats, ``[N]`` (x ``[N, L]`` long).

        ``times`` Gauss-Legendre nodes in kappa, ``samples`` Monte Carlo draws of ``x_t`` per node
        (default ``elbo_samples``; ``None``: the exact expectation, for small ``(K+1)^L``).
        """
        x1 = self._check_tokens(x)
        context = self._check_context(context, x1.shape[0])
        p = next(self.parameters())
        samples = self.elbo_samples if samples == -1 else samples

        def den(xt, t):
            ctx = None
            if context is not None:  # Monte Carlo batches repeat each row; the exact sum has one row
                if xt.shape[0] == context.shape[0]:
                    ctx = context
                elif samples is not None:
                    ctx = context.repeat_interleave(xt.shape[0] // context.shape[0], 0)
                else:
                    ctx = context[:1].expand(xt.shape[0], -1)
            return self.log_denoiser(xt, t, ctx, guidance)

        if samples is None and context is not None and x1.shape[0] > 1:
            return torch.cat([self.log_prob(x1[i:i + 1], context[i:i + 1], times, None, generator, guidance)
                              for i in range(x1.shape[0])])
        return path_elbo(self.path, den, x1, times or self.elbo_times, samples, generator, dtype=p.dtype)

    def sample(self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None) -> Tensor:
        """``n`` sequences ``[n, L]`` (long) by the jump process on ``steps`` uniform time steps.

        From ``t`` to ``t + h`` each position jumps, with probability
        ``(kappa_{t+h} - kappa_t) / (1 - kappa_t)`` (the Euler step ``h lambda_t`` made exact for the
        scheduler; 1 at the last step), to a token drawn from ``p_{1|t}(. | x_t)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
        context = self._check_context(context, n)
        steps = check_positive_int(steps if steps is not None else self.steps, "steps")
        p = next(self.parameters())
        L = self.event_shape[0]
        x = self.path.sample_source((n, L), generator, p.device)
        ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        kap = self.path.scheduler.kappa(ts)
        with torch.no_grad():
            for k in range(steps):
                jump = float((kap[k + 1] - kap[k]) / (1 - kap[k])) if k < steps - 1 else 1.0
                lp = self.log_denoiser(x, float(ts[k]), context, guidance)
                probs = lp.exp().reshape(-1, self.num_categories)
                new = torch.multinomial(probs.float(), 1, generator=generator).view(n, L)
                u = torch.rand((n, L), generator=generator, device=p.device)
                x = torch.where(u < jump, new, x)
        return x

    def extra_repr(self) -> str:
        return (f"dim={self.event_shape[0]}, num_categories={self.num_categories}, context_dim={self.context_dim}, "
                f"source={self.path.source!r}, scheduler={self.path.scheduler.name!r}, steps={self.steps}")


register("discrete-fm", DiscreteFlowMatching, "Discrete flow matching on integer sequences (mixture paths, jump sampler)")
