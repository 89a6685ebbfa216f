"""Categorical sequence data for discrete models (``[N, L]`` LongTensors, values ``0..K-1``).

- :class:`MarkovChainTarget`: a seeded random Markov chain with an exact ``log_prob`` (the
  likelihood of a sequence is its initial probability times its transitions).
- :func:`quantized_digits`: scikit-learn's 8x8 digits as 64-token sequences with ``levels`` grey
  levels (2: binarized), with their labels.
- :func:`zen_text`: character sequences cut from the Zen of Python (the ``this`` module that ships
  with Python), with the vocabulary.
Nothing is downloaded.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import io

import torch
from torch import Tensor

from pushforward._validate import check_int_range


class MarkovChainTarget:
    """A first-order Markov chain over ``K`` states, length ``L``, with a closed-form likelihood.

    ``p(x) = pi(x_1) prod_{i>1} P[x_{i-1}, x_i]`` with ``pi`` and the rows of ``P`` drawn from a
    Dirichlet(``concentration``) under ``seed`` (small concentrations: peaked, easy to tell apart
    from uniform).
    """

    def __init__(self, length: int = 8, num_categories: int = 4, concentration: float = 0.5, seed: int = 0):
        self.length = check_int_range(length, "length", 1)
        self.num_categories = check_int_range(num_categories, "num_categories", 2)
        g = torch.Generator().manual_seed(seed)
        dist = torch.distributions.Dirichlet(torch.full((num_categories,), float(concentration), dtype=torch.float64))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            self.initial = dist.sample()
            self.transition = dist.sample((num_categories,))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` sequences ``[n, L]`` (long)."""
        x = torch.multinomial(self.initial.expand(n, -1), 1, generator=generator)
        cols = [x]
        for _ in range(self.length - 1):
            cols.append(torch.multinomial(self.transition[cols[-1][:, 0]], 1, generator=generator))
        return torch.cat(cols, 1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` ``[N]`` of sequences ``[N, L]``."""
        x = x.long()
        lp = self.initial.log()[x[:, 0]]
        if self.length > 1:
            lp = lp + self.transition.log()[x[:, :-1], x[:, 1:]].sum(-1)
        return lp

    def entropy(self) -> float:
        """The entropy of the sequence distribution in nats (exact, by the chain rule)."""
        h = -(self.initial * self.initial.log()).sum()
        marg = self.initial
        row_h = -(self.transition * self.transition.log()).sum(-1)
        for _ in range(self.length - 1):
            h = h + (marg * row_h).sum()
            marg = marg @ self.transition
        return float(h)


def quantized_digits(levels: int = 2) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits as ``[1797, 64]`` token sequences in ``0..levels-1`` and labels ``[1797]``.

    The 17 grey levels 0..16 are mapped to ``floor(v * levels / 17)``; ``levels=2`` binarizes at 8.5.
    """
    check_int_range(levels, "levels", 2, 17)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.long)
    return (x * levels) // 17, torch.as_tensor(d.target, dtype=torch.long)


def zen_text(length: int = 16, stride: int = 1) -> tuple[Tensor, str]:
    """Windows of ``length`` characters of the Zen of Python as ``[N, length]`` tokens, and the
    vocabulary (token ``i`` is ``vocab[i]``); windows start every ``stride`` characters."""
    # ``import this`` prints the Zen on first import; read its string without printing.
    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")

    text = codecs.decode(this.s, "rot13").lower().replace("\n", " ")
    vocab = "".join(sorted(set(text)))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    check_int_range(length, "length", 1, len(ids))
    check_int_range(stride, "stride", 1)
    return ids.unfold(0, length, stride).contiguous(), vocab
