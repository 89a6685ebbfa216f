"""A byte-level tokenizer for instructions: nothing to download, nothing unknown.

Every string is its UTF-8 bytes, so every character (any script, emoji) has a code and the
vocabulary is fixed: ``PAD = 0`` and byte ``b`` is token ``b + 1`` (``vocab_size = 257``). Being
stateless and fixed, it is part of the policy (its ``max_len`` is recorded with the policy), so a
saved policy tokenizes exactly as it did in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward._validate import check_positive_int

PAD = 0
VOCAB_SIZE = 257


class ByteTokenizer:
    """UTF-8 bytes -> token ids, padded or truncated to ``max_len``.

    ``encode(["pick red"]) -> LongTensor [B, max_len]`` (``PAD`` after the text); ``decode`` is
    its inverse for texts of at most ``max_len`` bytes. Longer texts are truncated to ``max_len``
    bytes (as pi0 truncates its prompt); a character cut by the truncation is dropped on decode.
    The empty string is all padding: the unconditional instruction of classifier-free guidance.

    >>> tok = ByteTokenizer(max_len=8)
    >>> tok.decode(tok.encode(["héllo"]))
    ['héllo']
    """

    vocab_size = VOCAB_SIZE
    pad_id = PAD

    def __init__(self, max_len: int = 48):
        self.max_len = check_positive_int(max_len, "max_len")

    def encode(self, texts: str | Sequence[str]) -> Tensor:
        """``texts`` (one string or a list of B) -> ``[B, max_len]`` int64 token ids."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(s, str) for s in texts):
            raise TypeError(f"instructions must be a string or a list of strings, got {texts!r:.80}")
        out = torch.full((len(texts), self.max_len), PAD, dtype=torch.long)
        for i, s in enumerate(texts):
            b = s.encode("utf-8")[: self.max_len]
            if b:
                out[i, : len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8).long() + 1
        return out

    def decode(self, ids: Tensor) -> list[str]:
        """``[B, L]`` token ids -> B strings (padding ignored)."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [B, L], got shape {list(ids.shape)}")
        bad = (ids < 0) | (ids >= VOCAB_SIZE)
        if bool(bad.any()):
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}), got {ids[bad][:5].tolist()}")
        return [bytes((r[r != PAD] - 1).tolist()).decode("utf-8", errors="ignore") for r in ids]

    def __repr__(self) -> str:
        return f"ByteTokenizer(max_len={self.max_len})"
