"""The bijection contract.

A :class:`Transform` maps data to latent (the *normalizing* direction)::

    z, logabsdet = t(x, context)        # forward:  x -> z, log|det dz/dx|, shape [N]
    x, logabsdet = t.inverse(z, context) # inverse: z -> x, log|det dx/dz|, shape [N]

so that ``log p(x) = log p_base(z) + logabsdet``. Value and log-determinant are computed
together, so no layer evaluates its Jacobian twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pushforward._validate import CheckedArguments


class Transform(nn.Module, metaclass=CheckedArguments):
    """Base class of bijections ``x -> z`` with log-absolute-Jacobian-determinants.

    Subclasses implement :meth:`forward` and, where they can, :meth:`inverse`. Inputs are batch
    first, ``[N, *event_shape]``; log-determinants are ``[N]``. ``context`` is an optional
    ``[N, C]`` tensor that conditioner networks read; unconditional transforms ignore it.

    Every subclass's int and float constructor arguments are checked by their signature
    (:class:`pushforward._validate.CheckedArguments`): ints >= 0 unless named in
    ``signed_arguments``, floats finite.
    """

    #: int constructor arguments that may be negative (every other one must be >= 0).
    signed_arguments: frozenset = frozenset()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``[N, ...] -> ([N, ...], [N])``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map latent to data: ``[N, ...] -> ([N, ...], [N])``."""
        raise NotImplementedError(f"{type(self).__name__} has no inverse")

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Data-dependent initialisation hook (e.g. ActNorm); returns ``forward(x)[0]``.

        The default does nothing beyond the forward pass. Called once by
        :meth:`pushforward.NormalizingFlow.initialize` on a first batch.
        """
        with torch.no_grad():
            return self(x, context)[0]


def _sum_except_batch(x: Tensor) -> Tensor:
    """Sum all but the first dimension: ``[N, ...] -> [N]``."""
    return x.reshape(x.shape[0], -1).sum(-1)


sum_except_batch = _sum_except_batch


class Compose(Transform):
    """Composition ``t_k ∘ ... ∘ t_1``: forward applies ``t_1`` first, log-dets add."""

    def __init__(self, *transforms: Transform | Iterable[Transform]):
        super().__init__()
        if len(transforms) == 1 and not isinstance(transforms[0], nn.Module):
            transforms = tuple(transforms[0])
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose takes Transforms, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ladj = t(x, context)
            total = total + ladj
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ladj = t.inverse(z, context)
            total = total + ladj
        return z, total

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        for t in self.transforms:
            x = t.initialize(x, context)
        return x

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class Inverse(Transform):
    """The inverse of a transform: swaps ``forward`` and ``inverse``.

    ``Inverse(MAF-layer)`` is an IAF layer: density evaluation becomes sequential and sampling
    becomes one pass.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, context)

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return self(x, context)[0]


class Identity(Transform):
    """The identity map, log-det 0."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])


class FixedAffine(Transform):
    """Elementwise ``z = (x - loc) / scale`` with fixed buffers (data standardization).

    ``loc`` and ``scale`` broadcast against the event shape; log-det is ``-sum(log scale)``.
    """

    def __init__(self, loc: Tensor, scale: Tensor):
        super().__init__()
        loc = torch.as_tensor(loc)
        scale = torch.as_tensor(scale)
        if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
            raise ValueError("FixedAffine scale must be positive and finite")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def _ladj(self, x: Tensor) -> Tensor:
        per_event = torch.log(self.scale).expand(x.shape[1:]).sum()
        return (-per_event).to(x.dtype).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * self.scale + self.loc, -self._ladj(z)
