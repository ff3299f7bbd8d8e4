"""``fit`` with a ``torch.optim.Optimizer`` class, used as it is: ``opt.step(closure)`` per step, with
fit's first-step checks and divergence guard."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from diyopt._util.progress import StepBar
from diyopt.core.checks import all_finite, check_gradients, check_loss_value, nonfinite_event
from diyopt.core.result import CALLBACK, DIVERGED, MAX_STEPS, Result
from diyopt.core.tree import LossFn, Params
from diyopt.errors import DivergedError


def fit_torch_class(
    loss_fn: LossFn,
    params: Params,
    cls: type,
    kwargs: dict,
    steps: int,
    callback,
    on_nonfinite: str = "stop",
    progress: bool = False,
) -> Result:
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    guard = on_nonfinite != "ignore"
    closure = _Closure(loss_fn, leaves, opt, guard)
    losses: list[Tensor] = []
    stop_reason, info, skipped = MAX_STEPS, {"optimizer": cls.__name__}, []
    bar = StepBar.maybe(progress, steps, desc=cls.__name__)
    # torch's step() writes the params in place: a copy to put back if they come out non-finite, kept in
    # buffers allocated once (a copy per step, no allocation per step)
    backup = [v.detach().clone() for v in leaves.values()] if guard else None
    start = time.perf_counter()
    for step in range(steps):
        closure.step = step
        if bar is not None and losses:
            bar.update(len(losses), losses[-1])
        # step(closure) evaluates the loss at the current params first, so the recorded loss is the
        # seed's: before the update (for LBFGS, the first of its evaluations).
        if guard:
            torch._foreach_copy_(backup, [v.detach() for v in leaves.values()])
        try:
            value = opt.step(closure).detach()
            if guard:
                new = {k: v.detach() for k, v in leaves.items()}
                if not all_finite(value, {}, new):
                    updates = {k: v - b for (k, v), b in zip(new.items(), backup)}
                    if event := nonfinite_event(step, value, {}, updates, new):
                        with torch.no_grad():
                            for v, b in zip(leaves.values(), backup):
                                v.copy_(b)
                        raise _NonFiniteStep(event, value)
            losses.append(value)
        except _NonFiniteStep as bad:
            if on_nonfinite == "skip":
                losses.append(bad.value)
                skipped.append(step)
                continue
            if on_nonfinite == "raise":
                raise DivergedError(bad.event) from None
            stop_reason, info["diverged"] = DIVERGED, bad.event
            break
        if callback is not None and callback(step, losses[-1], leaves):
            stop_reason = CALLBACK
            break
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close(len(losses), losses[-1] if losses else None)
    if skipped:
        info["skipped"] = skipped
    final = {k: v.detach().clone() for k, v in leaves.items()}
    history = torch.stack(losses) if losses else torch.empty(0)
    return Result(
        final,
        history,
        len(losses),
        seconds,
        stop_reason,
        opt.state_dict(),
        info=info,
        nfev=closure.calls,
        njev=closure.calls,
    )


class _Closure:
    """The closure ``opt.step`` calls: zero the grads, evaluate the loss, backpropagate. It checks the loss
    and its gradients on its first call, counts its calls (LBFGS makes several per step) and, with the
    guard on, raises :class:`_NonFiniteStep` on a non-finite loss or gradient at ``step``."""

    def __init__(self, loss_fn: LossFn, leaves: Params, opt: torch.optim.Optimizer, guard: bool):
        self.loss_fn, self.leaves, self.opt, self.guard = loss_fn, leaves, opt, guard
        self.calls = 0
        self.step = 0  # the fit's step, for the guard's report

    def __call__(self) -> Tensor:
        self.opt.zero_grad()
        loss = self.loss_fn(self.leaves)
        first = self.calls == 0
        self.calls += 1
        if first:
            check_loss_value(loss, self.leaves)
        loss.backward()
        if first:
            check_gradients({k: v.grad for k, v in self.leaves.items()})
        if self.guard:
            # The guard runs inside the closure, before step() changes anything: raising here leaves
            # params and optimizer state as they were (LBFGS may already have moved within its step).
            value, grads = loss.detach(), {k: v.grad for k, v in self.leaves.items() if v.grad is not None}
            if not all_finite(value, grads) and (event := nonfinite_event(self.step, value, grads)):
                raise _NonFiniteStep(event, value)
        return loss


class _NonFiniteStep(Exception):
    """Raised from the closure to stop torch's step() before it applies a non-finite update."""

    def __init__(self, event: dict, value: Tensor):
        super().__init__(event)
        self.event, self.value = event, value
