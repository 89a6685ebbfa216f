"""Linear bijections on vectors: fixed permutations, LU-parametrised invertible linear maps
(Kingma & Dhariwal 2018, Glow), and ActNorm with data-dependent initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward.transforms.base import Transform


def _check_perm(perm: Tensor, dim: int | None = None) -> Tensor:
    perm = torch.as_tensor(perm, dtype=torch.long).flatten()
    n = perm.numel() if dim is None else dim
    if perm.numel() != n or not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"expected a permutation of range({n}), got {perm.tolist()}")
    return perm


class Permutation(Transform):
    """Fixed permutation ``z = x[:, perm]``, ``log|det| = 0``.

    Args:
        perm: a permutation of ``range(D)``.

    Use :meth:`reverse` or :meth:`random` for the usual choices.
    """

    def __init__(self, perm: Tensor | Sequence[int]):
        super().__init__()
        perm = _check_perm(perm)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def reverse(cls, dim: int) -> Permutation:
        """``z = x[:, ::-1]``."""
        return cls(torch.arange(dim - 1, -1, -1))

    @classmethod
    def random(cls, dim: int, seed: int = 0) -> Permutation:
        """A random permutation, reproducible from ``seed``."""
        return cls(torch.randperm(dim, generator=torch.Generator().manual_seed(int(seed))))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"perm={self.perm.tolist()}"


class LULinear(Transform):
    """Invertible linear map ``z = W x + b`` with ``W = P L U`` (Kingma & Dhariwal 2018, Glow).

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` upper triangular with
    diagonal ``exp(log_diag)``; ``log|det W| = sum(log_diag)`` costs O(D) and the inverse is two
    triangular solves. With the default ``P = I`` and zero parameters, ``W = I`` (identity init).

    Args:
        dim: D.
        permutation: ``None`` (identity), ``"random"`` (seeded by ``seed``) or a permutation.
        bias: learn ``b`` (zero init).

    Shapes: ``x [N, D]`` -> ``(z [N, D], logabsdet [N])``.
    """

    def __init__(
        self,
        dim: int,
        permutation: str | Sequence[int] | Tensor | None = None,
        seed: int = 0,
        bias: bool = False,
    ):
        super().__init__()
        self.dim = int(dim)
        if permutation is None:
            perm = torch.arange(self.dim)
        elif isinstance(permutation, str):
            if permutation != "random":
                raise ValueError(f"permutation must be None, 'random' or a permutation, got {permutation!r}")
            perm = torch.randperm(self.dim, generator=torch.Generator().manual_seed(int(seed)))
        else:
            perm = _check_perm(permutation, self.dim)
        # P[perm[j], j] = 1, i.e. (P v)[perm[j]] = v[j].
        p = torch.zeros(self.dim, self.dim)
        p[perm, torch.arange(self.dim)] = 1.0
        self.register_buffer("P", p)
        self.lower = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.upper = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.log_diag = nn.Parameter(torch.zeros(self.dim))
        self.bias = nn.Parameter(torch.zeros(self.dim)) if bias else None

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(torch.exp(self.log_diag))
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix ``W = P L U`` ``[D, D]``."""
        lower, upper = self._factors()
        return self.P @ lower @ upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = x @ self.weight().T
        if self.bias is not None:
            z = z + self.bias
        return z, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Row vectors: X W^T = Y  <=>  (Y P) = X U^T L^T; two right-side triangular solves.
        y = z - self.bias if self.bias is not None else z
        lower, upper = self._factors()
        a = y @ self.P
        b = torch.linalg.solve_triangular(lower.T, a, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.T, b, upper=False, left=False)
        return x, (-self.log_diag.sum()).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bias={self.bias is not None}"


class ActNorm(Transform):
    """Per-feature affine ``z = (x - loc) * exp(-log_scale)`` (Kingma & Dhariwal 2018, Glow).

    :meth:`initialize` sets ``loc`` and ``log_scale`` from a batch so that the outputs have zero
    mean and unit variance per feature; the ``initialized`` buffer is saved with the state dict,
    so a reloaded model is never re-initialised. Before initialisation it is the identity.
    ``log|det| = -sum(log_scale)``.

    Args:
        dim: D. eps: floor on the batch std (constant features).

    Shapes: ``x [N, D]`` -> ``(z [N, D], logabsdet [N])``.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)
        self.loc = nn.Parameter(torch.zeros(self.dim))
        self.log_scale = nn.Parameter(torch.zeros(self.dim))
        self.register_buffer("initialized", torch.tensor(False))

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Set ``loc = mean(x)``, ``scale = std(x)`` per feature (once); returns ``forward(x)[0]``."""
        with torch.no_grad():
            if not bool(self.initialized):
                if x.shape[0] < 2:
                    raise ValueError(f"ActNorm.initialize needs a batch of at least 2 rows, got {x.shape[0]}")
                self.loc.copy_(x.mean(0))
                self.log_scale.copy_(torch.log(x.std(0, unbiased=False).clamp_min(self.eps)))
                self.initialized.fill_(True)
            return self(x, context)[0]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * torch.exp(self.log_scale) + self.loc, self.log_scale.sum().expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, initialized={bool(self.initialized)}"
