"""ADOPT's per-tensor step (Taniguchi et al., 2024), as ``pytorch_optimizer.ADOPT`` computes it."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import elementwise


class AdoptState(NamedTuple):
    step: Tensor  # updates taken so far (0-dim, the param's dtype)
    exp_avg: Tensor  # m_t, the momentum of the normalized gradients
    exp_avg_sq: Tensor  # v_t, the second moment, one step behind the gradient it normalizes


def adopt_clip(step: Tensor) -> Tensor:
    """ADOPT's default clipping bound ``c_t = t ** 0.25`` (the paper's Algorithm 2)."""
    return step**0.25


@elementwise
def scale_by_adopt(grad, state: AdoptState, param, *, b1=0.9, b2=0.9999, eps=1e-6, clip_lambda=adopt_clip):
    r"""ADOPT's direction (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any
    :math:`\beta_2` with the Optimal Rate", NeurIPS; arXiv:2411.02853, Algorithm 2).

    .. math::
        t = 1:\quad v_1 = g_1^2,\ u_1 = 0;\qquad
        t > 1:\quad n_t = \mathrm{clip}\big(g_t / \max(\sqrt{v_{t-1}}, \epsilon),\ c_t\big),\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) n_t,\ u_t = m_t,\
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    with :math:`c_t` = ``clip_lambda(t)`` (default :math:`t^{1/4}`; None: no clipping). The gradient is
    normalized by the second moment *before* it includes :math:`g_t` -- the change that lets any
    :math:`\beta_2` converge. Followed by ``scale_by_lr(lr)`` it is ADOPT.
    """
    step = state.step + 1
    first = state.step == 0
    normed = grad / torch.clamp(state.exp_avg_sq.sqrt(), min=eps)
    if clip_lambda is not None:
        bound = clip_lambda(step)
        normed = torch.clamp(normed, -bound, bound)
    exp_avg = torch.where(first, state.exp_avg, torch.lerp(state.exp_avg, normed, 1 - b1))
    exp_avg_sq = torch.where(first, grad * grad, state.exp_avg_sq * b2 + (1 - b2) * (grad * grad))
    update = torch.where(first, torch.zeros_like(exp_avg), exp_avg)
    return update, AdoptState(step, exp_avg, exp_avg_sq)


@scale_by_adopt.init
def _(param):
    return AdoptState(
        torch.zeros((), dtype=param.dtype, device=param.device), torch.zeros_like(param), torch.zeros_like(param)
    )
