"""Every error type diyopt raises, the CLI's exit codes, and the one "unknown name, did you mean" message.

A CLI run that meets any of these prints one line and exits ``EXIT_BAD_INPUT`` (2); a fit that diverged
exits ``EXIT_DIVERGED`` (3).
"""

from __future__ import annotations

#: What went non-finite, in the order the guard reports it, and the words its message uses.
NONFINITE_WHAT = {"loss": "loss", "grad": "gradient", "update": "update", "param": "parameter"}


def describe_nonfinite(event: dict) -> str:
    """``diverged: non-finite update of parameter 'a' at step 5`` -- what, where and when."""
    what = NONFINITE_WHAT.get(event["what"], event["what"])
    where = f" of parameter {event['param']!r}" if event.get("param") else ""
    return f"diverged: non-finite {what}{where} at step {event['step']}"


class DivergedError(FloatingPointError):
    """A fit met a non-finite loss or gradient with ``on_nonfinite="raise"``; ``.event`` says where."""

    def __init__(self, event: dict):
        self.event = event
        super().__init__(describe_nonfinite(event))


EXIT_BAD_INPUT = 2  # bad input of any kind: one line on stderr, no traceback
EXIT_DIVERGED = 3  # a fit that met a non-finite loss or gradient and stopped


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
