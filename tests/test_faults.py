"""Faults and hostile inputs (issue 11): nothing lost, nothing wrong, nothing left behind.

The first part is a table like ``test_bad_input.py``'s, for the other subcommands: each row ends in exit
code 2, one line on stderr naming the problem, no traceback, and the folder exactly as it was (an earlier
diyopt output and the user's own files untouched, no temp file). The rest are the faults one at a time:
user files in ``--out``, locks, signals, temps of killed runs, the divergence guard in every engine,
strict JSON, the umask, the O(1) checkpoint save, the demo's worker.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_folders import prepare, snapshot

import diyopt
from diyopt._util import files as outputs
from diyopt.cli import main
from diyopt.errors import DivergedError

RAISES = """import torch
import diyopt

@diyopt.elementwise
def rule(grad, state, param, *, lr=1e-3):
    raise RuntimeError("boom from the user's rule")
"""

BRANCHY = """import torch
import diyopt

@diyopt.elementwise
def rule(grad, state, param, *, lr=1e-3):
    if grad.sum() > 0:          # data-dependent control flow: vmap cannot map it
        return -lr * grad, state
    return -lr * grad, state
"""

COMPARE = ["compare", "--optimizers", "adam", "--seeds", "1", "--steps", "5", "--out", "{t}/out"]
SWEEP = ["sweep", "--problem", "rosenbrock", "--optimizer", "adam", "--steps", "5", "--out", "{t}/out"]

# (id, argv, files, regex): every row must exit 2 with one line matching regex.
FAULTS = [
    (
        "compare-dim-1e10",
        COMPARE + ["--problem", "rosenbrock:dim=1e10"],
        {},
        r"problem 'rosenbrock' with dim=10000000000 needs about [\d,]+ GiB of memory",
    ),
    ("compare-dim-1e12", COMPARE + ["--problem", "rosenbrock:dim=1e12"], {}, r"dim=1000000000000 needs about"),
    (
        "compare-quadratic-huge",
        COMPARE + ["--problem", "quadratic:dim=1e7"],
        {},
        r"'quadratic' with dim=10000000 needs",
    ),
    (
        "compare-dim-two",
        COMPARE + ["--problem", "rosenbrock:dim=two"],
        {},
        r"problem 'rosenbrock': dim must be an integer, got 'two'",
    ),
    (
        "compare-rule-raises",
        COMPARE[:2] + ["{t}/r.py:rule"] + COMPARE[3:] + ["--problem", "line"],
        {"r.py": RAISES},
        r"error in .*r\.py:6 \(in rule\): RuntimeError: boom from the user's rule",
    ),
    (
        "sweep-grid-negative-lr",
        SWEEP + ["--grid", "lr=-1,0.1"],
        {},
        r"grid value lr=-1\.0 is not valid: Invalid learning rate: -1\.0",
    ),
    (
        "sweep-grid-nan-lr",
        SWEEP + ["--grid", "lr=nan"],
        {},
        r"grid value lr=nan is not valid: Invalid learning rate: nan",
    ),
    (
        "sweep-grid-betas-scalar",
        SWEEP + ["--grid", "betas=0.9"],
        {},
        r"grid value betas=0\.9 is not valid: betas must be a pair",
    ),
    ("sweep-grid-repeated", SWEEP + ["--grid", "lr=0.1", "--grid", "lr=0.2"], {}, r"--grid lr is given twice"),
    (
        "sweep-rule-raises",
        SWEEP[:4] + ["{t}/r.py:rule"] + SWEEP[5:],
        {"r.py": RAISES},
        r"error in .*r\.py:6 \(in rule\)",
    ),
    (
        "report-settings-array",
        ["report", "{t}/cmp"],
        {"cmp/": "", "cmp/settings.json": "[1, 2]"},
        r"settings\.json does not hold diyopt settings: expected a JSON object, got a JSON array",
    ),
    (
        "report-settings-not-utf8",
        ["report", "{t}/cmp"],
        {"cmp/": "", "cmp/settings.json": b"\xff\xfe{}"},
        r"cmp/settings\.json is not valid JSON",
    ),
    (
        "report-settings-wrong-types",
        ["report", "{t}/cmp"],
        {"cmp/": "", "cmp/settings.json": '{"problems": 3}'},
        r"settings\.json does not hold diyopt settings: 'problems' is a int",
    ),
    (
        "check-sys-exit",
        ["check", "{t}/r.py:rule"],
        {"r.py": "import sys\nsys.exit(0)\n"},
        r"cannot import .*r\.py, line 2: it calls sys\.exit\(0\)",
    ),
    (
        "fit-sys-exit",
        ["fit", "--problem", "line", "--optimizer", "{t}/r.py:rule", "--steps", "5", "--out", "{t}/out"],
        {"r.py": "import sys\nsys.exit(0)\n"},
        r"it calls sys\.exit\(0\) at import",
    ),
    (
        "fit-steps-below-checkpoint",
        [
            "fit",
            "--problem",
            "line",
            "--optimizer",
            "adam",
            "--steps",
            "5",
            "--out",
            "{t}/out",
            "--checkpoint",
            "{t}/c.pt",
            "--resume",
        ],
        {"c.pt": lambda t: _finished(t, 10)},
        r"c\.pt: it is at step 10, past steps=5; give at least 10 steps",
    ),
]


def _finished(t: Path, steps: int) -> bytes:
    """The checkpoint of a finished ``steps``-step ``diyopt fit --problem line --optimizer adam``."""
    ck = t / "made.pt"
    assert (
        main(
            [
                "fit",
                "--problem",
                "line",
                "--optimizer",
                "adam",
                "--steps",
                str(steps),
                "--out",
                str(t / "made"),
                "--checkpoint",
                str(ck),
            ]
        )
        == 0
    )
    data = ck.read_bytes()
    # The loss history lives beside it; keep both under the name the row uses.
    os.replace(f"{ck}.losses", t / "c.pt.losses")
    ck.unlink()
    import shutil

    shutil.rmtree(t / "made")
    return data


def temps(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock"))]


@pytest.mark.parametrize("name, argv, files, pattern", FAULTS, ids=[r[0] for r in FAULTS])
def test_fault(name, argv, files, pattern, tmp_path, capsys):
    before = prepare(tmp_path, files)
    capsys.readouterr()
    code = main([a.replace("{t}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed, no temp left


# ---------------------------------------------------------------- never delete what diyopt did not write

FIT = ["fit", "--problem", "line", "--optimizer", "adam", "--loss", "mse"]


def test_fit_into_a_folder_with_the_users_files_keeps_them(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("my notes")
    (proj / "data.csv").write_text("x,y\n1,2\n")
    for steps in ("20", "30"):  # the second run replaces diyopt's files only
        assert main(FIT + ["--steps", steps, "--out", str(proj)]) == 0
    assert (proj / "notes.txt").read_text() == "my notes" and (proj / "data.csv").read_text() == "x,y\n1,2\n"
    assert json.loads((proj / "result.json").read_text())["steps"] == 30
    assert sorted(json.loads((proj / outputs.MANIFEST).read_text())["files"]) == ["losses.csv", "result.json"]
    assert temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_a_crafted_manifest_cannot_make_diyopt_delete_outside_its_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    (out / outputs.MANIFEST).write_text(json.dumps({"files": ["../precious.txt", str(tmp_path / "precious.txt")]}))
    assert main(FIT + ["--steps", "5", "--out", str(out)]) == 0
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_demo_into_a_folder_with_the_users_files_keeps_them(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("my notes")
    assert main(["demo", "--steps", "20", "--out", str(proj)]) == 0
    assert (proj / "notes.txt").read_text() == "my notes"
    assert {"summary.json", "Adam.png", "original_loss.png"} <= {p.name for p in proj.iterdir()}
    assert temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_checkpoint_inside_out_is_kept_and_the_run_extended(tmp_path, capsys):
    run = tmp_path / "run"
    ck = run / "c.pt"
    args = FIT + ["--out", str(run), "--checkpoint", str(ck), "--checkpoint-every", "10"]
    assert main(args + ["--steps", "40"]) == 0
    assert ck.exists()
    assert main(args + ["--steps", "70", "--resume"]) == 0  # issue 10 item 10: extend a finished run
    assert ck.exists() and diyopt.checkpoint.load(ck)["step"] == 70
    assert json.loads((run / "result.json").read_text())["steps"] == 70
    ref = tmp_path / "ref"
    assert main(FIT + ["--out", str(ref), "--steps", "70"]) == 0
    assert (ref / "losses.csv").read_text() == (run / "losses.csv").read_text()  # bitwise, via repr
    assert temps(tmp_path) == []


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_out_dot_writes_into_the_working_folder(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    argv = (
        (FIT + ["--steps", "10"])
        if command == "fit"
        else ["compare", "--problem", "line", "--optimizers", "adam", "--seeds", "1", "--steps", "10"]
    )
    assert main(argv + ["--out", "."]) == 0
    assert (tmp_path / "mine.txt").read_text() == "mine"
    assert (tmp_path / ("result.json" if command == "fit" else "table.md")).exists()
    assert temps(tmp_path) == [] and temps(tmp_path.parent / tmp_path.name) == []
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]


def test_report_out_an_existing_folder_leaves_no_temp(tmp_path, capsys):
    cmp = tmp_path / "cmp"
    assert (
        main(
            ["compare", "--problem", "line", "--optimizers", "adam", "--seeds", "1", "--steps", "10", "--out", str(cmp)]
        )
        == 0
    )
    pages = tmp_path / "pages"
    pages.mkdir()
    assert main(["report", str(cmp), "--out", str(pages)]) == 0
    assert [p.name for p in pages.iterdir()] == ["report.html"]
    assert temps(tmp_path) == []


# ---------------------------------------------------------------- one run at a time on a checkpoint


def test_a_second_run_on_a_held_checkpoint_is_refused_naming_the_holder(tmp_path, capsys):
    ck = tmp_path / "c.pt"
    with outputs.locked(ck):
        code = main(FIT + ["--steps", "10", "--out", str(tmp_path / "out"), "--checkpoint", str(ck)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"c.pt is in use by another diyopt run (process {os.getpid()})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no checkpoint, no lock file


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diyopt.cli", *args]


def _env() -> dict:
    src = str(Path(diyopt.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_processes_on_one_checkpoint_and_sigterm_saves_it(tmp_path):
    """Two real processes: the second is refused naming the first; SIGTERM to the first saves the
    checkpoint at that step and exits 143 leaving no temp or lock; the resumed run is bitwise the
    uninterrupted one."""
    steps = "200000"
    ck, out = tmp_path / "c.pt", tmp_path / "out"
    args = [
        "fit",
        "--problem",
        "line",
        "--optimizer",
        "adam",
        "--loss",
        "mse",
        "--steps",
        steps,
        "--out",
        str(out),
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "1000000",
    ]
    first = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: Path(f"{ck}.lock").exists() or first.poll() is not None)
        time.sleep(0.5)  # well into the loop
        second = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"in use by another diyopt run (process {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    saved = diyopt.checkpoint.load(ck)["step"]
    assert 0 < saved < int(steps)  # saved at the interrupted step, not only at --checkpoint-every
    assert not out.exists() and temps(tmp_path) == []
    # Resume to a budget just past the saved step, and compare with one uninterrupted run.
    budget = str(saved + 500)
    resume = subprocess.run(
        _cli(*args[:8], budget, *args[9:], "--resume"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resume.returncode == 0, resume.stderr
    ref = tmp_path / "ref"
    assert main(FIT + ["--steps", budget, "--out", str(ref)]) == 0
    assert (ref / "losses.csv").read_text() == (out / "losses.csv").read_text()
    assert (
        json.loads((ref / "result.json").read_text())["params"]
        == json.loads((out / "result.json").read_text())["params"]
    )
    assert temps(tmp_path) == []


def test_temps_of_killed_runs_are_swept_but_not_those_of_live_ones(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".out.diyopt-{dead.pid}-abc123.tmp", tmp_path / f".c.pt.diyopt-{dead.pid}-x9.tmp"]
    stale[0].mkdir()
    (stale[0] / "result.json").write_text("half")
    stale[1].write_bytes(b"half a checkpoint")
    live = tmp_path / f".out.diyopt-{os.getppid()}-live.tmp"  # a running process's: not ours to remove
    live.mkdir()
    users = tmp_path / ".out.backup.tmp"  # not diyopt's name: never touched
    users.write_text("the user's")
    assert main(FIT + ["--steps", "10", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "c.pt")]) == 0
    assert not any(p.exists() for p in stale)
    assert live.exists() and users.read_text() == "the user's"


# ---------------------------------------------------------------- the divergence guard, in every engine

K = 6
A = [1 - 0.8**k for k in range(K + 1)]  # gradient descent, lr=0.1 on (a-1)^2: a_k = 1 - 0.8^k
C = (A[K - 1] + A[K]) / 2


@diyopt.elementwise
def nan_update_after_c(grad, state, param, *, lr=0.1):
    """Gradient descent whose update turns nan once the param passes C (the loss and gradients stay finite)."""
    u = -lr * grad
    return torch.where(param > C, u * math.nan, u), state


def _loss(p):
    return ((p["a"] - 1) ** 2).sum() + (p["b"] ** 2).sum()


def _p0(dtype, named=False):
    return {"a": torch.zeros(1, dtype=dtype), "b": torch.zeros(2, dtype=torch.float32 if named else dtype)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("named", [False, True], ids=["flat", "named"])
def test_a_nan_update_stops_at_the_last_finite_params(dtype, named):
    r = diyopt.fit(_loss, _p0(dtype, named), nan_update_after_c(lr=0.1), 50)
    assert r.stop_reason == "diverged" and r.steps == K
    assert r.info["diverged"] == {
        "step": K,
        "what": "update",
        "param": "a",
        "loss": pytest.approx((1 - A[K]) ** 2, rel=1e-5),
    }
    assert r.params["a"].item() == pytest.approx(A[K], rel=1e-6)
    assert all(torch.isfinite(v).all() for v in r.params.values()) and torch.isfinite(r.losses).all()
    with pytest.raises(DivergedError, match=rf"non-finite update of parameter 'a' at step {K}"):
        diyopt.fit(_loss, _p0(dtype, named), nan_update_after_c(lr=0.1), 50, on_nonfinite="raise")


@pytest.mark.slow  # compiling on CI's 2 cores
def test_compiled_engine_guards_the_update_too():
    r = diyopt.fit(_loss, _p0(torch.float64), nan_update_after_c(lr=0.1), 50, engine="compiled")
    assert r.stop_reason == "diverged" and r.steps == K
    assert (r.info["diverged"]["step"], r.info["diverged"]["what"], r.info["diverged"]["param"]) == (K, "update", "a")
    assert r.params["a"].item() == pytest.approx(A[K], rel=1e-12) and torch.isfinite(r.params["b"]).all()


def test_skip_keeps_the_params_finite_and_the_state_as_it_was():
    # lr=inf: every update is inf; every step is skipped and the params stay the start.
    r = diyopt.fit(_loss, _p0(torch.float64), diyopt.optim.gradient_descent(lr=math.inf), 10, on_nonfinite="skip")
    assert r.info["skipped"] == list(range(10))
    assert torch.equal(r.params["a"], torch.zeros(1, dtype=torch.float64))
    r = diyopt.fit(_loss, _p0(torch.float64), diyopt.optim.adam(lr=math.inf), 10)
    assert r.stop_reason == "diverged" and r.info["diverged"]["what"] == "update" and r.steps == 0


def test_a_finite_update_that_overflows_the_parameter_is_named():
    @diyopt.elementwise
    def huge(grad, state, param, *, lr=1.0):
        return torch.full_like(grad, 1e308), state

    r = diyopt.fit(lambda p: (p["w"] * 1e-300).sum(), {"w": torch.full((2,), 1e308, dtype=torch.float64)}, huge(), 5)
    assert r.info["diverged"]["what"] == "param" and r.info["diverged"]["param"] == "w"
    assert torch.isfinite(r.params["w"]).all()


def test_torch_class_update_guard():
    r = diyopt.fit(_loss, _p0(torch.float64), torch.optim.SGD, 10, lr=math.inf)
    assert r.stop_reason == "diverged" and r.info["diverged"]["what"] == "update"
    assert torch.equal(r.params["a"], torch.zeros(1, dtype=torch.float64))  # put back, not inf


def test_to_torch_refuses_to_write_a_nan_update():
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = diyopt.to_torch(diyopt.optim.sgd(lr=math.inf), [w])
    ((w - 1) ** 2).sum().backward()
    with pytest.raises(DivergedError, match=r"non-finite update of parameter '0'"):
        opt.step()
    assert torch.equal(w.detach(), torch.zeros(2, dtype=torch.float64))
    opt = diyopt.to_torch(diyopt.optim.sgd(lr=math.inf), [w], on_nonfinite="ignore")
    opt.step()
    assert not torch.isfinite(w).all()


def test_sweep_freezes_a_diverging_run_at_its_last_finite_params():
    r = diyopt.sweep(_loss, _p0(torch.float64), nan_update_after_c(lr=0.1), 20, grid={"lr": [0.1, 0.01]})
    bad, good = r.rows
    assert bad["diverged"] and not good["diverged"]
    assert r.run_params(0)["a"].item() == pytest.approx(A[K], rel=1e-12)
    assert torch.isnan(r.losses[0, K:]).all() and torch.isfinite(r.losses[0, :K]).all()
    ref = diyopt.fit(_loss, _p0(torch.float64), nan_update_after_c(lr=0.01), 20)
    torch.testing.assert_close(r.run_params(1)["a"], ref.params["a"], rtol=1e-12, atol=0)


def test_sweep_falls_back_to_a_loop_for_an_unvectorizable_rule(tmp_path, capsys):
    (tmp_path / "r.py").write_text(BRANCHY)
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                "--problem",
                "rosenbrock",
                "--optimizer",
                f"{tmp_path}/r.py:rule",
                "--grid",
                "lr=1e-3,1e-4",
                "--steps",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be vectorized" in err and "data-dependent control flow" in err
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3
    rule = diyopt.optim.getattr_from_file(str(tmp_path / "r.py"), "rule")
    problem = diyopt.problems.get("rosenbrock")
    ref = diyopt.fit(problem.loss, problem.params0, rule(lr=1e-3), 30)
    assert rows[1].split(",")[-2:] == [repr(float(x)) for x in ref.params["x"]]


def test_cli_exit_3_and_result_json_holds_the_last_finite_params(tmp_path, capsys):
    (tmp_path / "r.py").write_text(
        "import math, torch, diyopt\n\n@diyopt.elementwise\ndef rule(grad, state, param, *, lr=1e-3):\n"
        "    return torch.where(param.abs() > 0.05, grad * math.nan, -lr * grad), state\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "fit",
            "--problem",
            "line",
            "--optimizer",
            f"{tmp_path}/r.py:rule:lr=0.01",
            "--steps",
            "500",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and re.search(r"non-finite update of parameter '[ab]' at step \d+; the last finite", err)
    text = (out / "result.json").read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in result.json"))
    assert all(math.isfinite(v) for vs in result["params"].values() for v in vs)


def test_demo_goes_through_the_guard(tmp_path, capsys):
    code = main(["demo", "--lr", "1e308", "--steps", "30", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 3 and "diverged: non-finite" in err
    summary = json.loads(
        (tmp_path / "d" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json")
    )
    for fit in summary["fits"].values():
        assert fit["stop_reason"] == "diverged" and math.isfinite(fit["a"]) and math.isfinite(fit["b"])


def test_compare_keeps_the_others_when_one_diverges(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--problem",
                "rosenbrock",
                "--optimizers",
                "sgd:lr=0.01,adam",
                "--seeds",
                "2",
                "--steps",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    import csv

    rows = {r["optimizer"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert rows["sgd:lr=0.01"]["diverged"] == "2/2" and rows["adam"]["diverged"] == "0/2"
    assert math.isfinite(float(rows["adam"]["final_loss"]))
    assert (out / "paths.png").stat().st_size > 10_000
    json.loads((out / "settings.json").read_text(), parse_constant=lambda c: pytest.fail(c))


# ---------------------------------------------------------------- strict JSON, umask, sizes, small things


def test_strict_json_puts_null_and_the_reason():
    text = outputs.dumps({"loss": math.inf, "params": [1.0, math.nan, -math.inf], "ok": 2.5, "n": np.float64("nan")})
    data = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert data == {
        "loss": None,
        "loss_nonfinite": "inf",
        "params": [1.0, None, None],
        "params_nonfinite": {"1": "nan", "2": "-inf"},
        "ok": 2.5,
        "n": None,
        "n_nonfinite": "nan",
    }


def test_outputs_honour_the_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        ck = tmp_path / "c.pt"
        assert main(FIT + ["--steps", "10", "--out", str(tmp_path / "fit"), "--checkpoint", str(ck)]) == 0
        assert (
            main(
                [
                    "compare",
                    "--problem",
                    "line",
                    "--optimizers",
                    "adam",
                    "--seeds",
                    "1",
                    "--steps",
                    "10",
                    "--out",
                    str(tmp_path / "cmp"),
                    "--report",
                ]
            )
            == 0
        )
        assert main(["demo", "--steps", "10", "--out", str(tmp_path / "demo")]) == 0
    finally:
        os.umask(old)
    for p in tmp_path.rglob("*"):
        mode = p.stat().st_mode & 0o777
        assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))


def test_checkpoint_every_step_costs_o1_per_save_and_resumes_bitwise(tmp_path):
    x, y = diyopt.data.make_line(seed=1)
    loss = lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    opt = diyopt.optim.adam(lr=1e-2)
    sizes = {}
    for steps in (50, 600):
        ck = tmp_path / f"c{steps}.pt"
        diyopt.fit(loss, p0, opt, steps, checkpoint=ck, checkpoint_every=1)
        sizes[steps] = ck.stat().st_size
        assert Path(f"{ck}.losses").stat().st_size == 8 * steps  # the history: appended, 8 bytes a step
    assert abs(sizes[600] - sizes[50]) < 64, sizes  # the file rewritten at each save does not grow
    full = diyopt.fit(loss, p0, opt, 120)
    ck = tmp_path / "part.pt"
    diyopt.fit(loss, p0, opt, 120, checkpoint=ck, checkpoint_every=1, callback=lambda step, *_: step == 59)
    rest = diyopt.fit(loss, p0, opt, 120, checkpoint=ck, resume=True)
    assert torch.equal(rest.losses, full.losses) and torch.equal(rest.params["a"], full.params["a"])


def test_a_version_1_checkpoint_with_the_history_inside_resumes_bitwise(tmp_path):
    x, y = diyopt.data.make_line(seed=2)
    loss = lambda p: diyopt.losses.mse(p["a"] * x + p["b"], y)  # noqa: E731
    p0 = {"a": torch.zeros(1, dtype=torch.float32), "b": torch.zeros(1, dtype=torch.float32)}
    opt = diyopt.optim.adam(lr=1e-2)
    full = diyopt.fit(loss, p0, opt, 120)
    ck = tmp_path / "c.pt"
    diyopt.fit(loss, p0, opt, 120, checkpoint=ck, checkpoint_every=10, callback=lambda step, *_: step == 59)
    payload = diyopt.checkpoint.load(ck)  # rewrite it as version 1 wrote it: the losses inside
    payload["version"] = 1
    del payload["losses_file"]
    torch.save(payload, ck)
    os.unlink(f"{ck}.losses")
    rest = diyopt.fit(loss, p0, opt, 120, checkpoint=ck, resume=True, checkpoint_every=10)
    assert torch.equal(rest.losses, full.losses)
    assert torch.equal(diyopt.checkpoint.load(ck)["losses"], full.losses)  # the file now holds all 120


def test_numpy_integer_steps_are_accepted():
    r = diyopt.fit(_loss, _p0(torch.float64), diyopt.optim.adam(), np.int64(7))
    assert r.steps == 7
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        diyopt.fit(_loss, _p0(torch.float64), diyopt.optim.adam(), 7.0)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, capsys):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text("x,y\n0,1\n1,0.1\n2,-1.05\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for f in (plain, bom):
        assert main(FIT + ["--steps", "50", "--data", str(f), "--out", str(tmp_path / f.stem)]) == 0
    assert (tmp_path / "plain" / "losses.csv").read_text() == (tmp_path / "bom" / "losses.csv").read_text()


def test_keyboard_interrupt_at_import_is_an_interrupt_not_a_success(tmp_path, capsys):
    (tmp_path / "r.py").write_text("raise KeyboardInterrupt\n")
    code = main(FIT[:4] + [f"{tmp_path}/r.py:rule", "--steps", "5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err == f"diyopt: interrupted while importing {tmp_path}/r.py"
    assert not (tmp_path / "o").exists()


# pybind11 modules (matplotlib's ft2font, _path, ...) re-raise a KeyboardInterrupt that lands while they
# initialize as ImportError("initialization failed") from it. Seen for real: SIGINT to `diyopt demo` while
# its parent imported matplotlib ended with "diyopt: error: initialization failed", exit 1, or a fatal
# error in the interpreter's teardown (exit -6), in 2 of ~150 runs with random delays.
EXTENSION_INTERRUPTED = "raise ImportError('initialization failed') from {interrupt}\n"


def test_ctrl_c_inside_an_extensions_import_in_a_users_file_is_an_interrupt(tmp_path, capsys):
    (tmp_path / "r.py").write_text(EXTENSION_INTERRUPTED.format(interrupt="KeyboardInterrupt()"))
    code = main(FIT[:4] + [f"{tmp_path}/r.py:rule", "--steps", "5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err == f"diyopt: interrupted while importing {tmp_path}/r.py"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_an_extensions_import_ends_a_command_as_that_signal(sig, tmp_path, capsys, monkeypatch):
    from diyopt._util.interrupts import Terminated
    from diyopt.analysis import demo

    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt if sig == signal.SIGINT else Terminated(sig)
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(demo, "run_demo", interrupted_import)
    code = main(["demo", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip()
    assert code == 128 + sig
    assert "error" not in err and err.startswith("diyopt: ")
    assert list(tmp_path.iterdir()) == []


def test_an_error_merely_raised_while_handling_another_is_still_an_error(tmp_path, capsys, monkeypatch):
    from diyopt.analysis import demo

    def fails(*args, **kwargs):
        try:
            raise ValueError("first")
        except ValueError:
            raise OSError("cannot write here") from None

    monkeypatch.setattr(demo, "run_demo", fails)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err.strip() == "diyopt: error: cannot write here"


def test_user_code_error_with_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "r.py").write_text(RAISES)
    code = main(["--debug"] + FIT[:4] + [f"{tmp_path}/r.py:rule", "--steps", "5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and 'r.py", line 6' in err


# ---------------------------------------------------------------- the demo ends at once on a signal


def _children(pid: int) -> list[int]:
    proc = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in proc.stdout.split()]


@pytest.mark.skipif(sys.platform != "linux", reason="pgrep -P and PR_SET_PDEATHSIG are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_ends_within_a_second_on_a_signal_and_leaves_no_process(sig, tmp_path):
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        _cli("demo", "--steps", "100000000", "--out", str(out)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        parallel = len(os.sched_getaffinity(0)) > 1
        if parallel:
            _wait_for(lambda: _children(demo.pid) or demo.poll() is not None)
        else:
            time.sleep(3)
        children = _children(demo.pid)
        assert demo.poll() is None and (children or not parallel)
        time.sleep(0.3)  # both fits running
        t0 = time.monotonic()
        demo.send_signal(sig)
        demo.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        demo.kill()
    assert elapsed < 1.0, elapsed
    assert demo.returncode == 128 + sig
    assert "Traceback" not in demo.stderr.read()
    _wait_for(lambda: not any(Path(f"/proc/{c}").exists() and "Z" not in _state(c) for c in children), timeout=1.0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize(
    "make",
    [
        lambda: diyopt.optim.sgd(lr=math.inf, momentum=0.9),
        lambda: diyopt.optim.adam(lr=math.inf),
        lambda: diyopt.optim.adagrad(lr=math.inf),
        lambda: diyopt.optim.rmsprop(lr=math.inf),
    ],
)
def test_an_infinite_setting_keeps_the_pure_path_so_the_guard_still_refuses(make):
    # the in-place kernels cannot check an update before writing it; an infinite setting takes the pure rule
    assert make().kernel is None
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = diyopt.to_torch(make(), [w])
    ((w - 1) ** 2).sum().backward()
    with pytest.raises(DivergedError, match=r"non-finite update of parameter '0'"):
        opt.step()
    assert torch.equal(w.detach(), torch.zeros(2, dtype=torch.float64))
