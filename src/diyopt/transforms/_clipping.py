"""Clipping: each element to ``[-max_delta, max_delta]``, or all gradients by their global norm."""

from __future__ import annotations

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer, elementwise
from diyopt.core.tree import Params


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
