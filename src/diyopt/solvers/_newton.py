r"""Newton's method with the exact Hessian.

``newton`` takes damped Newton steps

.. math::  (H + \mu I)\, p = -g, \qquad H = \nabla^2 f(x),\; g = \nabla f(x)

with :math:`g` and :math:`H` exact, from ``torch.func.grad`` and ``torch.func.hessian`` over the flattened
params. The damping :math:`\mu \ge 0` is Levenberg's safeguard: it starts at 0 (the pure Newton step,
quadratic convergence near a minimum), grows tenfold whenever :math:`H + \mu I` is not positive definite
or the step does not decrease the loss enough (:func:`~diyopt.core.linesearch.armijo`), and shrinks after every accepted step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from diyopt._util.validate import positive_integer
from diyopt.core.linesearch import armijo
from diyopt.core.result import CONVERGED, DIVERGED, MAX_STEPS, PRECISION, Result
from diyopt.core.tree import Params
from diyopt.solvers._start import start_from


def newton(
    loss_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | torch.nn.Module,
    *,
    max_iter: int = 100,
    gtol: float = 1e-10,
    xtol: float = 1e-14,
) -> Result:
    """Minimize ``loss_fn(params)`` by Newton's method with the exact Hessian and Levenberg damping.

    Args:
      loss_fn: ``loss_fn(params) -> scalar Tensor``, written with torch operations.
      params: the starting point (dict of tensors or ``nn.Module``, as in :func:`~diyopt.fit`: the loss
        may call it or close over it, and it holds the result afterwards); computed in float64.
      max_iter: the most Newton iterations (Hessian evaluations).
      gtol: stop when the largest gradient component is at most ``gtol``.
      xtol: stop when an accepted step is at most ``xtol * (||x|| + xtol)``.

    Returns:
      A :class:`~diyopt.Result` (its words and counts: :mod:`diyopt.core.result`): ``losses`` holds the
      loss at the start and after every accepted step; ``steps`` the iterations (one gradient and one
      Hessian each, ``njev == nhev``), ``nfev`` the loss evaluations; ``stop_reason`` is ``"converged"``
      (gtol or xtol), ``"precision"`` (no decrease possible at machine precision), ``"max_steps"``
      (max_iter used) or ``"diverged"`` (non-finite loss at the start); ``info`` has ``grad_norm``
      (max-abs) and ``message``.

    Example::

        >>> import torch, diyopt
        >>> p = diyopt.problems.get("rosenbrock")
        >>> r = diyopt.newton(p.loss, p.params0)
        >>> [round(v, 12) for v in r.params["x"].tolist()], r.stop_reason
        ([1.0, 1.0], 'converged')
    """
    max_iter = positive_integer(max_iter, "max_iter")
    begin = start_from(loss_fn, params)
    layout, x = begin.layout, begin.x
    fn = lambda v: begin.fn(layout.unflatten(v))
    grad_fn, hess_fn = torch.func.grad(fn), torch.func.hessian(fn)
    started = time.perf_counter()
    f = float(fn(x))
    losses, nfev, nhev, mu = [f], 1, 0, 0.0
    eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
    stop, message, gmax = None, "max_iter reached", math.nan
    if not math.isfinite(f):
        stop, message = DIVERGED, "the loss is not finite at the start"
    while stop is None and nhev < max_iter:
        g, h = grad_fn(x).detach(), hess_fn(x).detach()
        nhev += 1
        gmax = float(g.abs().max())
        if gmax <= gtol:
            stop, message = CONVERGED, "the largest gradient component is at most gtol"
            break
        hscale = float(h.diagonal().abs().max()) or 1.0
        accepted = False
        for _ in range(60):  # raise the damping until a step decreases the loss
            chol, info = torch.linalg.cholesky_ex(h + mu * eye)
            if int(info) == 0:
                p = torch.cholesky_solve(-g.unsqueeze(1), chol).squeeze(1)
                f1 = float(fn(x + p))
                nfev += 1
                if armijo(f1, f, 1.0, float(g @ p)):
                    accepted = True
                    break
            mu = max(10 * mu, 1e-10 * hscale)
        if not accepted:
            stop, message = PRECISION, "no step decreases the loss at machine precision"
            break
        x, f = x + p, f1
        losses.append(f)
        mu = mu / 10 if mu > 1e-12 * hscale else 0.0
        if float(p.norm()) <= xtol * (float(x.norm()) + xtol):
            stop, message = CONVERGED, "the step is at most xtol relative to the params"
    seconds = time.perf_counter() - started
    stop = MAX_STEPS if stop is None else stop
    return Result(
        begin.finish(x),
        torch.tensor(losses, dtype=torch.float64),
        nhev,
        seconds,
        stop,
        info={"grad_norm": gmax, "message": message, "final_loss": f},
        nfev=nfev,
        njev=nhev,
        nhev=nhev,
    )
