"""``diyopt compare``: several optimizers on several problems, seeds, tables and figures."""

from __future__ import annotations

from diyopt._util.validate import positive_int, unit_interval
from diyopt.cli._meanings import SEEDS_MEANING, TOL_MEANING


def add(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="optimizers side by side on problems from the same starts: figures, table.csv/.md, settings.json",
        description="Run every optimizer from the same --seeds starting points and write figures (loss vs step with a "
        "band over seeds, loss vs time, paths on 2-D problems), table.csv, table.md and "
        "settings.json to --out. With several --problem, one sub-folder each plus "
        "Dolan-More performance profiles. Optimizers are separated by commas; a piece that "
        "starts with key= continues the previous spec: 'sgd,adam:lr=1e-2,betas=0.8/0.99,"
        "my.py:rule' is three optimizers. --optimizers may also be repeated. Ranks: by "
        "median final loss, then by median steps to --tol. " + SEEDS_MEANING + " " + TOL_MEANING,
    )
    p.add_argument(
        "--problem",
        action="append",
        required=True,
        help="problem spec NAME[:key=value,...] (rosenbrock:dim=4, nist:Misra1a; diyopt list "
        "problems); repeat for several",
    )
    p.add_argument(
        "--optimizers", action="append", required=True, help="comma-separated optimizer specs (see above); repeatable"
    )
    p.add_argument("--seeds", type=positive_int, default=5, help="starting points per optimizer (default: 5)")
    p.add_argument("--steps", type=positive_int, default=1000, help="updates per run (default: 1000)")
    p.add_argument(
        "--tol",
        type=unit_interval,
        default=1e-6,
        help="converged when loss - f* <= tol * (loss0 - f*), see above (default: 1e-6)",
    )
    p.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier comparison)")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")

    def run(args) -> int:
        from diyopt.analysis import compare_all, save_all
        from diyopt.optim import split_specs

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
