"""Issue 16: the built-in optimizers on the diagnostic suite, tuned (quasi-random search, N trials x S
studies); prints the solved matrix, seconds per optimizer, trials per second and the budget check (all 13
built-ins x the whole suite x 100 trials in <= 15 minutes on this 2-core machine).

A "trial" is one hyperparameter point run for a task's whole step budget from one study's seed; the trials of
all studies of a task run as one vectorized ``diyopt.sweep``, so trials/second grows with --trials and --seeds
until the machine is busy. The load average is printed at the start and the end: the machine is shared.
Run: python benchmarks/bench_diagnostic.py [--trials 100] [--seeds 1] [--optimizers adam sgd ...]
       [--tasks FAMILY ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import machine

import diyopt
from diyopt.analysis.benchmarking.tasks import suite

BUILT_INS = [
    "sgd",
    "adam",
    "adamw",
    "nadam",
    "radam",
    "adamax",
    "rmsprop",
    "adagrad",
    "adadelta",
    "rprop",
    "lion",
    "asgd",
    "gradient_descent",
]


def _write(args, rows) -> None:
    from pathlib import Path

    from diyopt.analysis.benchmarking.run import _manifest, _publish

    names = list(dict.fromkeys(r["task"] for r in rows))
    done = list(dict.fromkeys(r["optimizer"] for r in rows))
    config = {
        "benchmark": "bench_diagnostic.py",
        "suite": "diagnostic",
        "tasks": names,
        "optimizers": done,
        "trials": args.trials,
        "seeds": list(range(args.seeds)),
    }
    _publish(Path(args.out), rows, _manifest(config, None), complete=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--optimizers", nargs="+", default=BUILT_INS)
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--out", default=None, help="also write results.csv, matrix.png, manifest.json here")
    args = ap.parse_args()
    print(
        f"machine: {machine()}, trials={args.trials}, seeds={args.seeds}, "
        f"load average at start: {os.getloadavg()[0]:.1f}"
    )
    tasks = [t for t in suite("diagnostic") if not args.tasks or t.family in args.tasks or t.name in args.tasks]
    rows, per_opt, cpu_opt = [], {}, {}
    for spec in args.optimizers:  # one optimizer at a time, so each gets its own wall time
        t0, c0 = time.perf_counter(), time.process_time()
        r = diyopt.bench([spec], tasks=[t.name for t in tasks], trials=args.trials, seeds=args.seeds, progress=False)
        per_opt[spec], cpu_opt[spec] = time.perf_counter() - t0, time.process_time() - c0
        rows += r.rows
        if args.out:  # after every optimizer, so a run cut short still leaves its rows and matrix
            _write(args, rows)
        n = len(tasks) * args.trials * args.seeds
        print(
            f"{spec:18s} solved {len(r.solved(spec)):2d}/{len(tasks)}  {per_opt[spec]:7.1f} s wall "
            f"{cpu_opt[spec]:7.1f} s CPU  {n / per_opt[spec]:7.1f} trials/s wall  {n / cpu_opt[spec]:7.1f} per CPU s",
            flush=True,
        )
    total, cpu = sum(per_opt.values()), sum(cpu_opt.values())
    n_all = len(tasks) * args.trials * args.seeds * len(args.optimizers)
    print(
        f"all: {len(args.optimizers)} optimizers x {len(tasks)} tasks x {args.trials} trials x {args.seeds} "
        f"studies = {n_all} trials in {total:.1f} s wall, {cpu:.1f} s CPU: {n_all / total:.1f} trials/s wall, "
        f"{n_all / cpu:.1f} per CPU second; load average at end: {os.getloadavg()[0]:.1f}"
    )
    # One torch thread: on an otherwise idle machine the wall time is about the CPU time; on a shared one the
    # wall time also counts the other processes' share of the cores.
    print(
        f"budget (15 min = 900 s): wall {'within' if total <= 900 else 'OVER'} ({total / 60:.1f} min), "
        f"CPU {'within' if cpu <= 900 else 'OVER'} ({cpu / 60:.1f} min)"
    )
    names = list(dict.fromkeys(r["task"] for r in rows))
    print("\nsolved matrix (x = solved; rows: tasks, columns: optimizers in the order above)")
    for name in names:
        marks = "".join(" x" if r["solved"] else " ." for r in rows if r["task"] == name)
        print(f"{name:26s}{marks}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
