"""Problems with known answers: closed forms, known minima reached by newton and lbfgs, data problems."""

import numpy as np
import pytest
import torch

import diyopt
from diyopt import problems

TEST_FUNCTIONS = [
    ("rosenbrock", {}),
    ("rosenbrock", {"dim": 3}),
    ("beale", {}),
    ("booth", {}),
    ("himmelblau", {}),
    ("quadratic", {"dim": 10, "cond": 1e4}),
]


def _lbfgs():
    try:
        from diyopt.solvers import lbfgs
    except ImportError:
        pytest.skip("diyopt.lbfgs (issue 3) is not there yet")
    return lbfgs


def test_registry():
    for name in [
        "line",
        "polynomial",
        "logistic",
        "rosenbrock",
        "beale",
        "booth",
        "himmelblau",
        "quadratic",
        "csv",
        "nist",
        "breast_cancer",
    ]:
        assert name in problems.names()
    with pytest.raises(ValueError, match="unknown problem 'rosenbrok' \\(did you mean 'rosenbrock'\\?\\)"):
        problems.get("rosenbrok")


@pytest.mark.parametrize("name, kwargs", TEST_FUNCTIONS)
def test_known_minimum_value(name, kwargs):
    """The listed minima are minima: loss == optimum there, zero gradient, and a higher loss nearby."""
    p = problems.get(name, **kwargs)
    for m in p.info.get("minima") or [p.solution]:
        leaf = {k: v.clone().requires_grad_() for k, v in m.items()}
        loss = p.loss(leaf)
        (grad,) = torch.autograd.grad(loss, list(leaf.values()))
        assert abs(float(loss.detach()) - p.optimum) < 1e-20 and float(grad.abs().max()) < 1e-10
        bumped = {k: v + 1e-3 for k, v in m.items()}
        assert float(p.loss(bumped)) > p.optimum


@pytest.mark.parametrize("name, kwargs", TEST_FUNCTIONS)
def test_newton_reaches_the_known_minimum(name, kwargs):
    p = problems.get(name, **kwargs)
    r = diyopt.newton(p.loss, p.params0)
    assert r.stop_reason == "converged"
    assert p.distance(r.params) < 1e-8 and r.final_loss - p.optimum < 1e-14


@pytest.mark.parametrize("name, kwargs", TEST_FUNCTIONS)
def test_lbfgs_reaches_the_known_minimum(name, kwargs):
    lbfgs = _lbfgs()
    p = problems.get(name, **kwargs)
    r = lbfgs(
        p.loss, p.params0, max_iter=2000, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15
    )
    assert p.distance(r.params) < 1e-6 and r.final_loss - p.optimum < 1e-10


@pytest.mark.parametrize("name, kwargs", TEST_FUNCTIONS)
def test_levenberg_marquardt_on_the_residual_form(name, kwargs):
    p = problems.get(name, **kwargs)
    assert torch.allclose(p.residual(p.params0).square().sum(), p.loss(p.params0), rtol=1e-13)
    r = diyopt.least_squares(p.residual, p.params0, ftol=1e-15, xtol=1e-15, gtol=1e-15)
    assert p.distance(r.params) < 1e-8


def test_himmelblau_four_minima():
    p = problems.himmelblau()
    minima = p.info["minima"]
    assert len(minima) == 4
    for m in minima:  # each is a root of x^2 + y = 11, x + y^2 = 7
        assert float(p.residual(m).abs().max()) < 1e-13
    # Newton from a start near each minimum lands on that one: all four are reachable.
    for m in minima:
        r = diyopt.newton(p.loss, {"xy": m["xy"] + 0.3})
        assert float((r.params["xy"] - m["xy"]).norm()) < 1e-10


def test_quadratic_condition_number():
    p = problems.quadratic(dim=8, cond=1e3, seed=4)
    assert float(torch.linalg.cond(p.info["A"])) == pytest.approx(1e3, rel=1e-10)


def test_line_solution_is_numpy_polyfit():
    p = problems.get("line", seed=3)
    a, b = np.polyfit(p.info["x"].numpy(), p.info["y"].numpy(), 1)
    assert float(p.solution["a"]) == pytest.approx(a, rel=1e-12)
    assert float(p.solution["b"]) == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("degree", [0, 2, 5])
def test_polynomial_solution_is_numpy_polyfit(degree):
    p = problems.polynomial(degree=degree, n=40, seed=degree)
    ref = np.polyfit(p.info["x"].numpy(), p.info["y"].numpy(), degree)[::-1]  # numpy: highest power first
    np.testing.assert_allclose(p.solution["c"].numpy(), ref, rtol=1e-9, atol=1e-12)
    r = diyopt.least_squares(p.residual, p.params0)
    np.testing.assert_allclose(r.params["c"].numpy(), ref, rtol=1e-9, atol=1e-12)
    assert p.optimum == pytest.approx(
        float(np.mean((np.polyval(ref[::-1], p.info["x"].numpy()) - p.info["y"].numpy()) ** 2)), rel=1e-12
    )


def test_logistic_not_separable_solution_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    p = problems.logistic(n=150, dim=3, seed=5)
    X, s = p.info["features"].numpy(), p.info["labels"].numpy()
    f = lambda v: np.mean(np.logaddexp(0, -s * (X @ v[:3] + v[3])))
    ref = optimize.minimize(f, np.zeros(4), method="BFGS", options={"gtol": 1e-11})
    got = np.concatenate([p.solution["w"].numpy(), [float(p.solution["b"])]])
    np.testing.assert_allclose(got, ref.x, rtol=1e-5, atol=1e-7)
    assert p.optimum == pytest.approx(ref.fun, rel=1e-12)


def test_logistic_separable_has_no_minimizer():
    p = problems.logistic(n=100, dim=2, separable=True, seed=1)
    assert p.solution is None and p.optimum == 0.0
    X, s = p.info["features"], p.info["labels"]
    # A separating direction: the loss falls towards 0 as it is scaled up.
    w = torch.linalg.lstsq(torch.cat([X, torch.ones(100, 1, dtype=X.dtype)], 1), s.unsqueeze(1)).solution.squeeze(1)
    losses = [float(p.loss({"w": c * w[:2], "b": c * w[2]})) for c in (1, 10, 100)]
    margins = s * (X @ w[:2] + w[2])
    if bool((margins > 0).all()):
        assert losses[0] > losses[1] > losses[2] and losses[2] < 1e-3


def test_breast_cancer_logistic_matches_sklearn():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    p = problems.get("breast_cancer", l2=1e-2)
    X, y = p.info["features"].numpy(), p.info["labels"].numpy()
    # sklearn minimizes 0.5 ||w||^2 + C sum(log-loss); ours is mean(log-loss) + 0.5 l2 ||w||^2.
    ref = LogisticRegression(C=1 / (1e-2 * len(y)), tol=1e-12, max_iter=10000, solver="newton-cg").fit(X, y)
    np.testing.assert_allclose(p.solution["w"].numpy(), ref.coef_[0], rtol=1e-5, atol=1e-7)
    assert float(p.solution["b"]) == pytest.approx(ref.intercept_[0], rel=1e-5)


def test_breast_cancer_mlp_trains():
    pytest.importorskip("sklearn")
    p = problems.get("breast_cancer", hidden=4)
    r = diyopt.fit(p.loss, p.params0, diyopt.optim.adam(lr=1e-2), steps=200)
    assert float(r.losses[-1]) < 0.5 * float(r.losses[0])


def test_breast_cancer_without_sklearn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"scikit-learn: pip install 'diyopt\[data\]'"):
        problems.get("breast_cancer")


def test_csv_line_and_expression(tmp_path):
    x = np.linspace(0, 3, 25)
    rng = np.random.default_rng(0)
    y = 1.5 * np.exp(-0.7 * x) + 0.2 + 0.01 * rng.standard_normal(25)
    path = tmp_path / "data.csv"
    path.write_text("x,y\n" + "".join(f"{a:.17g},{b:.17g}\n" for a, b in zip(x, y)))
    line = problems.get("csv", path=str(path))
    np.testing.assert_allclose(line.solution["c"].numpy(), np.polyfit(x, y, 1)[::-1], rtol=1e-10)
    poly = problems.get("csv", path=str(path), model="poly:2", loss="sse")
    np.testing.assert_allclose(poly.solution["c"].numpy(), np.polyfit(x, y, 2)[::-1], rtol=1e-9)
    expr = problems.get("csv", path=str(path), model="a*exp(-k*x) + c", p0={"k": 0.5})
    assert set(expr.params0) == {"a", "k", "c"} and float(expr.params0["k"]) == 0.5
    r = diyopt.least_squares(expr.residual, expr.params0)
    optimize = pytest.importorskip("scipy.optimize")
    ref, _ = optimize.curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y, [1.0, 0.5, 1.0])
    np.testing.assert_allclose([float(r.params[k]) for k in "akc"], ref, rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported"):
        problems.get("csv", path=str(path), model="a*x.__class__")
    with pytest.raises(ValueError, match="no such file"):
        problems.get("csv", path=str(tmp_path / "nope.csv"))


def test_cli_lists_problems(capsys):
    from diyopt.cli import main

    assert main(["list", "problems"]) == 0
    out = capsys.readouterr().out.split()
    assert {"rosenbrock", "himmelblau", "nist", "csv"} <= set(out)
    if (diyopt.nist.nist_dir() / "Misra1a.dat").exists():
        assert "nist:Misra1a" in out
        assert problems.get("nist:Misra1a").name == "nist:Misra1a"
