"""Parameter uncertainties from autograd Jacobians.

For a least-squares fit with residuals :math:`r(\\theta)` (``m`` of them, ``n`` parameters) and Jacobian
:math:`J = \\partial r / \\partial \\theta` at the fit, the covariance of the estimate is

.. math::  \\mathrm{Cov} = s^2 (J^\\top J)^{+}, \\qquad s^2 = \\frac{\\sum_i r_i^2}{m - n},

with :math:`(J^\\top J)^{+}` the Moore-Penrose inverse computed from the SVD of :math:`J` (never from
:math:`J^\\top J` itself, which squares the condition number), dropping singular values below
``eps * max(m, n) * s_max`` -- the same definition as ``scipy.optimize.curve_fit``'s ``pcov``.
Standard errors are the square roots of the diagonal; NIST calls them the parameters' standard deviations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diyopt.core.tree import Params


def jacobian(residual_fn: Callable[[Params], Tensor], params: Params) -> Tensor:
    """The ``m x n`` Jacobian of ``residual_fn`` at ``params`` (flattened in dict order), by ``torch.func``."""
    from diyopt.core.tree import FlatLayout

    layout = FlatLayout(params)
    flat = layout.flatten({k: v.detach() for k, v in params.items()})
    fn = lambda v: residual_fn(layout.unflatten(v)).reshape(-1)
    return jacobian_fn(fn, fn(flat).numel(), flat.numel())(flat)


def jacobian_fn(fn: Callable[[Tensor], Tensor], m: int, n: int, mode: str = "auto") -> Callable[[Tensor], Tensor]:
    """``torch.func.jacfwd`` or ``jacrev`` of ``fn: R^n -> R^m``; ``mode="auto"`` picks by size.

    jacrev's vmapped backward carries m x m intermediates but has less overhead per op when m is small,
    so auto = rev for m <= 64 or n > m, else fwd (the timings behind the 64: BENCHMARKS.md, NIST).
    """
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"unknown jac {mode!r}; known: 'auto', 'fwd', 'rev'")
    if mode == "auto":
        mode = "rev" if m <= 64 or n > m else "fwd"
    return (torch.func.jacfwd if mode == "fwd" else torch.func.jacrev)(fn)


def pinv_normal(jac: Tensor) -> Tensor:
    """:math:`(J^\\top J)^{+}` from the SVD of ``J``, small singular values dropped as scipy does."""
    _, s, vh = torch.linalg.svd(jac, full_matrices=False)
    threshold = torch.finfo(jac.dtype).eps * max(jac.shape) * s[0]
    keep = s > threshold
    vh = vh[keep]
    return (vh.T / s[keep] ** 2) @ vh


def covariance(jac: Tensor, sum_of_squares: float | Tensor | None = None, absolute: bool = False) -> Tensor:
    """``s^2 (J^T J)^+`` with ``s^2 = sum_of_squares / (m - n)``; ``absolute=True`` leaves out ``s^2``
    (``curve_fit(absolute_sigma=True)``). With ``m <= n`` the covariance is undetermined: all ``inf``."""
    m, n = jac.shape
    cov = pinv_normal(jac)
    if absolute:
        return cov
    if m <= n:
        return torch.full_like(cov, float("inf"))
    return cov * (float(sum_of_squares) / (m - n))


def standard_errors(residual_fn: Callable[[Params], Tensor], params: Params) -> Params:
    """Standard errors of a least-squares fit at ``params``: ``sqrt(diag(covariance))``, by name."""
    jac = jacobian(residual_fn, params)
    rss = residual_fn({k: v.detach() for k, v in params.items()}).detach().square().sum()
    std = covariance(jac, rss).diagonal().sqrt()
    out, i = {}, 0
    for k, v in params.items():
        out[k] = std[i : i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out
