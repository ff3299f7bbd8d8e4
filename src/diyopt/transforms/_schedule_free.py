r"""Schedule-free averaging (Defazio et al., 2024, "The Road Less Scheduled", arXiv:2405.15682).

Three sequences: the gradient is taken at :math:`y`, a base step moves :math:`z`, and the evaluation
point :math:`x` is the running weighted average of the :math:`z`'s:

.. math::
    y_k = (1-\beta) z_k + \beta x_k,\qquad z_{k+1} = z_k - \gamma_k d_k,\qquad
    x_{k+1} = (1 - c_{k+1}) x_k + c_{k+1} z_{k+1},

with :math:`d_k` the step direction at :math:`y_k` (the gradient for SGD, the RMS-normalized gradient for
AdamW, weight decay evaluated at :math:`y_k`), :math:`\gamma_k = \text{lr}\cdot\min(1, (k+1)/\text{warmup})`
and the averaging weight :math:`c_{k+1} = w_{k+1} / \sum_{i \le k+1} w_i`,
:math:`w_i = i^r \, (\max_{j\le i}\gamma_j)^{p}` (``r``, ``weight_lr_power``).

As the ``schedulefree`` package does, the params hold :math:`y`, the state holds :math:`z`, and :math:`x`
is never stored: ``eval_params`` recovers it, :math:`x = y + (1 - 1/\beta)(z - y)`. The update of
:math:`y` written without :math:`x`: :math:`y_{k+1} = y_k + c_{k+1}(z_k - y_k) + \gamma_k(\beta(1 -
c_{k+1}) - 1) d_k`. The weights' scalars (``step``, ``weight_sum``, ``lr_max``) are kept per tensor, as
torch keeps ``step``, so the rule is per element and runs on the fit's flat buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer, elementwise
from diyopt.core.tree import Params


class ScheduleFreeState(NamedTuple):
    step: Tensor  # k: updates so far
    weight_sum: Tensor  # w_1 + ... + w_k, the averaging weights so far
    lr_max: Tensor  # the largest warmed-up lr so far (-1 before the first update, as schedulefree)
    z: Tensor  # z_k, the base sequence; the params are y_k; eval_params gives x_k


@elementwise
def _schedule_free(
    direction, state: ScheduleFreeState, param, *, lr=1.0, b1=0.9, warmup_steps=0, r=0.0, weight_lr_power=2.0
):
    k = state.step
    # warmup_steps is structural (an int): 0 means no warmup, and no division by it
    warm = torch.clamp((k + 1) / warmup_steps, max=1.0) if warmup_steps else 1.0
    lr_k = lr * warm
    lr_max = torch.clamp(state.lr_max, min=lr_k)
    weight = (k + 1) ** r * lr_max**weight_lr_power
    weight_sum = state.weight_sum + weight
    # schedulefree: ckp1 = 0 where the weights sum to 0 (lr 0 with weight_lr_power > 0)
    ckp1 = torch.where(weight_sum > 0, weight / weight_sum, torch.zeros_like(weight_sum))
    y = torch.lerp(param, state.z, ckp1) + direction * (lr_k * (b1 * (1 - ckp1) - 1))
    z = state.z - direction * lr_k
    return y - param, ScheduleFreeState(k + 1, weight_sum, lr_max, z)


@_schedule_free.init
def _(param):
    zero = torch.zeros((), dtype=param.dtype, device=param.device)
    return ScheduleFreeState(zero, zero.clone(), torch.full_like(zero, -1.0), param.detach().clone())


def scale_by_schedule_free(lr=1.0, b1=0.9, warmup_steps=0, r=0.0, weight_lr_power=2.0) -> Optimizer:
    """Turn a step direction ``d`` into the schedule-free update of ``y`` (the module docstring), with
    ``eval_params`` giving the average ``x``. The last transform of a chain: it applies ``lr`` itself.

    Args:
      lr: the base step size; b1: the interpolation :math:`\\beta` (schedulefree's ``momentum`` /
      ``betas[0]``); warmup_steps: linear warmup of the lr over this many updates (an int, 0: none);
      r, weight_lr_power: the averaging weights' powers.
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    rule = _schedule_free(lr=lr, b1=b1, warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)

    def eval_params(state: dict, params: Params) -> Params:
        # schedulefree's optimizer.eval(): p.lerp_(z, 1 - 1/beta)
        return {k: torch.lerp(p, state[k].z, 1 - 1 / b1) for k, p in params.items()}

    # not rebuildable on its own (its eval_params holds b1): the named optimizers around it are
    return rule._replace(hyperparams=None, build=None, eval_params=eval_params)


class ScheduleFreeAdamState(NamedTuple):
    step: Tensor  # updates so far
    exp_avg_sq: Tensor  # v_k, the running mean of squared gradients


@elementwise
def scale_by_schedule_free_adam(grad, state: ScheduleFreeAdamState, param, *, b2=0.999, eps=1e-8):
    r"""AdamWScheduleFree's direction: the gradient over its bias-corrected RMS, no first moment.

    .. math:: v_k = \beta_2 v_{k-1} + (1-\beta_2) g_k^2,\qquad
              d_k = g_k / (\sqrt{v_k / (1-\beta_2^k)} + \epsilon).
    """
    k = state.step + 1
    if isinstance(b2, Tensor):
        v = state.exp_avg_sq * b2 + (1 - b2) * grad * grad
    else:  # schedulefree's exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
        v = torch.addcmul(state.exp_avg_sq * b2, grad, grad, value=1 - b2)
    denom = (v / (1 - b2**k)).sqrt() + eps
    return grad / denom, ScheduleFreeAdamState(k, v)


@scale_by_schedule_free_adam.init
def _(param):
    return ScheduleFreeAdamState(torch.zeros((), dtype=param.dtype, device=param.device), torch.zeros_like(param))
