from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from diyopt._util.format import NOT_REACHED, format_value
from diyopt._util.validate import positive_int, unit_interval
from diyopt.cli._meanings import SEEDS_MEANING, TOL_MEANING
from diyopt.engines import SweepResult, sweep


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["lr=1e-3,1e-2", "betas=0.9/0.999,0.8/0.99"]`` -> ``{"lr": [...], "betas": [(0.9, 0.999), ...]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise ValueError(f"--grid takes NAME=V1,V2,... (tuples as A/B), got {item!r}")
        parsed = []
        for v in values.split(","):
            try:
                parts = tuple(float(x) for x in v.split("/"))
            except ValueError:
                raise ValueError(f"--grid {key}: expected numbers, got {v!r}") from None
            parsed.append(parts if len(parts) > 1 else parts[0])
        if key in grid:
            raise ValueError(f"--grid {key} is given twice; list all its values in one: --grid {key}=V1,V2,...")
        grid[key] = parsed
    return grid


def run_sweep_cli(args: Any) -> int:
    """``diyopt sweep``: the table (sweep.csv), a figure of final loss against each swept hyperparameter,
    and on stdout one line per setting (medians over seeds) and the best setting."""
    import sys
    from pathlib import Path

    from diyopt.analysis.figures import plot_sweep
    from diyopt.optim import get
    from diyopt.problems import as_problem, start_point

    problem = as_problem(args.problem)
    optimizer = get(args.optimizer)
    grid = parse_grid(args.grid or [])
    import warnings

    from diyopt._util.files import output_folder

    init = (lambda s: start_point(problem, s)) if args.seeds is not None else None  # compare's starts
    out = Path(args.out)
    with output_folder(out, names=("sweep.csv", "sweep.png"), kind="sweep") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback note is printed below, as one line
            result = sweep(
                problem.loss,
                problem.params0,
                optimizer,
                args.steps,
                grid=grid,
                seeds=args.seeds,
                init=init,
                tol=args.tol,
                f_star=problem.optimum,
                engine=args.engine,
                progress=None,
            )
        if "fallback" in result.info:
            print(f"diyopt: note: {result.info['fallback']}", file=sys.stderr)
        result.to_csv(tmp / "sweep.csv")
        plot_sweep(result, tmp / "sweep.png")
    figure = out / "sweep.png"
    diverged = sum(r["diverged"] for r in result.rows)
    print(
        f"{len(result)} runs x {args.steps} steps in {result.seconds:.3g} s "
        f"({result.info['batches']} batch(es), engine {result.info['engine']}); {diverged} diverged"
    )
    print(format_settings(result))
    best = result.best()
    print(
        "best setting (lowest median final loss over seeds): "
        + ", ".join(f"{k}={format_value(best[k])}" for k in result.hyperparameters())
        + f"; median final loss {best['final_loss']:.6g}"
    )
    print(f"table: {out / 'sweep.csv'}; figure: {figure}")
    return 0


def format_settings(result: SweepResult) -> str:
    """One Markdown row per setting: hyperparameters, median / min / max final loss over seeds, diverged
    runs, runs that reached ``tol``, median steps to it ("not reached" where most runs never did)."""
    keys = result.hyperparameters()
    head = keys + ["seeds", "final loss (median)", "min", "max", "diverged", "reached tol", "steps to tol"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v):
        return f"{v:.4g}" if math.isfinite(v) else ("diverged" if v > 0 else str(v))

    for s in result.by_setting():
        steps = s["steps_to_tol"]
        steps = "–" if steps is None else (NOT_REACHED if not math.isfinite(steps) else f"{steps:g}")
        cells = [format_value(s[k]) for k in keys] + [
            str(s["seeds"]),
            num(s["final_loss"]),
            num(s["final_loss_min"]),
            num(s["final_loss_max"]),
            str(s["diverged"]),
            s["reached"] or "–",
            steps,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="a grid of hyperparameters x seeds as one vectorized run: sweep.csv and "
        "a plot of the loss gap to the best setting against each hyperparameter",
        description="Run every combination of --grid values and --seeds starting points as one "
        "vectorized computation (torch.func.vmap over runs) and write OUT/sweep.csv (one row per "
        "run: hyperparameters, seed, final loss, steps to --tol, diverged, final params) and "
        "OUT/sweep.png, and print one row per setting (medians over seeds) and the best "
        "setting: the lowest median final loss over seeds. " + SEEDS_MEANING + " " + TOL_MEANING,
    )
    p.add_argument(
        "--problem",
        required=True,
        help="problem spec NAME[:key=value,...] (rosenbrock:dim=4, nist:Misra1a; diyopt list problems)",
    )
    p.add_argument("--optimizer", required=True, help="optimizer spec, e.g. adam or my_rule.py:name")
    p.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2,...",
        help="values of one hyperparameter (tuples as 0.9/0.999); repeat for more",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help="starting points per setting, seeds 0..N-1 (default: one run per setting, from the standard start)",
    )
    p.add_argument("--steps", type=positive_int, default=1000, help="updates per run (default: 1000)")
    p.add_argument(
        "--tol", type=unit_interval, default=1e-6, help="the convergence tolerance, as in compare (default: 1e-6)"
    )
    p.add_argument("--engine", choices=["vmap", "compiled"], default="vmap", help="default: vmap (no compile)")
    p.add_argument("--out", required=True, help="output folder")

    def run(args) -> int:

        return run_sweep_cli(args)

    p.set_defaults(run=run)
