"""``diyopt demo``: the seed's experiment in one command."""

from __future__ import annotations

import sys

from diyopt._util.validate import positive_float, positive_int
from diyopt.errors import EXIT_DIVERGED


def add(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the seed's experiment: fit a noisy line with Adam and with plain "
        "gradient descent, write figures and summary.json",
        description="Reproduce the seed: make noisy line data, fit a, b with torch.optim.Adam "
        "and with diyopt's own gradient_descent (loss: (y - y_hat).norm()), write the six "
        "figures and summary.json to --out, and print a table.",
    )
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
