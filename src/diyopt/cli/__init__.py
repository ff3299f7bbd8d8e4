"""The command line: ``diyopt demo | list | check | fit | sweep | compare | report | bench``.

Each subcommand is a module here (``fit``, ``demo``, ``compare``, ``report``, ``listing``, ``check``,
``sweep``, ``bench``) whose ``add(subparsers)`` registers its arguments and a handler ``run(args) -> exit code``. Bad input of any kind ends in one line on stderr and exit code 2,
no traceback (``--debug`` shows it); a fit that diverged exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from diyopt.cli import bench, check, compare, demo, fit, listing, report, sweep
from diyopt.cli._meanings import SEEDS_MEANING, TOL_MEANING  # noqa: F401  (re-exported for tests and docs)
from diyopt.errors import EXIT_BAD_INPUT, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


# One module per subcommand, each with ``add(subparsers)``; the order is the order ``--help`` lists them.
COMMANDS = (fit, demo, compare, report, listing, check, sweep, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diyopt",
        description="Write the loss and the update rule yourself; autograd "
        "supplies the gradients, diyopt runs, checks, compares and draws them.",
    )
    from diyopt import __version__

    parser.add_argument("--version", action="version", version=f"diyopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from diyopt._util.interrupts import interrupt_in, raise_on_sigterm

    raise_on_sigterm()  # SIGTERM ends a run like Ctrl-C: checkpoint saved, temps removed, exit 143
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "run", None):
            build_parser().print_help()
            return EXIT_BAD_INPUT
        return args.run(args)
    except UsageError as e:
        return _fail(str(e), debug)
    except BrokenPipeError:
        # The reader went away (`diyopt list optimizers | head`): not an error. Point stdout at devnull
        # so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        return _interrupted(e, from_command_line)
    except Exception as e:
        interrupt = interrupt_in(e)  # e.g. Ctrl-C during matplotlib's import, re-raised as an ImportError
        if interrupt is not None:
            return _interrupted(interrupt, from_command_line)
        where = user_code_line(e)
        if where is not None:  # raised inside the user's rule or loss: their file and line, not ours
            return _fail(f"diyopt: error in {where}: {type(e).__name__}: {_one_line(e)}", debug)
        if isinstance(e, (ValueError, TypeError, OSError, ImportError, SyntaxError, KeyError)):
            return _fail(f"diyopt: error: {_one_line(e)}", debug)
        raise


def _interrupted(e: KeyboardInterrupt, from_command_line: bool) -> int:
    signum = getattr(e, "signum", 2)
    print(f"diyopt: {_one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
    if from_command_line:
        # Every cleanup ran on the way here; skip the interpreter's teardown, which can take seconds
        # (freeing a long run's history), so a signal ends the process at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)
    return 128 + signum


def user_code_line(e: BaseException) -> str | None:
    """``path.py:12 (in rule)`` for the innermost frame of ``e``'s traceback in a user's file, else None."""
    import os
    import traceback

    from diyopt.optim import USER_FILES

    if not USER_FILES:
        return None
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) in USER_FILES]
    if not frames:
        return None
    f = frames[-1]
    return f"{USER_FILES[os.path.abspath(f.filename)]}:{f.lineno} (in {f.name})"


def _one_line(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:1000] + " ..."


def _fail(message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(message, file=sys.stderr)
    return EXIT_BAD_INPUT
