"""Momentum: torch's SGD trace (dampening, Nesterov) and plain heavy ball."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import elementwise


class TraceState(NamedTuple):
    step: Tensor  # updates so far: the first one starts the buffer at the gradient
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
