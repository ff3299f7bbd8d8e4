"""Optimizers that wrap any other: SAM (a second gradient), lookahead and EMA (evaluation params).

Each is one short definition on the extended contract (docs/contract.md): SAM declares
``extra_args={"grad_fn"}`` and asks for the gradient at its ascent point; lookahead and EMA keep their
weights in the state and report them through ``eval_params``. The wrapper's ``hyperparams`` are the base's
(``lr``, ``betas``, ...) followed by its own (``rho``, ``k``, ``decay``), so ``to_torch`` param groups and
lr schedulers reach the base, and the fast engines pass them all as tensors. An own name the base already
uses (``alpha`` of RMSprop under lookahead) stays fixed at the wrapper's value and is not a group key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params
from diyopt.optim._validate import _check, check_nonnegative


def wrap(make: Callable[..., Optimizer], base: Optimizer, **own: Any) -> Optimizer:
    """``make(base, **own)``, remembering both the base's hyperparameters and ``own`` so it rebuilds."""
    if not isinstance(base, Optimizer):
        raise TypeError(f"{make.__name__.lstrip('_')}() wraps a diyopt Optimizer, got {type(base).__name__}")
    base_hp = dict(base.hyperparams or {})

    def build(**hp: Any) -> Optimizer:
        inner = base.replace_hyperparams(**{k: hp[k] for k in base_hp}) if base.build is not None else base
        return wrap(make, inner, **{k: hp.get(k, v) if k not in base_hp else v for k, v in own.items()})

    build.__name__ = make.__name__.lstrip("_")  # to_torch's messages name the wrapper: "sam"
    shown = {k: v for k, v in own.items() if k not in base_hp}
    return make(base, **own)._replace(hyperparams={**base_hp, **shown}, build=build)


def _global_norm(tensors) -> Tensor:
    """The 2-norm of all tensors as one vector (the norm of the per-tensor norms, as torch's clipping)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


# ---------------------------------------------------------------- SAM


def sam(base: Optimizer, rho=0.05, adaptive=False, perturb_eps=1e-12) -> Optimizer:
    r"""Sharpness-aware minimization (Foret et al., 2021, arXiv:2010.01412, Algorithm 1) around any
    optimizer; ``adaptive=True`` is ASAM (Kwon et al., 2021, arXiv:2102.11600).

    .. math::
        \hat\epsilon = \rho\, \frac{T^2 g}{\lVert T g\rVert_2 + \epsilon_p},\quad
        T = \mathrm{diag}(|w|) \text{ (adaptive) or } I,\qquad
        \text{updates} = \text{base.update}(\nabla L(w + \hat\epsilon)),

    with :math:`g = \nabla L(w)` and the norm over all params at once. The second gradient comes from
    ``grad_fn`` (``extra_args={"grad_fn"}``): ``fit``, ``sweep`` and the compiled engine evaluate it
    themselves, ``to_torch`` needs ``step(closure)``. ``perturb_eps`` is pytorch_optimizer's. The base sees
    the params at :math:`w`, its usual state, and may itself declare extra inputs.

    Example::

        >>> import torch, diyopt
        >>> opt = diyopt.optim.sam(diyopt.optim.sgd(lr=0.1), rho=0.05)
        >>> r = diyopt.fit(lambda p: ((p["x"] - 3) ** 2).sum(), {"x": torch.zeros(2, dtype=torch.float64)}, opt, 100)
        >>> round(r.params["x"][0].item(), 1)   # SAM rattles within rho of the minimum
        3.0
    """
    check_nonnegative("rho", rho)
    check_nonnegative("perturb_eps", perturb_eps)
    return wrap(_sam, base, rho=rho, adaptive=adaptive, perturb_eps=perturb_eps)


def _sam(base: Optimizer, rho, adaptive, perturb_eps) -> Optimizer:
    def update(grads: Params, state: Any, params: Params | None = None, *, grad_fn=None, **extra: Any):
        if grad_fn is None or params is None:
            raise TypeError(
                "sam's update needs params and grad_fn= (the gradient at other params); "
                "fit, sweep and to_torch(...).step(closure) supply it, as does a chain -- a wrapper "
                "that does not pass extra_args on (masked, accumulate) cannot hold sam"
            )
        scaled = [g * params[k].abs() for k, g in grads.items()] if adaptive else grads.values()
        scale = rho / (_global_norm(scaled) + perturb_eps)
        ascent = {k: p + (p * p * grads[k] if adaptive else grads[k]) * scale for k, p in params.items()}
        passed = {k: v for k, v in extra.items() if k in base.extra_args}
        if "grad_fn" in base.extra_args:
            passed["grad_fn"] = grad_fn
        return base.update(grad_fn(ascent), state, params, **passed)

    return Optimizer(
        base.init,
        update,
        flattenable=base.flattenable,
        extra_args=base.extra_args | {"grad_fn"},
        eval_params=base.eval_params,
    )


# ---------------------------------------------------------------- lookahead


class LookaheadState(NamedTuple):
    count: Tensor  # base steps since the last synchronization (0-dim)
    slow: Params  # the slow weights phi, what eval_params reports
    base: Any  # the base optimizer's state


def lookahead(base: Optimizer, k=5, alpha=0.5) -> Optimizer:
    r"""Lookahead (Zhang et al., 2019, arXiv:1907.08610) around any optimizer, equal to
    ``pytorch_optimizer.Lookahead(base, k, alpha)`` (``pullback_momentum="none"``).

    The base moves the fast weights :math:`\theta` every step; every ``k`` steps
    :math:`\phi \leftarrow \phi + \alpha(\theta - \phi)` and :math:`\theta \leftarrow \phi`.
    ``eval_params`` gives the slow weights :math:`\phi` (optax: "use the slow params for evaluation").
    ``k`` is structural (an int).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid k value: {k}")
    _check(alpha, lambda a: 0.0 <= a <= 1.0, "Invalid alpha value: {}")
    return wrap(_lookahead, base, k=k, alpha=alpha)


def _lookahead(base: Optimizer, k, alpha) -> Optimizer:
    def init(params: Params) -> LookaheadState:
        ref = next(iter(params.values()))
        return LookaheadState(
            torch.zeros((), dtype=ref.dtype, device=ref.device),
            {n: p.detach().clone() for n, p in params.items()},
            base.init(params),
        )

    def update(grads: Params, state: LookaheadState, params: Params | None = None, **extra: Any):
        if params is None:
            raise TypeError("lookahead's update needs params")
        updates, base_state = base.update(grads, state.base, params, **extra)
        count = state.count + 1
        sync = count >= k
        fast, slow = {}, {}
        for n, p in params.items():
            theta = p + updates[n]
            pulled = torch.lerp(theta, state.slow[n], 1 - alpha)  # pytorch_optimizer's _foreach_lerp_
            fast[n] = torch.where(sync, pulled, theta)
            slow[n] = torch.where(sync, pulled, state.slow[n])
        return (
            {n: fast[n] - p for n, p in params.items()},
            LookaheadState(torch.where(sync, torch.zeros_like(count), count), slow, base_state),
        )

    def eval_params(state: LookaheadState, params: Params) -> Params:
        return dict(state.slow)

    return Optimizer(init, update, flattenable=base.flattenable, extra_args=base.extra_args, eval_params=eval_params)


# ---------------------------------------------------------------- EMA


class EmaState(NamedTuple):
    count: Tensor  # updates averaged so far (AveragedModel's n_averaged)
    ema: Params  # the moving average of the params after each update, what eval_params reports
    base: Any  # the base optimizer's state


def ema(base: Optimizer, decay=0.999) -> Optimizer:
    r"""An exponential moving average (Polyak averaging with exponential weights) of any optimizer's
    params, equal to ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
    updated after every step.

    .. math:: \bar w_1 = w_1,\qquad \bar w_{t+1} = \text{decay}\, \bar w_t + (1-\text{decay})\, w_{t+1}.

    Training follows the base unchanged; ``eval_params`` gives :math:`\bar w` (the initial params before
    the first update). It averages the params the base trains (its training params).
    """
    _check(decay, lambda d: 0.0 <= d <= 1.0, "Invalid decay value {} provided. Please provide a value in [0,1] range.")
    return wrap(_ema, base, decay=decay)


def _ema(base: Optimizer, decay) -> Optimizer:
    def init(params: Params) -> EmaState:
        ref = next(iter(params.values()))
        return EmaState(
            torch.zeros((), dtype=ref.dtype, device=ref.device),
            {n: p.detach().clone() for n, p in params.items()},
            base.init(params),
        )

    def update(grads: Params, state: EmaState, params: Params | None = None, **extra: Any):
        if params is None:
            raise TypeError("ema's update needs params")
        updates, base_state = base.update(grads, state.base, params, **extra)
        first = state.count == 0  # AveragedModel copies the params at its first update
        avg = {
            n: torch.where(first, p + updates[n], torch.lerp(state.ema[n], p + updates[n], 1 - decay))
            for n, p in params.items()
        }
        return updates, EmaState(state.count + 1, avg, base_state)

    def eval_params(state: EmaState, params: Params) -> Params:
        return dict(state.ema)

    return Optimizer(init, update, flattenable=base.flattenable, extra_args=base.extra_args, eval_params=eval_params)
