"""``diyopt check``: the conformance kit for a user's optimizer."""
from __future__ import annotations

from diyopt._util.validate import positive_float, positive_int


def add(sub) -> None:
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
        from diyopt.analysis import check
        from diyopt.optim import get

        report = check(get(args.spec), lr=args.lr, **({} if args.budget is None else {"budget": args.budget}))
        print(f"diyopt check {args.spec}")
        print(report.table())
        return 0 if report.passed else 1

    p.set_defaults(run=run)
