"""Readers for user data files: ``.npy``, ``.npz`` and delimited text (``.csv``, ``.tsv``, ``.txt``).

Each reader returns a :class:`RawTable`: the data array (float64), its column names (None when
the file has none) and, for ``.npz``, an optional label/context array.

Delimited text: the delimiter is sniffed among ``,``, ``;`` and tab (a delimiter occurring the
same number of times on each of the first lines wins); otherwise fields are split on runs of
whitespace. The first row is a header when any of its non-empty fields is not a number.
Lines starting with ``#`` and blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
SUFFIXES = (".npy", ".npz", *TEXT_SUFFIXES)


@dataclass
class RawTable:
    """What a reader found in a file: data ``x`` (float64), column names and an optional label array."""

    x: np.ndarray
    columns: list[str] | None = None
    labels: np.ndarray | None = None  # npz "context"/"y"/"label(s)" array, if any
    labels_key: str | None = None
    lines: list[int] | None = None  # file line number (1-based) of each data row (text files)


def read(path: Path) -> RawTable:
    """Read a data file by suffix (see module docstring)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return RawTable(_as_float(np.load(path, allow_pickle=False), path))
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in TEXT_SUFFIXES:
        return _read_text(path)
    raise ValueError(f"{str(path)!r}: unsupported file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")


def _as_float(a: np.ndarray, path: Path, key: str | None = None) -> np.ndarray:
    where = f"{str(path)!r}" + (f" key {key!r}" if key else "")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{where}: expected an array of rows, got a scalar")
    return a.astype(np.float64)


_X_KEYS = ("x", "data")
_LABEL_KEYS = ("context", "y", "label", "labels")


def _read_npz(path: Path) -> RawTable:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        xkey = next((k for k in _X_KEYS if k in keys), None)
        if xkey is None:
            rest = [k for k in keys if k not in _LABEL_KEYS]
            if len(rest) != 1:
                raise ValueError(
                    f"{str(path)!r}: cannot tell which array is the data; name it 'x' or 'data' "
                    f"(found keys {keys})"
                )
            xkey = rest[0]
        x = _as_float(z[xkey], path, xkey)
        lkey = next((k for k in _LABEL_KEYS if k in keys), None)
        labels = np.asarray(z[lkey]) if lkey is not None else None
    return RawTable(x, labels=labels, labels_key=lkey)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _sniff(lines: list[str]) -> str | None:
    """The delimiter among , ; tab that splits the first lines consistently; None: whitespace."""
    best, best_count = None, 0
    for d in (",", ";", "\t"):
        counts = {line.count(d) for line in lines}
        if len(counts) == 1 and (c := counts.pop()) > best_count:
            best, best_count = d, c
    if best is None:  # ragged: fall back to the most frequent delimiter on the first line
        c = max((",", ";", "\t"), key=lines[0].count)
        best = c if lines[0].count(c) else None
    return best


def _read_text(path: Path) -> RawTable:
    text = path.read_text()
    numbered = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        raise ValueError(f"{str(path)!r} holds no data rows")
    delim = _sniff([ln for _, ln in numbered[:5]])
    if delim is None:
        rows = [ln.split() for _, ln in numbered]
    else:
        rows = list(csv.reader(io.StringIO("\n".join(ln for _, ln in numbered)), delimiter=delim))
    rows = [[f.strip() for f in r] for r in rows]
    line_no = [n for n, _ in numbered]
    columns = None
    if any(f and not _is_number(f) for f in rows[0]):
        columns = [f or f"col{j}" for j, f in enumerate(rows[0])]
        rows, line_no = rows[1:], line_no[1:]
        if not rows:
            raise ValueError(f"{str(path)!r} has a header but no data rows")
    width = len(columns) if columns is not None else len(rows[0])
    for r, n in zip(rows, line_no):
        if len(r) != width:
            raise ValueError(f"{str(path)!r} line {n}: expected {width} fields, got {len(r)}")
    try:
        x = np.asarray(rows, dtype=str).astype(np.float64)
    except ValueError:
        for r, n in zip(rows, line_no):
            for j, f in enumerate(r):
                if not _is_number(f):
                    col = f" ({columns[j]!r})" if columns else ""
                    what = "an empty field" if not f else f"non-numeric value {f!r}"
                    raise ValueError(
                        f"{str(path)!r} line {n}, column {j}{col}: {what}; only numeric columns are supported"
                    ) from None
        raise
    return RawTable(x, columns=columns, lines=line_no)
