"""The conformance kit: passes for every built-in optimizer and the seed's rule written as a user file, and
fails, for the right reason, on planted broken rules. Plus ``check_loss`` and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from optim_db import FIT, records

import diyopt
from diyopt.analysis._conformance import FAIL, INFO, PASS, SKIP

# Each record's check_lr (tests/optim_db.py) is the learning rate its convergence checks get (parabola,
# Rosenbrock from (-1.2, 1), to 3e-2 within the default budget of 20,000 steps); the other checks use the
# optimizer's defaults. Built-ins the kit's problems (dense vectors, one gradient per step) cannot
# exercise have no "fit" form in their record, which says why.
ALL_CHECKS = [
    "downhill",
    "uphill (maximize)",
    "parabola",
    "rosenbrock",
    "pure: inputs",
    "pure: repeatable",
    "state: tensors only",
    "dtype",
    "to_torch round trip",
    "no autograd graph",
    "flat buffer",
]


@pytest.mark.parametrize("info", sorted(records(FIT), key=lambda info: info.name), ids=lambda info: info.name)
def test_every_builtin_optimizer_passes(info):
    name = info.name
    report = diyopt.check(getattr(diyopt.optim, name)(), lr=info.check_lr)
    assert [r.name for r in report.results] == ALL_CHECKS
    assert report.passed, report.table()
    # no maximize argument in their references (torch's SGD-less rule, prodigyopt, torch's Muon)
    expected_uphill = SKIP if name in ("gradient_descent", "prodigy", "muon_adamw") else PASS
    assert report["uphill (maximize)"].status == expected_uphill
    assert "steps" in report["rosenbrock"].detail


# ---------------------------------------------------------------- planted broken rules


def closure_state_rule():
    calls = {"n": 0}

    @diyopt.elementwise
    def decaying(grad, state, param, *, lr=1e-2):
        calls["n"] += 1  # state hidden in a closure: the step size depends on how often update ran
        return -lr * grad / calls["n"] ** 0.5, state

    return decaying()


@diyopt.elementwise
def mutating(grad, state, param, *, lr=1e-2):
    return grad.mul_(-lr), state  # writes into the caller's gradient


GRAPH_LR = torch.tensor(1e-2, requires_grad=True)


@diyopt.elementwise
def keeps_graph(grad, state, param, *, lr=GRAPH_LR, momentum=0.9):
    buf = momentum * state + lr * grad  # lr requires grad: buf's graph grows every step
    return -buf, buf


@keeps_graph.init
def _(param):
    return torch.zeros_like(param)


@diyopt.elementwise
def changes_dtype(grad, state, param, *, lr=1e-3):
    return (-lr * grad).double(), state


@diyopt.elementwise
def python_counter(grad, state, param, *, lr=1e-3):
    return -lr * grad, state + 1


@python_counter.init
def _(param):
    return 0


@diyopt.elementwise
def ignores_maximize(grad, state, param, *, lr=1e-3, maximize=False):
    return -lr * grad, state


@diyopt.elementwise  # looks at the whole tensor but does not declare whole_tensor=True
def undeclared_norm(grad, state, param, *, lr=1e-2):
    return -lr * grad / (grad.norm() + 1e-12), state


@pytest.mark.parametrize(
    "opt, failing, reason",
    [
        (closure_state_rule(), "pure: repeatable", "state hides outside the state tree"),
        (mutating(), "pure: inputs", "update mutated its input grads"),
        (keeps_graph(), "no autograd graph", "has grad_fn .* an autograd graph is kept"),
        (changes_dtype(), "dtype", "torch.float32 params gave a torch.float64 update"),
        (python_counter(), "state: tensors only", r"state\['.*'\] is a int \(\d+\)"),
        (ignores_maximize(), "uphill (maximize)", "maximize=True did not go uphill"),
        (undeclared_norm(), "flat buffer", r"whole_tensor=True"),
    ],
    ids=[
        "closure-state",
        "mutates-input",
        "keeps-graph",
        "changes-dtype",
        "python-int-state",
        "no-maximize",
        "undeclared-whole-tensor",
    ],
)
def test_planted_broken_rules_fail_for_the_right_reason(opt, failing, reason):
    report = diyopt.check(opt, budget=300)
    assert not report.passed
    assert report[failing].status == FAIL, report.table()
    assert __import__("re").search(reason, report[failing].detail), report[failing].detail
    # the purity/dtype/graph checks do not depend on convergence: the planted defect is named where it is
    assert report["downhill"].status in (PASS, FAIL)


# ---------------------------------------------------------------- the extended contract (docs/contract.md)

# (optimizer, lr for the convergence checks): SAM's fixed point sits off the optimum by about rho times the
# curvature ratio, so rho is small enough for Rosenbrock's 3e-2; the wrappers' lr is their base's
EXTENDED = {
    "sam": (lambda: diyopt.optim.sam(diyopt.optim.adam(), rho=1e-3), 3e-2),
    "sam-adaptive": (lambda: diyopt.optim.sam(diyopt.optim.adam(), rho=1e-3, adaptive=True), 3e-2),
    "sam-sgd": (lambda: diyopt.optim.sam(diyopt.optim.sgd(momentum=0.9), rho=1e-3), 1e-3),
    "lookahead": (lambda: diyopt.optim.lookahead(diyopt.optim.sgd(momentum=0.9)), 1e-3),
    "ema": (lambda: diyopt.optim.ema(diyopt.optim.adam(), decay=0.9), 1e-2),
    "ema-of-sam": (lambda: diyopt.optim.ema(diyopt.optim.sam(diyopt.optim.adam(), rho=1e-3), decay=0.9), 3e-2),
}


@pytest.mark.parametrize("name", sorted(EXTENDED))
def test_the_extended_contract_passes_the_kit(name):
    """SAM gets its second gradient (the problem's closed form as grad_fn, through engine_update), and the
    convergence checks judge the evaluation params; schedule-free is in test_every_builtin_optimizer_passes."""
    make, lr = EXTENDED[name]
    report = diyopt.check(make(), lr=lr)
    assert [r.name for r in report.results] == ALL_CHECKS
    assert report.passed, report.table()
    assert report["uphill (maximize)"].status == PASS  # the base's maximize, through the wrapper
    assert report["to_torch round trip"].status == PASS


def in_place_sam(rho=0.05):
    """SAM as torch-style code writes it: the ascent step added to the params in place, never undone."""

    def update(grads, state, params, *, grad_fn):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        for k, p in params.items():
            p.add_(grads[k] * (rho / norm))
        return {k: -1e-2 * g for k, g in grad_fn(params).items()}, state

    return diyopt.Optimizer(lambda params: (), update, extra_args=frozenset({"grad_fn"}))


def frozen_average():
    """An EMA whose average never moves: eval_params reports the initial params for ever."""

    def init(params):
        return {k: v.clone() for k, v in params.items()}

    def update(grads, state, params):
        return {k: -1e-2 * g for k, g in grads.items()}, state

    return diyopt.Optimizer(init, update, eval_params=lambda state, params: dict(state))


@pytest.mark.parametrize(
    "opt, failing, reason",
    [
        (in_place_sam(), "pure: inputs", "update mutated its input params"),
        (frozen_average(), "parabola", "not within 0.03 of the optimum after 300 steps"),
    ],
    ids=["sam-perturbs-in-place", "eval-params-never-move"],
)
def test_planted_broken_extended_rules_fail_for_the_right_reason(opt, failing, reason):
    report = diyopt.check(opt, budget=300)
    assert report[failing].status == FAIL, report.table()
    assert __import__("re").search(reason, report[failing].detail), report[failing].detail


def test_a_convergence_failure_reports_the_budget():
    report = diyopt.check(diyopt.optim.gradient_descent(), lr=1e-6, budget=50)
    assert report["parabola"].status == FAIL
    assert "not within 0.03 of the optimum after 50 steps at lr=1e-06" in report["parabola"].detail
    assert "FAILED" in report.table()


# ---------------------------------------------------------------- losses


def test_check_loss_on_a_good_loss():
    x, y = diyopt.data.make_line(seed=0)
    p = {"a": torch.tensor([0.3]), "b": torch.tensor([-0.2])}
    report = diyopt.check_loss(lambda q: diyopt.losses.l2_norm(q["a"] * x + q["b"], y), p)
    assert report.passed, report.table()
    assert [r.status for r in report.results] == [PASS, PASS, INFO]
    assert "returns nan" in report["NaN input"].detail


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # should be 2 * x


def test_check_loss_catches_a_wrong_gradient_and_states_nan_handling():
    p = {"x": torch.tensor([0.5, -1.5])}
    report = diyopt.check_loss(lambda q: WrongSquare.apply(q["x"]), p)
    assert report["gradient"].status == FAIL
    assert "differs from finite differences" in report["gradient"].detail
    swallowing = diyopt.check_loss(lambda q: torch.nan_to_num(q["x"]).square().sum(), p)
    assert swallowing["gradient"].status == PASS
    assert "returns 0.0" not in swallowing["NaN input"].detail and "finite value" in swallowing["NaN input"].detail
    vector = diyopt.check_loss(lambda q: q["x"] ** 2, p)
    assert vector["scalar output"].status == FAIL and "must return a scalar" in vector["scalar output"].detail


# ---------------------------------------------------------------- the command line


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "diyopt.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


SEED_FILE = textwrap.dedent("""
    import diyopt


    @diyopt.elementwise
    def gradient_descent(grad, state, param, *, lr=1e-3):
        return -lr * grad, state


    @diyopt.elementwise
    def impure(grad, state, param, *, lr=1e-3):
        return grad.mul_(-lr), state
""")


def test_cli_check_user_file(tmp_path):
    (tmp_path / "seed_rule.py").write_text(SEED_FILE)
    good = run_cli("check", "seed_rule.py:gradient_descent:lr=1.5e-3", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all checks passed" in good.stdout and "rosenbrock" in good.stdout
    bad = run_cli("check", "seed_rule.py:impure", "--budget", "200", cwd=tmp_path)
    assert bad.returncode == 1
    assert "update mutated its input grads" in bad.stdout and "FAILED" in bad.stdout
    unknown = run_cli("check", "seed_rule.py:gradient_decent", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "did you mean 'gradient_descent'" in unknown.stderr


def test_cli_check_a_wrapped_optimizer():
    """The kit on the command line for the extended contract: SAM (grad_fn) and EMA (eval_params)."""
    for spec in ("sam+adam:lr=3e-2,rho=1e-3", "ema+adam:lr=1e-2,decay=0.9"):
        out = run_cli("check", spec)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all checks passed" in out.stdout and "to_torch round trip  PASS" in out.stdout
    bare = run_cli("check", "sam")
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1
    assert "sam wraps another optimizer: write sam+BASE" in bare.stderr


def test_cli_list():
    out = run_cli("list", "optimizers")
    assert out.returncode == 0
    assert out.stdout.split() == diyopt.optim.names()
    losses = run_cli("list", "losses")
    assert losses.stdout.split() == diyopt.losses.names()
    bad = run_cli("list", "optimisers")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_a_matrix_only_rule_runs_every_check_on_matrices():
    """Muon refuses vectors (as torch.optim.Muon does), so the kit gives it the problems' vectors as n x 1
    matrices and says so; every row then runs. The parabola's step count is checked against torch.optim.Muon
    itself on the same n x 1 matrices, stepped until every coordinate is within the kit's tolerance."""
    report = diyopt.check(diyopt.optim.muon())
    assert report.passed, report.table()
    assert report["matrices only"].status == INFO and "Muon only supports 2D" in report["matrices only"].detail
    assert {r.name for r in report.results if r.status == PASS} >= {"downhill", "parabola", "rosenbrock"}
    ours = int(report["parabola"].detail.split(" after ")[1].split()[0])

    c = {
        "a": torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64),
        "b": torch.tensor([[3.0]], dtype=torch.float64),
    }
    p = {k: torch.zeros_like(v, requires_grad=True) for k, v in c.items()}
    ref = torch.optim.Muon(list(p.values()), lr=1e-3)
    steps, err = 0, float("inf")
    while err > 3e-2 and steps < 20_000:
        for k in p:
            p[k].grad = 2 * (p[k].detach() - c[k])
        ref.step()
        steps += 1
        err = max(float((p[k].detach() - c[k]).abs().max()) for k in p)
    assert ours == steps


def test_a_broken_matrix_only_rule_still_fails():
    wrong_sign = diyopt.core.chain(diyopt.optim.muon(), diyopt.transforms.scale(-1.0))
    report = diyopt.check(wrong_sign)
    assert report["matrices only"].status == INFO
    assert report["downhill"].status == FAIL and not report.passed


def test_a_rule_that_takes_vectors_gets_no_matrices_row():
    report = diyopt.check(diyopt.optim.adam(lr=1e-2))
    assert "matrices only" not in {r.name for r in report.results}
