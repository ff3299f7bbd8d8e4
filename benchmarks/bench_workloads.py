"""Issue 16: the workloads at the default budget (--trials 16 --seeds 3), one optimizer at a time: wall and CPU
time per workload x optimizer (the budget: <= 3 minutes each; with one torch thread the CPU time is what the wall
time would be on an idle machine), steps and seconds to the target of the fastest trial.

Before the full runs, an *estimate* for every built-in (``--estimate``, on by default): per workload x optimizer,
the seconds of ``--probe-steps`` updates of the vectorized training of ``--trials`` trials (one study, started
once to warm up, then timed; the target set out of reach so nothing stops early), scaled to the default budget:
``time per update x steps x seeds``, plus one validation evaluation per ``eval_every`` updates in that time.
It is an estimate and an upper bound (a real run stops each trial at its target and the batch when all have
stopped); the full runs (``--optimizers``) show how close it is.

Run: python benchmarks/bench_workloads.py [--optimizers adamw adam sgd] [--tasks FAMILY ...] [--trials 16]
       [--seeds 3] [--no-estimate] [--probe-steps 5] [--estimate-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import torch
from common import machine

import diyopt
from diyopt.analysis.benchmarking.studies import space
from diyopt.analysis.benchmarking.tuning import SPACES, points, tunable
from diyopt.analysis.benchmarking.workloads import train_batched, workloads

BUDGET_S = 180.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "adam", "sgd"])
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-estimate", dest="estimate", action="store_false")
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--vmap-vs-loop", action="store_true", help="time one study of adamw both ways, then stop")
    args = ap.parse_args()
    print(
        f"machine: {machine()}, load average at start: {os.getloadavg()[0]:.1f}, trials={args.trials}, "
        f"seeds={args.seeds}"
    )
    names = [w.name for w in workloads() if not args.tasks or w.family in args.tasks or w.name in args.tasks]
    if args.vmap_vs_loop:
        vmap_vs_loop(names, args)
        return
    if args.estimate:
        estimate(names, args)
    if args.estimate_only:
        return
    print(
        f"{'workload':24s} {'optimizer':10s} {'solved':>6s} {'studies':>7s} {'attempts':>8s} {'steps':>6s} "
        f"{'s to target':>11s} {'wall s':>7s} {'CPU s':>7s}  budget (CPU)"
    )
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


def vmap_vs_loop(names: list[str], args) -> None:
    """One study of tuned AdamW per workload: the vectorized training of all trials against the loop."""
    from diyopt.analysis.benchmarking.workloads import train

    by_name = {w.name: w for w in workloads()}
    base = diyopt.optim.adamw()
    box = space("adamw", base, None)
    keys = list(box)
    pts = [tuple(p[k] for k in keys) for p in points(box, args.trials)]
    print(f"adamw, {args.trials} trials, one study (seed 0), float32; CPU s")
    print(f"{'workload':24s} {'vmap':>7s} {'loop':>7s} {'loop/vmap':>9s}  same steps")
    for name in names:
        w = by_name[name]
        problem = w.problem(0, torch.float32)
        build = tunable(base, keys, None, w.steps).build
        c0 = time.process_time()
        batched = train_batched(w, problem, build, pts)
        c1 = time.process_time()
        loop = [train(w, problem, build(point=pt)) for pt in pts]
        c2 = time.process_time()
        same = [b["steps"] for b in batched] == [x["steps"] for x in loop]
        print(f"{name:24s} {c1 - c0:7.1f} {c2 - c1:7.1f} {(c2 - c1) / (c1 - c0):9.2f}  {same}", flush=True)


def estimate(names: list[str], args) -> None:
    """The default-budget time of every built-in on every workload, from a few timed vectorized updates."""
    print(
        f"ESTIMATE (upper bound: every trial runs the whole budget) from {args.probe_steps} timed updates of "
        f"{args.trials} trials at once, x steps x {args.seeds} studies; CPU s"
    )
    by_name = {w.name: w for w in workloads()}
    print(f"{'optimizer':16s} " + " ".join(f"{n.split('-')[0][:14]:>14s}" for n in names) + "   max  budget")
    c_all = time.process_time()
    for opt_name in SPACES:
        cells = []
        for name in names:
            w = by_name[name]
            base = diyopt.optim.get(opt_name)
            box = space(opt_name, base, None)
            keys = list(box)
            pts = [tuple(p[k] for k in keys) for p in points(box, args.trials)]
            build = tunable(base, keys, None, w.steps).build
            problem = w.problem(0, torch.float32)
            probe = dataclasses.replace(w, steps=args.probe_steps, eval_every=args.probe_steps, target=-math.inf)
            train_batched(dataclasses.replace(probe, steps=1, eval_every=1), problem, build, pts)  # warm-up
            c0 = time.process_time()
            train_batched(probe, problem, build, pts)  # probe_steps updates and one evaluation
            per_update = (time.process_time() - c0) / args.probe_steps  # the evaluation folded in: an upper bound
            cells.append(per_update * w.steps * args.seeds * (1 + 1 / w.eval_every))
        worst = max(cells)
        print(
            f"{opt_name:16s} "
            + " ".join(f"{c:14.1f}" for c in cells)
            + f" {worst:5.0f}  "
            + ("ok" if worst <= BUDGET_S else "OVER"),
            flush=True,
        )
    print(f"estimate: {time.process_time() - c_all:.1f} CPU s to measure")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
