"""``diyopt bench``: the diagnostic suite and workloads, each optimizer tuned fairly."""

from __future__ import annotations

from diyopt._util.validate import positive_int


def add(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="tune optimizers fairly on a diagnostic suite of pass/fail tasks: "
        "results.csv, matrix.png, profiles, report.html, manifest.json",
        description="Each optimizer gets --trials quasi-random (Sobol) points of its search space "
        "on every task, from --seeds studies; a task is solved when more than half of the studies "
        "have a passing trial. The trials of all studies of a task run as one vectorized "
        "computation. Writes OUT/results.csv (medians over studies, bootstrap 95% intervals), "
        "OUT/matrix.png, OUT/profile_*.png, OUT/report.html and OUT/manifest.json (docs/bench.md "
        "lists the tasks). Under torchrun --nproc_per_node=N -m diyopt bench ... the task x "
        "optimizer pairs are split across the ranks; rank 0 writes.",
    )
    p.add_argument(
        "--suite", choices=["diagnostic", "workloads", "all"], default="diagnostic", help="default: diagnostic"
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="optimizer specs, space-separated: adam sgd:nesterov=true my_rules.py:rule torch.optim.Adam",
    )
    p.add_argument("--trials", type=positive_int, default=16, help="trials per study (default: 16)")
    p.add_argument("--seeds", type=positive_int, default=3, help="studies, seeds 0..S-1 (default: 3)")
    p.add_argument("--tasks", nargs="+", metavar="NAME", help="only these tasks or families (default: all)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: float32")
    p.add_argument("--resume", action="store_true", help="keep the finished tasks of an interrupted run in OUT")
    p.add_argument("--out", required=True, help="output folder")

    def run(args) -> int:
        from diyopt.analysis.benchmarking.run import run_bench_cli

        return run_bench_cli(args)

    p.set_defaults(run=run)
