"""diyopt.lbfgs against torch.optim.LBFGS, iterate for iterate, in float64, both line-search modes."""

from __future__ import annotations

import pytest
import torch

import diyopt
from diyopt.solvers import lbfgs

pytestmark = pytest.mark.usefixtures("float64_default")


def least_squares_problem():
    """A random nonlinear least squares in two named tensors (a small tanh regression)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    y = torch.tanh(x @ torch.randn(4, 2, generator=g)) + 0.1 * torch.randn(50, 2, generator=g)
    params0 = {"w": 0.1 * torch.randn(4, 2, generator=g), "b": torch.zeros(2)}

    def loss(p):
        return ((torch.tanh(x @ p["w"] + p["b"]) - y) ** 2).mean()

    return params0, loss


def rosenbrock_problem():
    p = diyopt.problems.get("rosenbrock", dim=2)
    return p.params0, p.loss


def torch_trajectory(loss, params0, max_iter, **kwargs):
    """Iterates of torch.optim.LBFGS: one step(closure) per max_iter = 1..max_iter would re-evaluate, so
    record every point the closure is evaluated at instead, and the final params."""
    leaves = {k: v.clone().requires_grad_() for k, v in params0.items()}
    opt = torch.optim.LBFGS(list(leaves.values()), max_iter=max_iter, **kwargs)
    evaluated = []

    def closure():
        opt.zero_grad()
        value = loss(leaves)
        value.backward()
        evaluated.append(float(value.detach()))
        return value

    opt.step(closure)
    state = opt.state[opt._params[0]]
    return {k: v.detach() for k, v in leaves.items()}, evaluated, state


CASES = [
    ("least_squares", None, {"lr": 0.5}, 30),
    ("least_squares", "strong_wolfe", {}, 40),
    ("least_squares", "strong_wolfe", {"history_size": 3}, 60),
    ("rosenbrock", None, {"lr": 0.1, "history_size": 5}, 100),
    ("rosenbrock", "strong_wolfe", {}, 100),
    ("rosenbrock", "strong_wolfe", {"history_size": 2, "lr": 0.5, "tolerance_change": 1e-12}, 200),
]


@pytest.mark.parametrize(
    "problem,line_search_fn,kwargs,max_iter", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CASES]
)
def test_matches_torch_lbfgs(problem, line_search_fn, kwargs, max_iter):
    params0, loss = {"least_squares": least_squares_problem, "rosenbrock": rosenbrock_problem}[problem]()
    expected, evaluated, state = torch_trajectory(loss, params0, max_iter, line_search_fn=line_search_fn, **kwargs)
    result = lbfgs(loss, params0, max_iter=max_iter, line_search_fn=line_search_fn, **kwargs)

    assert result.steps == state["n_iter"]
    assert result.nfev == result.njev == state["func_evals"] == len(evaluated)
    for k in expected:
        torch.testing.assert_close(
            result.params[k], expected[k], rtol=1e-12, atol=1e-12 * float(expected[k].abs().max())
        )
    # The losses diyopt records at the start of each iteration are among the losses torch evaluated.
    assert result.losses[0].item() == pytest.approx(evaluated[0], rel=1e-12)
    # A run that is not cut short by max_iter has stopped for a reason a user can act on.
    assert result.stop_reason in {"converged", "max_steps"}


def test_strong_wolfe_solves_rosenbrock():
    # Known minimum (1, 1), loss 0.
    params0, loss = rosenbrock_problem()
    r = lbfgs(loss, params0, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-15)
    torch.testing.assert_close(r.params["x"], torch.ones(2), atol=1e-6, rtol=0)
    assert r.final_loss < 1e-12
    assert r.stop_reason != "max_steps"
    torch.testing.assert_close(torch.tensor(r.final_loss), loss(r.params).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"history_size": 0}, "history_size must be a positive integer"),
        ({"line_search_fn": "armijo"}, "line_search_fn must be None or 'strong_wolfe'"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    params0, loss = rosenbrock_problem()
    with pytest.raises(ValueError, match=match):
        lbfgs(loss, params0, **kwargs)
