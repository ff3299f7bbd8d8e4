r"""Least squares with exact autograd Jacobians: Levenberg-Marquardt, Gauss-Newton, and ``curve_fit``.

``least_squares(residual_fn, params)`` minimizes :math:`C(\theta) = \sum_i \rho(r_i(\theta)^2)` (plain
least squares: :math:`\rho(z) = z`, so :math:`C = \|r\|^2`, the residual sum of squares). The Jacobian
:math:`J = \partial r/\partial\theta` comes from ``torch.func.jacfwd`` (or ``jacrev`` when there are more
parameters than residuals) over the flattened parameters -- exact, not finite differences.

Levenberg-Marquardt follows MINPACK's ``lmder`` (Moré 1978): scaling :math:`D = \mathrm{diag}` of the
running maximum of :math:`J`'s column norms, a trust region :math:`\|D p\| \le \Delta` whose radius grows
or shrinks with the ratio of actual to predicted reduction, and the step

.. math::  (J^\top J + \lambda D^2)\, p = -J^\top r

solved from the SVD of :math:`J D^{-1}` (never from :math:`J^\top J`), with :math:`\lambda` found by
Moré's safeguarded Newton iteration so that :math:`\|Dp\| \approx \Delta`. Everything is float64.

Robust losses (``huber``, ``soft_l1``, ``cauchy``, ``arctan``) rescale :math:`J` and :math:`r` per
iteration exactly as ``scipy.optimize.least_squares`` does (Triggs et al.), so the same door serves both.

References: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory", 1978;
MINPACK ``lmder``/``lmpar``; B. Triggs et al., "Bundle adjustment -- a modern synthesis", 1999.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from diyopt._util.validate import positive_integer
from diyopt.core.checks import check_gradients
from diyopt.core.linesearch import backtracking
from diyopt.core.result import CONVERGED, DIVERGED, FALSE_CONVERGENCE, MAX_STEPS, PRECISION, Result
from diyopt.core.tree import FlatLayout, Params
from diyopt.solvers._start import start_from
from diyopt.solvers.stats import covariance as _covariance
from diyopt.solvers.stats import jacobian_fn

EPS = torch.finfo(torch.float64).eps

_MESSAGES = {
    0: "the residuals are not finite at the start",
    1: "both actual and predicted relative reductions in the sum of squares are at most ftol",
    2: "relative error between two consecutive iterates is at most xtol",
    3: "both ftol and xtol conditions hold",
    4: "the cosine of the angle between the residuals and any Jacobian column is at most gtol",
    5: "number of residual evaluations reached max_nfev",
    6: "ftol is too small: no further reduction in the sum of squares is possible",
    7: "xtol is too small: no further improvement in the approximate solution is possible",
    8: "gtol is too small: the residuals are orthogonal to the Jacobian columns to machine precision",
}
#: MINPACK's code -> the stop_reason every solver uses (diyopt.core.result).
_STOP = {
    0: DIVERGED,
    1: CONVERGED,
    2: CONVERGED,
    3: CONVERGED,
    4: CONVERGED,
    5: MAX_STEPS,
    6: PRECISION,
    7: PRECISION,
    8: PRECISION,
}


def least_squares(
    residual_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | torch.nn.Module,
    method: str = "lm",
    *,
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    max_nfev: int | None = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    factor: float = 100.0,
    jac: str = "auto",
) -> Result:
    """Minimize :math:`\\sum_i \\rho(r_i^2)` over ``params``, ``r = residual_fn(params)`` (any shape).

    Args:
      residual_fn: ``residual_fn(params) -> Tensor`` of residuals, written with torch operations
        (it is differentiated by ``torch.func``).
      params: the starting point, a dict of tensors, or an ``nn.Module`` (as in :func:`~diyopt.fit`: the
        residuals may call it or close over it, and it holds the fit afterwards); computed in float64.
      method: ``"lm"`` (Levenberg-Marquardt, MINPACK-style) or ``"gauss_newton"`` (least-squares steps
        with a backtracking line search).
      ftol, xtol, gtol: MINPACK's tests -- relative reduction of the cost, relative size of the step
        (in the scaled norm ``||D x||``), and the cosine between the residuals and the Jacobian columns.
        The defaults, 1e-15, stop at float64's limit: what certified accuracy needs, for a few more
        evaluations than MINPACK's usual 1.5e-8 (BENCHMARKS.md, NIST).
      max_nfev: the budget of residual evaluations (default ``1000 * (n + 1)``, n = number of parameters;
        room for NIST's hardest files, BENCHMARKS.md).
      loss: ``"linear"`` (least squares) or a robust loss ``"huber"``, ``"soft_l1"``, ``"cauchy"``,
        ``"arctan"`` applied to ``(r / f_scale)**2`` as in ``scipy.optimize.least_squares``.
      factor: the initial trust radius is ``factor * ||D x0||`` (MINPACK's ``factor``). With a loss that
        saturates (``arctan``, or ``cauchy`` with a small ``f_scale``) far from the start, the rescaled
        Jacobian is nearly zero and the first steps can run off: ``factor=0.1`` keeps them local.
      jac: ``"fwd"`` (``torch.func.jacfwd``), ``"rev"`` (``jacrev``) or ``"auto"`` (rev for at most 64
        residuals or more parameters than residuals, else fwd).

    Returns:
      A :class:`~diyopt.Result` (its words and counts: :mod:`diyopt.core.result`): ``params`` the fit;
      ``losses`` the cost :math:`\\sum \\rho(r_i^2)` (for ``loss="linear"`` the residual sum of squares
      :math:`\\|r\\|^2`, NIST's RSS -- not scipy's :math:`\\frac12\\|r\\|^2`) at the start and after
      every accepted step; ``steps`` the iterations (one Jacobian each: ``njev == steps``), ``nfev`` the
      residual evaluations, a restart's included; ``stop_reason`` ``"converged"`` (an ftol/xtol/gtol test
      held), ``"precision"`` (a tolerance below machine precision: nothing more to gain), ``"max_steps"``
      (``max_nfev`` used), ``"diverged"`` or ``"false_convergence"`` (a test held, but not at a minimum:
      see below); ``info`` with ``status`` (MINPACK's code), ``message``, ``jacobian`` (the final one, unscaled),
      ``final_loss``, and for converged fits ``optimality`` (the largest cosine between the residuals
      and a Jacobian column: 0 at a minimum), ``degenerate`` (parameters that stopped affecting the
      residuals) and ``restarts``.

    False convergence: a converged stop is checked -- the gradient test (``optimality`` at most
    ``max(1e-3, sqrt(ftol))``) and saturation (no parameter's Jacobian column shrank by 8 orders of
    magnitude from the start: the model went flat, as BoxBOD does from NIST's start 1 when the first
    step sends ``b2`` to 110). If either fails, LM restarts once from ``params`` with a small initial
    trust region (``factor=0.1``) and keeps that fit if it passes (``restarts=1``); otherwise
    ``stop_reason`` is ``"false_convergence"`` and ``message`` says which test failed.

    Example::

        >>> import torch, diyopt
        >>> x = torch.linspace(0, 1, 20, dtype=torch.float64); y = 2 * torch.exp(-3 * x)
        >>> r = diyopt.least_squares(lambda p: p["a"] * torch.exp(-p["k"] * x) - y,
        ...                          {"a": torch.tensor(1.0), "k": torch.tensor(1.0)})
        >>> round(r.params["a"].item(), 8), round(r.params["k"].item(), 8), r.stop_reason
        (2.0, 3.0, 'converged')
    """
    if method not in ("lm", "gauss_newton"):
        raise ValueError(f"unknown method {method!r}; known: 'lm', 'gauss_newton'")
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not tol >= 0:
            raise ValueError(f"Invalid {name} value: {tol}")
    if not f_scale > 0:
        raise ValueError(f"Invalid f_scale value: {f_scale}")
    if max_nfev is not None:
        max_nfev = positive_integer(max_nfev, "max_nfev")
    rho = robust_loss(loss, f_scale)
    begin = start_from(residual_fn, params)
    residual_fn, layout, x0 = begin.fn, begin.layout, begin.x
    f0 = residual_fn(layout.unflatten(x0))
    if not isinstance(f0, Tensor):
        raise TypeError(f"residual_fn must return a Tensor, got {type(f0).__name__}")
    _check_dependence(residual_fn, begin.params)
    fun = lambda v: residual_fn(layout.unflatten(v)).reshape(-1).to(torch.float64)  # float32 data: solve in float64
    f0 = f0.reshape(-1).to(torch.float64)
    jac_fn = jacobian_fn(fun, f0.numel(), x0.numel(), jac)
    max_nfev = 1000 * (x0.numel() + 1) if max_nfev is None else max_nfev
    started = time.perf_counter()
    problem, tol = _Residuals(fun, jac_fn, rho), _Tolerances(ftol, xtol, gtol, max_nfev)
    if method == "lm":
        run = _lm(problem, x0, f0.detach(), tol, factor)
    else:
        run = _gauss_newton(problem, x0, f0.detach(), tol)
    nfev, njev, stop, message = run.nfev, run.njev, _STOP[run.status], _MESSAGES[run.status]
    restarts, check = 0, None
    if stop == CONVERGED:
        names = _element_names(layout)
        bar = max(OPTIMALITY_TOL, math.sqrt(ftol))
        check = _false_convergence(problem, x0, run.x, run.jacobian, names, bar)
        if check.suspect and method == "lm" and factor > RESTART_FACTOR and nfev < max_nfev:
            # From the start again with a small trust region: the first steps stay local instead of
            # jumping to where the model saturates (BoxBOD from NIST's start 1: b2 -> 110).
            again = _lm(problem, x0, f0.detach(), tol._replace(max_nfev=max_nfev - nfev), RESTART_FACTOR)
            # (the restart's first residuals are f0, counted once already)
            restarts, nfev, njev = 1, nfev + again.nfev - 1, njev + again.njev
            if _STOP[again.status] == CONVERGED:
                check_again = _false_convergence(problem, x0, again.x, again.jacobian, names, bar)
                if not check_again.suspect or again.costs[-1] < run.costs[-1]:
                    run, check, message = again, check_again, _MESSAGES[again.status]
        if check.suspect:
            stop = FALSE_CONVERGENCE
            message = f"{message}, but {check.why} (false convergence: try another start)"
    seconds = time.perf_counter() - started
    x, costs = run.x, run.costs
    losses = torch.tensor(costs, dtype=torch.float64)
    info = {
        "status": run.status,
        "message": message,
        "method": method,
        "loss": loss,
        "jacobian": run.jacobian,
        "final_loss": costs[-1],
        "restarts": restarts,
    }
    if check is not None:
        info.update(optimality=check.optimality, degenerate=check.degenerate)
    return Result(begin.finish(x), losses, njev, seconds, stop, info=info, nfev=nfev, njev=njev)


def _check_dependence(residual_fn: Callable, params: Params) -> None:
    """Residuals that depend on no parameter (they close over other tensors: a module's own parameters)
    have a zero Jacobian, and LM would report "converged" at the start: say so instead, as ``fit`` does."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    r = residual_fn(leaves)
    if isinstance(r, Tensor) and r.is_floating_point() and not r.requires_grad:
        raise ValueError(
            f"the residuals do not depend on the parameters {', '.join(map(repr, leaves))}: "
            "no autograd path (was .item(), .detach() or numpy used?)"
        )
    if isinstance(r, Tensor) and r.requires_grad:
        grads = torch.autograd.grad(r.sum(), list(leaves.values()), allow_unused=True)
        check_gradients(dict(zip(leaves, grads)))


#: The initial trust radius factor of the restart after a false convergence (MINPACK's range: 0.1-100).
RESTART_FACTOR = 0.1

#: First-order optimality: the largest cosine between the residuals and a Jacobian column at a converged
#: point, 0 at a minimum. At the shared NIST files' minima it is orders of magnitude smaller (BENCHMARKS.md,
#: NIST; Lanczos1's residuals are rounding noise: see ``_false_convergence``), so 1e-3 leaves room and still
#: catches a point the cost slopes away from. A looser ``ftol`` stops further from
#: the minimum (the cosine there is about sqrt(ftol)), so the bar is ``max(1e-3, sqrt(ftol))``.
OPTIMALITY_TOL = 1e-3


class _Check(NamedTuple):
    """The false-convergence test at a converged point."""

    suspect: bool
    optimality: float  # the largest cosine between residuals and a Jacobian column (0 at a minimum)
    degenerate: list  # parameters whose effect on the residuals vanished (Jacobian column ~ 0)
    why: str


def _false_convergence(problem: _Residuals, x0: Tensor, x: Tensor, jac: Tensor, names: list, bar: float) -> _Check:
    r"""Did the fit stop where it should not have?

    Two signs, each cheap (one residual and one Jacobian evaluation): the gradient test -- at a minimum
    every Jacobian column is orthogonal to the residuals, :math:`\max_j |J_j^\top r| / (\|J_j\| \|r\|)
    \approx 0` -- and saturation: a parameter whose Jacobian column shrank by 8 orders of magnitude from
    the start no longer affects the residuals, so the ftol/xtol tests hold on a plateau, not at a minimum
    (the gradient there is ~0 too, which is why the gradient test alone does not see it).

    The gradient test is skipped when the residuals fell below sqrt(eps) of their start: they are then
    rounding noise (Lanczos1: RSS 1e-25) and their direction says nothing.
    """
    cost, js, fs = _cost_and_scaled(problem.fun(x).detach(), jac, problem.rho)
    colnorm = js.norm(dim=0)
    fnorm = math.sqrt(float(cost))
    optimality = _gradient_cosine(js.T @ fs, colnorm, fnorm)
    cost0, js0, _ = _cost_and_scaled(problem.fun(x0).detach(), problem.jac(x0).detach(), problem.rho)
    start_norm = js0.norm(dim=0)
    if fnorm <= math.sqrt(EPS) * math.sqrt(float(cost0)):
        optimality = 0.0
    gone = (colnorm <= math.sqrt(EPS) * start_norm) & (start_norm > 0)
    degenerate = [n for n, bad in zip(names, gone.tolist()) if bad]
    why = []
    if optimality > bar:
        why.append(f"the gradient test fails (cosine {optimality:.2g} > {bar:g})")
    if degenerate:
        why.append(f"{', '.join(degenerate)} no longer change(s) the residuals (the model saturated)")
    return _Check(bool(why), optimality, degenerate, " and ".join(why))


def _element_names(layout: FlatLayout) -> list[str]:
    """A name per flattened parameter element: ``b1`` for scalars, ``w[3]`` inside a tensor."""
    out = []
    for name, size in zip(layout.names, layout.sizes):
        out += [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]
    return out


# ---------------------------------------------------------------- robust losses, as scipy defines them


def robust_loss(name: str, f_scale: float = 1.0) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None:
    """``rho(f) -> (rho, rho', rho'')`` of ``z = (f / f_scale)**2``, scaled so the cost is
    ``sum(rho) = f_scale**2 * sum(rho_0(z))`` (scipy's ``2 * cost``); None for ``"linear"``."""
    if name == "linear":
        return None
    if name not in _RHO:
        raise ValueError(f"unknown loss {name!r}; known: 'linear', {', '.join(repr(k) for k in _RHO)}")
    base = _RHO[name]

    def rho(f: Tensor):
        r0, r1, r2 = base((f / f_scale) ** 2)
        return r0 * f_scale**2, r1, r2 / f_scale**2

    return rho


def _huber(z):
    small = z <= 1
    sz = z.clamp_min(1).sqrt()
    return (torch.where(small, z, 2 * sz - 1), torch.where(small, 1.0, 1 / sz), torch.where(small, 0.0, -0.5 / sz**3))


def _soft_l1(z):
    t = 1 + z
    return 2 * (t.sqrt() - 1), t**-0.5, -0.5 * t**-1.5


def _cauchy(z):
    t = 1 + z
    return torch.log1p(z), 1 / t, -1 / t**2


def _arctan(z):
    t = 1 + z**2
    return torch.atan(z), 1 / t, -2 * z / t**2


_RHO = {"huber": _huber, "soft_l1": _soft_l1, "cauchy": _cauchy, "arctan": _arctan}


def _cost_and_scaled(f: Tensor, jac: Tensor | None, rho):
    """The cost, and (J, f) rescaled for a robust loss so that J^T f is half the cost's gradient and
    J^T J half its Gauss-Newton Hessian."""
    if rho is None:
        return f.square().sum(), jac, f
    r0, r1, r2 = rho(f)
    if jac is None:
        return r0.sum(), None, None
    scale = (r1 + 2 * r2 * f**2).clamp_min(EPS).sqrt()
    return r0.sum(), jac * scale[:, None], f * r1 / scale


# ---------------------------------------------------------------- what the methods share


class _Residuals(NamedTuple):
    """The residuals as the methods see them: flat float64 parameters in, flat float64 residuals out."""

    fun: Callable[[Tensor], Tensor]  # x -> r(x)
    jac: Callable[[Tensor], Tensor]  # x -> J(x) = dr/dx, m x n
    rho: Callable | None  # the robust loss, None for plain least squares

    def cost(self, f: Tensor) -> float:
        return float(_cost_and_scaled(f, None, self.rho)[0])

    def evaluate(self, x: Tensor) -> tuple[float, Tensor]:
        """The cost at ``x`` and the residuals there."""
        f = self.fun(x).detach()
        return self.cost(f), f


class _Tolerances(NamedTuple):
    ftol: float
    xtol: float
    gtol: float
    max_nfev: int


class _Run(NamedTuple):
    """What one run of a method returns."""

    x: Tensor
    costs: list[float]  # at the start and after every accepted step
    status: int  # MINPACK's code, a key of _MESSAGES (0: the residuals are not finite at the start)
    nfev: int  # residual evaluations
    njev: int  # Jacobian evaluations, one per iteration
    jacobian: Tensor | None  # at x, for the covariance; None when the start is not finite


def _gradient_cosine(g: Tensor, colnorm: Tensor, fnorm: float) -> float:
    """MINPACK's ``gnorm``: the largest cosine between the residuals and a Jacobian column,
    :math:`\\max_j |J_j^\\top r| / (\\|J_j\\| \\|r\\|)` from ``g = J^T r``; 0 at a minimum."""
    nz = colnorm > 0
    return float((g[nz].abs() / colnorm[nz]).max()) / fnorm if fnorm > 0 and nz.any() else 0.0


# ---------------------------------------------------------------- Levenberg-Marquardt (MINPACK lmder)


def _lm(problem: _Residuals, x: Tensor, f: Tensor, tol: _Tolerances, factor: float) -> _Run:
    """Levenberg-Marquardt as MINPACK's ``lmder``. An iteration evaluates the Jacobian at ``x``, then
    tries damped Gauss-Newton steps (the descent, :func:`_lmpar`) inside a trust region of radius
    ``delta`` in the scaled norm ``||D p||`` (the search, :func:`_resize`) until one is accepted."""
    cost = problem.cost(f)
    costs, nfev, njev = [cost], 1, 0
    if not math.isfinite(cost):
        return _Run(x, costs, 0, nfev, njev, None)
    par, delta, diag, xnorm = 0.0, 0.0, None, 0.0
    while True:
        jac = problem.jac(x).detach()
        njev += 1
        _, js, fs = _cost_and_scaled(f, jac, problem.rho)
        colnorm = js.norm(dim=0)
        if diag is None:  # the scaling D and the radius start from the first Jacobian
            diag = torch.where(colnorm > 0, colnorm, torch.ones_like(colnorm))
            xnorm = float((diag * x).norm())
            delta = factor * xnorm if xnorm > 0 else factor
        gnorm = _gradient_cosine(js.T @ fs, colnorm, math.sqrt(cost))
        if gnorm <= tol.gtol:
            return _Run(x, costs, 4, nfev, njev, jac)
        diag = torch.maximum(diag, colnorm)
        u, s, vh = _svd(js / diag)
        b = u.T @ fs.cpu().numpy()
        while True:
            par, pt = _lmpar(s, vh, b, delta, par)
            pnorm = float(np.linalg.norm(pt))
            p = -torch.from_numpy(pt).to(x) / diag
            if njev == 1 and len(costs) == 1:  # the first step bounds the first radius
                delta = min(delta, pnorm)
            trial = _try_step(problem, x, p, pnorm, par, js, cost)
            nfev += 1
            delta, par = _resize(delta, par, trial)
            accepted = trial.ratio >= 1e-4
            if accepted:
                x, f, cost = x + p, trial.f, trial.cost
                xnorm = float((diag * x).norm())
                costs.append(cost)
            status = _lm_status(trial, delta, xnorm, gnorm, nfev, tol)
            if status:
                # The covariance wants the Jacobian at the final params (for the report: not counted).
                return _Run(x, costs, status, nfev, njev, problem.jac(x).detach() if accepted else jac)
            if accepted:
                break


class _Trial(NamedTuple):
    """A trial step ``p`` and how well the linear model predicted it (MINPACK's names)."""

    f: Tensor  # the residuals at x + p
    cost: float
    pnorm: float  # ||D p||
    actred: float  # the actual relative reduction of the cost; -1 when the residuals grew tenfold
    prered: float  # the reduction the linear model predicted
    dirder: float  # the scaled directional derivative
    ratio: float  # actred / prered: 1 when the model is exact
    grew: bool  # the residual norm grew tenfold


def _try_step(problem: _Residuals, x: Tensor, p: Tensor, pnorm: float, par: float, js: Tensor, cost: float) -> _Trial:
    cost1, f1 = problem.evaluate(x + p)
    fnorm = math.sqrt(cost)
    fnorm1 = math.sqrt(cost1) if math.isfinite(cost1) else math.inf
    actred = 1 - cost1 / cost if 0.1 * fnorm1 < fnorm else -1.0
    t1 = float((js @ p).norm()) / fnorm
    t2 = math.sqrt(par) * pnorm / fnorm
    prered = t1**2 + 2 * t2**2
    dirder = -(t1**2 + t2**2)
    ratio = actred / prered if prered != 0 else 0.0
    return _Trial(f1, cost1, pnorm, actred, prered, dirder, ratio, 0.1 * fnorm1 >= fnorm)


def _resize(delta: float, par: float, trial: _Trial) -> tuple[float, float]:
    """MINPACK's trust-region update, the new ``(delta, par)``: shrink the radius on poor agreement
    (ratio at most 1/4), grow it on good agreement (at least 3/4, or an undamped step)."""
    if trial.ratio <= 0.25:
        temp = 0.5 if trial.actred >= 0 else 0.5 * trial.dirder / (trial.dirder + 0.5 * trial.actred)
        if trial.grew or temp < 0.1:
            temp = 0.1
        return temp * min(delta, trial.pnorm / 0.1), par / temp
    if par == 0 or trial.ratio >= 0.75:
        return trial.pnorm / 0.5, 0.5 * par
    return delta, par


def _lm_status(trial: _Trial, delta: float, xnorm: float, gnorm: float, nfev: int, tol: _Tolerances) -> int:
    """MINPACK's tests after a trial step: its code (a key of ``_MESSAGES``), or 0 to go on."""
    small = abs(trial.actred) <= tol.ftol and trial.prered <= tol.ftol and 0.5 * trial.ratio <= 1
    if delta <= tol.xtol * xnorm:
        return 3 if small else 2
    if small:
        return 1
    if nfev >= tol.max_nfev:
        return 5
    if abs(trial.actred) <= EPS and trial.prered <= EPS and 0.5 * trial.ratio <= 1:
        return 6
    if delta <= EPS * xnorm:
        return 7
    if gnorm <= EPS:
        return 8
    return 0


def _svd(a: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD, as numpy arrays, through numpy's LAPACK. The subproblem is n x n-sized work on a few
    vectors, done every step: at these sizes numpy's call costs far less than torch's SVD and a handful
    of small torch ops (BENCHMARKS.md, NIST: time)."""
    return np.linalg.svd(a.detach().cpu().numpy(), full_matrices=False)


def _lmpar(s: np.ndarray, vh: np.ndarray, b: np.ndarray, delta: float, par: float) -> tuple[float, np.ndarray]:
    """Moré's ``lmpar`` on the SVD ``J D^-1 = U diag(s) V^T`` (b = U^T r): the damping ``par`` and the
    scaled step ``D p`` (up to sign) with ``||D p|| ~ delta`` (within 10%), or the Gauss-Newton step
    (``par = 0``) when that is already inside the region."""
    rank = s > EPS * max(vh.shape[1], s.size) * s[0] if s.size and s[0] > 0 else s > 0
    sb = s * b

    def step(lam: float) -> np.ndarray:
        if lam == 0:
            return vh.T @ np.where(rank, sb / np.where(rank, s**2, 1.0), 0.0)
        return vh.T @ (sb / (s**2 + lam))

    def q_and_dq(lam: float) -> tuple[float, float]:
        w = sb / (s**2 + lam)
        q = float(np.linalg.norm(w))
        return q, -float((w**2 / (s**2 + lam)).sum()) / q if q > 0 else 0.0

    gn = step(0.0)
    gn_norm = float(np.linalg.norm(gn))
    if gn_norm - delta <= 0.1 * delta:
        return 0.0, gn
    # Bounds: the root lies in [parl, paru]; phi is convex decreasing so Newton from 0 underestimates.
    paru = float(np.linalg.norm(sb)) / delta
    parl = 0.0
    if bool(rank.all()):
        q0, dq0 = q_and_dq(0.0)
        parl = max(0.0, -(q0 - delta) * q0 / (delta * dq0)) if dq0 < 0 else 0.0
    if paru == 0:
        paru = 1e-300
    lam = min(max(par, parl), paru)
    if lam == 0:
        lam = paru * 1e-3 if parl == 0 else math.sqrt(parl * paru)
    for _ in range(30):
        if not parl < lam < paru:
            lam = max(1e-3 * paru, math.sqrt(parl * paru))
        q, dq = q_and_dq(lam)
        if abs(q - delta) <= 0.1 * delta:
            break
        if q > delta:
            parl = max(parl, lam)
        else:
            paru = min(paru, lam)
        if dq == 0:
            break
        lam = lam - (q - delta) * q / (delta * dq)  # Newton on 1/q(lam) - 1/delta, nearly linear
    return lam, step(lam)


# ---------------------------------------------------------------- Gauss-Newton with backtracking


def _gauss_newton(problem: _Residuals, x: Tensor, f: Tensor, tol: _Tolerances) -> _Run:
    """Gauss-Newton: the least-squares step from the SVD of the Jacobian (never the normal equations),
    shortened by Armijo backtracking until the cost decreases enough."""
    cost = problem.cost(f)
    costs, nfev, njev = [cost], 1, 0
    if not math.isfinite(cost):
        return _Run(x, costs, 0, nfev, njev, None)
    while True:
        jac = problem.jac(x).detach()
        njev += 1
        _, js, fs = _cost_and_scaled(f, jac, problem.rho)
        g = js.T @ fs
        if _gradient_cosine(g, js.norm(dim=0), math.sqrt(cost)) <= tol.gtol:
            return _Run(x, costs, 4, nfev, njev, jac)
        u, s, vh = _svd(js)
        keep = s > EPS * max(js.shape) * s[0]
        p = -torch.from_numpy(vh[keep].T @ ((u[:, keep].T @ fs.cpu().numpy()) / s[keep])).to(x)
        slope = 2 * float(g @ p)  # the directional derivative of the cost
        step = backtracking(problem.evaluate, x, p, cost, slope, max_evals=tol.max_nfev - nfev)
        nfev += step.evals
        if not (math.isfinite(step.value) and step.value <= cost):
            return _Run(x, costs, 6 if nfev < tol.max_nfev else 5, nfev, njev, jac)
        step_norm, xnorm = float((step.t * p).norm()), float(x.norm())
        actred = (cost - step.value) / cost if cost > 0 else 0.0
        x, f, cost = x + step.t * p, step.kept, step.value
        costs.append(cost)
        status = (1 if actred <= tol.ftol else 0) + (2 if step_norm <= tol.xtol * (xnorm + tol.xtol) else 0)
        if status:
            return _Run(x, costs, status, nfev, njev, problem.jac(x).detach())
        if nfev >= tol.max_nfev:  # the budget ran out after an accepted step: the Jacobian at the new x
            return _Run(x, costs, 5, nfev, njev, problem.jac(x).detach())


# ---------------------------------------------------------------- curve_fit, scipy's door


class CurveFit:
    """What :func:`curve_fit` returns; unpacks like scipy's ``popt, pcov = curve_fit(...)``.

    Attributes: ``params`` (a 1-D tensor in ``p0``'s order, or a dict when ``p0`` was a dict),
    ``covariance`` (``n x n``, flattened parameter order), ``std`` (standard errors, like ``params``),
    ``result`` (the :class:`~diyopt.Result` of the least-squares fit).
    """

    def __init__(self, params, covariance: Tensor, std, result: Result):
        self.params, self.covariance, self.std, self.result = params, covariance, std, result

    def __iter__(self):
        return iter((self.params, self.covariance))

    def __repr__(self) -> str:
        return f"CurveFit(params={self.params}, std={self.std}, stop_reason={self.result.stop_reason!r})"


def curve_fit(
    model: Callable[..., Tensor],
    x: Any,
    y: Any,
    p0: Sequence[float] | Tensor | Mapping[str, Any],
    sigma: Any = None,
    absolute_sigma: bool = False,
    loss: str = "linear",
    f_scale: float = 1.0,
    method: str = "lm",
    **options: Any,
) -> CurveFit:
    """Fit ``y ~ model(x, *params)`` (or ``model(x, **params)`` when ``p0`` is a dict) by least squares.

    The residuals are ``(model(x, *p) - y) / sigma`` (1-D ``sigma``) or ``L^-1 (model(x, *p) - y)`` with
    ``L L^T = sigma`` (2-D ``sigma``, a covariance matrix), as in ``scipy.optimize.curve_fit``. The
    covariance has scipy's definition: ``pcov = (J^T J)^+ * cost / (m - n)`` from the final (robustly
    rescaled) Jacobian, the factor left out when ``absolute_sigma``; ``cost`` is the sum of squares, or
    the robust cost ``sum(rho)`` for ``loss="huber" | "soft_l1" | "cauchy" | "arctan"``.

    Example::

        >>> import torch, diyopt
        >>> x = torch.linspace(0, 4, 30, dtype=torch.float64)
        >>> y = 2.5 * torch.exp(-1.3 * x) + 0.01 * torch.sin(7 * x)
        >>> popt, pcov = diyopt.curve_fit(lambda x, a, k: a * torch.exp(-k * x), x, y, p0=[1.0, 1.0])
        >>> popt.round(decimals=2).tolist(), tuple(pcov.shape)
        ([2.5, 1.3], (2, 2))
    """
    x = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, Tensor) else x.to(torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    named = isinstance(p0, Mapping)
    if named:
        start = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in p0.items()}
        predict = lambda p: model(x, **p)
    else:
        start = {"p": torch.as_tensor(p0, dtype=torch.float64).reshape(-1)}
        predict = lambda p: model(x, *p["p"].unbind())
    transform = _sigma_transform(sigma, y.numel())
    residual = lambda p: transform(predict(p).reshape(-1) - y)
    n = sum(v.numel() for v in start.values())
    if y.numel() < n:
        raise TypeError(f"The number of func parameters={n} must not exceed the number of data points={y.numel()}")
    result = least_squares(residual, start, method=method, loss=loss, f_scale=f_scale, **options)
    if result.stop_reason == DIVERGED:
        raise RuntimeError(f"Optimal parameters not found: {result.info['message']}")
    cost, js, _ = _cost_and_scaled(
        residual(result.params).detach(), result.info["jacobian"], robust_loss(loss, f_scale)
    )
    cov = _covariance(js, cost, absolute=absolute_sigma)
    std = cov.diagonal().sqrt()
    if named:
        sizes = [v.numel() for v in start.values()]
        std_out = {k: s.reshape(v.shape) for (k, v), s in zip(start.items(), std.split(sizes))}
        return CurveFit(result.params, cov, std_out, result)
    return CurveFit(result.params["p"], cov, std, result)


def _sigma_transform(sigma: Any, m: int) -> Callable[[Tensor], Tensor]:
    if sigma is None:
        return lambda r: r
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if sigma.numel() == 1 or sigma.shape == (m,):
        return lambda r: r / sigma
    if sigma.shape == (m, m):
        chol, info = torch.linalg.cholesky_ex(sigma)
        if int(info) != 0:
            raise ValueError("`sigma` must be positive definite.")
        return lambda r: torch.linalg.solve_triangular(chol, r.unsqueeze(1), upper=False).squeeze(1)
    raise ValueError(f"`sigma` has incorrect shape {tuple(sigma.shape)}; expected ({m},) or ({m}, {m})")
