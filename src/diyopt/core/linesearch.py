r"""Line searches shared by the solvers and the optimizers, written once.

- :func:`armijo` and :func:`backtracking`: the sufficient-decrease condition
  :math:`f(x + t p) \le f(x) + c_1 t\, \nabla f^\top p` and the search that halves ``t`` until it holds
  (Gauss-Newton in :func:`~diyopt.least_squares`; :func:`~diyopt.newton` tests its damped steps with it);
- :func:`strong_wolfe`: bracketing and zoom by safeguarded cubic interpolation (Nocedal & Wright,
  Algorithms 3.5-3.6), step for step ``torch.optim.LBFGS``'s ``_strong_wolfe`` (:func:`~diyopt.lbfgs`,
  :func:`diyopt.optim.lbfgs`);
- :func:`two_loop`: L-BFGS's inverse-Hessian product (Nocedal & Wright, Algorithm 7.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

# ---------------------------------------------------------------- Armijo (sufficient decrease)


def armijo(value: float, f: float, t: float, slope: float, c1: float = 1e-4) -> bool:
    r"""The sufficient-decrease (Armijo) condition :math:`f(x + t p) \le f(x) + c_1\, t\, \nabla f^\top p`
    for ``value`` :math:`= f(x + t p)` and ``slope`` :math:`= \nabla f^\top p < 0`; a non-finite value
    fails it."""
    return math.isfinite(value) and value <= f + c1 * t * slope


class Backtrack(NamedTuple):
    """Where Armijo backtracking stopped."""

    t: float  # the step length
    value: float  # f(x + t p)
    kept: Any  # what ``evaluate`` returned beside the value there (residuals, a gradient)
    evals: int  # evaluations made


def backtracking(
    evaluate: Callable[[Tensor], tuple[float, Any]],
    x: Tensor,
    p: Tensor,
    f: float,
    slope: float,
    *,
    max_evals: int,
    c1: float = 1e-4,
    shrink: float = 0.5,
    min_step: float = 1e-10,
) -> Backtrack:
    """Armijo backtracking along ``p``: ``t = 1, shrink, shrink**2, ...`` until :func:`armijo` holds,
    ``max_evals`` evaluations are made or ``t < min_step``; the caller checks which.

    ``evaluate(x) -> (value, kept)``: the function at a point and anything to keep from there.
    """
    t, evals = 1.0, 0
    while True:
        value, kept = evaluate(x + t * p)
        evals += 1
        if armijo(value, f, t, slope, c1) or evals >= max_evals or t < min_step:
            return Backtrack(t, value, kept, evals)
        t *= shrink


# ---------------------------------------------------------------- strong Wolfe and the two-loop recursion


def lbfgs_direction(
    g: Tensor,
    y: Tensor,
    s: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[float],
    h_diag: float,
    history_size: int,
) -> tuple[Tensor, float]:
    """One L-BFGS direction, as torch.optim.LBFGS computes it: the curvature pair ``(y, s)`` joins the
    history when ``y^T s > 1e-10`` (the last ``history_size`` pairs are kept, ``H_0 = y^T s / y^T y``),
    then ``d = -H g`` by :func:`two_loop`. The history lists are updated in place; returns ``(d, h_diag)``."""
    ys = float(y.dot(s))
    if ys > 1e-10:
        if len(old_dirs) == history_size:
            old_dirs.pop(0), old_stps.pop(0), ro.pop(0)
        old_dirs.append(y)
        old_stps.append(s)
        ro.append(1.0 / ys)
        h_diag = ys / float(y.dot(y))
    return two_loop(-g, old_dirs, old_stps, ro, h_diag), h_diag


def two_loop(q: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list[float], h_diag: float) -> Tensor:
    """``-H g`` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), ``q = -g`` on entry."""
    al = [0.0] * len(old_dirs)
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = float(old_stps[i].dot(q)) * ro[i]
        q = torch.add(q, old_dirs[i], alpha=-al[i])
    r = q * h_diag
    for i in range(len(old_dirs)):
        be_i = float(old_dirs[i].dot(r)) * ro[i]
        r = torch.add(r, old_stps[i], alpha=al[i] - be_i)
    return r


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """The minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clipped to ``bounds``
    (Nocedal & Wright, eq. 3.59); the midpoint when the cubic has no real minimizer."""
    xmin_bound, xmax_bound = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (xmin_bound + xmax_bound) / 2.0
    d2 = d2_square**0.5
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, xmin_bound), xmax_bound)


def strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """A step ``t`` along ``d`` meeting the strong Wolfe conditions (Nocedal & Wright, Algorithms 3.5-3.6):
    bracket a step, then zoom by safeguarded cubic interpolation. Returns ``(f, g, t, evaluations)``."""
    d_norm = float(d.abs().max())
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = float(g_new.dot(d))
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    # Bracketing phase.
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # Extrapolate: the cubic minimizer within [t + 0.01 (t - t_prev), 10 t].
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        t_prev, t = t, cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        f_prev, g_prev, gtd_prev = f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

    # Zoom phase: shrink the bracket until the strong Wolfe conditions hold.
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # Keep away from the bracket's ends (More & Thuente's safeguard), as torch does.
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals
