r"""L-BFGS (Liu & Nocedal, 1989), written from scratch on one flat vector, iterate for iterate
``torch.optim.LBFGS`` -- with a fixed step or the strong-Wolfe line search.

Each iteration builds the direction :math:`d = -H_k g` by the two-loop recursion over the last
``history_size`` pairs :math:`s_i = x_{i+1} - x_i,\ y_i = g_{i+1} - g_i` (a pair is kept only when
:math:`y^\top s > 10^{-10}`), with :math:`H_0 = (y^\top s / y^\top y) I`, then steps
:math:`x \leftarrow x + t d`: :math:`t` = ``lr`` (the first iteration: :math:`\min(1, 1/\lVert g\rVert_1)\,`
``lr``), or the strong-Wolfe step (cubic interpolation, :math:`c_1 = 10^{-4}, c_2 = 0.9`).

The loss is a function of the params, not a sample of it: this is a solver, not a gradient
transformation. ``lbfgs(loss_fn, params, max_iter=k)`` takes the same iterates as one
``torch.optim.LBFGS(params, max_iter=k).step(closure)``; scalars are handled as Python floats, which is
the same arithmetic as torch's float64 0-dim tensors, so float64 runs agree to rounding.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .core import Params, as_params
from .fit import FlatLayout, Result, check_loss_value
from .modules import bind_module, load_into

__all__ = ["lbfgs"]


def lbfgs(loss_fn: Callable[[Params], Tensor], params: Mapping[str, Tensor] | torch.nn.Module, *,
          max_iter: int = 100, max_eval: int | None = None, lr: float = 1.0, history_size: int = 100,
          tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
          line_search_fn: str | None = None) -> Result:
    """Minimize ``loss_fn(params)`` by L-BFGS; arguments as ``torch.optim.LBFGS``.

    Args:
      loss_fn: ``loss_fn(params) -> scalar Tensor``.
      params: the starting point, a dict of tensors (one dtype) or an ``nn.Module`` (as in
        :func:`~diyopt.fit`: the loss may call it or close over it; afterwards it holds the result).
      max_iter: the most iterations. max_eval: the most loss evaluations (default ``max_iter * 5 // 4``).
      lr: the step length (the line search's first trial step).
      history_size: pairs kept for the inverse-Hessian approximation.
      tolerance_grad: stop when ``max |g| <= tolerance_grad``.
      tolerance_change: stop when a step or a loss change is below it.
      line_search_fn: None (fixed step) or ``"strong_wolfe"``.

    Returns:
      A :class:`~diyopt.Result`; ``losses[i]`` is the loss at the start of iteration ``i``; ``stop_reason``
      is ``"converged"`` (``max |g| <= tolerance_grad``), ``"max_iter"``, ``"max_eval"`` or
      ``"tolerance_change"`` (a step, a loss change or the slope along the direction below it);
      ``info`` holds ``func_evals`` (as torch counts them) and ``final_loss``.

    Example::

        >>> import torch, diyopt
        >>> p = diyopt.problems.get("rosenbrock")
        >>> r = diyopt.lbfgs(p.loss, p.params0, max_iter=200, line_search_fn="strong_wolfe",
        ...                  tolerance_change=1e-15)
        >>> [round(v, 6) for v in r.params["x"].tolist()], r.final_loss < 1e-12, r.steps
        ([1.0, 1.0], True, 37)
    """
    _check(max_iter, max_eval, lr, history_size, line_search_fn)
    if isinstance(params, torch.nn.Module):  # as in fit: every loss style trains it, it holds the result
        module = params
        loss_fn, params = bind_module(loss_fn, module)
        result = lbfgs(loss_fn, params, max_iter=max_iter, max_eval=max_eval, lr=lr, history_size=history_size,
                       tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                       line_search_fn=line_search_fn)
        load_into(module, result.params)
        return result
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    params = as_params(params)
    layout = FlatLayout.maybe(params)
    if layout is None:
        raise TypeError("lbfgs needs all params to share one dtype and device")

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        leaf = x.detach().requires_grad_()
        loss = loss_fn(layout.unflatten({"flat": leaf}))
        check_loss_value(loss)
        (grad,) = torch.autograd.grad(loss, leaf)
        return float(loss.detach()), grad

    start = time.perf_counter()
    x = layout.flatten(params)
    loss, g = evaluate(x)
    evals = 1
    losses = [loss]
    if float(g.abs().max()) <= tolerance_grad:
        return _result(layout, x, losses, 0, start, "converged", evals, loss)

    old_dirs: list[Tensor] = []   # y_i
    old_stps: list[Tensor] = []   # s_i
    ro: list[float] = []          # 1 / y_i^T s_i
    h_diag = 1.0
    d = t = prev_g = None
    stop = "max_iter"
    n_iter = 0
    known = True  # whether `loss` is the loss at the current x
    while n_iter < max_iter:
        n_iter += 1
        if n_iter == 1:
            d = -g
        else:
            y, s = g - prev_g, d * t
            ys = float(y.dot(s))
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0), old_stps.pop(0), ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                h_diag = ys / float(y.dot(y))
            d = _two_loop(-g, old_dirs, old_stps, ro, h_diag)
        prev_g, prev_loss = g, loss
        t = min(1.0, 1.0 / float(g.abs().sum())) * lr if n_iter == 1 else lr
        gtd = float(g.dot(d))
        if gtd > -tolerance_change:  # the slope along d is below tolerance: nothing left to gain
            stop = "tolerance_change"
            break

        if line_search_fn == "strong_wolfe":
            def along(x0: Tensor, step: float, direction: Tensor) -> tuple[float, Tensor]:
                return evaluate(torch.add(x0, direction, alpha=step))

            loss, g, t, ls_evals = _strong_wolfe(along, x, t, d, loss, g, gtd, tolerance_change=tolerance_change,
                                                 max_ls=max_eval - evals)
            x = torch.add(x, d, alpha=t)
        else:
            x = torch.add(x, d, alpha=t)
            ls_evals = 0
            if n_iter != max_iter:  # torch skips the evaluation after the last iteration
                loss, g = evaluate(x)
                ls_evals = 1
        evals += ls_evals
        known = ls_evals > 0
        if n_iter == max_iter:
            break
        losses.append(loss)
        if evals >= max_eval:
            stop = "max_eval"
            break
        if float(g.abs().max()) <= tolerance_grad:
            stop = "converged"
            break
        if float((d * t).abs().max()) <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            stop = "tolerance_change"
            break
    # The loss at the final x, for the report; torch does not evaluate it (nor count it) after the last
    # fixed-step iteration, so neither do func_evals here.
    final = loss if known else evaluate(x)[0]
    return _result(layout, x, losses, n_iter, start, stop, evals, final)


def _two_loop(q: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list[float],
              h_diag: float) -> Tensor:
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


def _result(layout, x, losses, n_iter, start, stop, evals, final_loss) -> Result:
    info = {"func_evals": evals, "final_loss": final_loss}
    return Result(layout.unflatten({"flat": x.detach()}), torch.tensor(losses, dtype=torch.float64), n_iter,
                  time.perf_counter() - start, stop, info=info)


def _check(max_iter, max_eval, lr, history_size, line_search_fn) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    for name, value in (("max_iter", max_iter), ("history_size", history_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_eval is not None and (isinstance(max_eval, bool) or not isinstance(max_eval, int) or max_eval < 1):
        raise ValueError(f"max_eval must be a positive integer or None, got {max_eval!r}")
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")


# ---------------------------------------------------------------- strong-Wolfe line search


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """The minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clipped to ``bounds``
    (Nocedal & Wright, eq. 3.59); the midpoint when the cubic has no real minimizer."""
    xmin_bound, xmax_bound = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square < 0:
        return (xmin_bound + xmax_bound) / 2.0
    d2 = d2_square ** 0.5
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, xmin_bound), xmax_bound)


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
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
        t_prev, t = t, _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
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
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
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
