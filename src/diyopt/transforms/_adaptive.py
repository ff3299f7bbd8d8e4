"""Per-tensor adaptive scalings: the direction of Adam, RMSprop, Adagrad, Adadelta, Adamax, NAdam, RAdam,
Rprop and Lion, each an :func:`~diyopt.core.elementwise` rule with a ``NamedTuple`` state of tensors.

Public through ``diyopt.transforms`` (``diyopt.transforms.scale_by_adam``); this module only keeps
``transforms.py`` short. The state fields carry torch.optim's state names (``exp_avg``, ``square_avg``,
``acc_delta``, ``sum``, ``exp_inf``, ``mu_product``, ``prev``, ``step_size``, ``step``) so a state can be
read side by side with ``torch.optim.X().state``.

Rules follow torch's single-tensor loops operation for operation, so that float64 runs agree to rounding.
Hyperparameters may be Python numbers or tensors (the compiled and batched engines pass tensors), so no
rule branches in Python on a hyperparameter's value; the structural flags (``amsgrad``, ``centered``)
are Python booleans. Most rules return a direction that ``scale_by_lr(lr)`` turns into a descent step;
Rprop returns the step itself, as its step sizes *are* its learning rates.

A scalar torch derives from a tensor hyperparameter is computed, as torch computes it, in that tensor's
dtype: ``1 - beta ** t`` for a float32 ``beta`` is a float32 number even for float64 params. Adam, Adamax
and NAdam fold the learning rate into such scalars (``lr / (1 - beta1 ** t)``); given ``lr`` they return
the step itself, with torch's rounding, instead of the direction (``diyopt.optim`` passes it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import elementwise


def _addcmul(acc: Tensor, t1: Tensor, t2: Tensor, value) -> Tensor:
    """``acc + value * t1 * t2``; torch.addcmul's ``value`` must be a Python number (a tensor there calls
    ``.item()``, which breaks torch.compile's graph and vmap), so tensor hyperparameters take plain ops."""
    if isinstance(value, Tensor):
        return acc + value * t1 * t2
    return torch.addcmul(acc, t1, t2, value=value)


def _bias_correction(beta, step: Tensor) -> Tensor:
    """``1 - beta ** step``: in ``beta``'s dtype when it is a tensor (torch's ``1 - beta1 ** step``). Called
    as torch functions: ``beta ** tensor`` and ``1 - tensor`` go through Python-level reflected-operator
    wrappers that cost more than the arithmetic in an eager step."""
    if isinstance(beta, Tensor):
        # torch raises a tensor beta to a Python-float step, a kernel that takes b*b and b*b*b for the
        # exponents 2 and 3 and pow otherwise: the same here, so a float32 beta rounds as torch's does
        step = step.to(beta.dtype)
        power = torch.where(step == 2, beta * beta, torch.where(step == 3, beta * beta * beta, torch.pow(beta, step)))
        return torch.rsub(power, 1)
    if step.dtype in (torch.float16, torch.bfloat16, torch.float32) and step.device.type != "mps":
        step = step.double()  # torch forms it from Python floats, in double, whatever the params' dtype
    return torch.rsub(torch.pow(beta, step), 1)


def _weight(beta, like: Tensor):
    """``1 - beta`` as ``lerp``'s weight: lerp wants one dtype, so a tensor beta is cast first, as torch does."""
    return 1 - beta.to(like.dtype) if isinstance(beta, Tensor) else 1 - beta


def _over(lr, x):
    """``lr / x`` in a tensor ``lr``'s dtype: torch's step sizes (``lr / bias_correction1``) are rounded there."""
    return lr / x.to(lr.dtype) if isinstance(lr, Tensor) and isinstance(x, Tensor) else lr / x


def _scalar_dtype(param: Tensor) -> torch.dtype:
    """torch.optim's dtype for scalar state (NAdam's ``mu_product``): float64 when that is the default dtype,
    float32 otherwise. One exception, deliberate: float32 params keep float32 state under a float64 default
    (torch would keep that scalar in float64), so a float32 run's state stays float32 throughout."""
    wide = torch.get_default_dtype() == torch.float64 and param.dtype == torch.float64
    return torch.float64 if wide else torch.float32


def _zero_step(param: Tensor) -> Tensor:
    """The step count: a 0-dim tensor in the param's dtype, so it compiles and vmaps with the rest."""
    return torch.zeros((), dtype=param.dtype, device=param.device)


# ---------------------------------------------------------------- Adam


class AdamState(NamedTuple):
    step: Tensor  # updates taken so far (0-dim, the param's dtype)
    exp_avg: Tensor  # first moment m_t
    exp_avg_sq: Tensor  # second moment v_t
    max_exp_avg_sq: Tensor  # running max of v_t (AMSGrad); empty when amsgrad is off


@elementwise
def scale_by_adam(grad, state: AdamState, param, *, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False, lr=None):
    r"""Adam's direction (Kingma & Ba, 2015), as torch.optim.Adam computes it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon},
        \quad \hat v_t = v_t \text{ or } \max_{s\le t} v_s \text{ (AMSGrad)}.

    Followed by ``scale_by_lr(lr)`` this is Adam: ``param -= lr * u_t``. Given ``lr`` it returns that step,
    ``-(lr / (1-\beta_1^t)) \, m_t / (\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon)``, as torch forms it.
    """
    step = state.step + 1
    exp_avg = torch.lerp(state.exp_avg, grad, _weight(b1, grad))
    exp_avg_sq = _addcmul(state.exp_avg_sq * b2, grad, grad, 1 - b2)
    bias_correction1 = _bias_correction(b1, step)
    bias_correction2_sqrt = _bias_correction(b2, step).sqrt()
    max_exp_avg_sq = state.max_exp_avg_sq
    if amsgrad:
        max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
        denom = max_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    else:
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    new = AdamState(step, exp_avg, exp_avg_sq, max_exp_avg_sq)
    if lr is None:
        return exp_avg / denom / bias_correction1, new
    return exp_avg / denom * -_over(lr, bias_correction1), new


@scale_by_adam.init
def _(param, *, amsgrad=False):
    zeros = torch.zeros_like(param)
    return AdamState(_zero_step(param), zeros, zeros.clone(), zeros.clone() if amsgrad else param.new_empty(0))


# ---------------------------------------------------------------- RMSprop


class RmsState(NamedTuple):
    step: Tensor  # updates taken so far
    square_avg: Tensor  # EMA of g^2
    grad_avg: Tensor  # EMA of g (centered only; empty otherwise)


@elementwise
def scale_by_rms(grad, state: RmsState, param, *, alpha=0.99, eps=1e-8, centered=False):
    r"""RMSprop's direction (Hinton, 2012), as torch.optim.RMSprop computes it.

    .. math::
        s_t = \alpha s_{t-1} + (1-\alpha) g_t^2,\quad \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t,\\
        u_t = g_t / (\sqrt{s_t - [\bar g_t^2 \text{ if centered}]} + \epsilon).

    No bias correction: the averages start at zero, as in torch.
    """
    square_avg = _addcmul(state.square_avg * alpha, grad, grad, 1 - alpha)
    grad_avg = state.grad_avg
    if centered:
        grad_avg = torch.lerp(grad_avg, grad, 1 - alpha)
        avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1).sqrt()
    else:
        avg = square_avg.sqrt()
    return grad / (avg + eps), RmsState(state.step + 1, square_avg, grad_avg)


@scale_by_rms.init
def _(param, *, centered=False):
    return RmsState(
        _zero_step(param), torch.zeros_like(param), torch.zeros_like(param) if centered else param.new_empty(0)
    )


# ---------------------------------------------------------------- Adagrad


class AdagradState(NamedTuple):
    step: Tensor  # updates taken so far
    sum: Tensor  # running sum of g^2, from initial_accumulator_value


@elementwise
def scale_by_adagrad(grad, state: AdagradState, param, *, eps=1e-10, initial_accumulator_value=0.0):
    r"""Adagrad's direction (Duchi et al., 2011): :math:`S_t = S_{t-1} + g_t^2,\ u_t = g_t/(\sqrt{S_t}+\epsilon)`.

    ``S_0 = initial_accumulator_value``. torch's ``lr_decay`` is a schedule on the learning rate,
    ``lr / (1 + t lr_decay)`` (see ``diyopt.optim.adagrad``).
    """
    total = torch.addcmul(state.sum, grad, grad)
    return grad / (total.sqrt() + eps), AdagradState(state.step + 1, total)


@scale_by_adagrad.init
def _(param, *, initial_accumulator_value=0.0):
    return AdagradState(_zero_step(param), torch.zeros_like(param) + initial_accumulator_value)


# ---------------------------------------------------------------- Adadelta


class AdadeltaState(NamedTuple):
    step: Tensor  # updates taken so far
    square_avg: Tensor  # EMA of g^2
    acc_delta: Tensor  # EMA of the squared updates


@elementwise
def scale_by_adadelta(grad, state: AdadeltaState, param, *, rho=0.9, eps=1e-6):
    r"""Adadelta's direction (Zeiler, 2012), as torch.optim.Adadelta computes it.

    .. math::
        s_t = \rho s_{t-1} + (1-\rho) g_t^2,\quad
        u_t = \frac{\sqrt{a_{t-1}+\epsilon}}{\sqrt{s_t+\epsilon}}\, g_t,\quad
        a_t = \rho a_{t-1} + (1-\rho) u_t^2.

    torch then steps ``param -= lr * u_t`` (lr defaults to 1).
    """
    square_avg = _addcmul(state.square_avg * rho, grad, grad, 1 - rho)
    std = (square_avg + eps).sqrt()
    delta = (state.acc_delta + eps).sqrt() / std * grad
    acc_delta = _addcmul(state.acc_delta * rho, delta, delta, 1 - rho)
    return delta, AdadeltaState(state.step + 1, square_avg, acc_delta)


@scale_by_adadelta.init
def _(param):
    return AdadeltaState(_zero_step(param), torch.zeros_like(param), torch.zeros_like(param))


# ---------------------------------------------------------------- Adamax


class AdamaxState(NamedTuple):
    step: Tensor  # updates taken so far
    exp_avg: Tensor  # first moment m_t
    exp_inf: Tensor  # exponentially weighted infinity norm u_t


@elementwise
def scale_by_adamax(grad, state: AdamaxState, param, *, b1=0.9, b2=0.999, eps=1e-8, lr=None):
    r"""Adamax's direction (Kingma & Ba, 2015, sec. 7), as torch.optim.Adamax computes it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon),\quad
        d_t = \frac{m_t}{(1-\beta_1^t)\, u_t}.

    Given ``lr`` it returns the step ``-(lr / (1-\beta_1^t)) m_t / u_t``, as torch forms it.
    """
    step = state.step + 1
    exp_avg = torch.lerp(state.exp_avg, grad, _weight(b1, grad))
    exp_inf = torch.maximum(state.exp_inf * b2, grad.abs() + eps)
    new = AdamaxState(step, exp_avg, exp_inf)
    if lr is None:
        return exp_avg / exp_inf / _bias_correction(b1, step), new
    return exp_avg / exp_inf * -_over(lr, _bias_correction(b1, step)), new


@scale_by_adamax.init
def _(param):
    return AdamaxState(_zero_step(param), torch.zeros_like(param), torch.zeros_like(param))


# ---------------------------------------------------------------- NAdam


class NadamState(NamedTuple):
    step: Tensor  # updates taken so far
    exp_avg: Tensor  # first moment m_t
    exp_avg_sq: Tensor  # second moment v_t
    mu_product: Tensor  # prod_{s<=t} mu_s (0-dim), starts at 1


@elementwise
def scale_by_nadam(grad, state: NadamState, param, *, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=4e-3, lr=None):
    r"""NAdam's direction (Dozat, 2016) with torch's momentum schedule.

    .. math::
        \mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi}),\quad m_t, v_t \text{ as in Adam},\quad
        d_t = \frac{1}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}\Big(\frac{1-\mu_t}{1-\prod_{s\le t}\mu_s} g_t
        + \frac{\mu_{t+1}}{1-\prod_{s\le t+1}\mu_s} m_t\Big),

    with :math:`\psi` = ``momentum_decay``. As in torch, :math:`\prod_s \mu_s` (``mu_product``) is kept in
    torch's scalar dtype (float32 unless the default dtype is float64). Given ``lr`` it returns the step
    :math:`-\mathrm{lr}\, d_t`, with the two coefficients formed as torch forms them.
    """
    step = state.step + 1
    mu = b1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = state.mu_product * mu.to(state.mu_product.dtype)
    exp_avg = torch.lerp(state.exp_avg, grad, _weight(b1, grad))
    exp_avg_sq = _addcmul(state.exp_avg_sq * b2, grad, grad, 1 - b2)
    denom = (exp_avg_sq / _bias_correction(b2, step)).sqrt() + eps
    new = NadamState(step, exp_avg, exp_avg_sq, mu_product)
    product = mu_product.to(mu.dtype)  # torch reads it out as a Python float
    if lr is None:
        return (
            grad / denom * ((1.0 - mu) / (1.0 - product)) + exp_avg / denom * (mu_next / (1.0 - product * mu_next))
        ), new
    # torch: (-lr * (1 - mu)) / (1 - mu_product), in a tensor lr's dtype
    neg_lr = -lr
    c1 = _over(neg_lr * _cast(1.0 - mu, lr), _cast(1.0 - product, lr))
    c2 = _over(neg_lr * _cast(mu_next, lr), _cast(1.0 - product * mu_next, lr))
    return grad / denom * c1 + exp_avg / denom * c2, new


def _cast(x: Tensor, like):
    """``x`` in a tensor ``like``'s dtype (torch's Python-float scalars meet a tensor lr in its dtype)."""
    return x.to(like.dtype) if isinstance(like, Tensor) else x


@scale_by_nadam.init
def _(param):
    return NadamState(
        _zero_step(param),
        torch.zeros_like(param),
        torch.zeros_like(param),
        torch.ones((), dtype=_scalar_dtype(param), device=param.device),
    )


# ---------------------------------------------------------------- RAdam


class RadamState(NamedTuple):
    step: Tensor  # updates taken so far
    exp_avg: Tensor  # first moment m_t
    exp_avg_sq: Tensor  # second moment v_t


@elementwise
def scale_by_radam(grad, state: RadamState, param, *, b1=0.9, b2=0.999, eps=1e-8):
    r"""RAdam's direction (Liu et al., 2020): Adam rectified while the variance estimate is unreliable.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1,\quad \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t},\\
        d_t = \frac{m_t}{1-\beta_1^t} \cdot \begin{cases}
          r_t \sqrt{1-\beta_2^t} / (\sqrt{v_t}+\epsilon) & \rho_t > 5 \\ 1 & \text{otherwise}\end{cases},\quad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}.
    """
    step = state.step + 1
    exp_avg = torch.lerp(state.exp_avg, grad, _weight(b1, grad))
    exp_avg_sq = _addcmul(state.exp_avg_sq * b2, grad, grad, 1 - b2)
    bias_correction2 = _bias_correction(b2, step)
    corrected = exp_avg / _bias_correction(b1, step)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * step * (b2**step) / bias_correction2
    # Clamped so the unused branch of the `where` holds no NaN (rho_t < 4 early on).
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).clamp(min=0).sqrt()
    adaptive = bias_correction2**0.5 / (exp_avg_sq.sqrt() + eps)
    direction = torch.where(rho_t > 5.0, corrected * adaptive * rect, corrected)
    return direction, RadamState(step, exp_avg, exp_avg_sq)


@scale_by_radam.init
def _(param):
    return RadamState(_zero_step(param), torch.zeros_like(param), torch.zeros_like(param))


# ---------------------------------------------------------------- Rprop


class RpropState(NamedTuple):
    step: Tensor  # updates taken so far
    prev: Tensor  # the previous (masked) gradient
    step_size: Tensor  # per-element step size, starts at lr


@elementwise
def scale_by_rprop(
    grad, state: RpropState, param, *, lr=1e-2, etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0
):
    r"""Rprop's step (Riedmiller & Braun, 1993), as torch.optim.Rprop computes it -- a full update.

    Per element: if :math:`g_t g_{t-1} > 0` the step size grows by ``etaplus``, if ``< 0`` it shrinks by
    ``etaminus`` and the gradient is zeroed (no move, and no sign memory for the next step), else it
    stays; it is clamped to ``[step_size_min, step_size_max]``; ``update = -sign(g_t) * step_size``.
    ``lr`` is only the initial step size.
    """
    sign = (grad * state.prev).sign()
    one = torch.ones_like(grad)  # where() on two Python scalars would return the default dtype
    factor = torch.where(sign > 0, one * etaplus, torch.where(sign < 0, one * etaminus, one))
    step_size = (state.step_size * factor).clamp(step_size_min, step_size_max)
    grad = torch.where(sign < 0, torch.zeros_like(grad), grad)
    return -grad.sign() * step_size, RpropState(state.step + 1, grad, step_size)


@scale_by_rprop.init
def _(param, *, lr=1e-2):
    return RpropState(_zero_step(param), torch.zeros_like(param), torch.zeros_like(param) + lr)


# ---------------------------------------------------------------- Lion


class LionState(NamedTuple):
    step: Tensor  # updates taken so far
    exp_avg: Tensor  # momentum m_t


@elementwise
def scale_by_lion(grad, state: LionState, param, *, b1=0.9, b2=0.99):
    r"""Lion's direction (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2).

    .. math::
        d_t = \operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t),\quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t.

    Lion is then ``chain(scale_by_lion, add_decayed_weights(wd), scale_by_lr(lr))``.
    """
    direction = torch.lerp(state.exp_avg, grad, _weight(b1, grad)).sign()
    return direction, LionState(state.step + 1, torch.lerp(state.exp_avg, grad, _weight(b2, grad)))


@scale_by_lion.init
def _(param):
    return LionState(_zero_step(param), torch.zeros_like(param))


# ---------------------------------------------------------------- ASGD


class AsgdState(NamedTuple):
    step: Tensor  # updates taken so far
    eta: Tensor  # the current step size eta_t (0-dim, torch's scalar dtype), starts at lr
    mu: Tensor  # the averaging weight mu_t (0-dim, torch's scalar dtype), starts at 1
    ax: Tensor  # the running average of the iterates


@elementwise
def scale_by_asgd(grad, state: AsgdState, param, *, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6):
    r"""Averaged SGD's step (Polyak & Juditsky, 1992), as torch.optim.ASGD computes it -- a full update.

    .. math::
        \theta_t = (1 - \lambda\eta_{t-1})\theta_{t-1} - \eta_{t-1} g_t,\quad
        \bar\theta_t = \bar\theta_{t-1} + \mu_{t-1}(\theta_t - \bar\theta_{t-1}),\\
        \eta_t = \mathrm{lr} / (1 + \lambda\,\mathrm{lr}\,t)^\alpha,\quad \mu_t = 1 / \max(1, t - t_0).

    The average :math:`\bar\theta` (``ax``) is kept in the state; the parameters follow plain SGD with the
    decaying step. ``eta`` and ``mu`` live in torch's scalar dtype, as torch keeps them.
    """
    step = state.step + 1
    eta = state.eta.to(param.dtype)  # torch reads eta out as a Python float
    new_param = param * (1 - lambd * eta) - eta * grad
    averaged = state.ax + (new_param - state.ax) * state.mu.to(param.dtype)
    ax = torch.where(state.mu != 1, averaged, new_param)
    at = step.to(lr.dtype) if isinstance(lr, Tensor) else step
    new_eta = (lr / ((1 + lambd * lr * at) ** alpha)).to(state.eta.dtype)
    new_mu = (1 / torch.clamp(step - t0, min=1)).to(state.mu.dtype)
    return new_param - param, AsgdState(step, new_eta, new_mu, ax)


@scale_by_asgd.init
def _(param, *, lr=1e-2):
    scalar = _scalar_dtype(param)
    return AsgdState(
        _zero_step(param),
        torch.as_tensor(lr, dtype=scalar, device=param.device).clone().detach(),
        torch.ones((), dtype=scalar, device=param.device),
        torch.zeros_like(param),
    )


# ---------------------------------------------------------------- SparseAdam


class SparseAdamState(NamedTuple):
    step: Tensor  # updates taken so far
    exp_avg: Tensor  # first moment m_t (dense; only the rows with a gradient change)
    exp_avg_sq: Tensor  # second moment v_t (dense; likewise)


@elementwise
def scale_by_sparse_adam(grad, state: SparseAdamState, param, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, maximize=False):
    r"""Lazy Adam for sparse gradients (``nn.Embedding(sparse=True)``), as torch.optim.SparseAdam -- a full
    update, itself sparse: only the entries with a gradient move, and only their moments are updated.

    .. math::
        m_i \mathrel{+}= (1-\beta_1)(g_i - m_i),\quad v_i \mathrel{+}= (1-\beta_2)(g_i^2 - v_i),\quad
        \Delta\theta_i = -\mathrm{lr}\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m_i}{\sqrt{v_i}+\epsilon}
        \quad (i \text{ with a gradient}).
    """
    if not grad.is_sparse:
        raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
    grad = (-grad if maximize else grad).coalesce()
    step = state.step + 1
    indices, values = grad._indices(), grad._values()

    def sparse(v):
        return torch.sparse_coo_tensor(indices, v, grad.size(), check_invariants=False)  # coalesced above

    old_exp_avg = state.exp_avg.sparse_mask(grad)._values()
    exp_avg_update = (values - old_exp_avg) * (1 - b1)
    old_exp_avg_sq = state.exp_avg_sq.sparse_mask(grad)._values()
    exp_avg_sq_update = (values.pow(2) - old_exp_avg_sq) * (1 - b2)
    denom = (exp_avg_sq_update + old_exp_avg_sq).sqrt() + eps
    bias_correction1 = _bias_correction(b1, step)
    bias_correction2 = _bias_correction(b2, step)
    step_size = lr * bias_correction2.sqrt() / bias_correction1
    if isinstance(lr, Tensor):
        step_size = lr * bias_correction2.sqrt().to(lr.dtype) / bias_correction1.to(lr.dtype)
    update = sparse(-step_size * ((exp_avg_update + old_exp_avg) / denom))
    new = SparseAdamState(step, state.exp_avg + sparse(exp_avg_update), state.exp_avg_sq + sparse(exp_avg_sq_update))
    return update, new


@scale_by_sparse_adam.init
def _(param):
    if param.is_sparse:
        raise ValueError("SparseAdam requires dense parameter tensors")
    if torch.is_complex(param):
        raise ValueError("SparseAdam does not support complex parameters")
    return SparseAdamState(_zero_step(param), torch.zeros_like(param), torch.zeros_like(param))


# ---------------------------------------------------------------- Adafactor


class AdafactorState(NamedTuple):
    step: Tensor  # updates taken so far
    row_var: Tensor  # row factor of the second moment (params with 2+ dims; empty otherwise)
    col_var: Tensor  # column factor of the second moment (params with 2+ dims; empty otherwise)
    variance: Tensor  # the full second moment (vectors; empty otherwise)


@elementwise(whole_tensor=True)
def scale_by_adafactor(
    grad, state: AdafactorState, param, *, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0
):
    r"""Adafactor's step (Shazeer & Stern, 2018), as torch.optim.Adafactor computes it -- a full update.

    .. math::
        \hat\beta_{2,t} = 1 - t^{c},\quad \rho_t = \min(\mathrm{lr}, 1/\sqrt t),\quad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t,\\
        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t}) \overline{g_t^2}^{\,\text{rows}},\quad
        C_t \text{ likewise over columns},\quad \hat V_t = R_t C_t / \mathrm{mean}(R_t),\\
        U_t = g_t / \sqrt{\max(\hat V_t, \epsilon_1^2)},\quad
        \theta_t = (1-\mathrm{lr}\,\lambda)\theta_{t-1} - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)} U_t,

    with :math:`c` = ``beta2_decay``, :math:`\lambda` = ``weight_decay``; a vector keeps its full
    :math:`V_t` instead of the two factors. ``eps = (eps1, eps2)``, eps1 None meaning the dtype's epsilon.
    """
    if torch.is_complex(param):
        raise RuntimeError("Adafactor does not support complex parameters")
    eps1 = torch.finfo(param.dtype).eps if eps[0] is None else eps[0]
    eps2 = eps[1]
    step = state.step + 1
    one_minus_beta2 = step**beta2_decay
    rho = 1 / step.sqrt()
    rms = torch.clamp(torch.linalg.vector_norm(param) / param.numel() ** 0.5, min=eps2)
    row_var, col_var, variance = state.row_var, state.col_var, state.variance
    if grad.dim() > 1:
        row_var = torch.lerp(
            row_var, torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square() / grad.size(-1), one_minus_beta2
        )
        col_var = torch.lerp(
            col_var, torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square() / grad.size(-2), one_minus_beta2
        )
        estimate = (row_var @ col_var) / row_var.mean(dim=-2, keepdim=True).clamp(min=eps1)
    else:
        variance = torch.lerp(variance, grad * grad, one_minus_beta2)
        estimate = variance
    update = estimate.clamp(min=eps1 * eps1).rsqrt() * grad
    denom = torch.clamp(torch.linalg.vector_norm(update) / (update.numel() ** 0.5 * d), min=1.0)
    if isinstance(lr, Tensor):
        # torch's min(lr, 1/sqrt t) is the tensor lr when that is smaller; alpha and the step then round in
        # the lr's dtype
        by_lr = (-(rms.to(lr.dtype) * lr) / denom.to(lr.dtype)).to(param.dtype)
        coefficient = torch.where(rho < lr, -(rms * rho) / denom, by_lr)
    else:
        coefficient = -(rms * torch.clamp(rho, max=lr)) / denom
    decay = param * ((1 - lr * weight_decay) - 1)
    new = AdafactorState(step, row_var, col_var, variance)
    return decay + coefficient * update, new


@scale_by_adafactor.init
def _(param):
    empty = param.new_empty(0)
    if param.dim() > 1:
        return AdafactorState(
            _zero_step(param),
            param.new_zeros((*param.shape[:-1], 1)),
            param.new_zeros((*param.shape[:-2], 1, param.shape[-1])),
            empty,
        )
    return AdafactorState(_zero_step(param), empty, empty.clone(), torch.zeros_like(param))


# ---------------------------------------------------------------- Muon


class MuonState(NamedTuple):
    momentum_buffer: Tensor  # the momentum of the gradient, B_t


def orthogonalize(
    matrix: Tensor, ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps: int = 5, eps: float = 1e-7
) -> Tensor:
    r"""torch.optim.Muon's quintic Newton-Schulz iteration, in bfloat16: about :math:`U V^\top` of
    :math:`M = U S V^\top` (singular values near 1, not exactly 1, by design of the coefficients).

    .. math:: X_0 = M / \max(\lVert M\rVert_F, \epsilon),\quad A = X X^\top,\quad
        X \leftarrow a X + (b A + c A^2) X.
    """
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(matrix.shape) != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    x = matrix.bfloat16()
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = _addmm(x, _addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _addmm(c: Tensor, a: Tensor, b: Tensor, *, beta, alpha=1.0) -> Tensor:
    """``torch.addmm(c, a, b, beta=beta, alpha=alpha)``. With tensor coefficients (the compiled engine makes
    hyperparameters 0-dim tensors) it is written out as Inductor decomposes a bfloat16 ``addmm`` -- in
    float32, rounded once -- because inside a compiled loop the decomposition's ``beta == 0`` test on a
    tensor cannot be traced (a data-dependent guard); with ``emulate_precision_casts`` the compiled step
    then rounds as the eager ``addmm`` does."""
    if not isinstance(beta, Tensor) and not isinstance(alpha, Tensor):
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    wide = torch.float32 if c.dtype in (torch.bfloat16, torch.float16) else c.dtype
    return (beta * c.to(wide) + alpha * (a.to(wide) @ b.to(wide))).to(c.dtype)


def _muon_lr_ratio(adjust_lr_fn, shape) -> float:
    """torch's ``_adjust_lr``: ``sqrt(max(1, A/B))`` (``"original"``) or ``0.2 sqrt(max(A, B))``."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


@elementwise(whole_tensor=True)
def scale_by_muon(
    grad,
    state: MuonState,
    param,
    *,
    lr=1e-3,
    momentum=0.95,
    nesterov=True,
    ns_coefficients=(3.4445, -4.7750, 2.0315),
    eps=1e-7,
    ns_steps=5,
    adjust_lr_fn=None,
    weight_decay=0.0,
):
    r"""Muon's step (Jordan et al., 2024), as torch.optim.Muon computes it -- a full update, 2-D params only.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t,\quad
        O_t = \mathrm{NS}(G_t + \mu (B_t - G_t) \text{ (nesterov) or } B_t),\quad
        \theta \leftarrow \theta (1 - \mathrm{lr}\,\lambda) - \mathrm{lr}\,r(A, B)\, O_t,

    with NS :func:`orthogonalize`, :math:`\lambda` = ``weight_decay`` and :math:`r` torch's
    ``adjust_lr_fn`` ratio for an A x B matrix. The new param is formed in torch's order (decay, then
    ``add(O, alpha=-lr r)``, one rounding on CPU) and the update is its difference from the param, so
    ``apply_updates`` lands on torch's param to the last bit: Newton-Schulz runs in bfloat16, where a
    last-bit difference in the params can move a rounding and grow.
    """
    if torch.is_complex(param):
        raise RuntimeError("Muon does not support complex parameters")
    if torch._C._functorch.is_batchedtensor(grad):
        raise ValueError(
            "muon cannot run in a sweep (torch.func.vmap): its Newton-Schulz iteration runs in "
            "bfloat16, where vmap's batched addmm rounds differently from torch's one-matrix "
            "addmm, so a sweep's runs would not equal single fits; run fit() once per setting"
        )
    buf = torch.lerp(state.momentum_buffer, grad, 1 - momentum)
    update = torch.lerp(grad, buf, momentum) if nesterov else buf
    ortho = orthogonalize(update, ns_coefficients, ns_steps, eps)  # bfloat16, added as torch adds it
    step_size = lr * _muon_lr_ratio(adjust_lr_fn, param.shape)
    decayed = param * (1 - lr * weight_decay)
    if isinstance(step_size, Tensor):
        moved = decayed + ortho.to(param.dtype) * -step_size
    else:
        moved = decayed.add(ortho, alpha=-step_size)
    return moved - param, MuonState(buf)


@scale_by_muon.init
def _(param):
    if param.ndim != 2:
        raise ValueError(
            f"Muon only supports 2D parameters whereas we found a parameter with size: {param.size()}; "
            "route the others to another rule with diyopt.transforms.partition, or use "
            "diyopt.optim.muon_adamw (AdamW for every tensor that is not 2-D)"
        )
    return MuonState(torch.zeros_like(param))
