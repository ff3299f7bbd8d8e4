"""Issue 16: S studies of a task in one sweep (S x N runs) against one sweep per study, CPU seconds (one
torch thread: on an idle machine, about the wall time) and the rows, which must be equal.

Run: python benchmarks/bench_studies.py [--tasks rosenbrock-2 noise_white-1 delayed-2] [--trials 100] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import machine

import diyopt
from diyopt.analysis.benchmarking import run as bench_run
from diyopt.analysis.benchmarking.tasks import suite


def cpu(fn):
    c0 = time.process_time()
    out = fn()
    return out, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["rosenbrock-2", "noise_white-1", "delayed-2"])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"machine: {machine()}, load average at start: {os.getloadavg()[0]:.1f}, adam, trials={args.trials}, "
        f"studies={args.seeds}"
    )
    tasks = {t.name: t for t in suite()}
    seeds = list(range(args.seeds))
    for name in args.tasks:
        task = tasks[name]
        one, t_one = cpu(
            lambda t=task: bench_run.run_task(t, "adam", diyopt.optim.adam(), trials=args.trials, seeds=seeds)
        )
        each, t_each = cpu(
            lambda t=task: [
                bench_run.run_task(t, "adam", diyopt.optim.adam(), trials=args.trials, seeds=[s]) for s in seeds
            ]
        )
        same = sorted(r["best_metric"] for r in each)[len(seeds) // 2] == one["best_metric"]
        print(
            f"{name:16s} one sweep {t_one:6.2f} CPU s   {len(seeds)} sweeps {t_each:6.2f} CPU s   "
            f"{t_each / t_one:4.2f}x   median best_metric equal: {same}",
            flush=True,
        )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
