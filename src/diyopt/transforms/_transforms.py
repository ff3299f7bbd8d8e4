"""Small composable gradient transformations. Named optimizers (``diyopt.optim``) are chains of these.

Each transform is an :class:`~diyopt.core.Optimizer`. Per-tensor ones are written as
:func:`~diyopt.core.elementwise` rules with a ``NamedTuple`` state of tensors; hyperparameters may be
Python numbers or tensors (the fast engines pass tensors so nothing recompiles when they change), so no
rule branches in Python on a hyperparameter's value -- ``torch.where`` selects instead. Validation of
hyperparameters lives one layer up, in ``diyopt.optim``.

Here: scaling and schedules, weight decay, momentum, clipping, and the wrappers that change *when* or
*where* an inner transform applies (``masked``, ``freeze``, ``apply_if_finite``, ``accumulate``).
The adaptive per-tensor scalings (Adam, RMSprop, Adagrad, ...) live in :mod:`diyopt.transforms` and are
re-exported here, so every transform is ``diyopt.transforms.X``.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from diyopt._util.validate import positive_integer
from diyopt.core.contract import Optimizer, elementwise
from diyopt.core.tree import Params

Schedule = Callable[[Tensor], Tensor]



def _zero_count(params: Params) -> Tensor:
    ref = next(iter(params.values()))
    return torch.zeros((), dtype=ref.dtype, device=ref.device)


# ---------------------------------------------------------------- scaling


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


def add_decoupled_weight_decay(lr: float | Tensor, weight_decay: float | Tensor) -> Optimizer:
    """torch's decoupled weight decay, ``param *= 1 - lr * weight_decay``, as a term of the update.

    Placed after the step: ``update + (1 - lr * weight_decay - 1) * param``, the factor formed as torch forms
    it (a tensor ``lr``'s dtype rounds ``1 - lr * weight_decay``), so the sum equals torch's
    ``param.mul_(1 - lr * weight_decay)`` followed by the step, to float64 rounding.
    """

    def update(grads: Params, state: tuple, params: Params | None = None):
        if params is None:
            raise ValueError("add_decoupled_weight_decay needs params")
        factor = (1 - lr * weight_decay) - 1
        if isinstance(factor, Tensor):
            return {k: g + factor * params[k] for k, g in grads.items()}, state
        return {k: g.add(params[k], alpha=factor) for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


# ---------------------------------------------------------------- momentum


class TraceState(NamedTuple):
    step: Tensor             # updates so far: the first one starts the buffer at the gradient
    momentum_buffer: Tensor  # b_t


@elementwise
def trace(grad, state: TraceState, param, *, decay=0.9, dampening=0.0, nesterov=False):
    r"""Heavy-ball momentum with torch.optim.SGD's semantics.

    .. math::
        b_1 = g_1,\quad b_t = \mu b_{t-1} + (1-\tau) g_t,\qquad
        u_t = g_t + \mu b_t \text{ (nesterov) or } b_t,

    with :math:`\mu` = ``decay`` (torch's ``momentum``) and :math:`\tau` = ``dampening``. The first buffer
    is the gradient itself, undampened, as in torch.
    """
    if isinstance(dampening, Tensor):
        later = state.momentum_buffer * decay + (1 - dampening) * grad
    else:
        later = torch.add(state.momentum_buffer * decay, grad, alpha=1 - dampening)
    buf = torch.where(state.step == 0, grad, later)
    update = grad + decay * buf if nesterov else buf
    return update, TraceState(state.step + 1, buf)


@trace.init
def _(param):
    return TraceState(torch.zeros((), dtype=param.dtype, device=param.device), torch.zeros_like(param))


class MomentumState(NamedTuple):
    momentum_buffer: Tensor  # b_t, from zero


@elementwise
def heavy_ball(grad, state: MomentumState, param, *, decay=0.9):
    r"""Momentum from a zero buffer, :math:`b_t = \mu b_{t-1} + g_t`, ``update = b_t`` -- RMSprop's momentum
    in torch (``buf.mul_(momentum).addcdiv_(grad, avg)``). Unlike :func:`trace` it keeps no step count."""
    buf = state.momentum_buffer * decay + grad
    return buf, MomentumState(buf)


@heavy_ball.init
def _(param):
    return MomentumState(torch.zeros_like(param))


# ---------------------------------------------------------------- clipping


@elementwise
def clip(grad, state, param, *, max_delta=1.0):
    """Clip each element to ``[-max_delta, max_delta]``."""
    if isinstance(max_delta, Tensor):
        return torch.clamp(grad, -max_delta, max_delta), state
    return grad.clamp(-max_delta, max_delta), state


def clip_by_global_norm(max_norm: float | Tensor) -> Optimizer:
    r"""Scale all updates by :math:`\min(1, \text{max\_norm} / (\lVert g \rVert_2 + 10^{-6}))`.

    :math:`\lVert g \rVert_2` is the 2-norm of all tensors taken as one vector, computed as torch does
    (the norm of the per-tensor norms), so this equals ``torch.nn.utils.clip_grad_norm_(params, max_norm)``.
    """

    def update(grads: Params, state: tuple, params: Params | None = None):
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])
        total = torch.linalg.vector_norm(norms)
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return {k: g * factor for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)


# ---------------------------------------------------------------- where an update applies


Mask = Callable[[str], bool] | Collection[str] | Mapping[str, bool]


def _selected(mask: Mask, names: list[str]) -> list[str]:
    if callable(mask):
        chosen = [n for n in names if mask(n)]
    elif isinstance(mask, Mapping):
        chosen = [n for n in names if mask.get(n, False)]
    else:
        missing = set(mask) - set(names)
        if missing:
            raise ValueError(f"mask names unknown parameter(s) {sorted(missing)}; known: {names}")
        chosen = [n for n in names if n in mask]
    return chosen


def masked(inner: Optimizer, mask: Mask) -> Optimizer:
    """Apply ``inner`` to the parameters ``mask`` selects; pass the others' updates through unchanged.

    ``mask`` is a set of names, a ``{name: bool}`` dict, or a predicate ``name -> bool``. ``inner`` sees
    (and keeps state for) the selected parameters only. Not flattenable: it depends on the names.
    Example: ``chain(masked(add_decayed_weights(0.1), lambda n: not n.endswith("bias")), scale_by_lr(1e-2))``.
    """

    def init(params: Params):
        names = _selected(mask, list(params))
        return inner.init({n: params[n] for n in names})

    def update(grads: Params, state: Any, params: Params | None = None):
        names = _selected(mask, list(grads))
        sub_params = None if params is None else {n: params[n] for n in names}
        sub_updates, state = inner.update({n: grads[n] for n in names}, state, sub_params)
        return {k: sub_updates.get(k, g) for k, g in grads.items()}, state

    return Optimizer(init, update, flattenable=False)


def freeze(mask: Mask) -> Optimizer:
    """Zero the updates of the parameters ``mask`` selects (by name): they stay where they are."""
    return masked(set_to_zero(), mask)


def _select(pred: Tensor, if_true: Any, if_false: Any) -> Any:
    """``torch.where(pred, a, b)`` leaf by leaf over two trees of the same structure."""
    return pytree.tree_map(lambda a, b: torch.where(pred, a, b), if_true, if_false)


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: Tensor  # consecutive steps with a non-finite gradient (0-dim)
    last_finite: Tensor      # whether the last gradient was finite (0-dim bool)
    total_notfinite: Tensor  # all skipped steps so far (0-dim)
    inner_state: Any         # the wrapped transform's state, frozen while steps are skipped


def apply_if_finite(inner: Optimizer, max_consecutive_errors: int = 2 ** 31 - 1) -> Optimizer:
    """Skip (zero update, inner state untouched) every step whose gradient holds a NaN or an infinity.

    Counts the skips in the state (``total_notfinite``), as ``optax.apply_if_finite``. After more than
    ``max_consecutive_errors`` consecutive bad steps the update is applied anyway (default: never).
    The inner update runs every step and ``torch.where`` picks, so nothing branches on a tensor's value.
    """

    def init(params: Params) -> ApplyIfFiniteState:
        zero = _zero_count(params)
        return ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=zero.device), zero.clone(),
                                  inner.init(params))

    def update(grads: Params, state: ApplyIfFiniteState, params: Params | None = None):
        finite = torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()
        count = torch.where(finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1)
        total = state.total_notfinite + (~finite).to(state.total_notfinite.dtype)
        updates, inner_state = inner.update(grads, state.inner_state, params)
        apply = finite | (count > max_consecutive_errors)
        updates = {k: torch.where(apply, u, torch.zeros_like(u)) for k, u in updates.items()}
        inner_state = _select(apply, inner_state, state.inner_state)
        return updates, ApplyIfFiniteState(count, finite, total, inner_state)

    return Optimizer(init, update, flattenable=inner.flattenable)


class AccumulateState(NamedTuple):
    mini_step: Tensor     # gradients accumulated since the last applied update, 0 .. every_k - 1
    gradient_step: Tensor # updates applied so far
    acc_grads: Params     # running mean of the gradients since the last applied update
    inner_state: Any      # the wrapped transform's state; it advances on applied steps only


def accumulate(inner: Optimizer, every_k: int) -> Optimizer:
    r"""Apply ``inner`` once every ``every_k`` steps to the mean of the gradients since (optax.MultiSteps).

    Steps in between return zero updates. With ``every_k`` micro-batches of one batch this is the same
    as one step on the whole batch. ``every_k`` is structural (a Python int).
    """
    every_k = positive_integer(every_k, "every_k")

    def init(params: Params) -> AccumulateState:
        zero = _zero_count(params)
        return AccumulateState(zero, zero.clone(), {k: torch.zeros_like(p) for k, p in params.items()},
                               inner.init(params))

    def update(grads: Params, state: AccumulateState, params: Params | None = None):
        n = state.mini_step
        acc = {k: a + (grads[k] - a) / (n + 1) for k, a in state.acc_grads.items()}
        emit = n == every_k - 1
        updates, inner_state = inner.update(acc, state.inner_state, params)
        updates = {k: torch.where(emit, u, torch.zeros_like(u)) for k, u in updates.items()}
        return updates, AccumulateState(
            torch.where(emit, torch.zeros_like(n), n + 1),
            state.gradient_step + emit.to(n.dtype),
            {k: torch.where(emit, torch.zeros_like(a), a) for k, a in acc.items()},
            _select(emit, inner_state, state.inner_state),
        )

    return Optimizer(init, update, flattenable=inner.flattenable)
