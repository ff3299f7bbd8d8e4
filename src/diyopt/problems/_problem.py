"""TODO docstring."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diyopt.core.tree import Params


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


@dataclass
class NistProblem(Problem):
    """A NIST StRD problem: a :class:`Problem` with NIST's starts and certified values.

    Attributes (besides :class:`Problem`'s):
      starts: ``{"start1": params, "start2": params}`` (``params0`` is Start 1).
      certified, certified_std: the certified parameters and their standard deviations, by name
        (``b1 ... bk``; ``B0 ...`` for the linear files).
      certified_rss: the certified residual sum of squares.
    """

    starts: dict[str, Params] = field(default_factory=dict)
    certified: Params = field(default_factory=dict)
    certified_std: Params = field(default_factory=dict)
    certified_rss: float = math.nan
