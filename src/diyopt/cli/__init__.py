"""The command line: ``diyopt demo | list | check | fit | sweep | compare | report | bench``.

Each subcommand is an ``add_<name>(subparsers)`` function below that registers its arguments and a
handler ``run(args) -> exit code``. Bad input of any kind ends in one line on stderr and exit code 2,
no traceback (``--debug`` shows it); a fit that diverged exits 3.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from diyopt._util.validate import positive_float, positive_int, unit_interval
from diyopt.core.checks import NONFINITE_POLICIES
from diyopt.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")








# The one meaning of a seed and of --tol in compare and sweep (README: "Seeds and --tol").
SEEDS_MEANING = ("Seed 0 is the problem's standard start; seed s > 0 starts at x0 + 0.1 (1 + |x0|) z, "
                 "z ~ N(0, 1) drawn with torch.Generator().manual_seed(s) (a NIST problem's seed 1 is its "
                 "Start 2).")
TOL_MEANING = ("A run reaches --tol at the first step i with f(x_i) - f* <= tol (f(x_0) - f*): the gap to "
               "the optimum f* cut by the factor tol, f* the problem's known optimum, or where none is "
               "known the lowest loss any run reached. A run that never does is 'not reached'.")


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
        from diyopt.analysis.demo import format_table, run_demo

        summary = run_demo(out=args.out, seed=args.seed, steps=args.steps, lr=args.lr)
        print(format_table(summary))
        print(f"figures and summary.json in {args.out}")
        diverged = [f"{name}: {f['diverged']}" for name, f in summary["fits"].items() if "diverged" in f]
        if diverged:  # through fit's guard: each fit stopped at its last finite params
            print(f"diyopt: {'; '.join(diverged)} (try a smaller --lr)", file=sys.stderr)
            return EXIT_DIVERGED
        return 0

    p.set_defaults(run=run)


# ---------------------------------------------------------------- diyopt fit


def add_fit(sub) -> None:
    p = sub.add_parser("fit", help="one fit of a problem with an optimizer spec; checkpoints, resume, "
                       "divergence guard; writes result.json and losses.csv",
                       description="Fit --problem with --optimizer for --steps updates and write "
                       "OUT/result.json and OUT/losses.csv (complete or not at all). Exit 2 on bad input, "
                       "3 when the fit diverged (the last finite params are written). Runs under torchrun "
                       "too: the data is sharded by rank, rank 0 writes.")
    p.add_argument("--problem", required=True, help="problem spec NAME[:key=value,...] as in compare and sweep: "
                   "rosenbrock:dim=4, nist:Misra1a, csv:path=data.csv,model=poly:2 (diyopt list problems)")
    p.add_argument("--optimizer", required=True, help="optimizer spec, e.g. adam:lr=1e-2 or my_rule.py:name")
    p.add_argument("--steps", type=positive_int, default=1000, help="number of updates (default: 1000)")
    p.add_argument("--out", default=None, help="output folder for result.json and losses.csv (default: "
                   "runs/fit-PROBLEM-OPTIMIZER, e.g. runs/fit-rosenbrock_dim_4-adam)")
    p.add_argument("--loss", help="loss name for problems that take one (line, csv): l2_norm, mse, sse, ...; "
                   "with --problem line also FILE.py:NAME")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and RNGs (default: 0)")
    p.add_argument("--data", help="a CSV file with columns x, y: the path of --problem csv (any model it takes: "
                   "csv:model=poly:2), or the data of --problem line")
    p.add_argument("--checkpoint", help="checkpoint file, saved atomically every --checkpoint-every updates")
    p.add_argument("--checkpoint-every", type=positive_int, help="updates between checkpoints (default: 100)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--engine", choices=["eager", "compiled"], default="eager", help="default: eager")
    p.add_argument("--on-nonfinite", choices=NONFINITE_POLICIES, default="stop",
                   help="what a nan/inf loss or gradient does: stop (exit 3, the last finite params "
                   "written), raise (exit 3, nothing written), skip (leave params and state as they were for "
                   "that step), ignore (no check) (default: stop)")

    def run(args) -> int:
        from diyopt.cli.fit import default_out, run_fit

        if args.out is None:
            args.out = default_out(args.problem, args.optimizer)
        return run_fit(args)

    p.set_defaults(run=run)


# ---------------------------------------------------------------- diyopt compare / report


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="optimizers side by side on problems from the same starts: figures, "
                       "table.csv/.md, settings.json",
                       description="Run every optimizer from the same --seeds starting points and write figures (loss vs step with a "
                       "band over seeds, loss vs time, paths on 2-D problems), table.csv, table.md and "
                       "settings.json to --out. With several --problem, one sub-folder each plus "
                       "Dolan-More performance profiles. Optimizers are separated by commas; a piece that "
                       "starts with key= continues the previous spec: 'sgd,adam:lr=1e-2,betas=0.8/0.99,"
                       "my.py:rule' is three optimizers. --optimizers may also be repeated. Ranks: by "
                       "median final loss, then by median steps to --tol. " + SEEDS_MEANING + " " + TOL_MEANING)
    p.add_argument("--problem", action="append", required=True,
                   help="problem spec NAME[:key=value,...] (rosenbrock:dim=4, nist:Misra1a; diyopt list "
                   "problems); repeat for several")
    p.add_argument("--optimizers", action="append", required=True,
                   help="comma-separated optimizer specs (see above); repeatable")
    p.add_argument("--seeds", type=positive_int, default=5, help="starting points per optimizer (default: 5)")
    p.add_argument("--steps", type=positive_int, default=1000, help="updates per run (default: 1000)")
    p.add_argument("--tol", type=unit_interval, default=1e-6,
                   help="converged when loss - f* <= tol * (loss0 - f*), see above (default: 1e-6)")
    p.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier comparison)")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")

    def run(args) -> int:
        from diyopt.analysis._compare import compare_all, save_all
        from diyopt.optim._registry import split_specs

        specs = [s for text in args.optimizers for s in split_specs(text)]
        comparisons = compare_all(args.problem, specs, seeds=args.seeds, steps=args.steps, tol=args.tol)
        if len(comparisons) == 1:
            comparisons[0].save(args.out)
        else:
            save_all(comparisons, args.out)
        for c in comparisons:
            print(f"## {c.problem.name}\n")
            print(c.to_markdown())
        if args.report:
            from diyopt.analysis.report import write_report

            print(f"report: {write_report(args.out)}")
        print(f"figures, table.csv, table.md and settings.json in {args.out}")
        return 0

    p.set_defaults(run=run)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page from a `diyopt compare` folder",
                       description="Write one HTML file with the figures embedded, the tables, and the "
                       "settings and versions of the comparison in DIR.")
    p.add_argument("dir", metavar="DIR", help="a folder written by `diyopt compare --out DIR`")
    p.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    p.add_argument("--title", help="page title (default: from the problems)")

    def run(args) -> int:
        from diyopt.analysis.report import write_report

        print(write_report(args.dir, args.out, title=args.title))
        return 0

    p.set_defaults(run=run)


# ---------------------------------------------------------------- diyopt list / diyopt check


def _optimizer_names() -> list[str]:
    from diyopt import optim

    return optim.names()


def _loss_names() -> list[str]:
    from diyopt.problems import losses

    return losses.names()


def _problem_lines() -> list[str]:
    """One line per problem: ``NAME  ARG=DEFAULT,...  description`` (the spec syntax ``--problem`` takes),
    then one per NIST StRD file found (``diyopt.nist.nist_dir``)."""
    import inspect

    from diyopt import problems
    from diyopt.problems import strd as nist

    def args(name: str) -> str:
        items = [k if v is inspect.Parameter.empty else f"{k}={_show(v)}" for k, v in problems.arguments(name).items()]
        return ",".join(items) or "-"

    rows = [(n, args(n), problems.describe(n)) for n in problems.names()]
    rows += [(f"nist:{f.stem}", "-", f"NIST StRD {f.stem}: " + nist.FORMULAS.get(f.stem, "linear regression"))
             for f in sorted(nist.nist_dir().glob("*.dat"))]
    w1, w2 = max(len(r[0]) for r in rows), min(max(len(r[1]) for r in rows), 44)
    return [f"{n:<{w1}}  {a:<{w2}}  {d}" for n, a, d in rows]


def _show(v) -> str:
    """A default as the spec syntax writes it: tuples joined by ``/``, booleans lower case."""
    if isinstance(v, tuple):
        return "/".join(_show(x) for x in v)
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    return str(v)


def _function_lines(module) -> list[str]:
    """``name(arguments)  first sentence of the docstring`` for each public factory of ``module``."""
    import inspect
    import re

    rows = []
    for name in sorted(n for n in module.__all__ if n[0].islower()):
        f = getattr(module, name)
        try:
            signature = inspect.signature(f)
        except (TypeError, ValueError):  # a builtin or an object without one: the name alone
            rows.append((name, " ".join((f.__doc__ or "").split()[:12])))
            continue
        params = [p for p in signature.parameters.values() if p.name not in ("grad", "state", "param")]
        args = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                         for p in params)
        # the first sentence of the first paragraph, before cleaning: a sentence ends at ". " before a
        # capital, a role (:math:) or markup, not at "sec. 7"
        doc = " ".join(inspect.cleandoc(f.__doc__ or "").split("\n\n")[0].split())
        doc = re.split(r"\.\s+(?=[A-Z:`\\])", doc, maxsplit=1)[0].rstrip(".")
        doc = re.sub(r":\w+:`~?([^`]*)`", r"\1", doc).replace("``", "")
        doc = re.sub(r"\\(?:text|operatorname)\{([^}]*)\}", r"\1", doc).replace("\\_", "_")
        doc = re.sub(r"\\(\w+)", r"\1", doc)  # TeX commands as their names: \gamma -> gamma
        rows.append((f"{name}({args})", doc))
    width = min(max(len(r[0]) for r in rows), 48)
    return [f"{sig:<{width}}  {doc}" for sig, doc in rows]


def _schedule_lines() -> list[str]:
    from diyopt import schedules

    return _function_lines(schedules)


def _transform_lines() -> list[str]:
    from diyopt import transforms

    return _function_lines(transforms)


# What ``diyopt list KIND`` can list: ``kind -> function returning its lines``.
LISTABLE: dict[str, Callable[[], list[str]]] = {
    "optimizers": _optimizer_names,
    "losses": _loss_names,
    "problems": _problem_lines,
    "schedules": _schedule_lines,
    "transforms": _transform_lines,
}


def add_list(sub) -> None:
    p = sub.add_parser("list", help="list the built-in optimizers, losses, problems, schedules, transforms",
                       description="Print the built-in names of one kind, one per line; without KIND, every "
                       "kind under a heading. Problems show their arguments (the --problem spec syntax: "
                       "NAME:key=value,...) and a one-line description; schedules and transforms their "
                       "arguments and what they do.")
    p.add_argument("kind", metavar="KIND", nargs="?", choices=sorted(LISTABLE),
                   help=f"what to list: {', '.join(sorted(LISTABLE))} (default: all)")

    def run(args) -> int:
        if args.kind is not None:
            print("\n".join(LISTABLE[args.kind]()))
            return 0
        for i, (kind, lines) in enumerate(LISTABLE.items()):
            print(("\n" if i else "") + f"{kind}:")
            print("\n".join("  " + line for line in lines()))
        return 0

    p.set_defaults(run=run)


def add_check(sub) -> None:
    p = sub.add_parser("check", help="conformance checks for an optimizer (yours or a built-in one)",
                       description="Run diyopt's conformance checks on an optimizer and print a pass/fail table "
                       "with reasons. SPEC is a built-in name with settings (adam:lr=1e-2,betas=0.8/0.99) or "
                       "FILE.py:NAME[:key=value,...] for your own rule. Exit code 0 when every check passes, "
                       "1 when any fails, 2 on bad input.")
    p.add_argument("spec", metavar="SPEC", help="adam, adam:lr=1e-2, my_rules.py:signum:lr=0.1, ...")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate for the convergence checks (default: the optimizer's own)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="most steps for the parabola and Rosenbrock checks (default: 20000)")

    def run(args) -> int:
        from diyopt.analysis._conformance import check
        from diyopt.optim._registry import get

        report = check(get(args.spec), lr=args.lr, **({} if args.budget is None else {"budget": args.budget}))
        print(f"diyopt check {args.spec}")
        print(report.table())
        return 0 if report.passed else 1

    p.set_defaults(run=run)


# ---------------------------------------------------------------- diyopt sweep


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of hyperparameters x seeds as one vectorized run: sweep.csv and "
                       "a plot of the loss gap to the best setting against each hyperparameter",
                       description="Run every combination of --grid values and --seeds starting points as one "
                       "vectorized computation (torch.func.vmap over runs) and write OUT/sweep.csv (one row per "
                       "run: hyperparameters, seed, final loss, steps to --tol, diverged, final params) and "
                       "OUT/sweep.png, and print one row per setting (medians over seeds) and the best "
                       "setting: the lowest median final loss over seeds. " + SEEDS_MEANING + " " + TOL_MEANING)
    p.add_argument("--problem", required=True, help="problem spec NAME[:key=value,...] (rosenbrock:dim=4, "
                   "nist:Misra1a; diyopt list problems)")
    p.add_argument("--optimizer", required=True, help="optimizer spec, e.g. adam or my_rule.py:name")
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                   help="values of one hyperparameter (tuples as 0.9/0.999); repeat for more")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="starting points per setting, seeds 0..N-1 (default: one run per setting, from the "
                   "standard start)")
    p.add_argument("--steps", type=positive_int, default=1000, help="updates per run (default: 1000)")
    p.add_argument("--tol", type=unit_interval, default=1e-6, help="the convergence tolerance, as in compare "
                   "(default: 1e-6)")
    p.add_argument("--engine", choices=["vmap", "compiled"], default="vmap", help="default: vmap (no compile)")
    p.add_argument("--out", required=True, help="output folder")

    def run(args) -> int:
        from diyopt.cli.sweep import run_sweep_cli

        return run_sweep_cli(args)

    p.set_defaults(run=run)


# ---------------------------------------------------------------- diyopt bench


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="tune optimizers fairly on a diagnostic suite of pass/fail tasks: "
                       "results.csv, matrix.png, manifest.json",
                       description="Each optimizer gets --trials quasi-random (Sobol) points of its search space "
                       "on every task, from --seeds studies; a task is solved when more than half of the studies "
                       "have a passing trial. The trials of a study run as one vectorized computation. Writes "
                       "OUT/results.csv, OUT/matrix.png and OUT/manifest.json (docs/bench.md lists the tasks).")
    p.add_argument("--suite", choices=["diagnostic", "workloads", "all"], default="diagnostic",
                   help="default: diagnostic")
    p.add_argument("--optimizers", nargs="+", required=True, metavar="SPEC",
                   help="optimizer specs, space-separated: adam sgd:nesterov=true my_rules.py:rule")
    p.add_argument("--trials", type=positive_int, default=16, help="trials per study (default: 16)")
    p.add_argument("--seeds", type=positive_int, default=3, help="studies, seeds 0..S-1 (default: 3)")
    p.add_argument("--tasks", nargs="+", metavar="NAME", help="only these tasks or families (default: all)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: float32")
    p.add_argument("--resume", action="store_true", help="keep the finished tasks of an interrupted run in OUT")
    p.add_argument("--out", required=True, help="output folder")

    def run(args) -> int:
        from diyopt.analysis.benchmarking.run import run_bench_cli

        return run_bench_cli(args)

    p.set_defaults(run=run)


# ---------------------------------------------------------------- entry point

# One line per subcommand; each add_* function owns its arguments and handler.
COMMANDS: list[Callable] = [
    add_fit,
    add_demo,
    add_compare,
    add_report,
    add_list,
    add_check,
    add_sweep,
    add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diyopt", description="Write the loss and the update rule yourself; autograd "
                     "supplies the gradients, diyopt runs, checks, compares and draws them.")
    from diyopt import __version__

    parser.add_argument("--version", action="version", version=f"diyopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from diyopt._util.interrupts import raise_on_sigterm

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
        signum = getattr(e, "signum", 2)
        print(f"diyopt: {_one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        if from_command_line:
            # Every cleanup ran on the way here; skip the interpreter's teardown, which can take seconds
            # (freeing a long run's history), so a signal ends the process at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        return 128 + signum
    except Exception as e:
        where = user_code_line(e)
        if where is not None:  # raised inside the user's rule or loss: their file and line, not ours
            return _fail(f"diyopt: error in {where}: {type(e).__name__}: {_one_line(e)}", debug)
        if isinstance(e, (ValueError, TypeError, OSError, ImportError, SyntaxError, KeyError)):
            return _fail(f"diyopt: error: {_one_line(e)}", debug)
        raise


def user_code_line(e: BaseException) -> str | None:
    """``path.py:12 (in rule)`` for the innermost frame of ``e``'s traceback in a user's file, else None."""
    import os
    import traceback

    from diyopt.optim._registry import USER_FILES

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

