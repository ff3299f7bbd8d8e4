"""Schedules: pure functions ``step -> value``, built by small factories (nanoGPT's ``get_lr(it)``).

``step`` is a tensor (the update count an optimizer keeps in its state: 0, 1, 2, ...) and the value is a
tensor of the same floating dtype. Nothing branches in Python on the step's value -- ``torch.where``
selects -- so a schedule runs unchanged under ``torch.compile`` and ``torch.func.vmap``. Any ``lr`` of a
named optimizer accepts one::

    >>> import torch, diyopt
    >>> from diyopt import schedules
    >>> lr = schedules.join([schedules.linear_warmup(1e-3, 100), schedules.cosine_decay(1e-3, 900)], [100])
    >>> opt = diyopt.optim.adam(lr=lr)
    >>> [round(float(lr(torch.tensor(float(t)))), 6) for t in (0, 50, 100, 550, 1000)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]

The ones torch also has agree with it value for value: ``cosine_decay`` with ``CosineAnnealingLR`` (up to
``decay_steps``; after it, this one stays at ``end_value`` where torch's curve climbs back up),
``exponential`` with ``ExponentialLR``, ``step`` with ``StepLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Schedule = Callable[[Tensor], Tensor]

__all__ = [
    "Schedule",
    "constant",
    "cosine_decay",
    "exponential",
    "join",
    "linear",
    "linear_warmup",
    "piecewise",
    "step",
]


def _float(step: Tensor | float) -> Tensor:
    """The step as a floating tensor (an integer count becomes the default float dtype)."""
    step = torch.as_tensor(step)
    return step if step.is_floating_point() else step.to(torch.get_default_dtype())


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def constant(value: float | Tensor) -> Schedule:
    """``value`` at every step."""
    return lambda step: torch.zeros_like(_float(step)) + value


def linear(init_value: float, end_value: float, transition_steps: int) -> Schedule:
    r"""From ``init_value`` at step 0 to ``end_value`` at ``transition_steps``, then constant.

    :math:`v(t) = v_0 + (v_1 - v_0) \min(t / T, 1)`.
    """
    _check_positive("transition_steps", transition_steps)

    def schedule(step: Tensor) -> Tensor:
        frac = (_float(step) / transition_steps).clamp(0.0, 1.0)
        return init_value + (end_value - init_value) * frac

    return schedule


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Warm up linearly from ``init_value`` to ``peak_value`` over ``warmup_steps``, then hold the peak."""
    return linear(init_value, peak_value, warmup_steps)


def cosine_decay(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
    r"""Half a cosine from ``init_value`` down to ``end_value`` over ``decay_steps``, then ``end_value``.

    :math:`v(t) = v_{end} + \tfrac12 (v_0 - v_{end}) (1 + \cos(\pi \min(t, T)/T))`:
    ``CosineAnnealingLR(T_max=decay_steps, eta_min=end_value)`` for :math:`t \le T`.
    """
    _check_positive("decay_steps", decay_steps)

    def schedule(step: Tensor) -> Tensor:
        t = _float(step).clamp(0.0, decay_steps)
        return end_value + (init_value - end_value) * (1 + torch.cos(math.pi * t / decay_steps)) / 2

    return schedule


def exponential(init_value: float, gamma: float) -> Schedule:
    r""":math:`v(t) = v_0 \gamma^t`: ``ExponentialLR(gamma)``."""
    return lambda step: init_value * gamma ** _float(step)


def step(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r""":math:`v(t) = v_0 \gamma^{\lfloor t / s \rfloor}`: ``StepLR(step_size, gamma)``."""
    _check_positive("step_size", step_size)
    return lambda t: init_value * gamma ** torch.floor(_float(t) / step_size)


def piecewise(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[0]`` before ``boundaries[0]``, ``values[i]`` on ``[boundaries[i-1], boundaries[i])``, ...

    ``len(values) == len(boundaries) + 1``; boundaries increase.
    """
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"piecewise needs one more value than boundaries, got {len(values)} values for {len(boundaries)} boundaries"
        )
    if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
        raise ValueError(f"piecewise boundaries must increase, got {boundaries}")

    def schedule(step: Tensor) -> Tensor:
        t = _float(step)
        out = torch.zeros_like(t) + values[0]
        for b, v in zip(boundaries, values[1:]):
            out = torch.where(t >= b, torch.zeros_like(t) + v, out)
        return out

    return schedule


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` restarted at 0, and so on.

    As ``optax.join_schedules``: at step ``t >= boundaries[i-1]`` the value is
    ``schedules[i](t - boundaries[i-1])``. Warmup then cosine:
    ``join([linear_warmup(lr, 100), cosine_decay(lr, 900)], [100])``.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join needs one more schedule than boundaries, got {len(schedules)} schedules "
            f"for {len(boundaries)} boundaries"
        )
    if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
        raise ValueError(f"join boundaries must increase, got {boundaries}")

    def schedule(step: Tensor) -> Tensor:
        t = _float(step)
        out = schedules[0](t)
        for b, s in zip(boundaries, schedules[1:]):
            out = torch.where(t >= b, s(t - b), out)
        return out

    return schedule
