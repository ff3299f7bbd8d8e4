"""The checks of every optimizer factory, written once, in torch's wording (``Invalid learning rate: -1``).

A value is checked only when it is a Python number: a tensor hyperparameter (the compiled and batched
engines sweep them) is taken as given, and a message is formatted only for a number (formatting a tensor
reads it out, which vmap and torch.compile refuse). A factory states its checks in one call,
``check_settings(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)``: each setting by its name, in
the order given (torch's order for its twins, so that of two bad settings the same one is named).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any

from torch import Tensor

from diyopt.core.contract import per_run_hyperparams


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check(value: Any, ok: Callable[[float], bool], message: str) -> None:
    """``ValueError(message.format(value))`` when ``value`` is a Python number failing ``ok``."""
    if _is_number(value) and not ok(value):
        raise ValueError(message.format(value))


def check_lr(lr: Any, *, positive: bool = False, message: str = "Invalid learning rate: {}") -> None:
    """A tensor lr has one element; a number lr is ``>= 0`` (``> 0`` with ``positive``: SparseAdam,
    Prodigy). ``message``: the reference's wording where it has its own (Muon, Adafactor)."""
    if isinstance(lr, Tensor) and lr.numel() != 1 and not per_run_hyperparams():
        raise ValueError("Tensor lr must be 1-element")
    _check(lr, (lambda v: v > 0.0) if positive else (lambda v: v >= 0.0), message)


def check_eps(eps: Any, *, positive: bool = False) -> None:
    """``eps >= 0`` (``> 0`` with ``positive``)."""
    _check(eps, (lambda v: v > 0.0) if positive else (lambda v: v >= 0.0), "Invalid epsilon value: {}")


def check_betas(betas: Any, n: int = 2) -> None:
    """``n`` betas (a pair; Adan's triple), each in ``[0, 1)`` but the third, in ``[0, 1]``; tensors
    of one element, and a pair both tensors or both numbers, as torch asks."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != n:
        what = {2: "a pair (beta1, beta2)", 3: "a triple (beta1, beta2, beta3)"}[n]
        raise TypeError(f"betas must be {what}, got {betas!r}")
    for i, b in enumerate(betas):
        below_one = (lambda v: 0.0 <= v < 1.0) if i < 2 else (lambda v: 0.0 <= v <= 1.0)
        _check(b, below_one, f"Invalid beta parameter at index {i}: {{}}")
    if n != 2:
        return
    if sum(isinstance(b, Tensor) for b in betas) == 1:
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if isinstance(b, Tensor) and b.numel() != 1 and not per_run_hyperparams():
            raise ValueError(f"Tensor betas[{i}] must be 1-element")


def check_nonnegative(name: str, value: Any) -> None:
    """torch's ``Invalid momentum value: -1`` for any argument that must be >= 0."""
    _check(value, lambda v: v >= 0.0, f"Invalid {name} value: {{}}")


def check_weight_decay(weight_decay: Any) -> None:
    check_nonnegative("weight_decay", weight_decay)


def check_rho(rho: Any) -> None:
    """Adadelta's ``rho`` in ``[0, 1]``."""
    _check(rho, lambda r: 0.0 <= r <= 1.0, "Invalid rho value: {}")


#: The check of each setting a factory names in :func:`check_settings`.
_SETTING_CHECKS: dict[str, Callable[[Any], None]] = {
    "lr": check_lr,
    "eps": check_eps,
    "betas": check_betas,
    "rho": check_rho,
    **{
        name: (lambda value, name=name: check_nonnegative(name, value))
        for name in ("weight_decay", "momentum", "lr_decay", "initial_accumulator_value", "alpha", "momentum_decay")
    },
}


def check_settings(**settings: Any) -> None:
    """Each setting checked by its name (``lr``, ``eps``, ``betas``, ``rho``, and the ones that must be
    ``>= 0``: ``weight_decay``, ``momentum``, ...), in the order given."""
    for name, value in settings.items():
        _SETTING_CHECKS[name](value)


IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def check_impl(foreach=None, fused=None, differentiable=False) -> None:
    """torch's checks of its implementation flags (what they mean here: :mod:`diyopt.optim._builtins`)."""
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_positive_int(name: str, value: Any) -> None:
    """An integer setting >= 1 (SOAP's ``precondition_frequency``, Prodigy's ``slice_p``), worded as the
    other settings: ``Invalid slice_p value: 0 (a positive integer)``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name} value: {value!r} (a positive integer)")


def _is_schedule(lr: Any) -> bool:
    return callable(lr) and not isinstance(lr, Tensor)


def _no_schedule(
    name: str, lr: Any, why: str = "it enters the rule's own step-size arithmetic", use: str = "a number or a tensor"
) -> None:
    """A rule that takes ``lr`` into its own arithmetic (as torch's do) needs a number (or a tensor); a
    schedule goes through ``torch.optim.lr_scheduler`` on ``to_torch`` instead."""
    if _is_schedule(lr):
        raise TypeError(
            f"{name}'s lr cannot be a schedule ({why}); use {use}, and torch.optim.lr_scheduler on to_torch(...)"
        )
