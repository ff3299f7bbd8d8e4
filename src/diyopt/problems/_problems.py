"""Problems with known answers: a starting point, a loss, and the solution where one is known.

``diyopt.problems.get("rosenbrock", dim=2)``, ``diyopt.problems.names()``.
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diyopt.core.starts import perturbed
from diyopt.core.tree import Params, as_params
from diyopt.errors import unknown_name
from diyopt.problems import Problem

PROBLEMS: dict[str, Callable[..., Problem]] = {}
_SUMMARIES: dict[str, str] = {}  # the one line ``diyopt list problems`` prints


def register(name: str, summary: str | None = None) -> Callable:
    """Decorator: register a problem factory under ``name``, with a one-line ``summary`` (default: the
    first sentence of its docstring)."""

    def deco(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        PROBLEMS[name] = factory
        if summary:
            _SUMMARIES[name] = summary
        return factory

    return deco


def names() -> list[str]:
    return sorted(PROBLEMS)


def get(name: str, **kwargs: Any) -> Problem:
    """A problem by name or spec; ``kwargs`` go to its factory. Unknown names suggest the closest.

    ``name`` may carry arguments in the spec syntax of :func:`parse_spec`: ``get("rosenbrock:dim=4")``,
    ``get("nist:Misra1a")`` (the NIST StRD dataset Misra1a), ``get("csv:data.csv,model=poly:2")``;
    ``kwargs`` given here override the spec's."""
    name, spec_kwargs = parse_spec(name)
    kwargs = {**spec_kwargs, **_checked_kwargs(name, kwargs)}
    missing = _missing(name, kwargs)
    if missing:
        raise ValueError(f"problem {name!r} needs {', '.join(k + '=...' for k in missing)} "
                         f"(e.g. {name}:{missing[0]}=...)")
    return PROBLEMS[name](**checked_arguments(name, PROBLEMS[name], kwargs))


# ---------------------------------------------------------------- the problem spec (CLI and Python)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME[:ARG][,key=value,...]"`` -> ``(NAME, kwargs)``: the one problem syntax of every subcommand.

    - ``NAME`` is a registered problem (``diyopt list problems``); unknown names suggest the closest.
    - After the first ``:`` come comma-separated ``key=value`` arguments of the problem's factory
      (``rosenbrock:dim=4``, ``quadratic:dim=10,cond=1e3``). The first one may omit its key: it is then
      the factory's first argument (``nist:Misra1a`` = ``nist:path_or_name=Misra1a``, ``csv:data.csv``).
    - A value is converted by the factory's annotation: ``int``, ``float``, ``bool``
      (``true``/``false``), ``str`` (kept as written: ``model=poly:2``, ``path=my data.csv``), tuples as
      ``A/B`` (``start=1/2``), dicts as ``k=v/k=v`` (``p0=a=1/k=0.5``). A piece without ``key=`` after the
      first continues the previous value, so a value may hold commas.
    - Unknown keys, missing required arguments and unconvertible values are errors naming the problem.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a problem spec is NAME[:key=value,...], got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in PROBLEMS:
        raise ValueError(unknown_name("problem", name, PROBLEMS))
    params = _signature(name)
    raw: dict[str, str] = {}
    last = positional = None
    for i, piece in enumerate(rest.split(",") if rest.strip() else []):
        key, eq, value = piece.partition("=")
        if eq and key.strip().isidentifier():
            last = key.strip()
            if last in raw:
                raise ValueError(f"problem {name!r}: argument {last!r} given twice in {spec!r}")
            raw[last] = value.strip()
        elif i == 0:  # a leading positional value: the factory's first argument
            if not params:
                raise ValueError(f"problem {name!r} takes no arguments, got {piece!r} in {spec!r}")
            last = positional = next(iter(params))
            raw[last] = piece.strip()
        elif last is not None:
            raw[last] += "," + piece
        else:
            raise ValueError(f"problem arguments are key=value, got {piece!r} in {spec!r}")
    kwargs = {}
    for k, v in raw.items():
        try:
            kwargs[k] = _convert(name, k, v, params.get(k))
            if positional == k:  # a number's type is checked here, so the hint below can join the error
                checked_arguments(name, PROBLEMS[name], {k: kwargs[k]})
        except ValueError as e:
            if positional == k:  # the user may have meant a key: say how the value was read
                raise ValueError(f"{e} (arguments are key=value; a first value without key= is {k})") from None
            raise
    return name, _checked_kwargs(name, kwargs)


def arguments(name: str) -> dict[str, Any]:
    """``{argument: default}`` of a registered problem's factory (``inspect.Parameter.empty`` = required)."""
    return {k: p.default for k, p in _signature(name).items()}


def describe(name: str) -> str:
    """The one-line description ``diyopt list problems`` prints (the registered summary, else the first
    sentence of the factory's docstring)."""
    if name in _SUMMARIES:
        return _SUMMARIES[name]
    doc = " ".join((PROBLEMS[name].__doc__ or "").split())
    doc = re.sub(r":math:`([^`]*)`", r"\1", doc).replace("``", "")
    first = re.split(r"(?<=[.;])\s", doc, maxsplit=1)[0]
    return first.rstrip(".;")


def _signature(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(PROBLEMS[name]).parameters)


def _checked_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Unknown argument names and missing required ones are one-line errors that list what the problem takes."""
    params = _signature(name)
    for k in kwargs:
        if k not in params:
            if not params:
                raise ValueError(f"problem {name!r} takes no arguments, got {k!r}")
            raise ValueError(unknown_name(f"argument of problem {name!r}", k, params))
    return kwargs


def _missing(name: str, kwargs: dict[str, Any]) -> list[str]:
    return [k for k, p in _signature(name).items() if p.default is inspect.Parameter.empty and k not in kwargs]


def _convert(problem: str, key: str, text: str, param: inspect.Parameter | None) -> Any:
    """A spec value as the factory's annotation (a string under ``from __future__ import annotations``)
    says; without an annotation, a Python literal when it is one, else the text."""
    kind = str(param.annotation) if param is not None and param.annotation is not inspect.Parameter.empty else ""
    what = f"problem {problem!r}: {key}={text!r}"
    try:
        if kind.startswith("str"):
            return text
        if kind.startswith("bool"):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind.startswith(("int", "float")):
            # A number as written (dim=1e10 is 10**10): checked_arguments then types it and checks the
            # size it asks for, and words what is not a number ("dim must be an integer, got 'two'").
            for number in (int, float):
                try:
                    return number(text)
                except ValueError:
                    pass
            return text
        if kind.startswith(("tuple", "list")):
            return tuple(float(v) for v in text.split("/"))
        if kind.startswith("dict"):
            pairs = [item.partition("=") for item in text.split("/")]
            if not all(eq and k.strip() for k, eq, _ in pairs):
                raise ValueError
            return {k.strip(): float(v) for k, _, v in pairs}
    except ValueError:
        expected = {"bool": "true or false", "int": "an integer", "float": "a number",
                    "tuple": "numbers joined by /", "list": "numbers joined by /",
                    "dict": "name=number pairs joined by /"}
        raise ValueError(f"{what}: expected {next((v for k, v in expected.items() if kind.startswith(k)), kind)}") from None
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


@register("line", "the seed's noisy line y = a x + b (n points), loss by name; solution: the least-squares line")
def line(n: int = 100, a: float = -1.0, b: float = 1.0, sigma: float = 0.1, seed: int = 0,
         loss: str = "l2_norm") -> Problem:
    """The seed: fit ``y = a x + b`` to noisy line data; the solution is the exact least-squares line."""
    from diyopt.problems import losses
    from diyopt.problems.data import least_squares_line, make_line

    x, y = make_line(n=n, a=a, b=b, sigma=sigma, seed=seed)
    loss_on_pred = losses.get(loss)
    a_hat, b_hat = least_squares_line(x, y)
    optimum = float(loss_on_pred(a_hat * x + b_hat, y)) if loss in ("l2_norm", "mse", "sse") else None
    return Problem(
        name="line",
        params0={"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)},
        loss=lambda p: loss_on_pred(p["a"] * x + p["b"], y),
        solution={"a": _f64(a_hat), "b": _f64(b_hat)} if optimum is not None else None,
        optimum=optimum,
        residual=lambda p: y - (p["a"] * x + p["b"]),
        info={"description": "the seed's noisy line, y = a x + b", "x": x, "y": y, "loss": loss},
    )


@register("rosenbrock", "Rosenbrock's valley in dim dimensions, minimum 0 at (1, ..., 1); start (-1.2, 1, ...)")
def rosenbrock(dim: int = 2, a: float = 1.0, b: float = 100.0) -> Problem:
    r"""Rosenbrock: :math:`\sum_i b (x_{i+1} - x_i^2)^2 + (a - x_i)^2`, minimum 0 at ``x = (a, a^2, ...)``.

    The standard start is ``(-1.2, 1, -1.2, 1, ...)``. From ``dim >= 4`` the chained function also has a
    local minimum near ``(-1, 1, ..., 1)`` (value 3.9866 for ``dim=10``, where Newton from the standard
    start lands; L-BFGS and Levenberg-Marquardt on the residual form reach the global one).
    """
    if dim < 2:
        raise ValueError(f"rosenbrock needs dim >= 2, got {dim}")

    def loss(p: Params) -> Tensor:
        x = p["x"]
        return (b * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2).sum()

    start = torch.tensor([-1.2 if i % 2 == 0 else 1.0 for i in range(dim)], dtype=torch.float64)
    solution = torch.full((dim,), a, dtype=torch.float64)
    if a != 1.0:  # x_i = a, x_{i+1} = a^2 only chains for dim 2
        solution[1] = a * a
    def residual(p: Params) -> Tensor:  # loss = sum(residual**2), for least-squares solvers
        x = p["x"]
        return torch.cat([b ** 0.5 * (x[1:] - x[:-1] ** 2), a - x[:-1]])

    return Problem("rosenbrock", {"x": start}, loss, {"x": solution}, 0.0, residual,
                   info={"description": f"Rosenbrock, a={a}, b={b}, {dim}-D"})


def _xy(x: float, y: float) -> Params:
    return {"xy": _f64(x, y)}


def _two_d(name: str, f: Callable[[Tensor, Tensor], Tensor], start: tuple, minima: list[tuple],
           description: str, residual: Callable[[Tensor, Tensor], Tensor] | None = None) -> Problem:
    """A 2-D test function ``f(x, y)`` on params ``{"xy": tensor([x, y])}`` with known minima (value 0)."""
    sols = [_xy(*m) for m in minima]
    return Problem(name, _xy(*start), lambda p: f(p["xy"][0], p["xy"][1]), sols[0], 0.0,
                   (lambda p: residual(p["xy"][0], p["xy"][1])) if residual else None,
                   info={"description": description, "minima": sols})


@register("beale", "Beale's function (2-D), minimum 0 at (3, 0.5); start (1, 1)")
def beale() -> Problem:
    r"""Beale: :math:`(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2`, minimum 0 at
    ``(3, 0.5)``; standard start ``(1, 1)`` (Moré, Garbow, Hillstrom 1981)."""
    res = lambda x, y: torch.stack([1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3])
    return _two_d("beale", lambda x, y: res(x, y).square().sum(), (1.0, 1.0), [(3.0, 0.5)],
                  "Beale's function, minimum 0 at (3, 0.5)", res)


@register("booth", "Booth's function (2-D), minimum 0 at (1, 3); start (0, 0)")
def booth() -> Problem:
    r"""Booth: :math:`(x + 2y - 7)^2 + (2x + y - 5)^2`, minimum 0 at ``(1, 3)``; start ``(0, 0)``."""
    res = lambda x, y: torch.stack([x + 2 * y - 7, 2 * x + y - 5])
    return _two_d("booth", lambda x, y: res(x, y).square().sum(), (0.0, 0.0), [(1.0, 3.0)],
                  "Booth's function, minimum 0 at (1, 3)", res)


@register("himmelblau", "Himmelblau's function (2-D), four minima of value 0; start (0, 0)")
def himmelblau(start: tuple[float, float] = (0.0, 0.0)) -> Problem:
    r"""Himmelblau: :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`, four minima of value 0 (all in
    ``info["minima"]``): ``(3, 2)`` and three irrational ones, the roots of ``x^2 + y = 11, x + y^2 = 7``
    polished here by Newton's method on that system to float64 accuracy. Standard start ``(0, 0)``."""
    res = lambda x, y: torch.stack([x ** 2 + y - 11, x + y ** 2 - 7])
    rough = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    minima = []
    for m in rough:
        z = _f64(*m)
        for _ in range(8):
            z = z - torch.linalg.solve(torch.func.jacfwd(lambda v: res(v[0], v[1]))(z), res(z[0], z[1]))
        minima.append((float(z[0]), float(z[1])))
    return _two_d("himmelblau", lambda x, y: res(x, y).square().sum(), start, minima,
                  "Himmelblau's function, four minima of value 0", res)


@register("quadratic", "0.5 (x - x*)' A (x - x*) in dim dimensions, A's condition number cond; minimum 0 at x*")
def quadratic(dim: int = 10, cond: float = 100.0, seed: int = 0) -> Problem:
    r"""An ill-conditioned quadratic :math:`\frac12 (x - x^*)^\top A (x - x^*)`, minimum 0 at :math:`x^*`.

    :math:`A = Q \operatorname{diag}(\lambda) Q^\top` with eigenvalues log-spaced from 1 to ``cond`` (so
    ``cond`` is A's condition number), ``Q`` a random orthogonal matrix and :math:`x^* \sim N(0, I)` drawn
    with ``seed``; start ``x = 0``.
    """
    if dim < 1 or not cond >= 1:
        raise ValueError(f"quadratic needs dim >= 1 and cond >= 1, got dim={dim}, cond={cond}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), dim, dtype=torch.float64)
    a = (q * eig) @ q.T
    x_star = torch.randn(dim, generator=g, dtype=torch.float64)

    def loss(p: Params) -> Tensor:
        d = p["x"] - x_star
        return 0.5 * d @ (a @ d)

    chol = torch.linalg.cholesky(a)  # loss = 0.5 ||L^T (x - x*)||^2
    return Problem("quadratic", {"x": torch.zeros(dim, dtype=torch.float64)}, loss, {"x": x_star}, 0.0,
                   lambda p: 0.5 ** 0.5 * chol.T @ (p["x"] - x_star),
                   info={"description": f"quadratic, {dim}-D, condition number {cond:g}", "A": a, "cond": cond})


@register("polynomial", "fit a degree-K polynomial to n noisy points on [-1, 1] (mean squared error)")
def polynomial(degree: int = 3, n: int = 50, sigma: float = 0.1, seed: int = 0,
               coef: list[float] | None = None) -> Problem:
    r"""Fit a degree-``degree`` polynomial :math:`\sum_k c_k x^k` to noisy samples on ``[-1, 1]`` (mean
    squared error). The solution is the exact least-squares fit, from ``lstsq`` on the Vandermonde matrix."""
    if degree < 0 or n <= degree:
        raise ValueError(f"polynomial needs degree >= 0 and n > degree, got degree={degree}, n={n}")
    g = torch.Generator().manual_seed(seed)
    true = torch.tensor(coef, dtype=torch.float64) if coef is not None else \
        torch.randn(degree + 1, generator=g, dtype=torch.float64)
    if true.numel() != degree + 1:
        raise ValueError(f"coef needs degree + 1 = {degree + 1} values, got {true.numel()}")
    x = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    vander = _vander(x, degree)  # columns 1, x, x^2, ...
    y = vander @ true + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    best = torch.linalg.lstsq(vander, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    residual = lambda p: _vander(x, degree) @ p["c"] - y
    loss = lambda p: residual(p).square().mean()
    return Problem("polynomial", {"c": torch.zeros(degree + 1, dtype=torch.float64)}, loss, {"c": best},
                   float(loss({"c": best})), residual,
                   info={"description": f"degree-{degree} polynomial, {n} noisy points", "x": x, "y": y,
                         "true": true})


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
    return _logistic_problem("logistic", features, labels, l2, separable and l2 == 0,
                             f"logistic regression, {n} points in {dim}-D, "
                             f"{'separable' if separable else 'not separable'}")


def _logistic_problem(name: str, features: Tensor, labels: Tensor, l2: float, no_minimizer: bool,
                      description: str) -> Problem:
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
    return Problem(name, params0, loss, solution, optimum,
                   info={"description": description, "features": features, "labels": labels, "l2": l2})


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
        return _logistic_problem("breast_cancer", features, labels, l2, False,
                                 "breast cancer (sklearn), logistic regression")
    g = torch.Generator().manual_seed(seed)
    d = features.shape[1]
    params0 = {"w1": torch.randn(d, hidden, generator=g, dtype=torch.float64) / d ** 0.5,
               "b1": torch.zeros(hidden, dtype=torch.float64),
               "w2": torch.randn(hidden, generator=g, dtype=torch.float64) / hidden ** 0.5,
               "b2": torch.zeros((), dtype=torch.float64)}

    def loss(p: Params) -> Tensor:
        margin = labels * (torch.tanh(features @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
        return torch.nn.functional.softplus(-margin).mean() + 0.5 * l2 * (p["w1"].square().sum() + p["w2"].square().sum())

    return Problem("breast_cancer", params0, loss,
                   info={"description": f"breast cancer (sklearn), MLP 30-{hidden}-1", "features": features,
                         "labels": labels, "l2": l2})


@register("csv", "your CSV file (columns x, y): model line, poly:K or an expression in x; loss by name")
def csv(path: str, model: str = "line", loss: str = "mse", x: str = "x", y: str = "y",
        p0: dict[str, float] | None = None) -> Problem:
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
    return Problem(f"csv:{Path(path).name}", params0, lambda p: loss_on_pred(predict(p), ys), solution,
                   optimum, lambda p: predict(p) - ys,
                   info={"description": f"{path}: y = {model}, loss {loss}", "x": xs, "y": ys, "model": model})


@register("nist", "a NIST StRD regression file by name (nist:Misra1a) or path; certified answers")
def nist(path_or_name: str = "Misra1a"):
    """A NIST StRD dataset by name (``"Misra1a"``) or path: see :func:`diyopt.nist.problem`."""
    from diyopt.problems.strd import problem

    return problem(path_or_name)


# ---------------------------------------------------------------- arguments checked before any work

#: Bytes a problem allocates for its arguments, roughly (float64 tensors and the loss's temporaries):
#: checked against the machine's memory *before* the factory allocates anything.
_BYTES: dict[str, Callable[[dict], float]] = {
    "rosenbrock": lambda a: 8.0 * 16 * a.get("dim", 2),
    "quadratic": lambda a: 8.0 * 4 * a.get("dim", 10) ** 2,
    "line": lambda a: 8.0 * 8 * a.get("n", 100),
    "polynomial": lambda a: 8.0 * 4 * a.get("n", 50) * (a.get("degree", 3) + 1),
    "logistic": lambda a: 8.0 * 4 * a.get("n", 200) * (a.get("dim", 2) + 1),
    "breast_cancer": lambda a: 8.0 * 4 * 600 * (a.get("hidden", 0) + 31) ** 2,
}


def checked_arguments(name: str, factory: Callable, kwargs: dict) -> dict:
    """``kwargs`` checked against the factory's signature: unknown names, the declared types (an ``int``
    argument takes ``4`` or ``4.0``, not ``'two'``; a ``float`` one a number, a ``bool`` one true/false)
    and sizes that would not fit in memory -- each as one line naming the argument."""
    import inspect

    params = inspect.signature(factory).parameters
    out = {}
    for key, value in kwargs.items():
        p = params.get(key)
        if p is None or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            known = [k for k, q in params.items() if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
            raise ValueError(unknown_name(f"argument of problem {name!r}:", key, known))
        kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out[key] = _typed(name, key, value, kind)
    estimate = _BYTES.get(name)
    if estimate is not None:
        need = estimate(out)
        have = _memory_bytes()
        if need > have / 2:
            sizes = ", ".join(f"{k}={v}" for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool))
            raise ValueError(f"problem {name!r} with {sizes} needs about {_gb(need)} of memory; this machine "
                             f"has {_gb(have)} (at most half of it may go to one problem)")
    return out


def _typed(name: str, key: str, value: Any, kind: str) -> Any:
    where = f"problem {name!r}: {key}"
    if kind == "int":
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    elif kind == "str" and not isinstance(value, str):
        value = str(value)
    return value


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gb(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def as_problem(problem: Problem | str) -> Problem:
    """A Problem as is; a string is a problem spec (``"rosenbrock:dim=4"``, ``"nist:Misra1a"``), parsed by
    :func:`diyopt.problems.parse_spec` like every subcommand's ``--problem``."""
    if isinstance(problem, Problem):
        return problem
    if not isinstance(problem, str):
        raise TypeError(f"problem must be a Problem or a name, got {type(problem).__name__}")
    from diyopt import problems

    return problems.get(problem)


def start_point(problem: Problem, seed: int, perturb: float = 0.1) -> Params:
    """The start for ``seed``: ``params0`` for seed 0; a problem's own named starts next (a NIST problem's
    ``starts``: seed 1 = Start 2); then ``problem.info["sample_start"](seed)`` if the problem has a
    sampler, else ``params0 + perturb * (1 + |params0|) * z`` with ``z ~ N(0, 1)`` from a generator
    seeded with ``seed`` (:func:`diyopt.starts.perturbed`, the rule ``sweep`` uses too)."""
    p0 = as_params(problem.params0)
    if seed == 0:
        return p0
    named = list(getattr(problem, "starts", None) or {})  # NIST: Start 1 (= params0), Start 2
    if seed < len(named):
        return as_params(problem.starts[named[seed]])
    sampler = problem.info.get("sample_start")
    if sampler is not None:
        return as_params(sampler(seed))
    return perturbed(p0, seed, perturb)
