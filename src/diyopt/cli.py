"""The command line: ``diyopt demo | list | check | fit | sweep | compare | report``.

Each subcommand is an ``add_<name>(subparsers)`` function below that registers its arguments and a
handler ``run(args) -> exit code``. Bad input of any kind ends in one line on stderr and exit code 2,
no traceback (``--debug`` shows it); a fit that diverged exits 3.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


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


# ---------------------------------------------------------------- diyopt demo


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the seed's experiment: fit a noisy line with Adam and with plain "
                       "gradient descent, write figures and summary.json",
                       description="Reproduce the seed: make noisy line data, fit a, b with torch.optim.Adam "
                       "and with diyopt's own gradient_descent (loss: (y - y_hat).norm()), write the six "
                       "figures and summary.json to --out, and print a table.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and the initial a, b (default: 0)")
    p.add_argument("--steps", type=positive_int, default=4000, help="updates per fit (default: 4000)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate of both fits (default: 1e-3)")

    def run(args) -> int:
        from .demo import format_table, run_demo

        summary = run_demo(out=args.out, seed=args.seed, steps=args.steps, lr=args.lr)
        print(format_table(summary))
        print(f"figures and summary.json in {args.out}")
        return 0

    p.set_defaults(run=run)


# ---------------------------------------------------------------- entry point

# One line per subcommand; each add_* function owns its arguments and handler.
COMMANDS: list[Callable] = [
    add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diyopt", description="Write the loss and the update rule yourself; autograd "
                     "supplies the gradients, diyopt runs, checks, compares and draws them.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "run", None):
            build_parser().print_help()
            return EXIT_BAD_INPUT
        return args.run(args)
    except UsageError as e:
        return _fail(str(e), debug)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, OSError, ImportError,
            SyntaxError, KeyError) as e:
        return _fail(f"diyopt: error: {_one_line(e)}", debug)
    except KeyboardInterrupt:
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    return " ".join(text.split())


def _fail(message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(message, file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
