"""Issue 16: the workloads at the default budget (--trials 16 --seeds 3), one optimizer at a time: wall and CPU
time per workload x optimizer (the budget: <= 3 minutes each; with one torch thread the CPU time is what the wall
time would be on an idle machine), steps and seconds to the target of the fastest trial.

Run: python benchmarks/bench_workloads.py [--optimizers adamw adam sgd] [--tasks FAMILY ...] [--trials 16]
       [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import machine

import diyopt
from diyopt.analysis.benchmarking.workloads import workloads

BUDGET_S = 180.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "adam", "sgd"])
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"machine: {machine()}, load average at start: {os.getloadavg()[0]:.1f}, trials={args.trials}, "
        f"seeds={args.seeds}"
    )
    print(
        f"{'workload':24s} {'optimizer':10s} {'solved':>6s} {'studies':>7s} {'attempts':>8s} {'steps':>6s} "
        f"{'s to target':>11s} {'wall s':>7s} {'CPU s':>7s}  budget (CPU)"
    )
    names = [w.name for w in workloads() if not args.tasks or w.family in args.tasks or w.name in args.tasks]
    for spec in args.optimizers:
        t0 = time.perf_counter()
        for name in names:  # one workload at a time: its own CPU time (one torch thread: ~ wall when idle)
            c0 = time.process_time()
            row = diyopt.bench(
                [spec], suite="workloads", tasks=[name], trials=args.trials, seeds=args.seeds, progress=False
            ).rows[0]
            cpu = time.process_time() - c0
            ok = "ok" if cpu <= BUDGET_S else "OVER"
            print(
                f"{row['task']:24s} {spec:10s} {str(row['solved']):>6s} {row['studies_solved']:>7s} "
                f"{row['attempts']:8g} {row['steps_to_target']:6g} {row['seconds_to_target']:11.2f} "
                f"{row['seconds']:7.1f} {cpu:7.1f}  {ok}",
                flush=True,
            )
        print(f"{spec}: {time.perf_counter() - t0:.1f} s wall for {len(names)} workloads")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
