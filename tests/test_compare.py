"""diyopt.compare: same starts for everyone, honest records, a table that ranks by final loss, and
Dolan--Moré profiles checked against hand-computed values."""

import csv
import json
import math

import numpy as np
import pytest
import torch

import diyopt
from diyopt.analysis import compare_all, save_all
from diyopt.analysis._compare import profile_costs
from diyopt.analysis.profiles import performance_profile
from diyopt.cli import main
from diyopt.optim import split_specs
from diyopt.problems import start_point
from diyopt.problems.data import least_squares_line

STEPS = 150
LR = 1e-2


@pytest.fixture(scope="module")
def line_comparison():
    return diyopt.compare(
        "line",
        {
            "sgd": diyopt.optim.sgd(lr=LR),
            "adam": diyopt.optim.adam(lr=LR),
            "gd": diyopt.optim.gradient_descent(lr=LR),
            "torch SGD": (torch.optim.SGD, {"lr": LR}),
        },
        seeds=3,
        steps=STEPS,
        tol=1e-3,
    )


def plain_gd(problem, params, steps, lr):
    """The seed's loop, ``a = a - eta * a.grad``, written out; returns the loss after each update count."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    losses = []
    for _ in range(steps):
        loss = problem.loss(leaves)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(leaves.values()))
        with torch.no_grad():
            for v, g in zip(leaves.values(), grads):
                v -= lr * g
    losses.append(problem.loss(leaves).item())
    return np.array(losses), {k: v.detach() for k, v in leaves.items()}


def test_starts_are_params0_then_the_documented_perturbation():
    problem = diyopt.problems.get("line")
    assert all(torch.equal(start_point(problem, 0)[k], v) for k, v in problem.params0.items())
    gen = torch.Generator().manual_seed(3)
    for k, v in problem.params0.items():
        expected = v + 0.25 * (1 + v.abs()) * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(start_point(problem, 3, perturb=0.25)[k], expected, rtol=0, atol=0)


def test_runs_match_a_plain_loop_and_torch_optim(line_comparison):
    c = line_comparison
    for seed in range(3):
        expected, final = plain_gd(c.problem, start_point(c.problem, seed), STEPS, LR)
        run = c.runs["gd"][seed]
        np.testing.assert_allclose(run.losses, expected, rtol=1e-12)
        torch.testing.assert_close(run.params, final, rtol=1e-12, atol=0)
        # torch.optim.SGD from the same start is the same algorithm
        np.testing.assert_allclose(c.runs["torch SGD"][seed].losses, expected, rtol=1e-12)
    # The distance is to the closed-form least-squares line.
    x, y = c.problem.info["x"], c.problem.info["y"]
    a, b = least_squares_line(x, y)
    run = c.runs["gd"][0]
    expected = math.hypot(run.params["a"].item() - a, run.params["b"].item() - b)
    row = next(r for r in c.table() if r["optimizer"] == "gd")
    dists = sorted(math.hypot(r.params["a"].item() - a, r.params["b"].item() - b) for r in c.runs["gd"])
    assert row["distance"] == pytest.approx(dists[1], rel=1e-12)
    assert c.problem.distance(run.params) == pytest.approx(expected, rel=1e-12)


def test_times_are_cumulative_and_tolerance_steps_recomputed(line_comparison):
    c = line_comparison
    for runs in c.runs.values():
        for run in runs:
            assert len(run.seconds) == len(run.losses) == STEPS + 1
            assert run.seconds[0] == 0 and np.all(np.diff(run.seconds) >= 0) and run.seconds[-1] > 0
    f_star = c.problem.optimum
    steps = c.costs("steps")
    secs = c.costs("seconds")
    for label, runs in c.runs.items():
        for i, run in enumerate(runs):
            gaps = run.losses - f_star
            hits = [k for k, g in enumerate(gaps) if g <= 1e-3 * gaps[0]]
            assert steps[label][i] == (hits[0] if hits else math.inf)
            assert secs[label][i] == (run.seconds[hits[0]] if hits else math.inf)
    # gradient descent at lr=1e-2 gets there within the budget on the line; the check can fail
    assert np.isfinite(steps["gd"]).all()


def test_table_ranks_by_median_final_loss_then_steps_to_tol(line_comparison):
    rows = line_comparison.table()
    medians = {
        r["optimizer"]: float(np.median([run.final_loss for run in line_comparison.runs[r["optimizer"]]])) for r in rows
    }
    steps = {k: float(np.median(v)) for k, v in line_comparison.costs("steps").items()}
    f_star = line_comparison.problem.optimum
    atol = 1e-12 * max(1, abs(f_star))
    lower = lambda a, b: a < b - (1e-9 * abs(b) + atol)
    for r in rows:
        m, s = medians[r["optimizer"]], steps[r["optimizer"]]
        assert r["final_loss"] == m and r["steps_to_tol"] == s
        both_reached = lambda o, s=s: np.isfinite(steps[o]) and np.isfinite(s)  # then losses count as equal
        ahead = [
            o
            for o in medians
            if (
                steps[o] < s or (steps[o] == s and lower(medians[o], m))
                if both_reached(o)
                else lower(medians[o], m) or (not lower(m, medians[o]) and steps[o] < s)
            )
        ]
        assert r["rank"] == 1 + len(ahead)
    # consistent: among optimizers that did not reach the tolerance a lower median never ranks worse;
    # among those that did, fewer steps never rank worse; clearly different results get different ranks
    for group in (
        [r for r in rows if not np.isfinite(r["steps_to_tol"])],
        [r for r in rows if np.isfinite(r["steps_to_tol"])],
    ):
        key = "final_loss" if group and not np.isfinite(group[0]["steps_to_tol"]) else "steps_to_tol"
        ordered = sorted(group, key=lambda r: r[key])
        assert [r["rank"] for r in ordered] == sorted(r["rank"] for r in group)
    assert len({r["rank"] for r in rows}) > 1
    # sgd without momentum, the seed's gradient descent and torch's SGD are one algorithm: one rank
    assert len({r["rank"] for r in rows if r["optimizer"] in ("sgd", "gd", "torch SGD")}) == 1
    md = line_comparison.to_markdown()
    assert md.splitlines()[0].startswith("| rank | optimizer |") and len(md.splitlines()) == 2 + len(rows)


def test_cli_compare_on_the_seed_line(tmp_path):
    out = tmp_path / "line"
    assert (
        main(
            [
                "compare",
                "--problem",
                "line",
                "--optimizers",
                "sgd,adam,gradient_descent",
                "--seeds",
                "5",
                "--steps",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "loss_vs_step.png",
        "loss_vs_time.png",
        "paths.png",
        "table.csv",
        "table.md",
        "settings.json",
        ".diyopt-output.json",
    }
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == ["sgd", "adam", "gradient_descent"]
    # ranks are consistent with the final losses: sorting by either gives the same order
    by_loss = sorted(rows, key=lambda r: float(r["final_loss"]))
    assert [int(r["rank"]) for r in by_loss] == sorted(int(r["rank"]) for r in rows)
    # sgd without momentum is the seed's gradient descent: same losses, same rank; adam at lr=1e-3 is slower
    sgd, adam, gd = rows
    assert sgd["final_loss"] == gd["final_loss"] and sgd["rank"] == gd["rank"] == "1" and adam["rank"] == "3"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seeds"] == 5 and settings["steps"] == 200 and settings["problem"] == "line"
    assert set(settings["versions"]) >= {"diyopt", "torch", "python", "platform"}
    assert settings["optimizers"]["adam"]["hyperparams"]["lr"] == 1e-3
    # no temporary folders left next to the output
    assert [p.name for p in tmp_path.iterdir()] == ["line"]


def test_save_replaces_an_earlier_result_but_not_other_folders(tmp_path, line_comparison):
    out = tmp_path / "cmp"
    line_comparison.save(out)
    (out / "table.md").write_text("stale")
    line_comparison.save(out)
    assert (out / "table.md").read_text() == line_comparison.to_markdown()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    line_comparison.save(other)  # diyopt's files go beside the user's; the user's are never touched
    assert (other / "notes.txt").read_text() == "keep me"
    assert (other / "table.md").read_text() == line_comparison.to_markdown()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "table.md").write_text("the user's own table")
    with pytest.raises(FileExistsError, match=r"already holds table\.md, which diyopt did not write"):
        line_comparison.save(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["table.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "mine", "precious"]


def test_paths_on_a_2d_problem_start_and_end_where_the_runs_do():
    c = diyopt.compare("rosenbrock", ["adam:lr=0.01"], seeds=2, steps=50)
    for run in next(iter(c.runs.values())):
        start = start_point(c.problem, run.seed)["x"].numpy()
        np.testing.assert_array_equal(run.path[0], start)
        np.testing.assert_array_equal(run.path[-1], run.params["x"].numpy())
        assert run.path.shape == (51, 2)
    c.plot_paths()
    with pytest.raises(ValueError, match="needs a problem with 2 parameters"):
        diyopt.compare("rosenbrock:dim=3", ["sgd"], seeds=1, steps=2).plot_paths()


def test_split_specs_keeps_settings_with_their_optimizer():
    assert split_specs("sgd,adam:lr=1e-2,betas=0.8/0.99,my.py:rule") == [
        "sgd",
        "adam:lr=1e-2,betas=0.8/0.99",
        "my.py:rule",
    ]
    assert split_specs(" sgd , lion ") == ["sgd", "lion"]
    with pytest.raises(ValueError, match="no optimizer"):
        split_specs(",")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(optimizers=["no_such_opt"]), ValueError, "no_such_opt"),
        (dict(optimizers=[]), ValueError, "optimizers is empty"),
        (dict(optimizers=[42]), TypeError, "an optimizer must be"),
        (dict(optimizers=["sgd"], seeds=0), ValueError, "seeds must be a positive integer"),
        (dict(optimizers=["sgd"], tol=1.5), ValueError, "Invalid tol value"),
        (dict(problem="no_such_problem", optimizers=["sgd"]), ValueError, "unknown problem"),
        (dict(problem="rosenbrock:dim", optimizers=["sgd"]), ValueError, "key=value"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, error, match):
    kwargs = {"problem": "line", "steps": 1, **kwargs}
    with pytest.raises(error, match=match):
        diyopt.compare(kwargs.pop("problem"), kwargs.pop("optimizers"), **kwargs)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["compare", "--problem", "line", "--optimizers", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err


def test_quiet_when_stderr_is_not_a_terminal(capsys):
    diyopt.compare("line", ["sgd"], seeds=2, steps=5)
    assert capsys.readouterr().err == ""


def test_progress_bar_when_asked(capsys):
    pytest.importorskip("tqdm")
    diyopt.compare("line", ["sgd"], seeds=2, steps=5, progress=True)
    assert "compare line" in capsys.readouterr().err


# ---------------------------------------------------------------- Dolan--Moré performance profiles


def test_performance_profile_against_a_hand_computed_example():
    inf = math.inf
    costs = {"A": [1, 4, inf, 3], "B": [2, 2, inf, 3], "C": [inf, 8, inf, 6]}
    # ratios r[p,s] = t / min_s t:  A: 1, 2, inf, 1   B: 2, 1, inf, 1   C: inf, 4, inf, 2
    taus, rho = performance_profile(costs, taus=[1, 1.5, 2, 4, 100])
    np.testing.assert_array_equal(rho["A"], [2 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4])
    np.testing.assert_array_equal(rho["B"], [2 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4])
    np.testing.assert_array_equal(rho["C"], [0, 0, 1 / 4, 2 / 4, 2 / 4])
    # default taus: the distinct finite ratios, where the step function jumps
    taus, rho = performance_profile(costs)
    np.testing.assert_array_equal(taus, [1, 2, 4])
    np.testing.assert_array_equal(rho["C"], [0, 1 / 4, 2 / 4])
    # the array form, nan as failure, and zero costs (ratio 1 for the zero, inf for the others)
    t = np.array([[0.0, 5.0], [2.0, np.nan]])
    taus, rho = performance_profile(t, taus=[1, 10], labels=["x", "y"])
    np.testing.assert_array_equal(rho["x"], [1.0, 1.0])
    np.testing.assert_array_equal(rho["y"], [0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        performance_profile({"A": [-1.0]})


def test_profile_across_problems(tmp_path):
    opts = {"sgd": diyopt.optim.sgd(lr=1e-3), "adam": diyopt.optim.adam(lr=1e-2)}
    comps = compare_all(["line", "rosenbrock"], opts, seeds=2, steps=40, tol=0.5)
    costs = profile_costs(comps, "steps")
    assert {k: len(v) for k, v in costs.items()} == {"sgd": 4, "adam": 4}
    for s in opts:
        np.testing.assert_array_equal(costs[s], np.concatenate([c.costs("steps")[s] for c in comps]))
    out = save_all(comps, tmp_path / "suite")
    assert {p.name for p in out.iterdir()} == {
        "line",
        "rosenbrock",
        "settings.json",
        ".diyopt-output.json",
        "performance_profile_steps.png",
        "performance_profile_seconds.png",
    }
    assert (out / "rosenbrock" / "paths.png").exists()


def test_nist_seeds_start_at_start1_then_start2():
    problem = diyopt.problems.get("nist", path_or_name="Misra1a")
    assert list(problem.starts) == ["start1", "start2"]
    for seed, name in enumerate(problem.starts):
        for k, v in problem.starts[name].items():
            assert torch.equal(start_point(problem, seed)[k], v)
    assert not torch.equal(start_point(problem, 2)["b1"], problem.starts["start1"]["b1"])


def test_cli_compare_with_a_user_rule_file_and_settings(tmp_path):
    rule = tmp_path / "my_rules.py"
    rule.write_text(
        "import diyopt\n\n@diyopt.elementwise\ndef step(grad, state, param, *, lr=1e-3):\n"
        "    return -lr * grad, state\n"
    )
    out = tmp_path / "out"
    spec = f"sgd:lr=1e-2,momentum=0.9,{rule}:step:lr=1e-2"
    assert (
        main(
            ["compare", "--problem", "booth", "--optimizers", spec, "--seeds", "1", "--steps", "20", "--out", str(out)]
        )
        == 0
    )
    settings = json.loads((out / "settings.json").read_text())
    assert list(settings["optimizers"]) == ["sgd:lr=1e-2,momentum=0.9", f"{rule}:step:lr=1e-2"]
    assert settings["optimizers"]["sgd:lr=1e-2,momentum=0.9"]["hyperparams"]["momentum"] == 0.9
    with (out / "table.csv").open() as f:
        rows = {r["optimizer"]: r for r in csv.DictReader(f)}
    problem = diyopt.problems.get("booth")
    expected, _ = plain_gd(problem, problem.params0, 20, 1e-2)
    assert float(rows[f"{rule}:step:lr=1e-2"]["final_loss"]) == pytest.approx(expected[-1], rel=1e-12)


def test_equal_final_losses_rank_by_steps_to_tol():
    """The issue's case: optimizers that all converge (final losses equal to rounding) used to share rank 1
    whatever their speed; now the steps to the tolerance order them, and only true ties share a rank."""
    from diyopt.analysis._compare import Comparison, Run

    problem = diyopt.problems.get("booth")

    def run(k):  # loss 1 until step k, then the optimum 0: converged at step k, final loss 0
        losses = np.where(np.arange(2001) < k, 1.0, 0.0)
        return Run(0, losses, np.linspace(0, 1, 2001), problem.solution, "steps")

    c = Comparison(
        problem,
        {"sgd": [run(1080)], "momentum": [run(115)], "adam": [run(400)], "again": [run(115)], "slow": [run(3000)]},
        1e-6,
        0.0,
    )
    ranks = {r["optimizer"]: r["rank"] for r in c.table()}
    assert ranks == {"momentum": 1, "again": 1, "adam": 3, "sgd": 4, "slow": 5}
    md = c.to_markdown()
    assert "not reached" in md.splitlines()[-1] and "never" not in md  # slow never reached it
    assert "not reached" in c.to_csv()


def test_converged_optimizers_on_booth_get_distinct_ranks():
    c = diyopt.compare(
        "booth",
        {"sgd": "sgd:lr=0.05", "momentum": "sgd:lr=0.05,momentum=0.9", "adam": "adam:lr=0.1"},
        seeds=3,
        steps=600,
        tol=1e-8,
    )
    rows = {r["optimizer"]: r for r in c.table()}
    assert all(r["final_loss"] < 1e-20 for r in rows.values())  # all at the optimum, to rounding
    order = sorted(rows, key=lambda k: rows[k]["steps_to_tol"])
    assert [rows[k]["rank"] for k in order] == [1, 2, 3]


def test_a_diverged_optimizer_ranks_after_every_finite_one():
    """sgd at lr=0.01 blows up on Rosenbrock (final loss inf); it used to tie adam at rank 1 (inf - inf)."""
    c = diyopt.compare("rosenbrock", {"sgd": "sgd:lr=0.01", "adam": "adam", "sgd2": "sgd:lr=0.02"}, seeds=2, steps=200)
    rows = {r["optimizer"]: r for r in c.table()}
    assert not math.isfinite(rows["sgd"]["final_loss"]) and math.isfinite(rows["adam"]["final_loss"])
    assert rows["adam"]["rank"] == 1 and rows["sgd"]["rank"] == rows["sgd2"]["rank"] == 2


def test_optimizers_that_reach_the_tolerance_rank_by_speed_not_by_rounding():
    """The review's case: sgd, momentum and adam all reach tol 1e-6 on the line, their final losses differ
    by rounding noise (1e-16) or by 8e-9; adam got there first, so it ranks first."""
    c = diyopt.compare(
        "line",
        {"sgd": "sgd:lr=0.001", "momentum": "sgd:lr=0.001,momentum=0.9", "adam": "adam:lr=0.05"},
        seeds=2,
        steps=3000,
        tol=1e-6,
    )
    rows = {r["optimizer"]: r for r in c.table()}
    assert all(np.isfinite(r["steps_to_tol"]) for r in rows.values())
    by_speed = sorted(rows, key=lambda k: rows[k]["steps_to_tol"])
    assert [rows[k]["rank"] for k in by_speed] == [1, 2, 3]
