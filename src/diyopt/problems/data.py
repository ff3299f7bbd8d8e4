"""Data: the seed's noisy line and CSV loading."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diyopt.errors import DataError


class Dataset(NamedTuple):
    """``x`` and ``y`` as float64 tensors of the same length; unpacks as ``x, y = data``."""

    x: Tensor
    y: Tensor


def make_line(n: int = 100, a: float = -1.0, b: float = 1.0, sigma: float = 0.1, seed: int = 0) -> Dataset:
    r"""The seed's data: :math:`x = 2\,U(0,1)`, :math:`y = a x + b + \sigma\,N(0,1)`, float64.

    Drawn with ``numpy.random.RandomState(seed)`` in the seed's order (all x, then all noise), so the
    same seed gives the same data as the seed's notebook with that numpy seed.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.RandomState(seed)
    x = 2 * rng.rand(n)
    y = a * x + b + sigma * rng.randn(n)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y))


def least_squares_line(x: Tensor, y: Tensor) -> tuple[float, float]:
    """The exact least-squares line ``y ~ a x + b`` (closed form, float64): returns ``(a, b)``."""
    design = torch.stack([x, torch.ones_like(x)], 1).double()
    sol = torch.linalg.lstsq(design, y.double().unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return float(sol[0]), float(sol[1])


def load_csv(path: str | Path, x: str = "x", y: str = "y") -> Dataset:
    """Read columns ``x`` and ``y`` of a CSV file with a header row, as float64 tensors.

    Raises :class:`DataError` (one line, naming the file, line and column) for a missing file, missing
    columns, non-numeric or non-finite values, ragged rows or no data.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's UTF-8 CSV) is not a column name
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if not header:
        raise DataError(f"{path}: empty file, expected a header row with columns {x!r} and {y!r}")
    header = [h.strip() for h in header]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataError(f"{path}:1: column(s) {twice} appear more than once in the header; name each column once")
    missing = [c for c in (x, y) if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
    ix, iy = header.index(x), header.index(y)
    xs, ys = [], []
    for lineno, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} values, got {len(row)}")
        for col, idx, out in ((x, ix, xs), (y, iy, ys)):
            try:
                v = float(row[idx])
            except ValueError:
                raise DataError(f"{path}:{lineno}: column {col!r} is not a number: {row[idx]!r}") from None
            if not math.isfinite(v):
                raise DataError(f"{path}:{lineno}: column {col!r} is not finite: {row[idx]!r}")
            out.append(v)
    if not xs:
        raise DataError(f"{path}: no data rows")
    return Dataset(torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64))
