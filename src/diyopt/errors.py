"""TODO docstring."""
from __future__ import annotations

from diyopt.core.checks import describe_nonfinite


class DivergedError(FloatingPointError):
    """A fit met a non-finite loss or gradient with ``on_nonfinite="raise"``; ``.event`` says where."""

    def __init__(self, event: dict):
        self.event = event
        super().__init__(describe_nonfinite(event))


EXIT_BAD_INPUT = 2


EXIT_DIVERGED = 3


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


def unknown_name(kind: str, name: str, known) -> str:
    """``unknown loss 'hubr' (did you mean 'huber'?); known: ...`` -- one line."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known))}"


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and, where it can, the line."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unsafe, torn, from other settings); one line, names the file."""


class Busy(BlockingIOError):
    """Another process holds the lock (one line, names it)."""
