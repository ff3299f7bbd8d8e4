"""Every built-in optimizer reaches the minimum of a parabola and of Rosenbrock (a=1, b=100, start
(-1.2, 1)) to 3e-2 (Euclidean distance) within a documented budget, through ``diyopt.fit`` (optax's bar).

The budget table is the documentation: settings and the most steps allowed. Budgets are the steps
measured to reach 3e-2 on the eager engine (float64), plus ~25% headroom. The fit stops as soon as the
params are within 3e-2 (the callback), so the test also reports how many steps it took.
"""
from __future__ import annotations

import pytest
import torch

import diyopt
from diyopt import optim, schedules

TOL = 3e-2
pytestmark = pytest.mark.slow  # ~30 s of CPU: 40k eager steps in all

# name: (kwargs, parabola budget, Rosenbrock kwargs, Rosenbrock budget)
BUDGETS = {
    "gradient_descent": ({"lr": 0.1}, 50, {"lr": 1.8e-3}, 6000),
    "sgd": ({"lr": 0.1, "momentum": 0.5}, 50, {"lr": 2e-3, "momentum": 0.9}, 600),
    "adagrad": ({"lr": 0.5}, 100, {"lr": 1.0}, 5500),
    "rmsprop": ({"lr": 1e-2}, 400, {"lr": 1e-3, "momentum": 0.9}, 1300),
    # Adadelta creeps along the valley unless its averages are long (rho near 1) and steps a little above 1.
    "adadelta": ({"lr": 10.0}, 2000, {"lr": 1.2, "rho": 0.9999}, 7500),
    "adam": ({"lr": 0.1}, 200, {"lr": 0.1}, 1100),
    "adamw": ({"lr": 0.1}, 200, {"lr": 0.1, "weight_decay": 1e-3}, 1300),
    "adamax": ({"lr": 0.1}, 200, {"lr": 0.1}, 3000),
    "nadam": ({"lr": 0.1}, 200, {"lr": 0.02}, 3000),
    # RAdam's first steps (rho_t <= 5) are un-normalized momentum steps: a tiny lr for them, then 0.05.
    "radam": ({"lr": 0.1}, 300, {"lr": schedules.join([schedules.constant(1e-4), schedules.constant(0.05)], [6])},
              2300),
    "rprop": ({}, 200, {}, 2500),
    "lion": ({"lr": 1e-2}, 400, {"lr": 3e-3}, 1300),
    "asgd": ({"lr": 0.1}, 30, {"lr": 2e-3}, 5000),
    "adafactor": ({"lr": 0.1}, 150, {"lr": 0.1}, 10000),
    "adopt": ({"lr": 0.1}, 110, {"lr": 0.1}, 10800),
    "adan": ({"lr": 0.1}, 100, {"lr": 3e-2}, 650),
    "prodigy": ({}, 100, {}, 1500),
    "soap": ({"lr": 0.1}, 75, {"lr": 3e-2}, 330),
    # the vectors of these problems all go to its AdamW: adamw's row, under the adamw_ names
    "muon_adamw": ({"adamw_lr": 0.1}, 200, {"adamw_lr": 0.1, "adamw_weight_decay": 1e-3}, 1300),
}
# Built-ins these two problems (one dense vector) cannot drive, and why; test_torch_optim_db.py runs them.
NOT_HERE = {
    "muon": "2-D params only",
    "sparse_adam": "sparse gradients only",
    "lbfgs": "a to_torch step(closure) (the solver diyopt.lbfgs has its own tests)",
}


def test_every_builtin_optimizer_has_a_budget():
    assert sorted([*BUDGETS, *NOT_HERE]) == optim.names()


def parabola():
    center = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return {"x": torch.zeros(2, dtype=torch.float64)}, (lambda p: ((p["x"] - center) ** 2).sum()), center


def rosenbrock():
    p = diyopt.problems.get("rosenbrock", dim=2, a=1.0, b=100.0)
    assert p.params0["x"].tolist() == [-1.2, 1.0]
    return p.params0, p.loss, p.solution["x"]


@pytest.mark.parametrize("problem", ["parabola", "rosenbrock"])
@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_converges_within_budget(name, problem):
    kwargs, steps = BUDGETS[name][:2] if problem == "parabola" else BUDGETS[name][2:]
    params0, loss, solution = {"parabola": parabola, "rosenbrock": rosenbrock}[problem]()
    close = lambda step, value, p: bool((p["x"] - solution).norm() <= TOL)  # noqa: E731
    result = diyopt.fit(loss, params0, getattr(optim, name)(**kwargs), steps, callback=close)
    distance = float((result.params["x"] - solution).norm())
    assert result.stop_reason == "callback" and distance <= TOL, (
        f"{name} on {problem}: distance {distance:.3g} after {result.steps} steps (budget {steps})")
