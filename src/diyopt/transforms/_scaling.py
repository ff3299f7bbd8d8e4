"""Scaling: a constant factor, a schedule, the learning rate (``update = -lr * grad``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params

Schedule = Callable[[Tensor], Tensor]


def _zero_count(params: Params) -> Tensor:
    ref = next(iter(params.values()))
    return torch.zeros((), dtype=ref.dtype, device=ref.device)


def scale(factor: float | Tensor) -> Optimizer:
    """``update = factor * grad``."""

    def update(grads: Params, state: tuple, params: Params | None = None):
        return {k: g * factor for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


def set_to_zero() -> Optimizer:
    """``update = 0``: the parameters it sees do not move (see :func:`freeze`)."""

    def update(grads: Params, state: tuple, params: Params | None = None):
        return {k: torch.zeros_like(g) for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


class ScheduleState(NamedTuple):
    count: Tensor  # number of updates so far; the schedule is evaluated at it before incrementing


def scale_by_schedule(schedule: Schedule) -> Optimizer:
    """``update = schedule(count) * grad``, with ``count`` = 0, 1, 2, ... the number of updates so far."""

    def init(params: Params) -> ScheduleState:
        return ScheduleState(_zero_count(params))

    def update(grads: Params, state: ScheduleState, params: Params | None = None):
        factor = schedule(state.count)
        return {k: g * factor for k, g in grads.items()}, ScheduleState(state.count + 1)

    return Optimizer(init, update, flattenable=True)


def scale_by_lr(lr: float | Tensor | Schedule) -> Optimizer:
    """``update = -lr * grad``: the descent step. ``lr`` may be a number, a tensor or a schedule."""
    if callable(lr) and not isinstance(lr, Tensor):
        return scale_by_schedule(lambda count: -lr(count))
    return scale(-lr)
