"""Named optimizers, each a short :func:`~diyopt.core.chain` of transforms.

Each takes torch.optim's argument names and defaults for the same algorithm (``maximize`` is
keyword-only everywhere), and validates them when built, with torch's wording (``Invalid learning rate:
-1``), by the checks of :mod:`diyopt.optim._validate`. Values are checked only when they are Python
numbers: a tensor hyperparameter (the compiled and batched engines sweep them) is taken as given. Any ``lr`` may be a
schedule ``step -> value`` (see :mod:`diyopt.schedules`), except Rprop's, which is an initial step size.

torch's implementation flags are accepted wherever the torch class takes them, so code written for
torch.optim runs unchanged; none changes the numbers, and in diyopt they mean:

- ``foreach``: torch's choice between a per-tensor loop and one multi-tensor kernel per op. diyopt's eager
  step is one loop of tensor ops (the reference); ``fit`` runs flattenable rules on one flat buffer and
  ``to_torch(..., compiled=True)`` fuses the whole step -- that is where diyopt's speed comes from.
- ``fused``: torch's single-kernel CUDA/CPU step. The diyopt counterpart is ``compiled=True``.
- ``capturable``: torch keeps ``step`` on the device and avoids host syncs so the step can be captured in
  a CUDA graph. diyopt always does: state lives on the param's device and no rule calls ``.item()``.
- ``differentiable``: torch lets autograd run through ``step()``. diyopt's ``update`` is a pure function
  of tensors, differentiable as it stands (call it under ``torch.func``); ``to_torch``'s ``step()`` runs
  under ``no_grad``, as torch's does by default.

torch's checks that concern them are kept (``fused`` with ``foreach``; Adam's tensor ``lr`` or ``betas``
with ``foreach=True``), so an input torch refuses is refused here too.

``names()`` lists the registry; ``BUILTINS`` here maps torch.optim's twins to their factories, and the registry
(``optim._registry.BUILTINS``, the public ``diyopt.optim.BUILTINS``) adds the others (schedule-free).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from diyopt import transforms as T
from diyopt.core.contract import Optimizer, chain, configurable, elementwise
from diyopt.optim._validate import (
    _check,
    _is_number,
    _is_schedule,
    _no_schedule,
    check_betas,
    check_eps,
    check_impl,
    check_lr,
    check_nonnegative,  # noqa: F401 -- optim._wrappers imports it from here
    check_settings,
)


def _to_scalar(x: Any) -> Any:
    """torch's ``_to_scalar``: a 1-element tensor of any shape becomes 0-dim (``tensor([[0.9]])``)."""
    return x.squeeze() if isinstance(x, Tensor) and x.dim() != 0 and x.numel() == 1 else x


def nonzero(x: Any) -> bool:
    """Whether a term must be built: a tensor hyperparameter (swept, compiled) may be nonzero at run time."""
    return isinstance(x, Tensor) or x != 0


def _maximize(maximize: bool) -> list[Optimizer]:
    """torch's ``maximize``: ascend, by negating the gradient before anything else sees it."""
    return [T.scale(-1.0)] if maximize else []


def _coupled_decay(weight_decay: Any) -> list[Optimizer]:
    """torch's default (L2) weight decay: ``grad += weight_decay * param`` before the scaling."""
    return [T.add_decayed_weights(weight_decay)] if nonzero(weight_decay) else []


def _with_kernel(rule: Optimizer, kernel: str, *settings: Any) -> Optimizer:
    """``rule`` marked as computed by ``to_torch``'s in-place kernel ``kernel`` (``Optimizer.kernel``, see
    :mod:`diyopt.engines._kernels`) when every setting it reads is a finite Python number; tensors and
    schedules keep the pure rule, and so does an infinite or NaN setting (the kernel writes in place, so only
    the pure path can check an update before it is written: ``lr=inf`` must raise, not write inf)."""
    return rule._replace(kernel=kernel) if all(_finite_number(x) for x in settings) else rule


def _finite_number(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x)


# ---------------------------------------------------------------- the seed's own rule


@elementwise
def gradient_descent(grad, state, param, *, lr=1e-3):
    """The seed's update, ``a = a - eta * a.grad``: ``update = -lr * grad``."""
    return -lr * grad, state


# ---------------------------------------------------------------- SGD


@configurable
def sgd(
    lr=1e-3,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    *,
    maximize=False,
    foreach=None,
    differentiable=False,
    fused=None,
) -> Optimizer:
    """SGD with momentum, equal to ``torch.optim.SGD``: ``chain(decay, trace, scale_by_lr)``."""
    check_impl(foreach, fused, differentiable)
    check_settings(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if nesterov and ((_is_number(momentum) and momentum <= 0) or (_is_number(dampening) and dampening != 0)):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    rule = chain(
        *_maximize(maximize),
        *_coupled_decay(weight_decay),
        *([T.trace(decay=momentum, dampening=dampening, nesterov=nesterov)] if nonzero(momentum) else []),
        T.scale_by_lr(lr),
    )
    # torch's fused SGD step computes this rule in place, with momentum or without (see Optimizer.kernel)
    return _with_kernel(rule, "sgd", lr, momentum, dampening, weight_decay)


# ---------------------------------------------------------------- Adagrad, RMSprop, Adadelta


@configurable
def adagrad(
    lr=1e-2,
    lr_decay=0.0,
    weight_decay=0.0,
    initial_accumulator_value=0.0,
    eps=1e-10,
    *,
    maximize=False,
    foreach=None,
    differentiable=False,
    fused=None,
) -> Optimizer:
    """Adagrad, equal to ``torch.optim.Adagrad``; ``lr_decay`` makes the step ``lr / (1 + t lr_decay)``.

    As in torch, ``to_torch`` fills every accumulator from the constructor's ``initial_accumulator_value``;
    a param group's own value is kept in the group but does not reach the state (torch.optim.Adagrad
    builds its state in ``__init__`` from its defaults).
    """
    check_impl(foreach, fused, differentiable)
    check_settings(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )
    rule = chain(
        *_maximize(maximize),
        *_coupled_decay(weight_decay),
        T.scale_by_adagrad(eps=eps, initial_accumulator_value=initial_accumulator_value),
        T.scale_by_lr(_inverse_time_decay(lr, lr_decay) if nonzero(lr_decay) else lr),
    )
    # torch's fused Adagrad step computes this rule in place without lr_decay (whose schedule keeps its own
    # counter; see Optimizer.kernel)
    fast = _is_number(lr_decay) and lr_decay == 0 and all(_finite_number(x) for x in (lr, weight_decay, eps))
    return rule._replace(kernel="adagrad") if fast else rule


def _inverse_time_decay(lr, lr_decay) -> Callable:
    """Adagrad's ``lr_t = lr / (1 + t lr_decay)``, t = 0, 1, ...; ``lr`` itself may be a schedule."""
    if callable(lr) and not isinstance(lr, Tensor):
        return lambda count: lr(count) / (1 + count * lr_decay)
    return lambda count: lr / (1 + count * lr_decay)


@configurable
def rmsprop(
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    *,
    maximize=False,
    capturable=False,
    foreach=None,
    differentiable=False,
) -> Optimizer:
    """RMSprop, equal to ``torch.optim.RMSprop``: ``chain(decay, scale_by_rms, trace, scale_by_lr)``."""
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
    rule = chain(
        *_maximize(maximize),
        *_coupled_decay(weight_decay),
        T.scale_by_rms(alpha=alpha, eps=eps, centered=centered),
        # torch's buffer starts at zero: b = momentum * b + g / avg
        *([T.heavy_ball(decay=momentum)] if nonzero(momentum) else []),
        T.scale_by_lr(lr),
    )
    return _with_kernel(rule, "rmsprop", lr, alpha, eps, weight_decay, momentum)


@configurable
def adadelta(
    lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False, foreach=None, capturable=False, differentiable=False
) -> Optimizer:
    """Adadelta, equal to ``torch.optim.Adadelta``."""
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
    rule = chain(
        *_maximize(maximize),
        *_coupled_decay(weight_decay),
        T.scale_by_adadelta(rho=rho, eps=eps),
        T.scale_by_lr(lr),
    )
    return _with_kernel(rule, "adadelta", lr, rho, eps, weight_decay)


# ---------------------------------------------------------------- Adam family


def _adam_like(
    direction: Callable[[Any], Optimizer], weight_decay, decoupled: bool, maximize: bool, lr, folds_lr: bool = False
) -> Optimizer:
    """``chain([negate], [coupled decay], direction, scale_by_lr, [decoupled decay])``.

    ``direction(lr)`` builds the adaptive transform; with ``folds_lr`` it takes the learning rate and
    returns the step itself (Adam, Adamax, NAdam fold ``lr`` into their bias corrections, as torch does, so
    a tensor lr rounds there in its own dtype), otherwise it is called with None and ``scale_by_lr``
    follows. Decoupled decay is torch's ``param *= 1 - lr * weight_decay``. A schedule lr (a function of
    the step) goes through ``scale_by_lr``, with decoupled decay folded in before it.
    """
    decay = [T.add_decayed_weights(weight_decay)] if nonzero(weight_decay) else []
    if _is_schedule(lr):
        return chain(
            *_maximize(maximize),
            *([] if decoupled else decay),
            direction(None),
            *(decay if decoupled else []),
            T.scale_by_lr(lr),
        )
    return chain(
        *_maximize(maximize),
        *([] if decoupled else decay),
        *([direction(lr)] if folds_lr else [direction(None), T.scale_by_lr(lr)]),
        *([T.add_decoupled_weight_decay(lr, weight_decay)] if decoupled and decay else []),
    )


@configurable
def adam(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    *,
    maximize=False,
    decoupled_weight_decay=False,
    foreach=None,
    capturable=False,
    differentiable=False,
    fused=None,
) -> Optimizer:
    """Adam, equal to ``torch.optim.Adam`` with the same arguments.

    ``chain([negate if maximize], [coupled decay], scale_by_adam(lr=lr), [decoupled decay])``.
    ``lr`` and ``betas`` may be tensors (any 1-element shape, as torch takes them).
    """
    check_impl(foreach, fused, differentiable)
    if isinstance(lr, Tensor) and foreach and not capturable:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    if isinstance(betas[0], Tensor) and foreach and not capturable:
        raise ValueError("betas[0] as a Tensor is not supported for capturable=False and foreach=True")
    lr, b1, b2 = _to_scalar(lr), _to_scalar(betas[0]), _to_scalar(betas[1])

    def direction(step_lr):
        return T.scale_by_adam(b1=b1, b2=b2, eps=eps, amsgrad=amsgrad, lr=step_lr)

    rule = _adam_like(direction, weight_decay, decoupled_weight_decay, maximize, lr, folds_lr=True)
    # torch's fused Adam/AdamW step computes this rule in place for number settings (see Optimizer.kernel)
    fast = all(_finite_number(x) for x in (lr, b1, b2, eps, weight_decay))
    return rule._replace(kernel="adamw" if decoupled_weight_decay else "adam") if fast else rule


@configurable
def adamw(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=1e-2,
    amsgrad=False,
    *,
    maximize=False,
    foreach=None,
    capturable=False,
    differentiable=False,
    fused=None,
) -> Optimizer:
    """AdamW (Loshchilov & Hutter, 2019), equal to ``torch.optim.AdamW``: Adam with decoupled weight decay."""
    return adam(
        lr,
        betas,
        eps,
        weight_decay,
        amsgrad,
        maximize=maximize,
        decoupled_weight_decay=True,
        foreach=foreach,
        capturable=capturable,
        differentiable=differentiable,
        fused=fused,
    )


@configurable
def adamax(
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    *,
    maximize=False,
    foreach=None,
    differentiable=False,
    capturable=False,
) -> Optimizer:
    """Adamax, equal to ``torch.optim.Adamax``."""
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    lr, b1, b2 = _to_scalar(lr), _to_scalar(betas[0]), _to_scalar(betas[1])

    def direction(step_lr):
        return T.scale_by_adamax(b1=b1, b2=b2, eps=eps, lr=step_lr)

    rule = _adam_like(direction, weight_decay, False, maximize, lr, folds_lr=True)
    return _with_kernel(rule, "adamax", lr, b1, b2, eps, weight_decay)


@configurable
def nadam(
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    momentum_decay=4e-3,
    decoupled_weight_decay=False,
    *,
    maximize=False,
    foreach=None,
    capturable=False,
    differentiable=False,
) -> Optimizer:
    """NAdam, equal to ``torch.optim.NAdam`` (decoupled_weight_decay=True is torch's NAdamW)."""
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay, momentum_decay=momentum_decay)
    lr, b1, b2 = _to_scalar(lr), _to_scalar(betas[0]), _to_scalar(betas[1])

    def direction(step_lr):
        return T.scale_by_nadam(b1=b1, b2=b2, eps=eps, momentum_decay=momentum_decay, lr=step_lr)

    rule = _adam_like(direction, weight_decay, decoupled_weight_decay, maximize, lr, folds_lr=True)
    return _with_kernel(rule, "nadam", lr, b1, b2, eps, weight_decay, momentum_decay)


@configurable
def radam(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    *,
    maximize=False,
    foreach=None,
    capturable=False,
    differentiable=False,
) -> Optimizer:
    """RAdam, equal to ``torch.optim.RAdam`` (decoupled_weight_decay=True is torch's RAdamW)."""
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    lr, b1, b2 = _to_scalar(lr), _to_scalar(betas[0]), _to_scalar(betas[1])
    rule = _adam_like(
        lambda _: T.scale_by_radam(b1=b1, b2=b2, eps=eps), weight_decay, decoupled_weight_decay, maximize, lr
    )
    return _with_kernel(rule, "radam", lr, b1, b2, eps, weight_decay)


# ---------------------------------------------------------------- averaged, factored, orthogonalized, sparse


@configurable
def asgd(
    lr=1e-2,
    lambd=1e-4,
    alpha=0.75,
    t0=1e6,
    weight_decay=0.0,
    *,
    maximize=False,
    foreach=None,
    differentiable=False,
    capturable=False,
) -> Optimizer:
    """Averaged SGD, equal to ``torch.optim.ASGD``: ``chain([negate], [coupled decay], scale_by_asgd)``.

    The averaged iterate is the state's ``ax`` (``to_torch(...).state[p]["ax"]``), as in torch.
    """
    _no_schedule("asgd", lr)
    check_impl(foreach, None, differentiable)
    check_settings(lr=lr, weight_decay=weight_decay)
    rule = chain(
        *_maximize(maximize),
        *_coupled_decay(weight_decay),
        T.scale_by_asgd(lr=_to_scalar(lr), lambd=lambd, alpha=alpha, t0=t0),
    )
    return _with_kernel(rule, "asgd", lr, lambd, alpha, t0, weight_decay)


@configurable
def adafactor(
    lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *, maximize=False, foreach=None
) -> Optimizer:
    """Adafactor, equal to ``torch.optim.Adafactor`` (its ``eps`` is the pair ``(eps1, eps2)``)."""
    _no_schedule("adafactor", lr)
    check_impl(foreach)
    check_lr(lr, message="Learning rate should be >= 0 but is: {}")
    _check(beta2_decay, lambda v: v <= 0.0, "beta2_decay should be <= 0 but is: {}")
    if eps[0] is not None:
        _check(eps[0], lambda v: v >= 0.0, "epsilon1 should be >= 0 but is: {}")
    _check(eps[1], lambda v: v >= 0.0, "epsilon2 should be >= 0 but is: {}")
    _check(d, lambda v: v >= 1.0, "Clipping threshold d should be >= 1 but is: {}")
    _check(weight_decay, lambda v: v >= 0.0, "weight_decay should be >= 0 but is: {}")
    return chain(
        *_maximize(maximize),
        T.scale_by_adafactor(
            lr=_to_scalar(lr), beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay
        ),
    )


@configurable
def muon(
    lr=1e-3,
    weight_decay=0.1,
    momentum=0.95,
    nesterov=True,
    ns_coefficients=(3.4445, -4.7750, 2.0315),
    eps=1e-7,
    ns_steps=5,
    adjust_lr_fn=None,
) -> Optimizer:
    """Muon, equal to ``torch.optim.Muon``: momentum, orthogonalized by Newton-Schulz, for 2-D params.

    ``chain(scale_by_muon)``, the decoupled decay inside. As torch's, it refuses a parameter that is not a matrix
    (``ValueError: Muon only supports 2D parameters``, from ``to_torch`` at construction). Route the
    others -- biases, norms, embeddings -- to another rule with :func:`diyopt.transforms.masked`, by name::

        matrices = {n for n, p in model.named_parameters() if p.ndim == 2}
        opt = diyopt.to_torch(diyopt.chain(
            masked(diyopt.optim.muon(lr=0.02), matrices),
            masked(diyopt.optim.adamw(lr=3e-4), lambda n: n not in matrices)), model)

    Each ``masked`` rule sees (and keeps state for) its own params only; together they equal torch's
    ``Muon`` on the matrices plus ``AdamW`` on the rest.
    """
    check_lr(lr, message="Learning rate should be >= 0 but is: {}")
    _check(momentum, lambda v: v >= 0.0, "momentum should be >= 0 but is: {}")
    _check(weight_decay, lambda v: v >= 0.0, "weight decay should be >= 0 but is: {}")
    _no_schedule("muon", lr)
    if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    lr = _to_scalar(lr)
    rule = chain(
        T.scale_by_muon(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            weight_decay=weight_decay,
        )
    )
    # to_torch runs torch.optim.Muon's own step for Python-number settings (engines/_kernels.py)
    return _with_kernel(rule, "muon", lr, weight_decay, momentum, eps, *ns_coefficients)


@configurable
def sparse_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, maximize=False) -> Optimizer:
    """SparseAdam, equal to ``torch.optim.SparseAdam``: lazy Adam for sparse gradients
    (``nn.Embedding(sparse=True)``); only the rows with a gradient move. Dense gradients are refused."""
    check_lr(lr, positive=True)
    check_eps(eps, positive=True)
    _no_schedule("sparse_adam", lr)
    check_betas(betas)
    rule = T.scale_by_sparse_adam(lr=_to_scalar(lr), b1=betas[0], b2=betas[1], eps=eps, maximize=maximize)
    return rule._replace(sparse_grads=True, flattenable=False)


# ---------------------------------------------------------------- L-BFGS, for to_torch


@configurable
def lbfgs(
    lr=1.0,
    max_iter=20,
    max_eval=None,
    tolerance_grad=1e-7,
    tolerance_change=1e-9,
    history_size=100,
    line_search_fn=None,
) -> Optimizer:
    """L-BFGS for ``to_torch``, equal to ``torch.optim.LBFGS``: ``to_torch(lbfgs(), model).step(closure)``
    runs up to ``max_iter`` iterations and keeps the history across steps (see :mod:`diyopt.torch_lbfgs`).

    It needs the loss at several points per step, so it has no ``update`` of its own (calling it raises);
    to minimize a loss function to the end, ``diyopt.lbfgs(loss_fn, params)`` is the solver.
    """
    from diyopt.optim._lbfgs import TorchLBFGS

    check_lr(lr)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")

    def update(grads, state, params=None):
        raise TypeError(
            "diyopt.optim.lbfgs evaluates the loss several times per step: use it as "
            "to_torch(lbfgs(...), params).step(closure), or minimize with diyopt.lbfgs(loss_fn, params)"
        )

    return Optimizer(lambda params: (), update, torch_optimizer=TorchLBFGS)


# ---------------------------------------------------------------- sign methods


@configurable
def rprop(
    lr=1e-2,
    etas=(0.5, 1.2),
    step_sizes=(1e-6, 50),
    *,
    maximize=False,
    capturable=False,
    foreach=None,
    differentiable=False,
) -> Optimizer:
    """Rprop, equal to ``torch.optim.Rprop``; ``lr`` is the initial per-element step size."""
    check_impl(foreach, None, differentiable)
    check_lr(lr)
    if _is_schedule(lr):
        raise TypeError("rprop's lr is its initial step size and cannot be a schedule")
    etaminus, etaplus = etas
    if _is_number(etaminus) and _is_number(etaplus) and not 0.0 < etaminus < 1.0 < etaplus:
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")
    lo, hi = step_sizes
    if _is_number(lo) and _is_number(hi) and not 0.0 <= lo <= hi:
        raise ValueError(f"Invalid step_sizes values: {lo}, {hi}")
    rule = chain(
        *_maximize(maximize),
        T.scale_by_rprop(lr=lr, etaminus=etaminus, etaplus=etaplus, step_size_min=lo, step_size_max=hi),
    )
    return _with_kernel(rule, "rprop", lr, etaminus, etaplus, lo, hi)


@configurable
def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False) -> Optimizer:
    """Lion (Chen et al., 2023, Algorithm 2) with the paper's defaults; torch.optim has no Lion.

    ``param -= lr * (sign(b1 m + (1-b1) g) + weight_decay * param)``; ``m = b2 m + (1-b2) g``.
    """
    check_settings(lr=lr, betas=betas, weight_decay=weight_decay)
    return _adam_like(lambda _: T.scale_by_lion(b1=betas[0], b2=betas[1]), weight_decay, True, maximize, lr)


# ---------------------------------------------------------------- registry


BUILTINS: dict[str, Callable[..., Optimizer]] = {
    "adadelta": adadelta,
    "adafactor": adafactor,
    "asgd": asgd,
    "muon": muon,
    "sparse_adam": sparse_adam,
    "adagrad": adagrad,
    "adam": adam,
    "adamax": adamax,
    "adamw": adamw,
    "gradient_descent": gradient_descent,
    "lbfgs": lbfgs,
    "lion": lion,
    "nadam": nadam,
    "radam": radam,
    "rmsprop": rmsprop,
    "rprop": rprop,
    "sgd": sgd,
}
