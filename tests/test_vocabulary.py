"""One result vocabulary (diyopt.core.result): every solver and fit engine says "budget used up" with the
same word, and counts evaluations with one meaning, checked against counters wrapped around the loss,
torch.optim.LBFGS's own counts and closed forms; the shared Armijo and strong-Wolfe line searches."""

import math
from pathlib import Path

import pytest
import torch

import diyopt
from diyopt.core import linesearch
from diyopt.core.result import STOP_REASONS
from diyopt.core.tree import FlatLayout


class Counted:
    """A loss that counts its calls."""

    def __init__(self, loss):
        self.loss, self.calls = loss, 0

    def __call__(self, p):
        self.calls += 1
        return self.loss(p)


def rosenbrock(p):
    x = p["x"]
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def start(dtype=torch.float64):
    return {"x": torch.tensor([-1.2, 1.0], dtype=dtype)}


def _exp_residual():
    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    y = 2 * torch.exp(-3 * x)
    return (lambda p: p["a"] * torch.exp(-p["k"] * x) - y), {
        "a": torch.tensor(1.0, dtype=torch.float64),
        "k": torch.tensor(1.0, dtype=torch.float64),
    }


BUDGETS = {
    "fit": lambda: diyopt.fit(rosenbrock, start(), diyopt.optim.adam(lr=1e-3), 5),
    "fit torch class": lambda: diyopt.fit(rosenbrock, start(), torch.optim.SGD, 5, lr=1e-4),
    "newton max_iter": lambda: diyopt.newton(rosenbrock, start(), max_iter=2),
    "lbfgs max_iter": lambda: diyopt.lbfgs(rosenbrock, start(), max_iter=3, lr=0.01),
    "lbfgs max_eval": lambda: diyopt.lbfgs(rosenbrock, start(), max_iter=50, max_eval=4, line_search_fn="strong_wolfe"),
    "lm max_nfev": lambda: diyopt.least_squares(*_exp_residual(), max_nfev=3),
    "gauss_newton max_nfev": lambda: diyopt.least_squares(*_exp_residual(), method="gauss_newton", max_nfev=3),
}


@pytest.mark.parametrize("name", BUDGETS)
def test_a_budget_used_up_is_max_steps_everywhere(name):
    result = BUDGETS[name]()
    assert result.stop_reason == "max_steps", (result.stop_reason, result.info.get("message"))
    assert result.stop_reason in STOP_REASONS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_counts_every_loss_evaluation(dtype):
    loss = Counted(rosenbrock)
    r = diyopt.fit(loss, start(dtype), diyopt.optim.adam(lr=1e-3), 7)
    assert (r.steps, r.nfev, r.njev, r.nhev) == (7, loss.calls, loss.calls, 0) == (7, 7, 7, 0)


def test_fit_counts_the_step_that_diverged():
    loss = Counted(lambda p: (p["x"] ** 4).sum())
    r = diyopt.fit(loss, {"x": torch.tensor([3.0], dtype=torch.float64)}, diyopt.optim.gradient_descent(lr=1.0), 40)
    assert r.stop_reason == "diverged"
    assert r.nfev == r.njev == loss.calls == r.steps + 1


def test_fit_with_torch_lbfgs_counts_its_closure_calls():
    """torch.optim.LBFGS evaluates the closure several times per step; its state counts them too."""
    loss = Counted(rosenbrock)
    r = diyopt.fit(loss, start(), torch.optim.LBFGS, 3, max_iter=5)
    ref = start()["x"].clone().requires_grad_()
    opt = torch.optim.LBFGS([ref], max_iter=5)

    def closure():
        opt.zero_grad()
        value = rosenbrock({"x": ref})
        value.backward()
        return value

    for _ in range(3):
        opt.step(closure)
    assert r.steps == 3 and r.nfev == r.njev == loss.calls == opt.state[ref]["func_evals"] > 3
    torch.testing.assert_close(r.params["x"], ref.detach(), rtol=0, atol=0)


def test_lbfgs_counts_as_torch_does():
    r = diyopt.lbfgs(rosenbrock, start(), max_iter=40, line_search_fn="strong_wolfe")
    ref = start()["x"].clone().requires_grad_()
    opt = torch.optim.LBFGS([ref], max_iter=40, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = rosenbrock({"x": ref})
        value.backward()
        return value

    opt.step(closure)
    state = opt.state[ref]
    assert (r.steps, r.nfev, r.njev, r.nhev) == (state["n_iter"], state["func_evals"], state["func_evals"], 0)
    assert r.info["message"]


def test_newton_counts_one_gradient_and_one_hessian_per_iteration():
    r = diyopt.newton(rosenbrock, start())
    assert r.stop_reason == "converged"
    # every iteration but the last (which found gtol met) accepted a step after >= 1 loss evaluation
    assert r.steps == r.njev == r.nhev == len(r.losses)
    assert r.nfev >= len(r.losses)


@pytest.mark.parametrize("method", ["lm", "gauss_newton"])
def test_least_squares_counts_one_jacobian_per_iteration_and_every_residual_evaluation(method):
    """nfev: a counter on the residuals sees every plain evaluation (the Jacobians run it under
    torch.func's transforms) -- nfev of them, plus the two checks that are not counted: the dependence
    check at the start and the false-convergence check at the end (residuals at the fit and the start)."""
    residual, p0 = _exp_residual()
    plain = []

    def counted(p):
        if not torch._C._functorch.is_functorch_wrapped_tensor(p["a"]):
            plain.append(1)
        return residual(p)

    r = diyopt.least_squares(counted, p0, method=method)
    assert r.stop_reason == "converged"
    assert r.steps == r.njev >= 1 and r.nhev == 0
    assert r.nfev == len(plain) - 3 >= len(r.losses)
    assert "nfev" not in r.info and "njev" not in r.info  # one place for the counts: Result's fields


def test_least_squares_counts_a_restart_once():
    """BoxBOD from NIST's start 1 converges falsely and LM restarts from the start: nfev counts the
    restart's evaluations, not its start again (two false-convergence checks now: four plain calls)."""
    path = Path(__file__).parents[1] / "benchmarks" / "nist_hard" / "BoxBOD.dat"
    p = diyopt.problems.nist(path)
    plain = []

    def counted(params):
        if not torch._C._functorch.is_functorch_wrapped_tensor(params["b1"]):
            plain.append(1)
        return p.residual(params)

    r = diyopt.least_squares(counted, p.starts["start1"])
    assert r.info["restarts"] == 1 and r.stop_reason == "converged"
    assert r.nfev == len(plain) - 5 and r.steps == r.njev


def test_gauss_newton_stopped_by_the_budget_reports_the_jacobian_at_its_params():
    """The Jacobian curve_fit's covariance uses must be the one at the returned params, also when the
    budget ran out just after an accepted step (it was the previous iterate's)."""
    residual, p0 = _exp_residual()
    for budget in (3, 4, 5):
        r = diyopt.least_squares(residual, p0, method="gauss_newton", max_nfev=budget)
        assert r.stop_reason == "max_steps"
        jac = torch.autograd.functional.jacobian(
            lambda a, k: residual({"a": a, "k": k}), (r.params["a"], r.params["k"])
        )
        torch.testing.assert_close(r.info["jacobian"], torch.stack(jac, 1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the shared line searches


def test_armijo_closed_form():
    # f(x) = x^2 at x = 1 along p = -2: slope f'(1) p = -4; f(1 + t p) = (1 - 2t)^2
    f = lambda t: (1 - 2 * t) ** 2
    assert not linesearch.armijo(f(1.0), 1.0, 1.0, -4.0)  # 1 > 1 - 4e-4
    assert linesearch.armijo(f(0.5), 1.0, 0.5, -4.0)  # 0 <= 1 - 2e-4
    assert not linesearch.armijo(math.nan, 1.0, 0.5, -4.0) and not linesearch.armijo(math.inf, 1.0, 0.5, -4.0)
    # c1 = 0.5: f(0.25) = 0.25 <= 1 - 0.5 * 0.25 * 4 = 0.5 holds; f(0.75) = 0.25 <= 1 - 1.5 fails
    assert linesearch.armijo(f(0.25), 1.0, 0.25, -4.0, c1=0.5)
    assert not linesearch.armijo(f(0.75), 1.0, 0.75, -4.0, c1=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backtracking_halves_until_sufficient_decrease(dtype):
    x, p = torch.tensor([1.0], dtype=dtype), torch.tensor([-2.0], dtype=dtype)
    calls = []

    def evaluate(point):
        calls.append(float(point))
        return float(point.square().sum()), point

    step = linesearch.backtracking(evaluate, x, p, 1.0, -4.0, max_evals=10)
    assert (step.t, step.value, step.evals) == (0.5, 0.0, 2) and calls == [-1.0, 0.0]
    assert float(step.kept) == 0.0
    # a direction that never decreases the loss: stops at the evaluation budget, then at the smallest step
    up = torch.tensor([2.0], dtype=dtype)
    assert linesearch.backtracking(evaluate, x, up, 1.0, -4.0, max_evals=3).evals == 3
    tiny = linesearch.backtracking(evaluate, x, up, 1.0, -4.0, max_evals=10**6)
    assert tiny.t < 1e-10 <= 2 * tiny.t and tiny.evals == 35  # 1, 1/2, ..., 2^-34 < 1e-10


def test_strong_wolfe_matches_torch():
    """The shared strong-Wolfe search is torch.optim.LBFGS's: the same step, value and evaluations."""
    from torch.optim.lbfgs import _strong_wolfe as torch_strong_wolfe

    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)

    def value_and_grad(x):
        x = x.detach().requires_grad_()
        f = rosenbrock({"x": x})
        (g,) = torch.autograd.grad(f, x)
        return f.detach(), g

    def along(x, t, d):
        f, g = value_and_grad(x + t * d)
        return float(f), g

    f0, g0 = value_and_grad(x0)
    for d, t in ((-g0, 1e-3), (-g0, 1.0), (torch.tensor([1.0, 0.5], dtype=torch.float64), 0.1)):
        gtd = float(g0.dot(d))
        ours = linesearch.strong_wolfe(along, x0, t, d, float(f0), g0, gtd)
        theirs = torch_strong_wolfe(along, x0, t, d, f0, g0, torch.tensor(gtd, dtype=torch.float64))
        assert ours[2] == pytest.approx(float(theirs[2]), rel=1e-12) and ours[3] == theirs[3]
        assert ours[0] == pytest.approx(float(theirs[0]), rel=1e-12)


def test_flat_layout_unflattens_a_tensor_into_views():
    params = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(7.0)}
    layout = FlatLayout(params)
    flat = layout.flatten(params)
    named = layout.unflatten(flat)
    assert list(named) == ["w", "b"] and named["w"].shape == (2, 3) and named["b"].shape == ()
    assert torch.equal(named["w"], params["w"]) and torch.equal(named["b"], params["b"])
    flat[0] = -1.0  # views share the buffer's memory
    assert float(named["w"][0, 0]) == -1.0
