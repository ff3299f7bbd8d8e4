"""The fit loop: ``fit(loss_fn, params, optimizer, steps) -> Result``.

Per step: ``loss = loss_fn(params)``, gradients by autograd, ``optimizer.update``, ``apply_updates``.
The loss recorded at step ``i`` is the loss *before* update ``i``, as the seed records it.

Speed: no ``.item()`` per step (losses are kept as tensors and stacked once), and when the optimizer is
``flattenable`` and all params share a dtype and device, the params live in one flat buffer with named
views, so the optimizer runs a handful of ops per step instead of a handful per tensor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .core import Optimizer, Params, as_params

LossFn = Callable[[Params], Tensor]


@dataclass
class Result:
    """What a fit returns.

    Attributes:
      params: the final parameters (detached), ``dict[str, Tensor]``.
      losses: 1-D tensor, ``losses[i]`` = loss before update ``i``.
      steps: updates taken.
      seconds: wall time of the loop (compilation excluded, see ``compile_seconds``).
      stop_reason: ``"steps"`` (budget used), ``"converged"``, ``"diverged"``, ...
      state: the final optimizer state (diyopt optimizers) or ``state_dict()`` (torch.optim classes).
      compile_seconds: time spent compiling (compiled engine), 0 otherwise.
      info: anything else an engine or solver reports (message, evaluations, covariance, ...).
    """

    params: Params
    losses: Tensor
    steps: int
    seconds: float
    stop_reason: str
    state: Any = None
    compile_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The loss at the final params if it was evaluated, else the last recorded loss."""
        if "final_loss" in self.info:
            return float(self.info["final_loss"])
        return float(self.losses[-1]) if len(self.losses) else math.nan

    def plot_loss(self, ax=None, label: str | None = None, logy: bool = True):
        """Loss per step on a log y-axis; returns the matplotlib Axes."""
        from .plots import plot_loss

        return plot_loss(self.losses, ax=ax, label=label, logy=logy)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return (f"Result({params}, final_loss={self.final_loss:.6g}, steps={self.steps}, "
                f"seconds={self.seconds:.3g}, stop_reason={self.stop_reason!r})")


def _short(t: Tensor) -> str:
    return f"{t.item():.6g}" if t.numel() == 1 else f"<{tuple(t.shape)}>"


def fit(loss_fn: LossFn, params: Mapping[str, Tensor] | torch.nn.Module, optimizer: Any, steps: int,
        *, optimizer_kwargs: Mapping[str, Any] | None = None, engine: str = "eager",
        callback: Callable[[int, Tensor, Params], Any] | None = None, **options: Any) -> Result:
    """Minimize ``loss_fn(params)`` for ``steps`` updates.

    Args:
      loss_fn: ``loss_fn(params) -> scalar Tensor``; params is a ``dict[str, Tensor]``.
      params: initial parameters, a dict of tensors or an ``nn.Module`` (its named parameters).
      optimizer: a diyopt :class:`Optimizer`, or a ``torch.optim.Optimizer`` *class* (used as is, with
        ``optimizer_kwargs`` or extra keyword arguments), e.g. ``fit(loss, p, torch.optim.Adam, 4000)``.
      steps: number of updates (>= 1).
      engine: ``"eager"`` (the reference) or ``"compiled"`` (``torch.compile`` of the whole step).
      callback: ``callback(step, loss, params)`` after each update (``loss`` from before it, ``params``
        after it); returning ``True`` stops the fit
        (``stop_reason="callback"``). Costs a Python call per step: leave it out for speed.

    Returns:
      A :class:`Result`.

    Example::

        >>> import torch, diyopt
        >>> x, y = diyopt.data.make_line(seed=0)
        >>> loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)
        >>> p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
        >>> r = diyopt.fit(loss, p0, diyopt.optim.adam(lr=1e-2), steps=2000)
        >>> round(r.params["a"].item(), 2), r.stop_reason
        (-0.98, 'steps')
    """
    steps = _check_steps(steps)
    params = as_params(params)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        kwargs = {**(optimizer_kwargs or {}), **options}
        return _fit_torch_class(loss_fn, params, optimizer, kwargs, steps, callback)
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("pass the torch.optim class and its arguments, not an instance: "
                        f"fit(loss_fn, params, torch.optim.{type(optimizer).__name__}, steps, lr=...)")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a diyopt Optimizer or a torch.optim.Optimizer class, "
                        f"got {type(optimizer).__name__}")
    if optimizer_kwargs:
        optimizer = optimizer.replace_hyperparams(**optimizer_kwargs)
    if engine == "compiled":
        from .engines import fit_compiled

        return fit_compiled(loss_fn, params, optimizer, steps, callback=callback, **options)
    if engine != "eager":
        raise ValueError(f"unknown engine {engine!r}; known: 'eager', 'compiled'")
    if options:
        raise TypeError(f"fit() got unexpected keyword argument(s) {sorted(options)}")
    return _fit_eager(loss_fn, params, optimizer, steps, callback)


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


# ---------------------------------------------------------------- the eager engine (source of truth)


def _fit_eager(loss_fn: LossFn, params: Params, optimizer: Optimizer, steps: int, callback) -> Result:
    layout = FlatLayout.maybe(params) if optimizer.flattenable else None
    # The optimizer sees either the named tensors or one flat tensor under a single key.
    current = {"flat": layout.flatten(params)} if layout else params
    view = layout.unflatten if layout else (lambda p: p)
    state = optimizer.init(current)
    losses: list[Tensor] = []
    stop_reason = "steps"
    start = time.perf_counter()
    for step in range(steps):
        leaves = {k: v.detach().requires_grad_() for k, v in current.items()}
        loss = loss_fn(view(leaves))
        if step == 0:
            check_loss_value(loss)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True,
                                                      materialize_grads=True)))
        losses.append(loss.detach())
        updates, state = optimizer.update(grads, state, current)
        current = {k: v + updates[k] for k, v in current.items()}
        if callback is not None and callback(step, losses[-1], view(current)):
            stop_reason = "callback"
            break
    seconds = time.perf_counter() - start
    return Result(view(current), torch.stack(losses), len(losses), seconds, stop_reason, state)


def check_loss_value(loss: Any) -> None:
    """A loss must be a scalar tensor with a gradient path to the params; say which rule it breaks."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("loss has no gradient path to the params: it does not depend on them through "
                         "differentiable torch operations (was .item(), .detach() or numpy used?)")


class FlatLayout:
    """Named views into one flat buffer: ``unflatten(flatten(p)) == p``, views share the buffer's memory."""

    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]

    @classmethod
    def maybe(cls, params: Params) -> "FlatLayout | None":
        """A layout when the params can share one buffer (same dtype and device), else None."""
        first = next(iter(params.values()))
        if all(p.dtype == first.dtype and p.device == first.device for p in params.values()):
            return cls(params)
        return None

    def flatten(self, params: Params) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Mapping[str, Tensor]) -> Params:
        chunks = flat["flat"].split(self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}


# ---------------------------------------------------------------- torch.optim classes, used as they are


def _fit_torch_class(loss_fn: LossFn, params: Params, cls: type, kwargs: dict, steps: int, callback) -> Result:
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = cls(list(leaves.values()), **kwargs)
    first = [True]

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(leaves)
        if first[0]:
            check_loss_value(loss)
            first[0] = False
        loss.backward()
        return loss

    losses: list[Tensor] = []
    stop_reason = "steps"
    start = time.perf_counter()
    for step in range(steps):
        # step(closure) evaluates the loss at the current params first, so the recorded loss is the
        # seed's: before the update (for LBFGS, the first of its evaluations).
        losses.append(opt.step(closure).detach())
        if callback is not None and callback(step, losses[-1], leaves):
            stop_reason = "callback"
            break
    seconds = time.perf_counter() - start
    final = {k: v.detach().clone() for k, v in leaves.items()}
    return Result(final, torch.stack(losses), len(losses), seconds, stop_reason, opt.state_dict(),
                  info={"optimizer": cls.__name__})
