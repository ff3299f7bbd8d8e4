"""Named optimizers, each a short :func:`~diyopt.core.chain` of transforms.

Each takes torch.optim's argument names and defaults for the same algorithm, and validates them here,
in one layer, with torch's wording (``Invalid learning rate: -1``).
"""
from __future__ import annotations

from numbers import Real
from typing import Any

from torch import Tensor

from . import transforms as T
from .core import Optimizer, chain, configurable, elementwise


# ---------------------------------------------------------------- validation, torch's wording


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def check_lr(lr: Any) -> None:
    if _is_number(lr) and not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_eps(eps: Any) -> None:
    if _is_number(eps) and not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")


def check_betas(betas: Any) -> None:
    for i, b in enumerate(betas):
        if _is_number(b) and not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def check_weight_decay(weight_decay: Any) -> None:
    if _is_number(weight_decay) and not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def nonzero(x: Any) -> bool:
    """Whether a term must be built: a tensor hyperparameter (swept, compiled) may be nonzero at run time."""
    return isinstance(x, Tensor) or x != 0


# ---------------------------------------------------------------- the seed's own rule


@elementwise
def gradient_descent(grad, state, param, *, lr=1e-3):
    """The seed's update, ``a = a - eta * a.grad``: ``update = -lr * grad``."""
    return -lr * grad, state


# ---------------------------------------------------------------- Adam family


@configurable
def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *, maximize=False,
         decoupled_weight_decay=False) -> Optimizer:
    """Adam, equal to ``torch.optim.Adam`` with the same arguments.

    ``chain([negate if maximize], [coupled decay], scale_by_adam, [decoupled decay], scale_by_lr)``.
    """
    check_lr(lr)
    check_eps(eps)
    check_betas(betas)
    check_weight_decay(weight_decay)
    decay = nonzero(weight_decay)
    return chain(
        *([T.scale(-1.0)] if maximize else []),
        *([T.add_decayed_weights(weight_decay)] if decay and not decoupled_weight_decay else []),
        T.scale_by_adam(b1=betas[0], b2=betas[1], eps=eps, amsgrad=amsgrad),
        *([T.add_decayed_weights(weight_decay)] if decay and decoupled_weight_decay else []),
        T.scale_by_lr(lr),
    )
