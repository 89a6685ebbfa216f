"""Categorical sequence data for discrete models (``[N, L]`` LongTensors, values ``0..K-1``).

- :class:`MarkovChainTarget`: a seeded random Markov chain with an exact ``log_prob`` (the
  likelihood of a sequence is its initial probability times its transitions).
- :func:`quantized_digits`: scikit-learn's 8x8 digits as 64-token sequences with ``levels`` grey
  levels (2: binarized), with their labels.
- :func:`zen_text`: character sequences cut from the Zen of Python (the ``this`` module that ships
  with Python), with the vocabulary.
- :func:`docstring_text`: a larger corpus (~150 000 characters): the docstrings of a fixed list of
  standard-library modules, cut into windows with a held-out tail.
Nothing is downloaded.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import inspect
import io
import re
import warnings

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


DOCSTRING_MODULES = ("argparse", "collections", "functools", "itertools", "json", "os", "re", "string", "textwrap",
                     "random", "statistics", "pathlib", "heapq", "bisect", "difflib", "csv", "calendar", "fractions",
                     "decimal", "unittest", "logging", "shutil", "subprocess", "threading", "typing", "dataclasses",
                     "enum", "contextlib", "abc", "copy", "pickle", "zipfile", "tarfile", "datetime")
DOCSTRING_VOCAB = " '(),.abcdefghijklmnopqrstuvwxyz"


def docstring_text(length: int = 32, stride: int = 8, test_fraction: float = 0.1) -> tuple[Tensor, Tensor, str]:
    """Windows of ``length`` characters of standard-library docstrings: ``(train [N, length],
    test [M, length], vocab)`` (token ``i`` is ``vocab[i]``, 32 characters).

    The text is the module docstring and the public functions' and classes' docstrings of
    :data:`DOCSTRING_MODULES`, lower-cased, characters outside :data:`DOCSTRING_VOCAB` removed and
    whitespace collapsed (its exact content follows the running Python's version). The last
    ``test_fraction`` of the text is held out; no window crosses the cut. Windows start every
    ``stride`` characters. Empty under ``python -OO`` (docstrings stripped): then a clear error.
    """
    check_int_range(length, "length", 1)
    check_int_range(stride, "stride", 1)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    parts = []
    with warnings.catch_warnings():  # typing.io / typing.re warn when their docstrings are read
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in DOCSTRING_MODULES:
            mod = importlib.import_module(name)
            parts.append(inspect.getdoc(mod) or "")
            for attr, obj in sorted(vars(mod).items()):
                if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                        and getattr(obj, "__module__", None) == name:
                    parts.append(inspect.getdoc(obj) or "")
    text = re.sub(r"\s+", " ", re.sub(f"[^{re.escape(DOCSTRING_VOCAB)}\\s]", "", " ".join(parts).lower()))
    if len(text) < 20 * length:
        raise RuntimeError(f"the standard library's docstrings give only {len(text)} characters "
                           "(is Python running with -OO?); docstring_text needs them")
    ids = torch.tensor([DOCSTRING_VOCAB.index(c) for c in text], dtype=torch.long)
    cut = int(len(ids) * (1 - test_fraction))
    train, test = ids[:cut].unfold(0, length, stride), ids[cut:].unfold(0, length, stride)
    return train.contiguous(), test.contiguous(), DOCSTRING_VOCAB
