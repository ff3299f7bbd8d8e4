"""diyopt bench's statistics and pages: bootstrap intervals over studies, performance profiles, report.html,
and the same run split across torchrun ranks."""

import csv
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

import diyopt
from diyopt.analysis.benchmarking.charts import profile_costs
from diyopt.analysis.benchmarking.intervals import median_interval
from diyopt.analysis.profiles import performance_profile

RULES = str(Path(__file__).with_name("bench_rules.py"))


def closed_form_interval(values):
    """For odd S, the bootstrap median is the order statistic x_(k) with P(median <= x_(k)) =
    P(Binomial(S, k/S) >= (S+1)/2): the exact percentile interval, no resampling."""
    x = sorted(values)
    s = len(x)
    cdf = [binom.sf((s + 1) // 2 - 1, s, (k + 1) / s) for k in range(s)]
    return next(x[k] for k in range(s) if cdf[k] >= 0.025), next(x[k] for k in range(s) if cdf[k] >= 0.975)


@pytest.mark.parametrize(
    "values",
    [
        [3.0, 1.0, 7.0, 2.0, 5.0],  # S = 5: every resample enumerated
        [3.0, math.inf, 7.0, 2.0, math.inf],  # studies that never reached the target
        list(range(1, 12)),  # S = 11: Monte Carlo (10,000 resamples, seed 0)
        [0.1 * i * i for i in range(13)],
    ],
)
def test_bootstrap_interval_is_the_exact_percentile_interval(values):
    assert median_interval(values) == closed_form_interval(values)


def test_bootstrap_interval_small_cases():
    assert median_interval([4.0]) == (4.0, 4.0)  # one study: no spread to resample
    assert median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)  # 7/27 of the resamples have median 1
    lo, hi = median_interval([1.0, 2.0, 10.0, 11.0])  # even S: mean of the two middle values
    assert (lo, hi) == (1.0, 11.0) and median_interval([5.0] * 7) == (5.0, 5.0)


def test_profile_costs_are_the_solved_rows(tmp_path):
    rows = [
        {"task": "a", "optimizer": "x", "solved": True, "attempts": 2.0, "steps_to_target": 10.0},
        {"task": "a", "optimizer": "y", "solved": True, "attempts": 4.0, "steps_to_target": 30.0},
        {"task": "b", "optimizer": "x", "solved": False, "attempts": math.inf, "steps_to_target": None},
        {"task": "b", "optimizer": "y", "solved": True, "attempts": 1.0, "steps_to_target": None},
    ]
    assert profile_costs(rows, "attempts") == {"x": [2.0, math.inf], "y": [4.0, 1.0]}
    assert profile_costs(rows, "steps_to_target") == {"x": [10.0], "y": [30.0]}  # task b has no such cost
    assert profile_costs(rows, "seconds_to_target") == {}
    taus, rho = performance_profile(profile_costs(rows, "attempts"))
    # x is best on a (ratio 1) and fails b; y is best on b and within 2x on a
    assert rho["x"][list(taus).index(1.0)] == 0.5 and rho["y"][list(taus).index(2.0)] == 1.0


def test_bench_folder_has_intervals_profiles_and_the_report_diyopt_report_writes(tmp_path):
    out = tmp_path / "b"
    r = diyopt.bench(["adam", f"{RULES}:frozen"], tasks=["saddle-1", "moving_target-1"], trials=3, seeds=3, out=out)
    files = {p.name for p in out.iterdir()}
    assert {
        "results.csv",
        "manifest.json",
        "matrix.png",
        "profile_attempts.png",
        "profile_steps_to_target.png",
        "report.html",
    } <= files
    assert "profile_seconds_to_target.png" not in files  # no workload ran
    rows = list(csv.DictReader((out / "results.csv").open()))
    for row, mem in zip(rows, r.rows):  # the file holds the rows bench returned, intervals around medians
        for k in ("attempts", "best_metric"):
            lo, mid, hi = (float(row[c]) if row[c] != "not reached" else math.inf for c in (f"{k}_lo", k, f"{k}_hi"))
            assert lo <= mid <= hi, (row["task"], k)
            assert (lo, hi) == (mem[f"{k}_lo"], mem[f"{k}_hi"])
    page = (out / "report.html").read_text()
    assert "<title>diyopt bench: diagnostic suite, 2 optimizers</title>" in page
    assert page.count("data:image/png;base64,") == 3 and "best metric lo" in page and "moving_target-1" in page
    # `diyopt report` on the folder writes the same page, as a real process
    env = {**os.environ, "PYTHONPATH": str(Path(diyopt.__file__).parents[1])}
    p = subprocess.run(
        [sys.executable, "-m", "diyopt", "report", str(out), "--out", str(tmp_path / "again.html")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "again.html").read_text() == page


def test_row_interval_is_median_interval_of_the_studies():
    from diyopt.analysis.benchmarking import run as bench_run
    from diyopt.analysis.benchmarking.tasks import suite

    task = {t.name: t for t in suite()}["noise_white-1"]
    row = bench_run.run_task(task, "sgd", diyopt.optim.sgd(), trials=2, seeds=[0, 1, 2, 3, 4])
    alone = [bench_run.run_task(task, "sgd", diyopt.optim.sgd(), trials=2, seeds=[s])["best_metric"] for s in range(5)]
    assert (row["best_metric_lo"], row["best_metric_hi"]) == pytest.approx(closed_form_interval(alone), rel=1e-6)
    assert row["best_metric"] == pytest.approx(float(np.median(alone)), rel=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_rows_of_one_process(tmp_path):
    args = [
        "bench",
        "--optimizers",
        "adam",
        "sgd",
        "gradient_descent",
        "--tasks",
        "saddle-1",
        "moving_target-1",
        "--trials",
        "2",
        "--seeds",
        "2",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(diyopt.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "diyopt",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("adam: solved") == 1  # rank 0 prints, the other rank is silent
    one = subprocess.run(
        [sys.executable, "-m", "diyopt", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    def rows(folder):
        with open(folder / "results.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert len(rows(tmp_path / "one")) == 6
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    import json

    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["machine"]["ranks"] == 2


# The columns that count trials or steps must be equal; the metric values to rounding: vmap batches the
# trials of a slice, and a narrower batch can reach torch's matrix kernels with another blocking, hence
# another summation order (float64: a few ulps of 1e-11 here; float32: ~1e-6).
DISCRETE = (
    "task",
    "optimizer",
    "solved",
    "attempts",
    "attempts_lo",
    "attempts_hi",
    "steps_to_target",
    "steps_to_target_lo",
    "steps_to_target_hi",
    "studies_solved",
    "trials",
    "engine",
    "criterion",
    "target",
)


def _same_row(a, b, rel):
    for k in a:
        if k == "seconds":
            continue
        if k in DISCRETE or a[k] in (None, "", "not reached") or isinstance(a[k], bool):
            assert a[k] == b[k], (k, a[k], b[k])
        else:
            assert math.isclose(float(a[k]), float(b[k]), rel_tol=rel), (k, a[k], b[k])


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_trial_slices_merge_into_the_row_of_one_process(dtype, rel):
    """A task's trials split into slices (run as separate computations, as ranks do) give the row of the
    whole range: attempts count in Sobol order across slices, 7 trials over 3 slices of 2, 2, 3."""
    from diyopt.analysis.benchmarking.studies import merge_parts, run_part, run_task, trial_slice
    from diyopt.analysis.benchmarking.tasks import suite

    assert [list(trial_slice(7, i, 3)) for i in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    task = {t.name: t for t in suite()}["noise_white-1"]
    kw = dict(trials=7, seeds=[0, 1, 2], dtype=dtype)
    one = run_task(task, "sgd", diyopt.optim.sgd(), **kw)
    parts = [run_part(task, "sgd", diyopt.optim.sgd(), part=(i, 3), **kw) for i in range(3)]
    assert [len(p["studies"][0]["values"]) for p in parts] == [2, 2, 3]
    _same_row(one, merge_parts(task, "sgd", parts), rel)
    # more slices than trials: the empty ones add nothing
    parts = [run_part(task, "sgd", diyopt.optim.sgd(), part=(i, 9), **kw) for i in range(9)]
    _same_row(one, merge_parts(task, "sgd", parts), rel)


def test_rounds_split_the_last_pairs_trials_across_ranks():
    from diyopt.analysis.benchmarking.run import _rounds

    # 5 pairs on 2 ranks: two rounds of whole pairs, then pair 4 split in two slices
    assert _rounds([0, 1, 2, 3, 4], 2)[-1] == [((4, (0, 2)), 0), ((4, (1, 2)), 1)]
    # 3 pairs on 4 ranks: pair 5 gets ranks 0 and 3, pairs 6 and 7 one rank each
    assert _rounds([5, 6, 7], 4) == [[((5, (0, 2)), 0), ((6, (0, 1)), 1), ((7, (0, 1)), 2), ((5, (1, 2)), 3)]]
    assert _rounds([1, 2], 1) == [[((1, (0, 1)), 0)], [((2, (0, 1)), 0)]]


@pytest.mark.slow
def test_torchrun_one_task_split_across_two_ranks_gives_the_row_of_one_process(tmp_path):
    """One task x one optimizer on 2 ranks: each rank runs half of the Sobol points (a real torchrun)."""
    args = ["bench", "--optimizers", "adam", "--tasks", "noise_white-1", "--trials", "6", "--seeds", "3"]
    args += ["--dtype", "float64"]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(diyopt.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    two = subprocess.run(
        [*run, f"--master_port={_free_port()}", "-m", "diyopt", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "diyopt", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    def rows(folder):
        with open(folder / "results.csv", newline="") as f:
            return list(csv.DictReader(f))

    (a,), (b,) = rows(tmp_path / "one"), rows(tmp_path / "two")
    _same_row(a, b, 1e-9)
    assert a["studies_solved"] == "3/3"  # not a comparison of failures only
