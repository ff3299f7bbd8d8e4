"""Every built-in optimizer reaches the minimum of a parabola and of Rosenbrock (a=1, b=100, start
(-1.2, 1)) to 3e-2 (Euclidean distance) within a documented budget, through ``diyopt.fit`` (optax's bar).

The budgets are the documentation: each record's ``budget`` in tests/optim_db.py gives the settings and
the most steps allowed (the steps measured to reach 3e-2 on the eager engine, float64, plus ~25%
headroom). The fit stops as soon as the params are within 3e-2 (the callback), so the test also reports
how many steps it took. Optimizers these two problems (one dense vector) cannot drive have no ``fit`` form
in their record, which says why.
"""

from __future__ import annotations

import pytest
import torch
from optim_db import FIT, records

import diyopt
from diyopt import optim

TOL = 3e-2
pytestmark = pytest.mark.slow  # ~30 s of CPU: 40k eager steps in all


def parabola():
    center = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return {"x": torch.zeros(2, dtype=torch.float64)}, (lambda p: ((p["x"] - center) ** 2).sum()), center


def rosenbrock():
    p = diyopt.problems.get("rosenbrock", dim=2, a=1.0, b=100.0)
    assert p.params0["x"].tolist() == [-1.2, 1.0]
    return p.params0, p.loss, p.solution["x"]


@pytest.mark.parametrize("problem", ["parabola", "rosenbrock"])
@pytest.mark.parametrize("info", sorted(records(FIT), key=lambda info: info.name), ids=lambda info: info.name)
def test_converges_within_budget(info, problem):
    budget = info.budget
    kwargs, steps = (
        (budget.parabola, budget.parabola_steps)
        if problem == "parabola"
        else (budget.rosenbrock, budget.rosenbrock_steps)
    )
    params0, loss, solution = {"parabola": parabola, "rosenbrock": rosenbrock}[problem]()
    close = lambda step, value, p: bool((p["x"] - solution).norm() <= TOL)  # noqa: E731
    result = diyopt.fit(loss, params0, getattr(optim, info.name)(**kwargs), steps, callback=close)
    distance = float((result.params["x"] - solution).norm())
    assert result.stop_reason == "callback" and distance <= TOL, (
        f"{info.name} on {problem}: distance {distance:.3g} after {result.steps} steps (budget {steps})"
    )
