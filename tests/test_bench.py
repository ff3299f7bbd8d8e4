"""diyopt bench: the diagnostic suite, the tuning rules, the files, the CLI, resume."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt.analysis.benchmarking import run as bench_run
from diyopt.analysis.benchmarking.tasks import suite
from diyopt.analysis.benchmarking.tuning import SPACES, points, tunable, with_effect
from diyopt.cli import main

RULES = str(Path(__file__).with_name("bench_rules.py"))
BROKEN = [f"{RULES}:frozen", f"{RULES}:ascent", f"{RULES}:adam_ascent"]
REQUIRED = [
    "quadratic_diagonal",
    "quadratic_rotated",
    "scale_mismatch",
    "saddle",
    "plateau",
    "rosenbrock",
    "rastrigin",
    "noise_white",
    "noise_heavy",
    "noise_correlated",
    "sparse",
    "delayed",
    "deep_linear_vanishing",
    "deep_linear_exploding",
    "moving_target",
    "rnn_xor",
    "modular_addition",
]
# Cheap tasks (small, short) that tuned Adam must solve and no broken rule may.
QUICK = ["saddle-3", "moving_target-1"]


def test_suite_has_the_required_failure_modes_with_levels():
    tasks = suite()
    assert len(tasks) >= 30
    assert len({t.name for t in tasks}) == len(tasks)
    families = {t.family for t in tasks}
    assert set(REQUIRED) <= families
    for fam in REQUIRED:
        assert len([t for t in tasks if t.family == fam]) >= 2, fam
    for t in tasks:
        assert t.source and t.criterion and t.tests and t.steps > 0 and t.target > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_start_fails_its_criterion(dtype):
    # The zero update leaves the params at the start: this is why it can pass no task, for any study.
    for t in suite():
        for seed in range(3):
            p = t.problem(seed, dtype)
            assert all(v.dtype == dtype for v in p.params.values()), t.name
            m = float(t.metric(p, p.params))
            assert m > t.target, (t.name, seed, m)


def test_sobol_points_are_the_documented_mapping():
    space = SPACES["adam"]
    pts = points(space, 8)
    u = torch.quasirandom.SobolEngine(4, scramble=True, seed=0).draw(8, dtype=torch.float64)
    for (x, y, w, d), pt in zip(u.tolist(), pts):
        assert pt["lr"] == pytest.approx(10 ** (-4 + 4 * x), rel=1e-12)
        assert pt["beta1"] == pytest.approx(0.5 + 0.49 * y, rel=1e-12)
        assert pt["warmup"] == pytest.approx(0.1 * w, rel=1e-12)
        assert pt["decay"] == (0.0 if d < 0.5 else 1.0)  # a choice: constant or cosine
    assert {pt["decay"] for pt in pts} == {0.0, 1.0}
    assert points(space, 8) == pts  # the same points every time


def test_noise_is_a_function_of_seed_and_step():
    t = {x.name: x for x in suite()}["noise_heavy-2"]
    a, b, c = (t.problem(s).effect for s in (0, 0, 1))
    g = {"x": torch.zeros(8)}
    step = torch.tensor(17)
    na, nb, nc = (e.apply(g, (), step)[0]["x"] for e in (a, b, c))
    assert torch.equal(na, nb) and not torch.equal(na, nc)
    assert not torch.equal(na, a.apply(g, (), torch.tensor(18))[0]["x"])


def test_noise_kinds_have_their_documented_statistics():
    from diyopt.analysis.benchmarking.tasks import _noise_table

    white = _noise_table(0, 20000, 4, "white", 1.0)
    assert float(white.std()) == pytest.approx(1.0, abs=0.02)
    ar = _noise_table(0, 20000, 4, "correlated", 1.0, rho=0.9)
    lag1 = float((ar[1:] * ar[:-1]).mean() / (ar * ar).mean())
    assert lag1 == pytest.approx(0.9, abs=0.02) and float(ar.std()) == pytest.approx(1.0, abs=0.1)
    # Tail index 1.5: P(|e| > x) ~ x^-1.5, so ten times further is 10^1.5 ~ 32 times rarer (a normal: never).
    heavy = _noise_table(0, 50000, 4, "heavy", 1.0).abs()
    n10, n100 = int((heavy > 10).sum()), int((heavy > 100).sum())
    assert math.log10(n10 / n100) == pytest.approx(1.5, abs=0.2)
    assert int((white.abs() > 10).sum()) == 0


def test_delay_feeds_the_gradient_of_d_steps_ago():
    t = {x.name: x for x in suite()}["delayed-1"]  # delay 2
    opt = with_effect(diyopt.optim.sgd(lr=1.0), t.problem(0).effect)
    params = {"x": torch.zeros(8)}
    state = opt.init(params)
    outs = []
    for i in range(5):
        u, state = opt.update({"x": torch.full((8,), float(i + 1))}, state, params)
        outs.append(float(u["x"][0]))
    assert outs == [0.0, 0.0, -1.0, -2.0, -3.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attempts_agree_with_one_fit_per_trial(dtype):
    # The vectorized study against the eager fit engine, one trial at a time, in Sobol order.
    t = {x.name: x for x in suite()}["moving_target-1"]  # first passes at trial 3: attempts are counted
    trials = 4
    row = bench_run.run_task(t, "adam", diyopt.optim.adam(), trials=trials, seeds=[1], dtype=dtype)
    p = t.problem(1, dtype)
    keys = list(SPACES["adam"])
    metrics = []
    for pt in points(SPACES["adam"], trials):
        point = tuple(pt[k] for k in keys)  # with its schedule over the task's budget
        opt = tunable(diyopt.optim.adam(), keys, p.effect, t.steps).replace_hyperparams(point=point)
        r = diyopt.fit(p.loss, p.params, opt, t.steps)
        metrics.append(float(p.metric(r.params)))
    passing = [k for k, m in enumerate(metrics) if m <= t.target]
    assert passing, metrics
    assert row["solved"] and row["attempts"] == passing[0] + 1
    assert row["best_metric"] == pytest.approx(min(metrics), rel=1e-3 if dtype == torch.float32 else 1e-9)


def test_adam_solves_the_quick_tasks_and_broken_rules_none():
    r = diyopt.bench(["adam"] + BROKEN[::2], tasks=QUICK, trials=4, seeds=1)
    assert sorted(r.solved("adam")) == sorted(QUICK)
    for b in BROKEN[::2]:
        assert r.solved(b) == [], b


def test_median_study_rule():
    # saddle-1 with plain gradient descent at lr <= 1e-4 cannot escape in 200 steps (y grows by (1+lr)^200):
    # a space holding only that lr solves no study; a space whose lr is 0.5 solves all of them.
    low = diyopt.bench(
        ["gradient_descent"],
        tasks=["saddle-1"],
        trials=2,
        seeds=3,
        spaces={"gradient_descent": {"lr": (1e-5, 1e-4, "log")}},
    )
    high = diyopt.bench(
        ["gradient_descent"],
        tasks=["saddle-1"],
        trials=1,
        seeds=3,
        spaces={"gradient_descent": {"lr": (0.5, 0.5, "linear")}},
    )
    assert low.rows[0]["studies_solved"] == "0/3" and not low.rows[0]["solved"]
    assert math.isinf(low.rows[0]["attempts"])
    assert high.rows[0]["studies_solved"] == "3/3" and high.rows[0]["solved"] and high.rows[0]["attempts"] == 1


def test_loop_fallback_says_so_and_agrees_with_vmap():
    # the same space (with the schedule) for both: the loop applies the schedule as the sweep does
    space = {f"{RULES}:gd_item": SPACES["gradient_descent"]}
    r = diyopt.bench([f"{RULES}:gd_item", "gradient_descent"], tasks=["saddle-1"], trials=3, seeds=1, spaces=space)
    loop, vec = r.rows
    assert "loop" in loop["engine"] and vec["engine"] == "vmap"
    for k in ("solved", "attempts", "steps_to_target"):
        assert loop[k] == vec[k]
    assert loop["best_metric"] == pytest.approx(vec["best_metric"], abs=1e-6)


def _cli(args, **kw):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(diyopt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "diyopt.cli", *args], capture_output=True, text=True, env=env, check=False, **kw
    )


def _strict(text):
    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def test_cli_writes_results_matrix_manifest(tmp_path):
    out = tmp_path / "b"
    p = _cli(
        [
            "bench",
            "--optimizers",
            "adam",
            f"{RULES}:frozen",
            "--trials",
            "2",
            "--seeds",
            "1",
            "--tasks",
            "saddle-1",
            "--out",
            str(out),
        ],
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "adam: solved 1/1" in p.stdout and "frozen: solved 0/1" in p.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["optimizer"] for r in rows] == ["adam", f"{RULES}:frozen"]
    assert rows[0]["solved"] == "true" and rows[1]["solved"] == "false" and rows[1]["attempts"] == "not reached"
    assert {"task", "optimizer", "solved", "attempts", "best_metric", "steps_to_target", "seconds"} <= set(rows[0])
    m = _strict((out / "manifest.json").read_text())
    assert m["complete"] and m["config"]["seeds"] == [0] and m["config"]["trials"] == 2
    assert m["versions"]["torch"] == torch.__version__ and "machine" in m and "flags" in m
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tasks", "sadle"], "unknown task 'sadle' (did you mean 'saddle'?)"),
        (["--optimizers", "adamm"], "unknown optimizer 'adamm'"),
        (["--optimizers", "adam", "sam+adam"], "bench cannot run sam+adam: its update asks for grad_fn"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "b"
    base = {"--optimizers": ["adam"], "--tasks": ["saddle-1"], "--trials": ["2"]}
    base[args[0]] = args[1:]
    cmd = ["bench", "--seeds", "1", "--out", str(out)]
    for k, v in base.items():
        cmd += [k, *v]
    if args[0] == "--tasks":  # one as a real process: its exit code and stderr
        p = _cli(cmd, timeout=120)
        code, err = p.returncode, p.stderr
    else:
        code, err = main(cmd), capsys.readouterr().err
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_resume_skips_finished_pairs(tmp_path, monkeypatch):
    out = tmp_path / "b"
    real = bench_run.run_part
    calls = []

    def dies_on_second(task, *a, **k):
        calls.append(task.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(task, *a, **k)

    monkeypatch.setattr(bench_run, "run_part", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        diyopt.bench(["adam"], tasks=["saddle-1", "moving_target-1"], trials=2, seeds=1, out=out)
    partial = list(csv.DictReader((out / "results.csv").open()))
    assert [r["task"] for r in partial] == ["saddle-1"]
    assert _strict((out / "manifest.json").read_text())["complete"] is False
    monkeypatch.setattr(bench_run, "run_part", real)
    r = diyopt.bench(["adam"], tasks=["saddle-1", "moving_target-1"], trials=2, seeds=1, out=out, resume=True)
    assert r.skipped == [("saddle-1", "adam")]
    assert [x["task"] for x in r.rows] == ["saddle-1", "moving_target-1"]
    assert r.rows[0]["attempts"] == float(partial[0]["attempts"])
    assert _strict((out / "manifest.json").read_text())["complete"] is True
    with pytest.raises(ValueError, match="other settings"):
        diyopt.bench(["adam"], tasks=["saddle-1"], trials=3, seeds=1, out=out, resume=True)


@pytest.mark.slow
def test_broken_rules_solve_no_task_of_the_suite():
    r = diyopt.bench(BROKEN, trials=2, seeds=1)
    for b in BROKEN:
        assert r.solved(b) == [], b


def test_docs_table_lists_every_task_with_its_criterion():
    text = (Path(__file__).parents[1] / "docs" / "bench.md").read_text()
    lines = {
        ln.split("|")[1].strip().strip("`"): [c.strip() for c in ln.split("|")[1:-1]]
        for ln in text.splitlines()
        if ln.startswith("| `")
    }
    for t in suite():
        assert t.name in lines, t.name
        _, tests, criterion, target, steps, source = lines[t.name]
        assert (tests, criterion, float(target), int(steps), source) == (
            t.tests,
            t.criterion,
            t.target,
            t.steps,
            t.source,
        )


# docs/bench.md, "What tuned Adam solves": the tasks it solved in benchmarks/bench_diagnostic.py (16 trials,
# 1 study, float32) with a margin (best <= target / 2 within the first 8 trials), so a sound Adam passes
# them on any machine; a regression in the engine, the tuning or a task shows up here. Since the schedule joined
# adam's search space (4-d Sobol points), quadratic_rotated-3, scale_mismatch-1 and moving_target-3 are not
# solved within the first 8 trials and moving_target-2 only without the margin: the 22 left.
ADAM_SOUND = [
    "quadratic_diagonal-1",
    "quadratic_diagonal-2",
    "quadratic_diagonal-3",
    "quadratic_rotated-1",
    "quadratic_rotated-2",
    "saddle-1",
    "saddle-2",
    "saddle-3",
    "plateau-1",
    "plateau-2",
    "rosenbrock-1",
    "noise_white-1",
    "sparse-1",
    "delayed-1",
    "deep_linear_vanishing-1",
    "deep_linear_vanishing-2",
    "deep_linear_vanishing-3",
    "deep_linear_exploding-1",
    "deep_linear_exploding-2",
    "moving_target-1",
    "rnn_xor-1",
    "rnn_xor-2",
]


@pytest.mark.slow
def test_tuned_adam_solves_the_documented_subset():
    r = diyopt.bench(["adam"], tasks=ADAM_SOUND, trials=8, seeds=1)
    assert sorted(r.solved("adam")) == sorted(ADAM_SOUND)


def test_settings_in_the_spec_are_fixed_not_tuned():
    r = diyopt.bench(["gradient_descent:lr=0.5", "gradient_descent:lr=1e-5"], tasks=["saddle-1"], trials=3, seeds=1)
    fast, slow = r.rows
    assert r.manifest["config"]["spaces"] == {"gradient_descent:lr=0.5": {}, "gradient_descent:lr=1e-5": {}}
    # lr 1e-5 cannot leave the saddle in 200 steps, lr 0.5 does at once: with lr tuned both would pass.
    assert fast["solved"] and fast["attempts"] == 1 and not slow["solved"]
    assert fast["trials"] == slow["trials"] == 1  # nothing to tune: one trial each
