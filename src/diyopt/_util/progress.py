"""Signs of life: a tqdm bar over a fit's steps, and the compiled engines' "compiling" notice.

Both write to stderr. The bar is for ``fit(..., progress=True)`` and for the command line on a terminal;
it is redrawn at most every 0.1 s, and only then reads the loss (a ``float()``: a device sync on a GPU),
so a step pays one clock read and a comparison for it. tqdm is imported on first use (``tqdm.auto``, so a
notebook gets its widget): importing it costs ~0.1 s, which ``import diyopt`` need not pay.
"""

from __future__ import annotations

import sys
import time
from typing import Any

#: Seconds between redraws of the bar (and reads of the loss).
REDRAW_SECONDS = 0.1


def wanted(progress: bool | None) -> bool:
    """``progress`` as asked; ``None`` means: when stderr is a terminal (the command line's default)."""
    return bool(progress) if progress is not None else _stderr_is_a_terminal()


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class StepBar:
    """A bar of ``total`` steps: steps done, the latest loss, the rate and the time left.

    The tqdm bar is made at the first update, with the steps done by then as its start: a resumed fit
    starts where it was, and a compiled fit's rate leaves out the first call, which compiled.
    """

    def __init__(self, total: int, desc: str = "fit", unit: str = "step", label: str = "loss"):
        self.total, self.desc, self.unit, self.label = total, desc, unit, label
        self.bar = None
        self.next = 0.0

    @classmethod
    def maybe(cls, progress: bool | None, total: int, **kwargs: Any) -> StepBar | None:
        return cls(total, **kwargs) if wanted(progress) else None

    def update(self, done: int, loss: Any) -> None:
        """``done`` steps finished, ``loss`` the latest (a tensor: read only when the bar is redrawn)."""
        now = time.perf_counter()
        if now >= self.next:
            self.next = now + REDRAW_SECONDS
            self._draw(done, loss)

    def close(self, done: int, loss: Any = None) -> None:
        self._draw(done, loss)
        self.bar.close()

    def _draw(self, done: int, loss: Any) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=done,
                desc=self.desc,
                unit=self.unit,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=REDRAW_SECONDS,
            )
        if loss is not None:
            self.bar.set_postfix_str(f"{self.label}={float(loss):.4g}", refresh=False)
        self.bar.update(done - self.bar.n)


class CompileNotice:
    """``compiling (first call; cached for next time)`` before the first compiled call, its time after it;
    on a terminal or when asked (``progress=True``), so logs and tests see nothing new."""

    def __init__(self, progress: bool | None):
        self.show = bool(progress) or _stderr_is_a_terminal()

    def start(self) -> None:
        if self.show:
            _write("diyopt: compiling (first call; cached for next time)...")

    def done(self, seconds: float, eager_seconds: float | None = None) -> None:
        """``eager_seconds``: what the whole run would take uncompiled (an estimate); said when it is less."""
        if self.show:
            _write(f"diyopt: compiled in {seconds:.1f} s")
            if eager_seconds is not None and eager_seconds < seconds:
                _write(
                    f"diyopt: compiling cost more than it saves: this run takes about {eager_seconds:.2g} s "
                    "with engine='eager'"
                )


def _write(line: str) -> None:
    """A line on stderr that does not break a bar being drawn."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def progress_bar(total: int, enabled: bool | None, desc: str):
    """A tqdm bar on stderr when it is a terminal (or when asked); nothing otherwise or without tqdm."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=False)
