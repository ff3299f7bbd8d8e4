"""Weight decay: coupled (L2, before an adaptive scaling) and decoupled (AdamW)."""

from __future__ import annotations

from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params


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
