"""Classic test functions with known minima: the seed's line, Rosenbrock, Beale, Booth, Himmelblau and an
ill-conditioned quadratic."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diyopt.core.tree import Params
from diyopt.problems._problem import Problem
from diyopt.problems._registry import register


def _f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


@register("line", "the seed's noisy line y = a x + b (n points), loss by name; solution: the least-squares line")
def line(
    n: int = 100, a: float = -1.0, b: float = 1.0, sigma: float = 0.1, seed: int = 0, loss: str = "l2_norm"
) -> Problem:
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
        return torch.cat([b**0.5 * (x[1:] - x[:-1] ** 2), a - x[:-1]])

    return Problem(
        "rosenbrock",
        {"x": start},
        loss,
        {"x": solution},
        0.0,
        residual,
        info={"description": f"Rosenbrock, a={a}, b={b}, {dim}-D"},
    )


def _xy(x: float, y: float) -> Params:
    return {"xy": _f64(x, y)}


def _two_d(
    name: str,
    f: Callable[[Tensor, Tensor], Tensor],
    start: tuple,
    minima: list[tuple],
    description: str,
    residual: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Problem:
    """A 2-D test function ``f(x, y)`` on params ``{"xy": tensor([x, y])}`` with known minima (value 0)."""
    sols = [_xy(*m) for m in minima]
    return Problem(
        name,
        _xy(*start),
        lambda p: f(p["xy"][0], p["xy"][1]),
        sols[0],
        0.0,
        (lambda p: residual(p["xy"][0], p["xy"][1])) if residual else None,
        info={"description": description, "minima": sols},
    )


@register("beale", "Beale's function (2-D), minimum 0 at (3, 0.5); start (1, 1)")
def beale() -> Problem:
    r"""Beale: :math:`(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2`, minimum 0 at
    ``(3, 0.5)``; standard start ``(1, 1)`` (Moré, Garbow, Hillstrom 1981)."""
    res = lambda x, y: torch.stack([1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3])
    return _two_d(
        "beale",
        lambda x, y: res(x, y).square().sum(),
        (1.0, 1.0),
        [(3.0, 0.5)],
        "Beale's function, minimum 0 at (3, 0.5)",
        res,
    )


@register("booth", "Booth's function (2-D), minimum 0 at (1, 3); start (0, 0)")
def booth() -> Problem:
    r"""Booth: :math:`(x + 2y - 7)^2 + (2x + y - 5)^2`, minimum 0 at ``(1, 3)``; start ``(0, 0)``."""
    res = lambda x, y: torch.stack([x + 2 * y - 7, 2 * x + y - 5])
    return _two_d(
        "booth",
        lambda x, y: res(x, y).square().sum(),
        (0.0, 0.0),
        [(1.0, 3.0)],
        "Booth's function, minimum 0 at (1, 3)",
        res,
    )


@register("himmelblau", "Himmelblau's function (2-D), four minima of value 0; start (0, 0)")
def himmelblau(start: tuple[float, float] = (0.0, 0.0)) -> Problem:
    r"""Himmelblau: :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`, four minima of value 0 (all in
    ``info["minima"]``): ``(3, 2)`` and three irrational ones, the roots of ``x^2 + y = 11, x + y^2 = 7``
    polished here by Newton's method on that system to float64 accuracy. Standard start ``(0, 0)``."""
    res = lambda x, y: torch.stack([x**2 + y - 11, x + y**2 - 7])
    rough = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    minima = []
    for m in rough:
        z = _f64(*m)
        for _ in range(8):
            z = z - torch.linalg.solve(torch.func.jacfwd(lambda v: res(v[0], v[1]))(z), res(z[0], z[1]))
        minima.append((float(z[0]), float(z[1])))
    return _two_d(
        "himmelblau",
        lambda x, y: res(x, y).square().sum(),
        start,
        minima,
        "Himmelblau's function, four minima of value 0",
        res,
    )


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
    return Problem(
        "quadratic",
        {"x": torch.zeros(dim, dtype=torch.float64)},
        loss,
        {"x": x_star},
        0.0,
        lambda p: 0.5**0.5 * chol.T @ (p["x"] - x_star),
        info={"description": f"quadratic, {dim}-D, condition number {cond:g}", "A": a, "cond": cond},
    )
