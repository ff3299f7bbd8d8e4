"""``diyopt.compare`` on the seed's line: what the bookkeeping costs, and the acceptance run.

1. Overhead: the seed's gradient descent for ``--steps`` updates from 5 starts, (a) as a plain hand-written
   autograd loop (the reference), (b) through ``diyopt.fit``, (c) through ``diyopt.compare`` (per-step time
   stamps, paths on this 2-D problem, final-loss evaluation). Prints each time and the ratio to (a).
2. The issue's check: ``diyopt compare --problem line --optimizers sgd,adam,gradient_descent --seeds 5``
   end to end (process start, imports, figures, files), its wall time, and whether the table's ranks agree
   with the final losses.

    python benchmarks/compare_line.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import diyopt
from diyopt.problems import start_point


def plain_loop(problem, params, steps, lr):
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        loss = problem.loss(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        with torch.no_grad():
            for v, g in zip(leaves.values(), grads):
                v -= lr * g
    return leaves


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    problem = diyopt.problems.get("line")
    starts = [start_point(problem, s) for s in range(5)]
    lr = 1e-3

    t = time.perf_counter()
    for p in starts:
        plain_loop(problem, p, args.steps, lr)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    for p in starts:
        diyopt.fit(problem.loss, p, diyopt.optim.gradient_descent(lr=lr), args.steps)
    fitted = time.perf_counter() - t
    t = time.perf_counter()
    diyopt.compare(problem, {"gd": diyopt.optim.gradient_descent(lr=lr)}, seeds=5, steps=args.steps)
    compared = time.perf_counter() - t
    print(f"gradient descent, line, 5 starts x {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"{'':28s}{'seconds':>10s}{'ratio':>8s}")
    for name, sec in [("plain autograd loop (ref)", plain), ("diyopt.fit", fitted), ("diyopt.compare", compared)]:
        print(f"{name:28s}{sec:10.3f}{sec / plain:8.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "line"
        cmd = [
            sys.executable,
            "-m",
            "diyopt.cli",
            "compare",
            "--problem",
            "line",
            "--optimizers",
            "sgd,adam,gradient_descent",
            "--seeds",
            "5",
            "--steps",
            str(args.steps),
            "--out",
            str(out),
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t
        with (out / "table.csv").open() as f:
            rows = list(csv.DictReader(f))
    # consistent: sorted by final loss, the ranks never go down
    by_loss = sorted(rows, key=lambda r: float(r["final_loss"]))
    consistent = [int(r["rank"]) for r in by_loss] == sorted(int(r["rank"]) for r in rows)
    print(
        f"\n`diyopt compare --problem line --optimizers sgd,adam,gradient_descent --seeds 5 "
        f"--steps {args.steps}`: {wall:.1f} s wall, ranks consistent with final losses: {consistent}"
    )
    for r in sorted(rows, key=lambda r: int(r["rank"])):
        print(
            f"  {r['rank']}  {r['optimizer']:18s} final loss {float(r['final_loss']):.10g}  "
            f"steps to tol {r['steps_to_tol']}"
        )


if __name__ == "__main__":
    main()
