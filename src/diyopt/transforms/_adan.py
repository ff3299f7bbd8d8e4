"""Adan's per-tensor step (Xie et al., 2024), as ``pytorch_optimizer.Adan`` computes it, and the global-norm
clipping that optimizer applies first."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer, elementwise
from diyopt.core.tree import Params


class AdanState(NamedTuple):
    step: Tensor  # updates taken so far (0-dim, the param's dtype)
    exp_avg: Tensor  # m_t, EMA of the gradients
    exp_avg_diff: Tensor  # v_t, EMA of the gradient differences g_t - g_{t-1}
    exp_avg_sq: Tensor  # n_t, EMA of (g_t + beta2 (g_t - g_{t-1}))^2
    prev_grad: Tensor  # g_{t-1}


@elementwise
def scale_by_adan(grad, state: AdanState, param, *, b1=0.98, b2=0.92, b3=0.99, eps=1e-8):
    r"""Adan's direction (Xie et al., 2024, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", IEEE TPAMI; arXiv:2208.06677, Algorithm 1 with bias correction).

    .. math::
        \Delta_t = g_t - g_{t-1}\ (\Delta_1 = 0),\quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t,\\
        n_t = \beta_3 n_{t-1} + (1-\beta_3) (g_t + \beta_2 \Delta_t)^2,\quad
        u_t = \frac{m_t / (1-\beta_1^t) + \beta_2 v_t / (1-\beta_2^t)}{\sqrt{n_t / (1-\beta_3^t)} + \epsilon}.

    (``pytorch_optimizer``'s betas ``(0.98, 0.92, 0.99)`` weight the *old* average: the paper's
    :math:`\beta_i` are one minus these.) Followed by ``scale_by_lr(lr)`` it is Adan's step.
    """
    step = state.step + 1
    diff = torch.where(state.step == 0, torch.zeros_like(grad), grad - state.prev_grad)
    exp_avg = torch.lerp(state.exp_avg, grad, 1 - b1)
    exp_avg_diff = torch.lerp(state.exp_avg_diff, diff, 1 - b2)
    nesterov = diff * b2 + grad
    exp_avg_sq = state.exp_avg_sq * b3 + (1 - b3) * (nesterov * nesterov)
    denom = exp_avg_sq.sqrt() / torch.sqrt(1 - b3**step) + eps
    update = exp_avg / denom / (1 - b1**step) + exp_avg_diff / denom * (b2 / (1 - b2**step))
    return update, AdanState(step, exp_avg, exp_avg_diff, exp_avg_sq, grad)


@scale_by_adan.init
def _(param):
    zeros = torch.zeros_like(param)
    return AdanState(
        torch.zeros((), dtype=param.dtype, device=param.device), zeros, zeros.clone(), zeros.clone(), zeros.clone()
    )


def clip_by_global_norm_f32(max_grad_norm: float | Tensor, eps: float = 1e-8) -> Optimizer:
    r"""Scale all gradients by :math:`\min(1, \text{max\_grad\_norm} / (\lVert g \rVert_2 + \epsilon))`, the
    norm summed in float32 as ``pytorch_optimizer`` (Adan, LAMB, ...) computes it: each tensor's norm
    rounded to float32, squared and summed there. :func:`clip_by_global_norm` is torch's
    ``clip_grad_norm_`` instead (``+1e-6``, in the gradients' dtype)."""

    def update(grads: Params, state: tuple, params: Params | None = None):
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]).float()
        total = norms.square().sum().sqrt() + eps
        factor = torch.clamp(max_grad_norm / total, max=1.0)
        return {k: g * factor.to(g.dtype) for k, g in grads.items()}, state

    return Optimizer(lambda params: (), update, flattenable=True)
