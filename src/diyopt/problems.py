"""Problems with known answers: a starting point, a loss, and the solution where one is known.

``diyopt.problems.get("rosenbrock", dim=2)``, ``diyopt.problems.names()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .core import Params
from .losses import unknown_name


@dataclass
class Problem:
    """A minimization problem.

    Attributes:
      name: registry name (``"line"``, ``"rosenbrock"``, ``"nist:Misra1a"``, ...).
      params0: the standard starting point.
      loss: ``loss(params) -> scalar Tensor``.
      solution: a known minimizer (or one of several, see ``info["minima"]``), or None.
      optimum: the known minimum value of ``loss``, or None.
      residual: ``residual(params) -> Tensor`` for least-squares problems (``loss = sum(residual**2)``
        unless stated otherwise), else None.
      info: metadata (description, data, all minima, certified values, ...).
    """

    name: str
    params0: Params
    loss: Callable[[Params], Tensor]
    solution: Params | None = None
    optimum: float | None = None
    residual: Callable[[Params], Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def distance(self, params: Params) -> float:
        """Euclidean distance from ``params`` to the nearest known minimizer (nan if none is known)."""
        minima = self.info.get("minima") or ([self.solution] if self.solution is not None else [])
        if not minima:
            return float("nan")
        flat = torch.cat([params[k].detach().reshape(-1).double() for k in minima[0]])
        return min(float((flat - torch.cat([m[k].reshape(-1).double() for k in m])).norm()) for m in minima)


_PROBLEMS: dict[str, Callable[..., Problem]] = {}


def register(name: str) -> Callable:
    """Decorator: register a problem factory under ``name``."""

    def deco(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        _PROBLEMS[name] = factory
        return factory

    return deco


def names() -> list[str]:
    return sorted(_PROBLEMS)


def get(name: str, **kwargs: Any) -> Problem:
    """A problem by name; ``kwargs`` go to its factory. Unknown names suggest the closest."""
    try:
        factory = _PROBLEMS[name]
    except KeyError:
        raise ValueError(unknown_name("problem", name, _PROBLEMS)) from None
    return factory(**kwargs)


def _f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


@register("line")
def line(n: int = 100, a: float = -1.0, b: float = 1.0, sigma: float = 0.1, seed: int = 0,
         loss: str = "l2_norm") -> Problem:
    """The seed: fit ``y = a x + b`` to noisy line data; the solution is the exact least-squares line."""
    from . import losses
    from .data import least_squares_line, make_line

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


@register("rosenbrock")
def rosenbrock(dim: int = 2, a: float = 1.0, b: float = 100.0) -> Problem:
    r"""Rosenbrock: :math:`\sum_i b (x_{i+1} - x_i^2)^2 + (a - x_i)^2`, minimum 0 at ``x = (a, a^2, ...)``.

    The standard start is ``(-1.2, 1, -1.2, 1, ...)``.
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
    return Problem("rosenbrock", {"x": start}, loss, {"x": solution}, 0.0,
                   info={"description": f"Rosenbrock, a={a}, b={b}, {dim}-D"})
