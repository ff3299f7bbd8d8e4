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

from diyopt._util.validate import positive_integer
from diyopt.core.checks import check_loss_value
from diyopt.core.linesearch import lbfgs_direction, strong_wolfe
from diyopt.core.result import CONVERGED, MAX_STEPS, Result
from diyopt.core.tree import Params
from diyopt.solvers._start import start_from

__all__ = ["lbfgs"]


def lbfgs(
    loss_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | torch.nn.Module,
    *,
    max_iter: int = 100,
    max_eval: int | None = None,
    lr: float = 1.0,
    history_size: int = 100,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    line_search_fn: str | None = None,
) -> Result:
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
      A :class:`~diyopt.Result` (its words and counts: :mod:`diyopt.core.result`); ``losses[i]`` is the loss
      at the start of iteration ``i``; ``steps`` the iterations and ``nfev == njev`` the loss-and-gradient
      evaluations, as torch counts them (``n_iter``, ``func_evals``); ``stop_reason`` is ``"converged"``
      (``max |g| <= tolerance_grad``, or a step, a loss change or the slope along the direction below
      ``tolerance_change``) or ``"max_steps"`` (max_iter or max_eval used); ``info["message"]`` says which.

    Example::

        >>> import torch, diyopt
        >>> p = diyopt.problems.get("rosenbrock")
        >>> r = diyopt.lbfgs(p.loss, p.params0, max_iter=200, line_search_fn="strong_wolfe",
        ...                  tolerance_change=1e-15)
        >>> [round(v, 6) for v in r.params["x"].tolist()], r.final_loss < 1e-12, r.steps
        ([1.0, 1.0], True, 37)
    """
    max_iter, max_eval, history_size = _check(max_iter, max_eval, lr, history_size, line_search_fn)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    begin = start_from(loss_fn, params, float64=False, solver="lbfgs")  # torch's LBFGS keeps the params' dtype
    layout = begin.layout

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        leaf = x.detach().requires_grad_()
        loss = begin.fn(layout.unflatten(leaf))
        check_loss_value(loss)
        (grad,) = torch.autograd.grad(loss, leaf)
        return float(loss.detach()), grad

    started = time.perf_counter()
    x = begin.x
    loss, g = evaluate(x)
    evals = 1
    losses = [loss]
    stop = message = None
    if float(g.abs().max()) <= tolerance_grad:
        stop, message = CONVERGED, _SMALL_GRADIENT

    old_dirs: list[Tensor] = []  # y_i
    old_stps: list[Tensor] = []  # s_i
    ro: list[float] = []  # 1 / y_i^T s_i
    h_diag = 1.0
    d = t = prev_g = None
    n_iter = 0
    known = True  # whether `loss` is the loss at the current x
    while stop is None and n_iter < max_iter:
        n_iter += 1
        if n_iter == 1:
            d = -g
        else:
            y, s = g - prev_g, d * t
            d, h_diag = lbfgs_direction(g, y, s, old_dirs, old_stps, ro, h_diag, history_size)
        prev_g, prev_loss = g, loss
        t = min(1.0, 1.0 / float(g.abs().sum())) * lr if n_iter == 1 else lr
        gtd = float(g.dot(d))
        if gtd > -tolerance_change:  # the slope along d is below tolerance: nothing left to gain
            stop, message = CONVERGED, "the slope along the search direction is above -tolerance_change"
            break

        if line_search_fn == "strong_wolfe":

            def along(x0: Tensor, step: float, direction: Tensor) -> tuple[float, Tensor]:
                return evaluate(torch.add(x0, direction, alpha=step))

            loss, g, t, ls_evals = strong_wolfe(
                along, x, t, d, loss, g, gtd, tolerance_change=tolerance_change, max_ls=max_eval - evals
            )
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
            stop, message = MAX_STEPS, "max_eval reached"
            break
        if float(g.abs().max()) <= tolerance_grad:
            stop, message = CONVERGED, _SMALL_GRADIENT
            break
        if float((d * t).abs().max()) <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            stop, message = CONVERGED, "a step or a loss change is below tolerance_change"
            break
    if stop is None:
        stop, message = MAX_STEPS, "max_iter reached"
    # The loss at the final x, for the report; torch does not evaluate it (nor count it) after the last
    # fixed-step iteration, so neither does nfev here.
    final = loss if known else evaluate(x)[0]
    seconds = time.perf_counter() - started
    return Result(
        begin.finish(x),
        torch.tensor(losses, dtype=torch.float64),
        n_iter,
        seconds,
        stop,
        info={"message": message, "final_loss": final},
        nfev=evals,
        njev=evals,
    )


_SMALL_GRADIENT = "the largest gradient component is at most tolerance_grad"


def _check(max_iter, max_eval, lr, history_size, line_search_fn) -> tuple[int, int | None, int]:
    """The arguments checked, as torch.optim.LBFGS words them; the integers as ints."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
    return (
        positive_integer(max_iter, "max_iter"),
        None if max_eval is None else positive_integer(max_eval, "max_eval"),
        positive_integer(history_size, "history_size"),
    )


# ---------------------------------------------------------------- strong-Wolfe line search
