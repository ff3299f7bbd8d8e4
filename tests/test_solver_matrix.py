"""Every solver on every problem it applies to (optimistix's test matrix): solvers and problems are listed
once in tests/solver_problems.py, each problem with answers computed without diyopt (literals, numpy's
closed forms, NIST's certified values); the solver must land on one of them.

The assertions are on numbers (distance to the answer, digits of the certified values), not on how a
solver names its stop.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import pytest
import torch
from solver_problems import NIST_PROBLEMS, PROBLEMS, SOLVERS, Case, nist_available, nist_case

import diyopt
from diyopt import nist

needs_nist = pytest.mark.skipif(not nist_available(), reason=f"no NIST files in {nist.nist_dir()}")


@functools.cache
def make(problem: str):
    """The case by name (built once: NIST files are parsed, closed forms solved)."""
    for factory in PROBLEMS:
        if factory.__name__ == problem:
            return factory()
    name, start = problem.split("-")
    return nist_case(name, start)


def applies(solver, case) -> bool:
    if getattr(case, solver.takes) is None:
        return False
    return case.certified is None or solver.tol <= 10.0**-case.lre


def _matrix():
    out = []
    for problem, marks in [(f.__name__, []) for f in PROBLEMS] + [(f"{n}-{s}", [needs_nist]) for n, s in NIST_PROBLEMS]:
        if marks and not nist_available():  # listed (and skipped) without building the case
            out += [
                pytest.param(s, problem, marks=marks, id=f"{s.name}-{problem}")
                for s in SOLVERS
                if s.tol <= 10.0**-Case.lre
            ]
            continue
        case = make(problem)
        for solver in SOLVERS:
            if not applies(solver, case):
                continue
            why = case.hard_for.get(solver.name)
            extra = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            out.append(pytest.param(solver, problem, marks=marks + extra, id=f"{solver.name}-{problem}"))
    return out


def distance(params, answer) -> float:
    """``||params - answer|| / (1 + ||answer||)`` over the answer's names, flattened."""
    got = torch.cat([params[k].detach().reshape(-1).to(torch.float64) for k in answer])
    want = torch.cat([answer[k].reshape(-1) for k in answer])
    return float((got - want).norm() / (1 + want.norm()))


@pytest.mark.parametrize("solver,problem", _matrix())
def test_solver_lands_on_the_known_answer(solver, problem):
    """Within the solver's ``tol`` of the nearest known minimizer; on a NIST file, ``lre`` correct digits
    of every certified value."""
    case = make(problem)
    params = solver.run(case)
    if case.certified is not None:  # NIST's own measure: correct digits of every certified value
        digits = nist.worst_lre(params, case.certified)
        assert digits >= case.lre, f"{solver.name} on {problem}: {digits:.2f} certified digits < {case.lre}"
        return
    nearest = min(distance(params, answer) for answer in case.answers)
    assert nearest <= solver.tol, f"{solver.name} on {problem}: distance {nearest:.3g} > {solver.tol}"


FLOAT32 = [
    pytest.param(s, f.__name__, id=f"{s.name}-{f.__name__}")
    for f in PROBLEMS
    for s in SOLVERS
    if s.takes != "curve" and make(f.__name__).any_dtype
]


@pytest.mark.parametrize("solver,problem", FLOAT32)
def test_solver_from_a_float32_start(solver, problem):
    """From float32 params: the same answer to the same tolerance, in the start's dtype where the solver
    keeps it (L-BFGS, fit) and in float64 where it documents computing in float64."""
    case = make(problem)
    case32 = dataclasses.replace(case, params0={k: v.float() for k, v in case.params0.items()})
    params = solver.run(case32)
    expected = torch.float32 if solver.keeps_dtype else torch.float64
    assert all(v.dtype == expected for v in params.values()), {k: v.dtype for k, v in params.items()}
    nearest = min(distance(params, answer) for answer in case.answers)
    assert nearest <= solver.tol, f"{solver.name} on float32 {problem}: distance {nearest:.3g} > {solver.tol}"


def test_every_solver_runs_on_at_least_three_problems():
    # the matrix is a matrix: no solver is listed without problems to run on
    counts = {s.name: 0 for s in SOLVERS}
    for param in _matrix():
        counts[param.values[0].name] += 1
    assert min(counts.values()) >= 3, counts


# Every integer budget of every solver, checked by the one validator fit's ``steps`` uses: the same words.
BUDGETS = [
    ("newton", "max_iter", lambda case, **kw: diyopt.newton(case.loss, case.params0, **kw)),
    ("lbfgs", "max_iter", lambda case, **kw: diyopt.lbfgs(case.loss, case.params0, **kw)),
    ("lbfgs", "max_eval", lambda case, **kw: diyopt.lbfgs(case.loss, case.params0, **kw)),
    ("lbfgs", "history_size", lambda case, **kw: diyopt.lbfgs(case.loss, case.params0, **kw)),
    ("least_squares", "max_nfev", lambda case, **kw: diyopt.least_squares(case.residual, case.params0, **kw)),
    (
        "gauss_newton",
        "max_nfev",
        lambda case, **kw: diyopt.least_squares(case.residual, case.params0, method="gauss_newton", **kw),
    ),
    ("curve_fit", "max_nfev", lambda case, **kw: diyopt.curve_fit(*case.curve, **kw)),
    ("fit", "steps", lambda case, steps: diyopt.fit(case.loss, case.params0, diyopt.optim.adam(), steps)),
]


@pytest.mark.parametrize("value", [0, 1.5, True, -3, "10"], ids=repr)
@pytest.mark.parametrize("solver, name, call", BUDGETS, ids=[f"{s}-{n}" for s, n, _ in BUDGETS])
def test_every_budget_refuses_what_is_not_a_positive_integer(solver, name, call, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be a positive integer, got {value!r}")):
        call(make("line"), **{name: value})


RESULTS = [b for b in BUDGETS if b[0] != "curve_fit"]  # curve_fit answers with params, not a Result


@pytest.mark.parametrize("solver, name, call", RESULTS, ids=[f"{s}-{n}" for s, n, _ in RESULTS])
def test_every_budget_takes_a_numpy_integer(solver, name, call):
    # any integer type, as fit's steps (a budget read from a numpy array or a config file)
    small, big = call(make("line"), **{name: np.int64(2)}), call(make("line"), **{name: 2})
    assert small.steps == big.steps and small.nfev == big.nfev and torch.equal(small.losses, big.losses)
