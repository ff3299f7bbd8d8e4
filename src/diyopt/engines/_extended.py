"""The contract's edges in every engine (docs/contract.md): extra inputs to ``update``, evaluation params.

An optimizer may declare ``extra_args`` -- ``"loss"`` (the loss at the params) and ``"grad_fn"`` (the
gradient at other params) -- and ``eval_params(state, params)``. The engines keep their plain step and
call what this module hands them:

- :func:`engine_update` -- ``update(grads, state, params, loss)`` that passes the declared extras and
  nothing else; each engine says how it computes a gradient elsewhere (autograd in the eager loop, with
  the distributed all-reduce; ``torch.func.grad`` in the compiled and batched ones; the closure in
  ``to_torch``).
- :func:`reported` / :func:`checkpoint_report` -- the evaluation params ``Result.params``, ``result.json``
  and checkpoints hold, with the training params beside them where they differ.
- :func:`step_extended`, :func:`swap_params` -- ``to_torch``'s ``step(closure)`` and ``.train()`` /
  ``.eval()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from diyopt.core.contract import EXTRA_ARGS, Optimizer
from diyopt.core.tree import FlatLayout, Params

GradFn = Callable[[Params], Params]


def check_extra_args(optimizer: Optimizer) -> None:
    """An optimizer asking for an input no engine has is refused before the first step."""
    unknown = set(optimizer.extra_args) - EXTRA_ARGS
    if unknown:
        raise TypeError(
            f"the optimizer's update asks for {sorted(unknown)}, which no engine supplies; the extra "
            f"inputs are {sorted(EXTRA_ARGS)} (Optimizer.extra_args)"
        )


def engine_update(optimizer: Optimizer, grad_fn: GradFn | None) -> Callable:
    """``update(grads, state, params, loss)`` passing ``optimizer.update`` the extras it declares.

    ``grad_fn(params) -> grads`` is the engine's gradient at other params, in the engine's layout.
    """
    check_extra_args(optimizer)
    wanted, update = optimizer.extra_args, optimizer.update
    if not wanted:
        return lambda grads, state, params, loss=None: update(grads, state, params)

    def with_extras(grads: Params, state: Any, params: Params, loss=None):
        extra = {}
        if "loss" in wanted:
            extra["loss"] = loss
        if "grad_fn" in wanted:
            extra["grad_fn"] = grad_fn
        return update(grads, state, params, **extra)

    return with_extras


class CountedGradFn:
    """``grad_fn`` counting its calls, so ``Result.nfev`` / ``njev`` include the extra evaluations (SAM: one
    loss and gradient per step). Only for code that runs in Python: a traced loop (compiled, vmapped) cannot
    mutate a counter, so those engines count the calls of one eager update and multiply."""

    def __init__(self, grad_fn: GradFn) -> None:
        self.grad_fn, self.calls = grad_fn, 0

    def __call__(self, params: Params) -> Params:
        self.calls += 1
        return self.grad_fn(params)


def functional_grad_fn(optimizer: Optimizer, loss_fn: Callable, view: Callable) -> GradFn | None:
    """``torch.func.grad`` of the loss, for the traced engines (compiled, vmapped); None if not needed."""
    if "grad_fn" not in optimizer.extra_args:
        return None
    return torch.func.grad(lambda current: loss_fn(view(current)))


def reported(optimizer: Optimizer, state: Any, current: Params) -> tuple[Params, Params | None]:
    """``(params to report, training params or None)``: the evaluation params by default, the training
    params beside them only where they differ (schedule-free, lookahead, EMA)."""
    if optimizer.eval_params is None:
        return current, None
    return optimizer.eval_params(state, current), current


def checkpoint_report(optimizer: Optimizer, layout: FlatLayout | None) -> Callable | None:
    """``(named params, state) -> (evaluation params, training params)`` for a checkpoint written from the
    loop's layout; None when the optimizer has no evaluation params (the checkpoint holds the params)."""
    if optimizer.eval_params is None:
        return None

    def report(named: Params, state: Any) -> tuple[Params, Params]:
        current = {"flat": layout.flatten(named)} if layout else named
        evaluated = optimizer.eval_params(state, current)
        return (layout.unflatten(evaluated["flat"]) if layout else evaluated), named

    return report


# ---------------------------------------------------------------- to_torch


def _label(opt) -> str:
    build = opt.optimizer.build
    return getattr(build, "__name__", None) or "this optimizer"


def _units(opt) -> list[tuple[int, dict]]:
    """The ``(index, group)`` pairs an update runs on: each group, or all groups as one when the update
    takes ``grad_fn`` (SAM's ascent point is built from every parameter at once, its norm spans them
    all), which needs the groups to share the hyperparameters."""
    groups = opt.param_groups
    if "grad_fn" not in opt.optimizer.extra_args or len(groups) == 1:
        return list(enumerate(groups))
    first = tuple(groups[0][k] for k in opt._hyper_keys)
    for group in groups[1:]:
        values = tuple(group[k] for k in opt._hyper_keys)
        if not _same(first, values):
            differ = sorted(k for k, a, b in zip(opt._hyper_keys, first, values) if not _same((a,), (b,)))
            raise ValueError(
                f"to_torch({_label(opt)}): param groups differ in {', '.join(differ)}, but its update "
                "evaluates the gradient at a point built from every parameter at once, so all "
                "groups must share its hyperparameters"
            )
    joint = {
        **groups[0],
        "param_names": [n for g in groups for n in g["param_names"]],
        "params": [p for g in groups for p in g["params"]],
    }
    return [(0, joint)]


def _same(a: tuple, b: tuple) -> bool:
    """Hyperparameter values equal; tensors by identity (as to_torch compares a group's values)."""
    return all(
        x is y or not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor) and x == y for x, y in zip(a, b)
    )


def step_extended(opt, closure: Callable | None):
    """``TorchOptimizer.step`` for an optimizer with ``extra_args``, or in eval mode (refused)."""
    if opt._eval_mode:
        raise RuntimeError(
            f"{_label(opt)} is in eval mode (the params hold its evaluation params): call .train() before step()"
        )
    wanted = opt.optimizer.extra_args
    check_extra_args(opt.optimizer)
    if wanted and closure is None:
        raise RuntimeError(
            f"{_label(opt)} needs step(closure): its update takes {', '.join(sorted(wanted))}; the "
            "closure zeroes the grads, computes the loss, calls backward() and returns the loss"
        )
    if wanted and opt.compiled:
        raise ValueError(
            f"to_torch({_label(opt)}, compiled=True): its update takes {', '.join(sorted(wanted))}, "
            "which the compiled step cannot call; use compiled=False"
        )
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    extra: dict = {}
    if "loss" in wanted:
        extra["loss"] = torch.as_tensor(loss).detach()
    for i, group in _units(opt):
        if "grad_fn" in wanted:
            extra["grad_fn"] = _closure_grad_fn(closure, group)
        opt._step_group(i, group, extra)
    return loss


def _closure_grad_fn(closure: Callable, group: dict) -> GradFn:
    """``grad_fn(point)``: the params set to ``point``, ``closure()`` (under DDP its backward all-reduces),
    the gradients read, the params put back bitwise. The gradients stay in ``.grad`` afterwards, as
    pytorch_optimizer.SAM leaves them."""
    by_name = dict(zip(group["param_names"], group["params"]))

    def grad_fn(point: Params) -> Params:
        params = [by_name[n] for n in point]
        saved = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, list(point.values()))
        with torch.enable_grad():
            closure()
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in zip(point, params)}
        torch._foreach_copy_(params, saved)
        return grads

    return grad_fn


@torch.no_grad()
def swap_params(opt, to_eval: bool) -> None:
    """``.eval()``: the evaluation params into the params, the training params kept in the state under
    ``train_param`` (so a ``state_dict`` taken in eval mode resumes training bitwise); ``.train()``: back."""
    if opt.optimizer.eval_params is None or opt._eval_mode == to_eval:
        return
    for i, group in _units(opt):
        pairs = [(n, p) for n, p in zip(group["param_names"], group["params"]) if opt.state.get(p)]
        if not pairs:  # never stepped: the evaluation params are the params
            continue
        names, params = [n for n, _ in pairs], [p for _, p in pairs]
        if to_eval:
            inner, structure = opt._group_optimizer(i, group)
            layout = opt._layout(i, inner, structure, names, params)
            state = pytree.tree_unflatten(layout.read(opt.state, params, i), layout.spec)
            evaluated = inner.eval_params(state, dict(zip(names, params)))
            for n, p in zip(names, params):
                opt.state[p]["train_param"] = p.detach().clone()
                p.copy_(evaluated[n])
        else:
            for p in params:
                saved = opt.state[p].pop("train_param", None)
                if saved is not None:
                    p.copy_(saved)
    opt._eval_mode = to_eval
