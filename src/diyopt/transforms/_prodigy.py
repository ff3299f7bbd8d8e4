"""Prodigy's step (Mishchenko & Defazio, 2024), as the ``prodigyopt`` package computes it."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params


class ProdigyMoments(NamedTuple):
    s: Tensor  # EMA of the (sliced) gradients weighted by the step sizes, the D estimate's denominator
    p0: Tensor  # the (sliced) starting point x_0
    exp_avg: Tensor  # m_t = beta1 m + d (1 - beta1) g
    exp_avg_sq: Tensor  # v_t = beta2 v + d^2 (1 - beta2) g^2


class ProdigyState(NamedTuple):
    k: Tensor  # steps taken (0-dim)
    d: Tensor  # D, the distance-to-solution estimate that sets the step size
    d_max: Tensor  # the largest D estimate so far
    d_numerator: Tensor  # r_t, the D estimate's numerator (an EMA of weighted <g, x_0 - x>)
    moments: dict  # parameter name -> ProdigyMoments


def scale_by_prodigy(
    lr=1.0,
    b1=0.9,
    b2=0.999,
    beta3=None,
    eps=1e-8,
    weight_decay=0.0,
    decouple=True,
    use_bias_correction=False,
    safeguard_warmup=False,
    d0=1e-6,
    d_coef=1.0,
    growth_rate=float("inf"),
    slice_p=1,
) -> Optimizer:
    r"""Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
    ICML; arXiv:2306.06101, Algorithm 4, the Adam version): Adam whose step size ``d * lr`` is estimated.

    With :math:`\beta_3` = ``beta3`` (default :math:`\sqrt{\beta_2}`), :math:`\hat\eta = d_k \mathrm{lr}\,b_k`
    (:math:`b_k = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with ``use_bias_correction``, else 1), summed
    over every parameter:

    .. math::
        r_k = \beta_3 r_{k-1} + \tfrac{d_k}{d_0}\hat\eta\,\langle g_k, x_0 - x_k\rangle,\quad
        s_k = \beta_3 s_{k-1} + \tfrac{d_k}{d_0}\,(d_k \text{ if safeguard\_warmup else } \hat\eta)\, g_k,\\
        \hat d = d_\text{coef}\, r_k / \lVert s_k \rVert_1,\quad
        d_{k+1} = \min(\max_{j\le k} \hat d_j,\ \text{growth\_rate}\cdot d_k)\ (\text{first raised to } \hat d
        \text{ while still } d_0),\\
        m_k = \beta_1 m + d_k(1-\beta_1) g_k,\quad v_k = \beta_2 v + d_k^2(1-\beta_2) g_k^2,\quad
        x_{k+1} = x_k - \hat\eta\,\big(m_k / (\sqrt{v_k} + d_{k+1}\epsilon) + [\lambda x_k \text{ if decouple}]\big).

    ``slice_p`` uses every ``slice_p``-th element for :math:`r, s` (an approximation above 1). A step with
    :math:`\lVert s\rVert_1 = 0` (all gradients zero so far) leaves the params, D and the counter alone.
    The whole update is returned (``lr`` included); the sums make it a rule over all params at once.
    """

    def init(params: Params) -> ProdigyState:
        ref = next(iter(params.values()))

        def scalar(v):
            return torch.zeros((), dtype=ref.dtype, device=ref.device) + v

        moments = {
            k: ProdigyMoments(
                torch.zeros_like(p.flatten()[::slice_p]),
                p.flatten()[::slice_p].clone(),
                torch.zeros_like(p),
                torch.zeros_like(p),
            )
            for k, p in params.items()
        }
        return ProdigyState(scalar(0.0), scalar(d0), scalar(d0), scalar(0.0), moments)

    def update(grads: Params, state: ProdigyState, params: Params | None = None):
        if params is None:
            raise ValueError("prodigy needs params (its step size measures the distance from the start)")
        beta3_ = math.sqrt(b2) if beta3 is None else beta3
        k, d = state.k, state.d
        if use_bias_correction:
            bias_correction = torch.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
            dlr = d * lr * bias_correction
        else:
            dlr = d * lr
        numerator = state.d_numerator * beta3_
        delta, denominator, moments = [], [], {}
        for name, g in grads.items():
            p, mo = params[name], state.moments[name]
            sliced = g.flatten()[::slice_p]
            delta.append((d / d0) * dlr * torch.dot(sliced, mo.p0 - p.flatten()[::slice_p]))
            exp_avg = mo.exp_avg * b1 + g * (d * (1 - b1))
            exp_avg_sq = mo.exp_avg_sq * b2 + (g * g) * (d * d * (1 - b2))
            s = mo.s * beta3_ + sliced * ((d / d0) * (d if safeguard_warmup else dlr))
            denominator.append(s.abs().sum())
            moments[name] = ProdigyMoments(s, mo.p0, exp_avg, exp_avg_sq)
        numerator = numerator + sum(delta)
        denominator = sum(denominator)
        d_hat = d_coef * numerator / denominator
        new_d = torch.where(d == d0, torch.maximum(d, d_hat), d)
        d_max = torch.maximum(state.d_max, d_hat)
        new_d = torch.minimum(d_max, new_d * growth_rate)
        moved = denominator != 0  # the reference returns before moving anything when it is 0
        updates = {}
        for name, g in grads.items():
            p, mo = params[name], moments[name]
            denom = mo.exp_avg_sq.sqrt() + new_d * eps
            # the moved param is formed in the reference's order (decay, then addcdiv's (value * m) / denom)
            # and the update is its difference from the param: adding it back gives that param exactly
            start = p
            if decouple and (isinstance(weight_decay, Tensor) or weight_decay != 0):
                start = p + p * (-weight_decay * dlr)
            if isinstance(b1, Tensor):
                step = torch.where(b1 == 0, (g * -(dlr * new_d)) / denom, (mo.exp_avg * -dlr) / denom)
            elif b1 == 0:  # the reference keeps no momentum then, and steps along g with the *new* d
                step = (g * -(dlr * new_d)) / denom
            else:
                step = (mo.exp_avg * -dlr) / denom
            u = (start + step) - p
            updates[name] = torch.where(moved, u, torch.zeros_like(u))
        new = ProdigyState(
            torch.where(moved, k + 1, k),
            torch.where(moved, new_d, d),
            torch.where(moved, d_max, state.d_max),
            torch.where(moved, numerator, state.d_numerator),
            moments,
        )
        return updates, new

    return Optimizer(init, update)
