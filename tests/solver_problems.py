"""Solvers and problems with known answers, listed once for ``test_solver_matrix.py`` (optimistix's
``tests/helpers.py``): every solver runs on every problem it applies to and must land on the answer.

A problem gives what a solver may need (``loss``, ``residual``, or ``curve`` = a model with data for
``curve_fit``) and ``answers``: the known minimizers, each computed here independently of diyopt (a
literal from the literature, a closed form in numpy, or NIST's certified values). A solver says which of
``loss`` / ``residual`` / ``curve`` it takes and how close it must land (``tol``: Euclidean distance to
the nearest answer, relative to the answer's norm plus one; on NIST files, NIST's measure instead: the
correct digits of every certified value).

Adding a solver or a problem: append a ``Solver`` / ``Case``; the matrix picks it up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import diyopt
from diyopt import nist


@dataclass(frozen=True)
class Case:
    """A problem with known answers.

    Attributes:
      name: the pytest id.
      params0: the start, a dict of float64 tensors.
      loss: ``loss(params) -> scalar`` (None: a problem only least-squares solvers take).
      residual: ``residual(params) -> Tensor`` with ``loss = sum(residual**2)`` up to a constant factor.
      curve: ``(model, x, y, p0)`` for ``curve_fit`` (``model(x, *b)``, ``p0`` in ``params0``'s order).
      answers: the known minimizers (``{name: tensor}``), computed without diyopt (NIST: see certified).
      certified: for NIST files, the certified values: the solver must reach ``lre`` digits of each
        (log relative error); a solver whose ``tol`` is coarser than ``10**-lre`` does not apply.
      hard_for: solver names known not to get there, with the reason: run as strict xfails, so a solver
        that starts to get there fails the test until the entry is removed.
    """

    name: str
    params0: dict
    loss: Callable | None
    residual: Callable | None = None
    curve: tuple | None = None
    answers: list[dict] = field(default_factory=list)
    certified: dict | None = None
    lre: float = 6.0
    hard_for: dict[str, str] = field(default_factory=dict)
    any_dtype: bool = False  # the loss holds no float64 data: it runs in float32 from a float32 start


@dataclass(frozen=True)
class Solver:
    """A solver: ``run(case) -> params`` (a dict of tensors), taking the case's ``takes`` form.

    ``keeps_dtype``: the result has the start's dtype (False: the solver computes in float64 and
    returns float64, as its docstring says)."""

    name: str
    takes: str  # "loss" | "residual" | "curve"
    run: Callable[[Case], dict]
    tol: float
    keeps_dtype: bool


def _f64(*values):
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- problems


def rosenbrock() -> Case:
    p = diyopt.problems.get("rosenbrock", dim=2)
    return Case("rosenbrock", p.params0, p.loss, p.residual, answers=[{"x": _f64(1.0, 1.0)}], any_dtype=True)


def booth() -> Case:
    p = diyopt.problems.get("booth")
    return Case("booth", p.params0, p.loss, p.residual, answers=[{"xy": _f64(1.0, 3.0)}], any_dtype=True)


def beale() -> Case:
    p = diyopt.problems.get("beale")
    return Case("beale", p.params0, p.loss, p.residual, answers=[{"xy": _f64(3.0, 0.5)}], any_dtype=True)


def himmelblau() -> Case:
    """Four minima, the real roots of ``x^2 + y = 11, x + y^2 = 7``: ``y = 11 - x^2`` turns the second
    equation into ``x^4 - 22 x^2 + x + 114 = 0``, solved by numpy."""
    p = diyopt.problems.get("himmelblau")
    xs = np.roots([1.0, 0.0, -22.0, 1.0, 114.0]).real
    answers = [{"xy": _f64(x, 11 - x * x)} for x in xs]
    return Case("himmelblau", p.params0, p.loss, p.residual, answers=answers, any_dtype=True)


def quadratic() -> Case:
    """``0.5 (x - x*)' A (x - x*)``: the minimizer solves ``A x = A x*``, solved here by numpy."""
    p = diyopt.problems.get("quadratic", dim=6, cond=50.0, seed=3)
    a = p.info["A"].numpy()
    x_star = np.linalg.solve(a, a @ p.solution["x"].numpy())
    return Case("quadratic", p.params0, p.loss, p.residual, answers=[{"x": torch.from_numpy(x_star)}])


def line() -> Case:
    """A noisy line; the least-squares line from numpy's lstsq."""
    p = diyopt.problems.get("line", loss="sse")
    x, y = p.info["x"], p.info["y"]
    (a, b), *_ = np.linalg.lstsq(np.stack([x.numpy(), np.ones(len(x))], 1), y.numpy(), rcond=None)
    model = lambda x, a, b: a * x + b  # noqa: E731
    return Case(
        "line", p.params0, p.loss, p.residual, curve=(model, x, y, [0.0, 0.0]), answers=[{"a": _f64(a), "b": _f64(b)}]
    )


def polynomial() -> Case:
    """A noisy cubic on [-1, 1]; the least-squares coefficients from numpy's polyfit."""
    p = diyopt.problems.get("polynomial", degree=3, n=40, seed=5)
    x, y = p.info["x"], p.info["y"]
    coef = np.polyfit(x.numpy(), y.numpy(), 3)[::-1].copy()  # polyfit: highest power first
    model = lambda x, *c: sum(ck * x**k for k, ck in enumerate(c))  # noqa: E731
    return Case(
        "polynomial",
        p.params0,
        p.loss,
        p.residual,
        curve=(model, x, y, [0.0] * 4),
        answers=[{"c": torch.from_numpy(coef)}],
    )


# Misra1a's two parameters differ by six orders of magnitude (b1 ~ 240, b2 ~ 5e-4): minimizers that
# do not use the residual's structure stall on it (measured: L-BFGS stops on tolerance_change with 0-1
# correct digits from either start, Newton runs out of iterations from start 1).
MISRA1A_SCALE = "Misra1a's parameters differ by six orders of magnitude"
HARD = {
    ("Misra1a", "start1"): {"lbfgs": MISRA1A_SCALE, "newton": MISRA1A_SCALE},
    ("Misra1a", "start2"): {"lbfgs": MISRA1A_SCALE},
}


def nist_case(name: str, start: str) -> Case:
    """A NIST StRD file from one of NIST's starts: the answer is the certified values, to ``lre`` digits."""
    p = diyopt.problems.nist(name)
    formula = nist.Formula(p.info["formula"])
    x, y = p.info["x"]["x"], p.info["y"]
    model = lambda x, *b: formula.model(dict(zip(formula.params, b)), {"x": x})  # noqa: E731
    params0 = p.starts[start]
    return Case(
        f"{name}-{start}",
        params0,
        p.loss,
        p.residual,
        curve=(model, x, y, [float(v) for v in params0.values()]),
        certified=p.certified,
        hard_for=HARD.get((name, start), {}),
    )


def nist_available() -> bool:
    return (nist.nist_dir() / "Misra1a.dat").exists()


PROBLEMS: list[Callable[[], Case]] = [rosenbrock, booth, beale, himmelblau, quadratic, line, polynomial]
NIST_PROBLEMS = [(name, start) for name in ("Misra1a", "Chwirut2", "DanWood") for start in ("start1", "start2")]


# ---------------------------------------------------------------- solvers


TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)


def _lbfgs(case):
    return diyopt.lbfgs(
        case.loss,
        case.params0,
        max_iter=500,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
    ).params


def _newton(case):
    return diyopt.newton(case.loss, case.params0, max_iter=200).params


def _lm(case):
    return diyopt.least_squares(case.residual, case.params0, max_nfev=5000, **TIGHT).params


def _gauss_newton(case):
    return diyopt.least_squares(case.residual, case.params0, method="gauss_newton", max_nfev=5000, **TIGHT).params


def _curve_fit(case):
    model, x, y, p0 = case.curve
    fit = diyopt.curve_fit(model, x, y, p0, max_nfev=5000, **TIGHT)
    flat = torch.as_tensor(fit.params, dtype=torch.float64).reshape(-1)  # p0's order: params0's, flattened
    sizes = [v.numel() for v in case.params0.values()]
    return {k: part.reshape(v.shape) for (k, v), part in zip(case.params0.items(), flat.split(sizes))}


def _adam(case):
    """A first-order optimizer through ``diyopt.fit``: Adam with a cosine-decayed learning rate."""
    steps = 3000
    opt = diyopt.optim.adam(lr=diyopt.schedules.cosine_decay(0.1, steps))
    return diyopt.fit(case.loss, case.params0, opt, steps).params


SOLVERS: list[Solver] = [
    Solver("lbfgs", "loss", _lbfgs, 1e-6, keeps_dtype=True),
    Solver("newton", "loss", _newton, 1e-8, keeps_dtype=False),
    Solver("least_squares", "residual", _lm, 1e-8, keeps_dtype=False),
    Solver("gauss_newton", "residual", _gauss_newton, 1e-8, keeps_dtype=False),
    Solver("curve_fit", "curve", _curve_fit, 1e-8, keeps_dtype=False),
    Solver("adam", "loss", _adam, 1e-3, keeps_dtype=True),
]
