"""Regression problems: polynomial fits, logistic regression (synthetic and breast cancer), a user's CSV
file and NIST StRD files."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from diyopt.core.tree import Params
from diyopt.problems._problem import Problem
from diyopt.problems._registry import register


@register("polynomial", "fit a degree-K polynomial to n noisy points on [-1, 1] (mean squared error)")
def polynomial(
    degree: int = 3, n: int = 50, sigma: float = 0.1, seed: int = 0, coef: list[float] | None = None
) -> Problem:
    r"""Fit a degree-``degree`` polynomial :math:`\sum_k c_k x^k` to noisy samples on ``[-1, 1]`` (mean
    squared error). The solution is the exact least-squares fit, from ``lstsq`` on the Vandermonde matrix."""
    if degree < 0 or n <= degree:
        raise ValueError(f"polynomial needs degree >= 0 and n > degree, got degree={degree}, n={n}")
    g = torch.Generator().manual_seed(seed)
    true = (
        torch.tensor(coef, dtype=torch.float64)
        if coef is not None
        else torch.randn(degree + 1, generator=g, dtype=torch.float64)
    )
    if true.numel() != degree + 1:
        raise ValueError(f"coef needs degree + 1 = {degree + 1} values, got {true.numel()}")
    x = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    vander = _vander(x, degree)  # columns 1, x, x^2, ...
    y = vander @ true + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    best = torch.linalg.lstsq(vander, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    residual = lambda p: _vander(x, degree) @ p["c"] - y
    loss = lambda p: residual(p).square().mean()
    return Problem(
        "polynomial",
        {"c": torch.zeros(degree + 1, dtype=torch.float64)},
        loss,
        {"c": best},
        float(loss({"c": best})),
        residual,
        info={"description": f"degree-{degree} polynomial, {n} noisy points", "x": x, "y": y, "true": true},
    )


def _vander(x: Tensor, degree: int) -> Tensor:
    """Columns 1, x, ..., x^degree (``torch.linalg.vander`` refuses degree 0)."""
    return x.unsqueeze(1) ** torch.arange(degree + 1, dtype=x.dtype)


@register("logistic", "logistic regression on n synthetic points in dim dimensions (separable: no minimizer)")
def logistic(n: int = 200, dim: int = 2, separable: bool = False, seed: int = 0, l2: float = 0.0) -> Problem:
    r"""Logistic regression on synthetic data: mean :math:`\log(1 + e^{-s_i (w^\top x_i + b)})
    + \frac{l2}{2}\|w\|^2`, labels :math:`s_i = \pm 1`.

    Features are :math:`N(0, I)`; labels are the sign of a random linear score (``separable=True``: the
    loss has no minimizer, its infimum 0 is approached as :math:`\|w\| \to \infty`) or drawn from the
    logistic model itself (not separable: a unique minimizer, computed here by :func:`diyopt.newton` to
    a gradient below 1e-12).
    """
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w_true = torch.randn(dim, generator=g, dtype=torch.float64)
    score = features @ w_true + 0.5
    if separable:
        labels = torch.where(score > 0, 1.0, -1.0).double()
    else:
        labels = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(score), 1.0, -1.0)
    return _logistic_problem(
        "logistic",
        features,
        labels,
        l2,
        separable and l2 == 0,
        f"logistic regression, {n} points in {dim}-D, {'separable' if separable else 'not separable'}",
    )


def _logistic_problem(
    name: str, features: Tensor, labels: Tensor, l2: float, no_minimizer: bool, description: str
) -> Problem:
    def loss(p: Params) -> Tensor:
        margin = labels * (features @ p["w"] + p["b"])
        return torch.nn.functional.softplus(-margin).mean() + 0.5 * l2 * p["w"].square().sum()

    params0 = {"w": torch.zeros(features.shape[1], dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    solution = optimum = None
    if no_minimizer:
        optimum = 0.0
    else:
        from diyopt.solvers import newton

        fit = newton(loss, params0, gtol=1e-12)
        solution, optimum = fit.params, fit.final_loss
    return Problem(
        name,
        params0,
        loss,
        solution,
        optimum,
        info={"description": description, "features": features, "labels": labels, "l2": l2},
    )


@register("breast_cancer", "scikit-learn's breast-cancer data: logistic regression (hidden=0) or a tanh MLP")
def breast_cancer(hidden: int = 0, l2: float = 1e-2, seed: int = 0) -> Problem:
    """Real data with no download: scikit-learn's bundled Wisconsin breast-cancer set (569 x 30, features
    standardized). ``hidden=0``: L2-regularized logistic regression, solution by :func:`diyopt.newton`;
    ``hidden>0``: a one-hidden-layer tanh MLP (no known solution). Needs ``pip install diyopt[data]``."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise ImportError("the breast_cancer problem needs scikit-learn: pip install 'diyopt[data]'") from None
    data = load_breast_cancer()
    features = torch.tensor(data.data, dtype=torch.float64)
    features = (features - features.mean(0)) / features.std(0)
    labels = torch.tensor(data.target, dtype=torch.float64) * 2 - 1
    if hidden == 0:
        return _logistic_problem(
            "breast_cancer", features, labels, l2, False, "breast cancer (sklearn), logistic regression"
        )
    g = torch.Generator().manual_seed(seed)
    d = features.shape[1]
    params0 = {
        "w1": torch.randn(d, hidden, generator=g, dtype=torch.float64) / d**0.5,
        "b1": torch.zeros(hidden, dtype=torch.float64),
        "w2": torch.randn(hidden, generator=g, dtype=torch.float64) / hidden**0.5,
        "b2": torch.zeros((), dtype=torch.float64),
    }

    def loss(p: Params) -> Tensor:
        margin = labels * (torch.tanh(features @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
        return torch.nn.functional.softplus(-margin).mean() + 0.5 * l2 * (
            p["w1"].square().sum() + p["w2"].square().sum()
        )

    return Problem(
        "breast_cancer",
        params0,
        loss,
        info={
            "description": f"breast cancer (sklearn), MLP 30-{hidden}-1",
            "features": features,
            "labels": labels,
            "l2": l2,
        },
    )


@register("csv", "your CSV file (columns x, y): model line, poly:K or an expression in x; loss by name")
def csv(
    path: str, model: str = "line", loss: str = "mse", x: str = "x", y: str = "y", p0: dict[str, float] | None = None
) -> Problem:
    """A user's data file (columns ``x`` and ``y``) with a model and a loss.

    ``model`` is ``"line"`` (``a*x + b``), ``"poly:K"`` (``c[0] + c[1] x + ... + c[K] x^K``) or an
    expression in ``x`` such as ``"a*exp(-k*x) + c"`` (names other than ``x``, ``pi`` and ``exp log sin
    cos arctan sqrt`` are parameters, starting at ``p0`` or 1). ``loss`` is any name in
    :mod:`diyopt.losses`. For ``line`` and ``poly:K`` with ``mse``/``sse`` the solution is the
    least-squares fit.
    """
    from diyopt.problems import losses
    from diyopt.problems.data import load_csv
    from diyopt.problems.expressions import FUNCTIONS, compile_expression

    xs, ys = load_csv(path, x=x, y=y)
    loss_on_pred = losses.get(loss)
    if model == "line" or model.startswith("poly:"):
        try:
            degree = 1 if model == "line" else int(model.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"model 'poly:K' needs an integer degree K, got {model!r}") from None
        vander = _vander(xs, degree)
        predict = lambda p: vander @ p["c"]
        params0 = {"c": torch.zeros(degree + 1, dtype=torch.float64)}
        best = torch.linalg.lstsq(vander, ys.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        solution = {"c": best} if loss in ("mse", "sse", "l2_norm") else None
    else:
        code = compile_expression(model, f"model {model!r}")
        names_ = [n for n in code.co_names if n not in FUNCTIONS and n not in ("x", "pi")]
        if not names_:
            raise ValueError(f"model {model!r} has no parameters")
        start = p0 or {}
        params0 = {n: torch.tensor(float(start.get(n, 1.0)), dtype=torch.float64) for n in names_}
        predict = lambda p: eval(code, {"__builtins__": {}}, {**FUNCTIONS, "pi": math.pi, "x": xs, **p})
        solution = None
    optimum = float(loss_on_pred(predict(solution), ys)) if solution is not None else None
    return Problem(
        f"csv:{Path(path).name}",
        params0,
        lambda p: loss_on_pred(predict(p), ys),
        solution,
        optimum,
        lambda p: predict(p) - ys,
        info={"description": f"{path}: y = {model}, loss {loss}", "x": xs, "y": ys, "model": model},
    )


@register("nist", "a NIST StRD regression file by name (nist:Misra1a) or path; certified answers")
def nist(path_or_name: str = "Misra1a"):
    """A NIST StRD dataset by name (``"Misra1a"``) or path: see :func:`diyopt.nist.problem`."""
    from diyopt.problems.strd import problem

    return problem(path_or_name)
