"""TODO docstring."""
from __future__ import annotations

import argparse
from typing import Any


def check_steps(steps: Any) -> int:
    """A positive integer of any integer type (``np.int64`` too); bools and floats are refused."""
    import operator

    try:
        value = operator.index(steps) if not isinstance(steps, bool) else None
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A tolerance: a number strictly between 0 and 1 (the factor the gap to f* must shrink by)."""
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (the factor the gap to f* shrinks by), got {text}")
    return value
