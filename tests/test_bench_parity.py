"""torch.optim.Adam through the packaged path (``diyopt.fit`` with the class) against diyopt.optim.adam (the
vectorized sweep): the same Sobol trials, seeds and gradient effects give the same results, task for task."""

import math

import pytest
import torch

import diyopt
from diyopt.analysis.benchmarking import run as bench_run
from diyopt.analysis.benchmarking.tasks import suite

# One task per kind of oracle: the loss as criterion (steps to target), a noise table, a sparse mask,
# a stateful delay buffer, a moving target, a small RNN.
QUICK = ["saddle-1", "noise_white-1", "delayed-1"]
MORE = ["sparse-1", "moving_target-1", "rnn_xor-1"]
EXACT = (
    "solved",
    "attempts",
    "attempts_lo",
    "attempts_hi",
    "steps_to_target",
    "steps_to_target_lo",
    "steps_to_target_hi",
    "studies_solved",
    "trials",
)


@pytest.mark.parametrize("tasks", [QUICK, MORE], ids=["quick", "more"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_adam_and_diyopt_adam_agree_task_for_task(dtype, tasks):
    r = diyopt.bench(["adam", torch.optim.Adam], tasks=tasks, trials=2, seeds=2, dtype=dtype)
    rows = {(x["task"], x["optimizer"]): x for x in r.rows}
    assert r.manifest["config"]["spaces"]["torch.optim.Adam"] == r.manifest["config"]["spaces"]["adam"]
    solved = 0
    for name in tasks:
        ours, torchs = rows[(name, "adam")], rows[(name, "torch.optim.Adam")]
        assert "loop (torch.optim class" in torchs["engine"] and ours["engine"] == "vmap"
        for k in EXACT:
            assert ours[k] == torchs[k], (name, k, ours[k], torchs[k])
        # The criterion's value: equal up to rounding (the sweep vmaps adam's ops, torch runs its own
        # kernel); a value far below the target is rounding noise itself, hence the absolute floor.
        tol = (
            dict(rel_tol=1e-4, abs_tol=1e-4 * ours["target"])
            if dtype == torch.float32
            else dict(rel_tol=1e-9, abs_tol=1e-9 * ours["target"])
        )
        for k in ("best_metric", "best_metric_lo", "best_metric_hi"):
            assert math.isclose(ours[k], torchs[k], **tol), (name, k, ours[k], torchs[k])
        solved += ours["solved"]
    assert solved >= 2  # not a comparison of failures only


def test_torch_class_spec_on_the_command_line_and_unknown_class(tmp_path, capsys):
    from diyopt.cli import main

    assert (
        main(
            [
                "bench",
                "--optimizers",
                "torch.optim.Adam",
                "--tasks",
                "saddle-1",
                "--trials",
                "2",
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert "torch.optim.Adam: solved 1/1" in capsys.readouterr().out
    assert (
        main(["bench", "--optimizers", "torch.optim.Adamm", "--tasks", "saddle-1", "--out", str(tmp_path / "c")]) == 2
    )
    err = capsys.readouterr().err
    assert "unknown torch.optim class 'Adamm'" in err and "'Adam'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("name", ["noise_heavy-1", "delayed-2"])
def test_studies_in_one_sweep_equal_each_study_alone(name):
    # All studies share one sweep (stacked noise tables; a stateful delay picked per run): the same numbers
    # as one sweep per study, up to the rounding of a batched matmul over 18 runs instead of 6 (float64).
    task = {t.name: t for t in suite()}[name]
    f64 = dict(trials=3, dtype=torch.float64)
    together = bench_run.run_task(task, "adam", diyopt.optim.adam(), seeds=[0, 1, 2], **f64)
    alone = [bench_run.run_task(task, "adam", diyopt.optim.adam(), seeds=[s], **f64) for s in (0, 1, 2)]
    assert together["engine"] == "vmap"
    assert sorted(a["best_metric"] for a in alone)[1] == pytest.approx(together["best_metric"], rel=1e-12)
    assert [a["best_metric"] for a in alone] != [alone[0]["best_metric"]] * 3  # the studies do differ
    firsts = sorted(a["attempts"] if a["solved"] else math.inf for a in alone)
    assert together["attempts"] == (firsts[1] if together["solved"] else math.inf)
    assert together["studies_solved"] == f"{sum(a['solved'] for a in alone)}/3"


def test_schedule_factor_is_torchs_linear_warmup_and_cosine_annealing():
    """The schedule dimension against torch.optim.lr_scheduler: warmup over W = 0.1 T = 5 updates is
    LinearLR(start_factor=1/W, total_iters=W-1); the cosine decay is CosineAnnealingLR(T_max=T); the
    factor is their product; under vmap (tensor warmup and decay, one per trial) it is the same."""
    from diyopt.analysis.benchmarking.tuning import schedule_factor

    T = 50

    def torch_factors(make):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, out = make(opt), []
        for _ in range(T):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return torch.tensor(out, dtype=torch.float64)

    ramp = torch_factors(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=4))
    cos = torch_factors(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T))
    steps = torch.arange(T)
    ours = lambda w, d: torch.stack([schedule_factor(t, (w, d, T)) for t in steps])  # noqa: E731
    torch.testing.assert_close(ours(0.1, 0.0), ramp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(0.0, 1.0), cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(0.1, 1.0), ramp * cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(0.001, 0.0), torch.ones(T, dtype=torch.float64))  # wT < 1: no warmup
    w, d = torch.tensor([0.1, 0.0, 0.1], dtype=torch.float64), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    batched = torch.func.vmap(lambda w, d: torch.stack([schedule_factor(t, (w, d, T)) for t in steps]))(w, d)
    torch.testing.assert_close(batched, torch.stack([ramp, cos, ramp * cos]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fixed_warmup_cosine_schedule_agrees_between_torch_adam_and_diyopt_adam(dtype):
    """The schedule is applied to torch.optim.Adam's lr (per group, before each step) and to diyopt adam's
    update (in the sweep): the same runs. And it is not a no-op: constant gives other numbers."""
    # no beta1 in the space: a float64 Sobol lr alone once promoted float32 params to float64 (fixed)
    sched = {"lr": (1e-2, 0.3, "log"), "warmup": (0.1, 0.1, "linear"), "decay": (1, 1, "choice")}
    const = {**sched, "decay": (0, 0, "choice"), "warmup": (0.0, 0.0, "linear")}
    tasks = ["saddle-1", "noise_white-1"]
    kw = dict(tasks=tasks, trials=2, seeds=2, dtype=dtype)
    r = diyopt.bench(["adam", torch.optim.Adam], spaces={"adam": sched, "torch.optim.Adam": sched}, **kw)
    c = diyopt.bench(["adam"], spaces={"adam": const}, **kw)
    rows = {(x["task"], x["optimizer"]): x for x in r.rows}
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    for name in tasks:
        ours, torchs = rows[(name, "adam")], rows[(name, "torch.optim.Adam")]
        for k in EXACT:
            assert ours[k] == torchs[k], (name, k, ours[k], torchs[k])
        assert math.isclose(ours["best_metric"], torchs["best_metric"], rel_tol=rel, abs_tol=rel * ours["target"])
    constant = {x["task"]: x["best_metric"] for x in c.rows}
    assert not math.isclose(rows[("noise_white-1", "adam")]["best_metric"], constant["noise_white-1"], rel_tol=1e-2)
