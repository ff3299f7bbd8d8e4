"""The command line as a user meets it: one problem-spec syntax for every subcommand (``diyopt fit`` on
``rosenbrock:dim=4``, ``nist:Misra1a`` and a user's CSV), ``--version``, ``list``, defaults.

The subprocess tests run ``python -m diyopt.cli`` and check exit codes, outputs and the numbers written
against independent references (numpy.polyfit, NIST's data file read with numpy, closed forms).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diyopt
from diyopt import problems
from diyopt.cli import main


def run_cli(*args, cwd=None):
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(Path(diyopt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "diyopt.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def read_result(folder: Path) -> tuple[dict, list[float]]:
    result = json.loads((folder / "result.json").read_text())
    with (folder / "losses.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    return result, losses


def quadratic_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.linspace(-2.0, 3.0, 40)
    y = 0.5 - 1.2 * x + 0.3 * x**2 + 0.05 * rng.standard_normal(40)
    path.write_text("x,y\n" + "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, y)))
    return x, y


# ---------------------------------------------------------------- the spec syntax


@pytest.mark.parametrize(
    "spec, name, kwargs",
    [
        ("line", "line", {}),
        ("rosenbrock:dim=4", "rosenbrock", {"dim": 4}),
        ("nist:Misra1a", "nist", {"path_or_name": "Misra1a"}),
        ("csv:path=d.csv,model=poly:2", "csv", {"path": "d.csv", "model": "poly:2"}),
        (
            "csv:d.csv,model=a*exp(-k*x) + c,p0=a=1/k=0.5",
            "csv",
            {"path": "d.csv", "model": "a*exp(-k*x) + c", "p0": {"a": 1.0, "k": 0.5}},
        ),
        ("quadratic:dim=3,cond=1e3", "quadratic", {"dim": 3, "cond": 1000.0}),
        ("logistic:separable=true,n=50", "logistic", {"separable": True, "n": 50}),
        ("himmelblau:start=1/-2.5", "himmelblau", {"start": (1.0, -2.5)}),
        ("line:loss=mse,seed=3", "line", {"loss": "mse", "seed": 3}),
    ],
)
def test_parse_spec(spec, name, kwargs):
    parsed = problems.parse_spec(spec)
    assert parsed == (name, kwargs)
    # every value has the type the factory's annotation names
    sig = inspect.signature(problems.PROBLEMS[name]).parameters
    for k, v in kwargs.items():
        assert type(v).__name__ in str(sig[k].annotation), (k, v, sig[k].annotation)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rosenbrok", r"unknown problem 'rosenbrok' \(did you mean 'rosenbrock'\?\)"),
        ("rosenbrock:dims=4", r"argument of problem 'rosenbrock' 'dims' \(did you mean 'dim'\?\)"),
        ("rosenbrock:dim=four", r"problem 'rosenbrock': dim must be an integer, got 'four'"),
        ("rosenbrock:dim=4,dim=5", r"'dim' given twice"),
        ("beale:3", r"problem 'beale' takes no arguments"),
        ("logistic:separable=maybe", r"separable='maybe': expected true or false"),
        ("csv:model=poly:2", r"problem 'csv' needs path=\.\.\."),
        ("", r"a problem spec is NAME"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        problems.get(spec)


def test_one_parser_for_get_compare_and_sweep():
    a = problems.get("rosenbrock:dim=4")
    assert a.params0["x"].tolist() == [-1.2, 1.0, -1.2, 1.0]
    cmp = diyopt.compare("rosenbrock:dim=4", ["adam"], seeds=1, steps=3)
    assert cmp.problem.params0["x"].shape == (4,)
    from diyopt.problems import as_problem

    assert as_problem("quadratic:dim=3,cond=1e3").info["cond"] == 1000.0


# ---------------------------------------------------------------- diyopt fit on every problem form


def test_cli_fit_rosenbrock_dim4(tmp_path):
    out = tmp_path / "r"
    proc = run_cli("fit", "--problem", "rosenbrock:dim=4", "--optimizer", "adam", "--steps", "300", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result, losses = read_result(out)
    x = np.array(result["params"]["x"])
    assert result["shapes"]["x"] == [4] and result["steps"] == 300 and len(losses) == 300
    # losses[0] is the closed-form chained Rosenbrock at the standard start (-1.2, 1, -1.2, 1)
    x0 = np.array([-1.2, 1.0, -1.2, 1.0])
    rosen = lambda v: float(np.sum(100 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2))
    assert losses[0] == pytest.approx(rosen(x0), rel=1e-14)
    # final_loss is the last recorded loss (before the last update); the final params are lower still
    assert result["final_loss"] == losses[-1] and rosen(x) < losses[-1] < losses[0]
    # and it is the same fit as in Python
    ref = diyopt.fit(
        problems.get("rosenbrock", dim=4).loss, problems.get("rosenbrock", dim=4).params0, diyopt.optim.adam(), 300
    )
    np.testing.assert_allclose(x, ref.params["x"].numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "optimizer, steps, code",
    [
        ("adam", 30, 0),  # one loss and gradient per update
        ("schedule_free_adamw:lr=0.01", 30, 0),  # the loss at the evaluation params it reports is not counted
        ("sgd:lr=1", 20, 3),  # diverges at step 4: the step that diverged evaluated its loss too
    ],
)
def test_cli_result_json_has_the_results_evaluation_counts(tmp_path, optimizer, steps, code):
    proc = run_cli(
        "fit", "--problem", "rosenbrock", "--optimizer", optimizer, "--steps", str(steps), "--out", str(tmp_path)
    )
    assert proc.returncode == code, proc.stderr
    result, losses = read_result(tmp_path)
    problem = problems.get("rosenbrock")
    ref = diyopt.fit(problem.loss, problem.params0, diyopt.optim.get(optimizer), steps)
    assert (result["nfev"], result["njev"], result["nhev"]) == (ref.nfev, ref.njev, ref.nhev)
    assert result["steps"] == ref.steps == len(losses) and result["nhev"] == 0
    assert result["nfev"] == result["njev"] == len(losses) + (ref.stop_reason == "diverged")


@pytest.mark.slow
def test_cli_fit_engine_compiled_equals_eager(tmp_path):
    """``--engine compiled`` used to be refused (the CLI's settings= reached an engine without checkpoints)."""
    runs = {}
    for engine in ("eager", "compiled"):
        out = tmp_path / engine
        proc = run_cli(
            "fit",
            "--problem",
            "rosenbrock",
            "--optimizer",
            "adam",
            "--steps",
            "40",
            "--engine",
            engine,
            "--out",
            str(out),
        )
        assert proc.returncode == 0, proc.stderr
        runs[engine] = read_result(out)
    (eager, eager_losses), (compiled, compiled_losses) = runs["eager"], runs["compiled"]
    np.testing.assert_allclose(compiled["params"]["x"], eager["params"]["x"], rtol=1e-12)
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-12)


def test_cli_fit_nist_misra1a(tmp_path):
    path = diyopt.nist.nist_dir() / "Misra1a.dat"
    if not path.exists():
        pytest.skip(f"no NIST files in {path.parent}")
    out = tmp_path / "m"
    proc = run_cli("fit", "--problem", "nist:Misra1a", "--optimizer", "adam", "--steps", "50", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result, losses = read_result(out)
    assert set(result["params"]) == {"b1", "b2"}
    # losses[0] = NIST's residual sum of squares at Start 1 (b1=500, b2=1e-4), recomputed from the file
    lines = path.read_text().splitlines()
    first = next(i for i, l in enumerate(lines) if l.split()[:3] == ["Data:", "y", "x"]) + 1
    data = np.array([[float(v) for v in l.split()] for l in lines[first:] if l.strip()])
    y, x = data[:, 0], data[:, 1]
    rss = lambda b1, b2: float(np.sum((y - b1 * (1 - np.exp(-b2 * x))) ** 2))
    assert losses[0] == pytest.approx(rss(500.0, 1e-4), rel=1e-12)
    b1, b2 = result["params"]["b1"][0], result["params"]["b2"][0]
    assert rss(b1, b2) < losses[0]


@pytest.mark.parametrize("form", ["data", "path"])
def test_cli_fit_csv_quadratic_matches_polyfit(tmp_path, form):
    x, y = quadratic_csv(tmp_path / "q.csv")
    out = tmp_path / "fit"
    problem = (
        ["--problem", "csv:model=poly:2", "--data", "q.csv"]
        if form == "data"
        else ["--problem", "csv:path=q.csv,model=poly:2"]
    )
    proc = run_cli("fit", *problem, "--optimizer", "adam:lr=0.05", "--steps", "3000", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result, _ = read_result(out)
    np.testing.assert_allclose(result["params"]["c"], np.polyfit(x, y, 2)[::-1], rtol=1e-6)


def test_cli_fit_csv_expression_model_and_loss(tmp_path):
    x, y = quadratic_csv(tmp_path / "q.csv")
    out = tmp_path / "fit"
    assert (
        main(
            [
                "fit",
                "--problem",
                f"csv:path={tmp_path / 'q.csv'},model=c0 + c1*x + c2*x**2",
                "--loss",
                "sse",
                "--optimizer",
                "adam:lr=0.05",
                "--steps",
                "3000",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result, losses = read_result(out)
    fitted = [result["params"][k][0] for k in ("c0", "c1", "c2")]
    np.testing.assert_allclose(fitted, np.polyfit(x, y, 2)[::-1], rtol=1e-6)
    # every parameter of an expression starts at 1: the sum of squares at c0 = c1 = c2 = 1
    assert losses[0] == pytest.approx(float(np.sum((1 + x + x**2 - y) ** 2)), rel=1e-12)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--problem", "rosenbrock", "--data", "q.csv"], r"--data is the data file of --problem csv"),
        (["--problem", "csv:path=q.csv", "--data", "q.csv"], r"--data q\.csv and path=q\.csv .*give one"),
        (
            ["--problem", "rosenbrock", "--loss", "mse"],
            r"problem 'rosenbrock' has its own loss; --loss applies to: "
            r"csv, line",
        ),
        (["--problem", "csv:path=q.csv,loss=sse", "--loss", "mse"], r"--loss mse and loss=sse"),
        (["--problem", "rosenbrock:dim=x"], r"dim must be an integer, got 'x'"),
    ],
)
def test_cli_fit_bad_problem_input(tmp_path, capsys, argv, message):
    import re

    quadratic_csv(tmp_path / "q.csv")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(["fit", *argv, "--optimizer", "adam", "--steps", "3", "--out", "out"])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- --version, list, defaults


def test_cli_version():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"diyopt {pyproject['project']['version']}"


def test_cli_list_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    headings = [line[:-1] for line in out.splitlines() if line and not line.startswith(" ")]
    assert headings == ["optimizers", "losses", "problems", "schedules", "transforms"]
    words = set(out.replace("(", " ").split())
    assert set(diyopt.optim.names()) | set(diyopt.losses.names()) | set(problems.names()) <= words
    public = lambda m: {n for n in m.__all__ if n[0].islower()}
    assert public(diyopt.schedules) | public(diyopt.transforms) <= words


def test_cli_list_problems_shows_arguments_and_description(capsys):
    assert main(["list", "problems"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in problems.names():
        sig = inspect.signature(problems.PROBLEMS[name]).parameters
        fields = lines[name].split(None, 2)
        shown = fields[1].split(",") if fields[1] != "-" else []
        assert [s.partition("=")[0] for s in shown] == list(sig), name  # every argument, in order
        assert len(fields[2]) > 20, name  # and a description
    assert "dim=2,a=1.0,b=100.0" in lines["rosenbrock"] and "path,model=line" in lines["csv"]
    # what the list prints is what --problem takes: each default written back parses to itself
    for name in ("rosenbrock", "himmelblau", "logistic", "quadratic"):
        spec = f"{name}:{lines[name].split()[1]}"
        assert problems.parse_spec(spec)[1] == problems.arguments(name), spec


@pytest.mark.parametrize("kind, module", [("schedules", "schedules"), ("transforms", "transforms")])
def test_cli_list_schedules_and_transforms(capsys, kind, module):
    assert main(["list", kind]) == 0
    names = [line.split("(")[0] for line in capsys.readouterr().out.splitlines()]
    mod = getattr(diyopt, module)
    assert names == sorted(n for n in mod.__all__ if n[0].islower())
    assert all(callable(getattr(mod, n)) for n in names)


def test_cli_fit_defaults_for_steps_and_out(tmp_path):
    help_text = run_cli("fit", "--help").stdout
    assert "(default: 1000)" in help_text and "runs/fit-PROBLEM-OPTIMIZER" in help_text
    proc = run_cli("fit", "--problem", "booth", "--optimizer", "adam:lr=0.1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result, losses = read_result(tmp_path / "runs" / "fit-booth-adam_lr_0.1")
    assert result["steps"] == 1000 and len(losses) == 1000
    # Booth's minimum is 0 at (1, 3); Adam at lr=0.1 gets there in 1000 steps
    np.testing.assert_allclose(result["params"]["xy"], [1.0, 3.0], atol=1e-6)


def test_cli_on_nonfinite_takes_every_policy_of_the_api(tmp_path):
    from diyopt.core.checks import NONFINITE_POLICIES

    assert set(NONFINITE_POLICIES) == {"stop", "raise", "skip", "ignore"}
    expected = {"stop": 3, "raise": 3, "skip": 0, "ignore": 0}  # sgd at lr=1 on Rosenbrock blows up at step 4
    for policy in NONFINITE_POLICIES:
        out = tmp_path / policy
        code = main(
            [
                "fit",
                "--problem",
                "rosenbrock",
                "--optimizer",
                "sgd:lr=1",
                "--steps",
                "20",
                "--on-nonfinite",
                policy,
                "--out",
                str(out),
            ]
        )
        assert code == expected[policy], policy
        if policy == "skip":
            result, _ = read_result(out)
            assert result["info"]["skipped"]  # the non-finite steps were skipped, and said so
        if policy == "raise":
            assert not out.exists()
