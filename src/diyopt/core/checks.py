"""The checks every engine runs on what a step computes, so a bad loss or rule fails at its first step.

- :func:`first_step_check` and :func:`check_loss_value`, :func:`check_gradients`: the user's loss returns
  one finite-typed scalar tensor and every param gets a gradient (a name in the message, not a shape error
  ten frames deep).
- :func:`check_updates`: the rule's first updates have the params' names, shapes and dtypes.
- The divergence guard: :func:`all_finite` (is the loss, every gradient and every new param finite) and
  :func:`nonfinite_event` (what is reported when not: the step, and which tensors went nan or inf first).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import FlatLayout, LossFn, Params

NONFINITE_POLICIES = ("stop", "raise", "skip", "ignore")


_DOT_DTYPES = (torch.float32, torch.float64)


def all_finite(loss: Tensor, grads: Params, new: Params | None = None) -> bool:
    """The guard's per-step check, kept cheap: a sum is finite when every term is, so the loss plus the sums
    of all gradient and new-parameter elements being finite means all are -- unless the sum overflowed,
    which the exact check in :func:`nonfinite_event` then clears (likewise one dot product of the gradient and
    the new params, for one flat buffer each). A few reductions and one read of a
    finished value (one sync, on a GPU too; two cheap reads on a CPU, for the one buffer); ``isfinite(...).all()`` costs several times more. Finite old
    and new params mean a finite update, so the update needs no check."""
    total = loss.detach()
    g, n = list(grads.values()), list(new.values()) if new is not None else []
    one_buffer = len(g) == len(n) == 1 and g[0].dim() == n[0].dim() == 1 and g[0].dtype == n[0].dtype
    if one_buffer and g[0].dtype in _DOT_DTYPES:
        # fit's flat buffer: one product-sum covers both, as a non-finite element of either makes its term
        # inf or nan (inf * 0 is nan) -- two reductions and an add fewer per step
        dot = torch.dot(g[0], n[0])
        if dot.is_cpu:  # two reads cost less than adding a float64 loss to a float32 dot (type promotion)
            return math.isfinite(total.item()) and math.isfinite(dot.item())
        return math.isfinite(float(total + dot))  # one sync on a device
    for t in grads.values():
        total = total + t.sum()
    for t in new.values() if new is not None else ():
        total = total + t.sum()
    return math.isfinite(float(total))


def nonfinite_event(
    step: int, loss: Tensor, grads: Params, updates: Params | None = None, new: Params | None = None
) -> dict | None:
    """Where a step went non-finite: ``{"step", "what", "param", "loss"}``, or None if everything is finite
    after all (an overflowed sum in the cheap check).

    ``what`` is the first of ``"loss"``, ``"grad"`` (a gradient), ``"update"`` (what the rule returned)
    and ``"param"`` (a finite update that overflowed the parameter) that is not finite; ``param`` the
    first parameter (in order) where it is, or None for the loss. Runs only on the failure path, so it
    may look at every tensor.
    """

    def first_bad(tensors: Params | None) -> str | None:
        return next((k for k, t in (tensors or {}).items() if not bool(torch.isfinite(t).all())), None)

    value = float(loss.detach())
    if not math.isfinite(value):
        return {"step": step, "what": "loss", "param": None, "loss": value}
    for what, tensors in (("grad", grads), ("update", updates), ("param", new)):
        if (name := first_bad(tensors)) is not None:
            return {"step": step, "what": what, "param": name, "loss": value}
    return None


def check_updates(updates: Any, params: Params, optimizer: Optimizer, layout: FlatLayout | None) -> None:
    """Updates must be tensors with each param's shape and dtype; name the param that breaks it."""
    try:
        _check_updates(updates, params)
    except (TypeError, ValueError):
        if layout is None:
            raise
        # The loop ran the rule on one flat buffer; run it once on the named params to name the culprit.
        named = layout.unflatten(params["flat"])
        zeros = {k: torch.zeros_like(v) for k, v in named.items()}
        _check_updates(optimizer.update(zeros, optimizer.init(named), named)[0], named)
        raise


def _check_updates(updates: Any, params: Params) -> None:
    if not isinstance(updates, Mapping) or list(updates) != list(params):
        got = list(updates) if isinstance(updates, Mapping) else type(updates).__name__
        raise TypeError(f"the update rule must return a dict of updates for {list(params)}, got {got}")
    for k, p in params.items():
        u = updates[k]
        if not isinstance(u, Tensor):
            raise TypeError(f"the update for parameter {k!r} must be a Tensor, got {type(u).__name__}")
        if u.shape != p.shape:
            raise ValueError(
                f"the update for parameter {k!r} has shape {tuple(u.shape)}, "
                f"expected the parameter's shape {tuple(p.shape)}"
            )
        if u.dtype != p.dtype:
            raise TypeError(
                f"the update for parameter {k!r} has dtype {u.dtype}, expected the parameter's dtype {p.dtype}"
            )


def check_loss_value(loss: Any, names: Any = None) -> None:
    """A loss must be a scalar tensor with a gradient path to the params (``names``, to say which); say
    which rule it breaks."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        which = f" {', '.join(map(repr, names))}" if names else ""
        raise ValueError(
            f"loss has no gradient path to the params{which}: it does not depend on them through "
            "differentiable torch operations (was .item(), .detach() or numpy used?)"
        )


def check_gradients(grads: Mapping[str, Tensor | None]) -> None:
    """On the first step: no gradient at all is an error, some params without one is a warning (once).

    ``grads[k] is None`` where autograd found no path from the loss to param ``k``. A loss that uses no
    optimized tensor (it closes over other tensors: a model's own parameters, a copy) would otherwise
    run every step at the same loss.
    """
    missing = [k for k, g in grads.items() if g is None]
    if not missing:
        return
    names = ", ".join(map(repr, missing))
    if len(missing) == len(grads):
        raise ValueError(
            f"the loss does not depend on the parameters being optimized: no gradient for "
            f"{names}. It must compute with the tensors it is given (a loss that calls an "
            f"nn.Module is given that module as the params: fit(loss_fn, model, ...))"
        )
    warnings.warn(
        f"the loss does not depend on parameter(s) {names}: they get no gradient (a zero one is used)", stacklevel=2
    )


def first_step_check(loss_fn: LossFn, params: Params) -> None:
    """The eager loop's first-step checks (loss value, gradients) for engines that trace the step."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = loss_fn(leaves)
    check_loss_value(loss, leaves)
    check_gradients(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))))
