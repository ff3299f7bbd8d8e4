"""Small composable gradient transformations. Named optimizers (``diyopt.optim``) are chains of these.

Each transform is an :class:`~diyopt.core.Optimizer`. Per-tensor ones are written as
:func:`~diyopt.core.elementwise` rules with a ``NamedTuple`` state of tensors; hyperparameters may be
Python numbers or tensors (the fast engines pass tensors so nothing recompiles when they change).
Validation of hyperparameters lives one layer up, in ``diyopt.optim``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .core import Optimizer, Params, elementwise

Schedule = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------- scaling


def scale(factor: float | Tensor) -> Optimizer:
    """``update = factor * grad``."""

    def update(grads: Params, state: tuple, params: Params | None = None):
        return {k: g * factor for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


class ScheduleState(NamedTuple):
    count: Tensor  # number of updates so far; the schedule is evaluated at it before incrementing


def scale_by_schedule(schedule: Schedule) -> Optimizer:
    """``update = schedule(count) * grad``, with ``count`` = 0, 1, 2, ... the number of updates so far."""

    def init(params: Params) -> ScheduleState:
        ref = next(iter(params.values()))
        return ScheduleState(torch.zeros((), dtype=ref.dtype, device=ref.device))

    def update(grads: Params, state: ScheduleState, params: Params | None = None):
        factor = schedule(state.count)
        return {k: g * factor for k, g in grads.items()}, ScheduleState(state.count + 1)

    return Optimizer(init, update, flattenable=True)


def scale_by_lr(lr: float | Tensor | Schedule) -> Optimizer:
    """``update = -lr * grad``: the descent step. ``lr`` may be a number, a tensor or a schedule."""
    if callable(lr) and not isinstance(lr, Tensor):
        return scale_by_schedule(lambda count: -lr(count))
    return scale(-lr)


# ---------------------------------------------------------------- weight decay


def add_decayed_weights(weight_decay: float | Tensor) -> Optimizer:
    """``update = grad + weight_decay * param``.

    Placed before an adaptive scaling it is torch's coupled (L2) weight decay; placed after it, just
    before ``scale_by_lr``, it is decoupled weight decay (AdamW): ``param -= lr * weight_decay * param``.
    """

    def update(grads: Params, state: tuple, params: Params | None = None):
        if params is None:
            raise ValueError("add_decayed_weights needs params")
        if isinstance(weight_decay, Tensor):
            return {k: g + weight_decay * params[k] for k, g in grads.items()}, state
        return {k: g.add(params[k], alpha=weight_decay) for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


# ---------------------------------------------------------------- Adam


class AdamState(NamedTuple):
    step: Tensor            # updates taken so far (0-dim, the param's dtype)
    exp_avg: Tensor         # first moment m_t
    exp_avg_sq: Tensor      # second moment v_t
    max_exp_avg_sq: Tensor  # running max of v_t (AMSGrad); empty when amsgrad is off


@elementwise
def scale_by_adam(grad, state: AdamState, param, *, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False):
    r"""Adam's direction (Kingma & Ba, 2015), as torch.optim.Adam computes it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon},
        \quad \hat v_t = v_t \text{ or } \max_{s\le t} v_s \text{ (AMSGrad)}.

    Followed by ``scale_by_lr(lr)`` this is Adam: ``param -= lr * u_t``.
    """
    step = state.step + 1
    exp_avg = torch.lerp(state.exp_avg, grad, 1 - b1)
    exp_avg_sq = torch.addcmul(state.exp_avg_sq * b2, grad, grad, value=1 - b2)
    bias_correction1 = 1 - b1 ** step
    bias_correction2_sqrt = (1 - b2 ** step).sqrt()
    max_exp_avg_sq = state.max_exp_avg_sq
    if amsgrad:
        max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
        denom = max_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    else:
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    return exp_avg / denom / bias_correction1, AdamState(step, exp_avg, exp_avg_sq, max_exp_avg_sq)


@scale_by_adam.init
def _(param, *, amsgrad=False):
    zeros = torch.zeros_like(param)
    return AdamState(torch.zeros((), dtype=param.dtype, device=param.device), zeros, zeros.clone(),
                     zeros.clone() if amsgrad else param.new_empty(0))
