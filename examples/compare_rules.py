"""Prove a home-made update rule against the built-ins: same problems, same starts, figures and a report.

    python examples/compare_rules.py [--out runs/compare_rules]

The rule is heavy-ball momentum written as one pure per-tensor function; it runs against torch.optim's
SGD and diyopt's adam on the Rosenbrock valley and on the seed's line, 5 starts each. The output folder
gets one sub-folder per problem (figures, table.csv, table.md, settings.json), Dolan-More performance
profiles across both problems, and report.html -- one page to open in a browser.
"""

import argparse

import torch

import diyopt
from diyopt.analysis import compare_all, save_all
from diyopt.analysis.report import write_report


@diyopt.elementwise
def heavy_ball(grad, velocity, param, *, lr=1e-3, beta=0.9):
    """``v <- beta v + grad``, ``update = -lr v``."""
    velocity = beta * velocity + grad
    return -lr * velocity, velocity


@heavy_ball.init
def _(param):
    return torch.zeros_like(param)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/compare_rules")
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    optimizers = {
        "heavy_ball (mine)": heavy_ball(lr=1e-3, beta=0.9),
        "torch.optim.SGD momentum": (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9}),
        "adam lr=1e-2": diyopt.optim.adam(lr=1e-2),
    }
    comparisons = compare_all(["rosenbrock", "line"], optimizers, seeds=5, steps=args.steps, tol=1e-6)
    for c in comparisons:
        print(f"## {c.problem.name}\n\n{c.to_markdown()}")
    save_all(comparisons, args.out)
    print(f"open {write_report(args.out)}")


if __name__ == "__main__":
    main()
