"""SIGINT and SIGTERM end a run the same way: checkpoint saved (when one is configured), temps removed,
exit code 128 + signal (130, 143). SLURM, Kubernetes and ``timeout`` stop jobs with SIGTERM: a normal end.

- :func:`raise_on_sigterm` makes SIGTERM raise :class:`Terminated` (a ``KeyboardInterrupt``), so every
  ``except BaseException`` / ``finally`` that cleans up after Ctrl-C cleans up after it too.
- :func:`deferred` is for a loop that saves a checkpoint: inside it the first SIGINT/SIGTERM only sets
  ``PENDING.signum``; the loop looks at it between steps (one attribute read), saves, and raises
  :func:`interrupted`. A second signal raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """A run stopped by a signal; ``signum`` says which (SIGINT 2, SIGTERM 15)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)


def interrupted(signum: int) -> KeyboardInterrupt:
    return Terminated(signum)


def interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM's :class:`Terminated`) that ``error`` came from, if any.

    A signal that lands while a C extension initializes is re-raised by it as another exception: pybind11
    modules (matplotlib's ``ft2font``, ``_path``, ...) raise ``ImportError("initialization failed")`` from
    the ``KeyboardInterrupt``. That is still the user's Ctrl-C, not an error, and must end the run as one
    (exit 130, not 1; and with ``os._exit``: the half-initialized module can crash the interpreter's
    teardown). Walks ``__cause__`` and ``__context__``.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


class _Pending:
    signum = 0


PENDING = _Pending()


def _raise(signum, frame):
    raise Terminated(signum)


def raise_on_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread (as SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def deferred(enabled: bool = True) -> Iterator[_Pending]:
    """Inside, SIGINT and SIGTERM set ``PENDING.signum`` (the loop stops at the next step boundary); a
    second one raises at once. Outside the main thread, or with ``enabled=False``, nothing changes."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield PENDING
        return

    def note(signum, frame):
        if PENDING.signum:
            raise Terminated(signum)
        PENDING.signum = signum

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    PENDING.signum = 0
    for s in old:
        signal.signal(s, note)
    try:
        yield PENDING
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        pending, PENDING.signum = PENDING.signum, 0
        if pending:  # arrived after the loop's last look (e.g. during the final save)
            raise Terminated(pending)
