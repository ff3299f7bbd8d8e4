"""In-place multi-tensor kernels for ``to_torch``'s default engine (see ``Optimizer.kernel``).

Each kernel is ``run(hyperparams, params, grads, states) -> bool``: one in-place step of a whole param
group, on the very state tensors (and names) the optimizer's pure ``update`` keeps, or False when it
cannot do this state (then the pure rule runs). ``state_names(hyperparams)`` says which leaves it keeps.
The pure rule stays the reference: ``tests/test_to_torch_kernels.py`` checks every kernel against it step
by step in float64 and float32.

- ``adam``, ``adamw``, ``sgd``, ``adagrad``: torch's fused single-pass steps (``torch._fused_adam_``, ...,
  what ``torch.optim.Adam(fused=True)`` runs).
- ``rmsprop``, ``adadelta``, ``adamax``, ``nadam``, ``radam``, ``rprop``, ``asgd``: torch has no fused
  kernel for these; they run torch.optim's own multi-tensor implementations (the functional
  ``torch.optim.rmsprop.rmsprop(..., foreach=True)``, what the class runs with ``foreach=True``): a
  handful of ``torch._foreach_*`` ops over the whole group, in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# The step counters are 0-dim CPU tensors: ``_foreach_add_(steps, 1)`` wraps the 1 into a new tensor per
# counter (torch's slow path, ~4 us each); adding one prepared tensor is what torch.optim does too.
_ONE = torch.tensor(1.0)


def _count(steps: list) -> None:
    if steps[0].is_cpu:
        torch._foreach_add_(steps, _ONE, alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def _steps(states: list) -> list | None:
    """The group's step counters, or None when one is not a 0-dim tensor (a state the kernels cannot do)."""
    steps = [s["step"] for s in states]
    return steps if all(s.dim() == 0 for s in steps) else None


# ---------------------------------------------------------------- torch's fused kernels


def _adam_state(hp: Mapping) -> tuple:
    return ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _adam_kernel(decoupled: bool):
    """torch's fused Adam / AdamW (``torch._fused_adam_``), as ``torch.optim.Adam(fused=True)`` calls it:
    the step count first, then one in-place pass per tensor computing ``scale_by_adam``'s math."""

    def run(hp: Mapping, params: list, grads: list, states: list) -> bool:
        steps = _steps(states)
        if steps is None:
            return False
        amsgrad = bool(hp["amsgrad"])
        _count(steps)
        (torch._fused_adamw_ if decoupled else torch._fused_adam_)(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            steps,
            amsgrad=amsgrad,
            lr=float(hp["lr"]),
            beta1=float(hp["betas"][0]),
            beta2=float(hp["betas"][1]),
            weight_decay=float(hp["weight_decay"]),
            eps=float(hp["eps"]),
            maximize=bool(hp["maximize"]),
            grad_scale=None,
            found_inf=None,
        )
        return True

    return run


def _sgd_state(hp: Mapping) -> tuple:
    return ("step", "momentum_buffer") if hp["momentum"] != 0 else ()


def _sgd_kernel(hp: Mapping, params: list, grads: list, states: list) -> bool:
    """torch's fused SGD (``torch._fused_sgd_``). With momentum, its first step copies the gradient into
    the buffer, as ``trace`` does where ``step == 0``: so all the group's steps must be 0, or none.
    Without momentum the pure rule keeps no state, and the kernel is ``p -= lr (g + wd p)`` in one pass."""
    momentum = float(hp["momentum"])
    first = [False]
    if momentum != 0:
        steps = _steps(states)
        if steps is None:
            return False
        first = torch.stack(steps).eq(0).tolist()  # one read, not one per tensor
        if any(first) and not all(first):
            return False
    torch._fused_sgd_(
        params,
        grads,
        [s["momentum_buffer"] for s in states] if momentum != 0 else [],
        weight_decay=float(hp["weight_decay"]),
        momentum=momentum,
        lr=float(hp["lr"]),
        dampening=float(hp["dampening"]),
        nesterov=bool(hp["nesterov"]),
        maximize=bool(hp["maximize"]),
        is_first_step=first[0],
        grad_scale=None,
        found_inf=None,
    )
    if momentum != 0:
        _count(steps)
    return True


def _adagrad_kernel(hp: Mapping, params: list, grads: list, states: list) -> bool:
    """torch's fused Adagrad (``torch._fused_adagrad_``), no ``lr_decay``: the step count, then one pass."""
    steps = _steps(states)
    if steps is None:
        return False
    _count(steps)
    torch._fused_adagrad_(
        params,
        grads,
        [s["sum"] for s in states],
        steps,
        lr=float(hp["lr"]),
        lr_decay=0.0,
        weight_decay=float(hp["weight_decay"]),
        eps=float(hp["eps"]),
        maximize=bool(hp["maximize"]),
        grad_scale=None,
        found_inf=None,
    )
    return True


# ---------------------------------------------------------------- torch.optim's multi-tensor (foreach) steps


def _rmsprop_state(hp: Mapping) -> tuple:
    return ("step", "square_avg", "grad_avg") + (("momentum_buffer",) if hp["momentum"] != 0 else ())


def _rmsprop(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.rmsprop import rmsprop

    centered, momentum = bool(hp["centered"]), float(hp["momentum"])
    rmsprop(
        params,
        grads,
        [s["square_avg"] for s in states],
        [s["grad_avg"] for s in states] if centered else [],  # diyopt keeps an empty one uncentered
        [s["momentum_buffer"] for s in states] if momentum != 0 else [],
        steps,
        foreach=True,
        maximize=bool(hp["maximize"]),
        lr=float(hp["lr"]),
        alpha=float(hp["alpha"]),
        eps=float(hp["eps"]),
        weight_decay=float(hp["weight_decay"]),
        momentum=momentum,
        centered=centered,
    )
    return True


def _adadelta(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.adadelta import adadelta

    adadelta(
        params,
        grads,
        [s["square_avg"] for s in states],
        [s["acc_delta"] for s in states],
        steps,
        foreach=True,
        lr=float(hp["lr"]),
        rho=float(hp["rho"]),
        eps=float(hp["eps"]),
        weight_decay=float(hp["weight_decay"]),
        maximize=bool(hp["maximize"]),
    )
    return True


def _adamax(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.adamax import adamax

    adamax(
        params,
        grads,
        [s["exp_avg"] for s in states],
        [s["exp_inf"] for s in states],
        steps,
        foreach=True,
        maximize=bool(hp["maximize"]),
        eps=float(hp["eps"]),
        beta1=float(hp["betas"][0]),
        beta2=float(hp["betas"][1]),
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
    )
    return True


def _nadam(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.nadam import nadam

    nadam(
        params,
        grads,
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [s["mu_product"] for s in states],
        steps,
        decoupled_weight_decay=bool(hp["decoupled_weight_decay"]),
        foreach=True,
        maximize=bool(hp["maximize"]),
        beta1=float(hp["betas"][0]),
        beta2=float(hp["betas"][1]),
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        momentum_decay=float(hp["momentum_decay"]),
        eps=float(hp["eps"]),
    )
    return True


def _radam(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.radam import radam

    radam(
        params,
        grads,
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        steps,
        decoupled_weight_decay=bool(hp["decoupled_weight_decay"]),
        foreach=True,
        maximize=bool(hp["maximize"]),
        beta1=float(hp["betas"][0]),
        beta2=float(hp["betas"][1]),
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        eps=float(hp["eps"]),
    )
    return True


def _rprop(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None:
        return False
    from torch.optim.rprop import rprop

    rprop(
        params,
        grads,
        [s["prev"] for s in states],
        [s["step_size"] for s in states],
        steps,
        foreach=True,
        maximize=bool(hp["maximize"]),
        step_size_min=float(hp["step_sizes"][0]),
        step_size_max=float(hp["step_sizes"][1]),
        etaminus=float(hp["etas"][0]),
        etaplus=float(hp["etas"][1]),
    )
    return True


def _asgd(hp: Mapping, params: list, grads: list, states: list) -> bool:
    steps = _steps(states)
    if steps is None or any(s["eta"].dim() != 0 or s["mu"].dim() != 0 for s in states):
        return False
    from torch.optim.asgd import asgd

    asgd(
        params,
        grads,
        [s["ax"] for s in states],
        [s["mu"] for s in states],
        [s["eta"] for s in states],
        steps,
        foreach=True,
        maximize=bool(hp["maximize"]),
        lambd=float(hp["lambd"]),
        lr=float(hp["lr"]),
        t0=float(hp["t0"]),
        alpha=float(hp["alpha"]),
        weight_decay=float(hp["weight_decay"]),
    )
    return True


#: ``Optimizer.kernel`` -> (the state leaf names it keeps, the kernel): see ``TorchOptimizer._kernel_step``
KERNELS = {
    "adam": (_adam_state, _adam_kernel(False)),
    "adamw": (_adam_state, _adam_kernel(True)),
    "sgd": (_sgd_state, _sgd_kernel),
    "adagrad": (lambda hp: ("step", "sum"), _adagrad_kernel),
    "rmsprop": (_rmsprop_state, _rmsprop),
    "adadelta": (lambda hp: ("step", "square_avg", "acc_delta"), _adadelta),
    "adamax": (lambda hp: ("step", "exp_avg", "exp_inf"), _adamax),
    "nadam": (lambda hp: ("step", "exp_avg", "exp_avg_sq", "mu_product"), _nadam),
    "radam": (lambda hp: ("step", "exp_avg", "exp_avg_sq"), _radam),
    "rprop": (lambda hp: ("step", "prev", "step_size"), _rprop),
    "asgd": (lambda hp: ("step", "eta", "mu", "ax"), _asgd),
}

#: Kernels whose 0-dim state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) may be in another floating
#: dtype than the params: diyopt keeps them in float32 as torch does, and torch's step takes them so.
SCALARS_ANY_DTYPE = frozenset({"nadam", "asgd"})
