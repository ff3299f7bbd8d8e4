"""``diyopt check``: the conformance kit for a user's optimizer."""

from __future__ import annotations

from diyopt._util.validate import positive_float, positive_int


def add(sub) -> None:
    p = sub.add_parser(
        "check",
        help="conformance checks for an optimizer (yours or a built-in one)",
        description="Run diyopt's conformance checks on an optimizer and print a pass/fail table "
        "with reasons. SPEC is a built-in name with settings (adam:lr=1e-2,betas=0.8/0.99) or "
        "FILE.py:NAME[:key=value,...] for your own rule. Exit code 0 when every check passes, "
        "1 when any fails, 2 on bad input.",
    )
    p.add_argument("spec", metavar="SPEC", help="adam, adam:lr=1e-2, my_rules.py:signum:lr=0.1, ...")
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate for the convergence checks (default: the optimizer's own)",
    )
    p.add_argument(
        "--budget",
        type=positive_int,
        default=None,
        help="most steps for the parabola and Rosenbrock checks (default: 20000)",
    )
    p.add_argument(
        "--against",
        metavar="MODULE:Class[:k=v,...]",
        default=None,
        help="instead of the checks, run SPEC in lockstep with this torch.optim-style class "
        "(torch.optim:Adam:lr=1e-2, pytorch_optimizer:ADOPT, my_ref.py:MyAdam) on a small MLP, "
        "every step, and report the first step and tensor where they part, or 'equal to TOL "
        "over N steps'; exit code 0 when equal, 1 when they part",
    )
    p.add_argument("--steps", type=positive_int, default=100, help="lockstep steps for --against (default: 100)")
    p.add_argument(
        "--tol",
        type=float,
        default=1e-12,
        help="largest relative error per tensor still equal, for --against (default: 1e-12; 0: bitwise)",
    )
    p.add_argument(
        "--to-torch",
        action="store_true",
        help="for --against: run SPEC through diyopt.to_torch instead of its pure init/update",
    )

    def run(args) -> int:
        from diyopt.analysis import check
        from diyopt.optim import get

        if args.against is not None:
            return _against(args)
        report = check(get(args.spec), lr=args.lr, **({} if args.budget is None else {"budget": args.budget}))
        print(f"diyopt check {args.spec}")
        print(report.table())
        return 0 if report.passed else 1

    p.set_defaults(run=run)


def _against(args) -> int:
    from diyopt.analysis import lockstep
    from diyopt.optim import get

    if not args.tol >= 0:
        raise ValueError(f"--tol must be >= 0, got {args.tol}")
    report = lockstep(
        get(args.spec), args.against, steps=args.steps, tol=args.tol, form="to_torch" if args.to_torch else "functional"
    )
    print(f"diyopt check {args.spec} --against {args.against}")
    print(report.summary())
    return 0 if report.passed else 1
