"""Argument checks, written once: the library's (``ValueError`` naming the argument) and the CLI's
(argparse types whose message argparse prefixes with the option).
"""

from __future__ import annotations

import argparse
import operator
from typing import Any


def positive_integer(value: Any, name: str) -> int:
    """``value`` as an int if it is a positive integer of any integer type (``np.int64`` too); bools and
    floats are refused with ``ValueError("<name> must be a positive integer, got ...")``."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def check_steps(steps: Any) -> int:
    """The step budget of a fit or a sweep: a positive integer."""
    return positive_integer(steps, "steps")


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
