"""Wrappers that change *where* or *when* an inner transform applies: ``masked``, ``freeze``,
``apply_if_finite``, ``accumulate``."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from diyopt._util.validate import positive_integer
from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params
from diyopt.transforms._scaling import _zero_count, set_to_zero

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
    last_finite: Tensor  # whether the last gradient was finite (0-dim bool)
    total_notfinite: Tensor  # all skipped steps so far (0-dim)
    inner_state: Any  # the wrapped transform's state, frozen while steps are skipped


def apply_if_finite(inner: Optimizer, max_consecutive_errors: int = 2**31 - 1) -> Optimizer:
    """Skip (zero update, inner state untouched) every step whose gradient holds a NaN or an infinity.

    Counts the skips in the state (``total_notfinite``), as ``optax.apply_if_finite``. After more than
    ``max_consecutive_errors`` consecutive bad steps the update is applied anyway (default: never).
    The inner update runs every step and ``torch.where`` picks, so nothing branches on a tensor's value.
    """

    def init(params: Params) -> ApplyIfFiniteState:
        zero = _zero_count(params)
        return ApplyIfFiniteState(
            zero, torch.ones((), dtype=torch.bool, device=zero.device), zero.clone(), inner.init(params)
        )

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
    mini_step: Tensor  # gradients accumulated since the last applied update, 0 .. every_k - 1
    gradient_step: Tensor  # updates applied so far
    acc_grads: Params  # running mean of the gradients since the last applied update
    inner_state: Any  # the wrapped transform's state; it advances on applied steps only


def accumulate(inner: Optimizer, every_k: int) -> Optimizer:
    r"""Apply ``inner`` once every ``every_k`` steps to the mean of the gradients since (optax.MultiSteps).

    Steps in between return zero updates. With ``every_k`` micro-batches of one batch this is the same
    as one step on the whole batch. ``every_k`` is structural (a Python int).
    """
    every_k = positive_integer(every_k, "every_k")

    def init(params: Params) -> AccumulateState:
        zero = _zero_count(params)
        return AccumulateState(
            zero, zero.clone(), {k: torch.zeros_like(p) for k, p in params.items()}, inner.init(params)
        )

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
