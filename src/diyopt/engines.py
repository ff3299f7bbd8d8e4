"""The fast engines: the same pure step as the eager loop in ``fit.py``, compiled or batched.

- :func:`fit_compiled` (``fit(..., engine="compiled")``): ``torch.compile`` of the whole step -- loss,
  gradient (``torch.func.grad_and_value``) and update -- several steps per compiled call.
- :func:`compiled_update`: the optimizer's ``update`` + ``apply_updates`` compiled, for real training loops
  (``to_torch(..., compiled=True)``).
- ``diyopt.sweep`` (in :mod:`diyopt.batched`) runs many fits as one vectorized computation.

Why hyperparameters become tensors: ``torch.compile`` specializes on Python numbers (a new ``lr`` would
mean a new graph), but treats tensors as inputs. So the optimizer is rebuilt once with each numeric
hyperparameter as a 0-dim tensor (``optimizer.replace_hyperparams(lr=torch.tensor(lr), ...)``); the step
count already is a tensor in the state, so schedules evaluate on it inside the graph. Structural flags
(``amsgrad``, ``nesterov``, ...) stay Python booleans: changing one is a different algorithm and graph.

Compiled graphs live in Inductor's on-disk cache (``/tmp/torchinductor_$USER`` unless
``TORCHINDUCTOR_CACHE_DIR`` says otherwise), so a second process with the same loss and rule skips most
of the compilation; ``Result.compile_seconds`` reports what the first call cost.
"""
from __future__ import annotations

import time
from numbers import Real
from typing import Any, Callable

import torch
from torch import Tensor

from .core import Optimizer, Params
from .fit import (DivergedError, FlatLayout, Result, check_loss_value, check_updates, nonfinite_event)

#: Steps per compiled call when the parameters are small: Python's per-call overhead (guards, wrapper,
#: allocation) is paid once per chunk. Large models gain nothing from unrolling, so they run one step.
SMALL_PROBLEM_CHUNK = 32
SMALL_PROBLEM_NUMEL = 1 << 16

#: Every fit shares the chunk function's code object, and Dynamo caches graphs per code object (8 by
#: default): each loss x optimizer structure is one entry, so a process that compiles many is allowed more.
RECOMPILE_LIMIT = 64


def more_graphs():
    """Context for calling the engines' compiled functions: room for RECOMPILE_LIMIT cached graphs."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                      accumulated_recompile_limit=max(RECOMPILE_LIMIT * 4, 256))


def tensor_hyperparams(optimizer: Optimizer, like: Tensor) -> Optimizer:
    """The optimizer rebuilt with every numeric hyperparameter a 0-dim tensor (``like``'s dtype, device).

    Numbers inside tuples (``betas``) become tensors too; booleans, strings, callables (schedules) and
    top-level integers (structural, e.g. a history size) stay as they are. An optimizer that cannot be
    rebuilt (no ``build``) is returned unchanged: it still compiles, but a new value of a number baked into
    it is a new graph.
    """
    if optimizer.build is None or not optimizer.hyperparams:
        return optimizer

    def as_tensor(v: Any) -> Tensor:
        return torch.tensor(v, dtype=like.dtype, device=like.device)

    changes = {}
    for k, v in optimizer.hyperparams.items():
        if isinstance(v, float):
            changes[k] = as_tensor(v)
        elif isinstance(v, tuple) and v and all(isinstance(e, Real) and not isinstance(e, bool) for e in v):
            changes[k] = tuple(as_tensor(float(e)) for e in v)
    return optimizer.replace_hyperparams(**changes) if changes else optimizer


# ---------------------------------------------------------------- fit(..., engine="compiled")


def fit_compiled(loss_fn: Callable[[Params], Tensor], params: Params, optimizer: Optimizer, steps: int,
                 callback: Callable | None = None, *, on_nonfinite: str = "stop", chunk: int | None = None,
                 mode: str | None = None, backend: str = "inductor") -> Result:
    """``fit`` with the whole step compiled; equal to the eager engine up to rounding.

    Args:
      chunk: steps per compiled call (unrolled). Default: 32 for problems up to 65,536 parameters, else 1;
        with a ``callback`` it is 1 (the callback sees every step's params). Steps left over after whole
        chunks run in the eager engine's step (the same math), so no second graph is compiled.
      mode: ``torch.compile``'s mode (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"``
        for CUDA graphs on a GPU). With ``None`` on CPU, Inductor's C++ wrapper is used.
      backend: ``torch.compile``'s backend; ``"aot_eager"`` skips code generation (for debugging).
      on_nonfinite: ``"stop"`` (default), ``"raise"`` or ``"ignore"``, as in ``fit``. A chunk that went
        non-finite is replayed step by step to stop at the last finite params, exactly as the eager loop.

    The recorded losses, ``Result.seconds`` (the loop, compilation excluded) and ``Result.compile_seconds``
    (the first call's extra time: tracing, compiling or loading from Inductor's cache) are as in ``fit``.
    """
    if on_nonfinite not in ("stop", "raise", "ignore"):
        raise ValueError(f"engine='compiled' supports on_nonfinite='stop', 'raise' or 'ignore', got "
                         f"{on_nonfinite!r}; use engine='eager' for 'skip'")
    numel = sum(p.numel() for p in params.values())
    if chunk is None:
        chunk = 1 if callback is not None or numel > SMALL_PROBLEM_NUMEL else SMALL_PROBLEM_CHUNK
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = min(chunk, steps)

    layout = FlatLayout.maybe(params) if optimizer.flattenable else None
    current = {"flat": layout.flatten(params)} if layout else dict(params)
    view = layout.unflatten if layout else (lambda p: p)
    optimizer = tensor_hyperparams(optimizer, next(iter(current.values())))
    state = optimizer.init(current)
    guard = on_nonfinite != "ignore"

    # First-step checks run eagerly, so a bad loss or rule fails with fit's message, not a compiler trace.
    eager_step = _make_step(loss_fn, view, optimizer.update)
    leaves = {k: v.detach().requires_grad_() for k, v in current.items()}
    check_loss_value(loss_fn(view(leaves)))
    zero = {k: torch.zeros_like(v) for k, v in current.items()}
    check_updates(optimizer.update(zero, state, current)[0], current, optimizer, layout)

    # On CPU, Inductor's C++ wrapper calls the chunk's kernels without a Python call and allocation
    # per kernel: 2-3x less time per step on small problems (measured, BENCHMARKS.md).
    cpp = backend == "inductor" and mode is None and current[next(iter(current))].device.type == "cpu"
    compiled = torch.compile(_make_chunk(eager_step, chunk, guard), fullgraph=True, mode=mode,
                             backend=backend, options={"cpp_wrapper": True} if cpp else None)
    losses = torch.empty(steps, dtype=current[next(iter(current))].dtype)
    stop_reason, info = "steps", {}
    done = 0
    first_call = None
    start = time.perf_counter()
    while done + chunk <= steps:
        t0 = time.perf_counter()
        try:
            with more_graphs():
                new_current, new_state, chunk_losses, finite = compiled(current, state)
        except torch._dynamo.exc.Unsupported as e:  # e.g. .item() or numpy inside loss_fn or the rule
            raise TypeError(f"engine='compiled' cannot compile this loss or update rule as one graph "
                            f"({str(e).strip().splitlines()[0]}); use engine='eager'") from e
        if first_call is None:
            first_call = time.perf_counter() - t0
        if guard and not bool(finite.all()):
            # Replay the chunk in the eager step to stop exactly where the eager loop would.
            done, current, state, event = _replay(eager_step, current, state, losses, done, chunk, view)
            stop_reason, info["diverged"] = "diverged", event
            if on_nonfinite == "raise":
                raise DivergedError(event)
            break
        losses[done:done + chunk] = chunk_losses
        current, state = new_current, new_state
        done += chunk
        if callback is not None:
            if callback(done - 1, losses[done - 1], view(current)):
                stop_reason = "callback"
                break
    if stop_reason == "steps" and done < steps:  # the leftover steps, in the eager step (same math)
        done, current, state, event = _replay(eager_step, current, state, losses, done, steps - done, view,
                                              guard)
        if event is not None:
            stop_reason, info["diverged"] = "diverged", event
            if on_nonfinite == "raise":
                raise DivergedError(event)
    total = time.perf_counter() - start
    calls = max(done // chunk, 1)
    per_call = (total - first_call) / (calls - 1) if calls > 1 and first_call is not None else 0.0
    compile_seconds = max((first_call or 0.0) - per_call, 0.0)
    info.update(engine="compiled", chunk=chunk)
    return Result(view(current), losses[:done].clone(), done, total - compile_seconds, stop_reason, state,
                  compile_seconds=compile_seconds, info=info)


def _make_step(loss_fn: Callable, view: Callable, update: Callable) -> Callable:
    """One pure step ``(current, state) -> (current, state, loss, finite)`` on the (flat or named) params."""
    grad_and_value = torch.func.grad_and_value(lambda current: loss_fn(view(current)))

    def step(current: Params, state: Any):
        grads, loss = grad_and_value(current)
        finite = torch.isfinite(loss)
        for g in grads.values():
            finite = finite & torch.isfinite(g).all()
        updates, state = update(grads, state, current)
        return {k: v + updates[k] for k, v in current.items()}, state, loss.detach(), finite

    step.grads = lambda current: grad_and_value(current)[0]  # for the guard's report, off the hot path
    return step


def _make_chunk(step: Callable, chunk: int, guard: bool) -> Callable:
    """``chunk`` steps unrolled in one function: one compiled call, every step's loss recorded."""

    def run_chunk(current: Params, state: Any):
        losses, finite = [], []
        for _ in range(chunk):
            current, state, loss, ok = step(current, state)
            losses.append(loss)
            finite.append(ok)
        return current, state, torch.stack(losses), torch.stack(finite) if guard else torch.ones(())

    return run_chunk


def _replay(step: Callable, current: Params, state: Any, losses: Tensor, done: int, count: int,
            view: Callable, guard: bool = True):
    """Run up to ``count`` eager steps from ``done``; stop before the first non-finite one (as fit does)."""
    for _ in range(count):
        new_current, new_state, loss, finite = step(current, state)
        if guard and not bool(finite):
            return done, current, state, nonfinite_event(done, loss, view(step.grads(current)))
        losses[done] = loss
        current, state = new_current, new_state
        done += 1
    return done, current, state, None


# ---------------------------------------------------------------- compiled optimizer step for training loops


def compiled_update(optimizer: Optimizer, *, mode: str | None = None, backend: str = "inductor") -> Callable:
    """``step_(params, grads, state)``: update + apply_updates compiled as one graph, *in place*.

    For real training loops: the per-tensor rule over all tensors is fused into a few kernels that read
    the params, grads and state once and write the params and state back into their own memory, like
    ``torch.optim.Adam(fused=True)``. ``state`` is ``optimizer.init(params)``; its tensors are overwritten.
    Build the optimizer with tensor hyperparameters (:func:`tensor_hyperparams`) so a scheduler changing
    them does not recompile.
    """
    update = optimizer.update
    leaves = torch.utils._pytree.tree_leaves

    def step_(params: Params, grads: Params, state: Any) -> None:
        updates, new_state = update(grads, state, params)
        for k, p in params.items():
            p.copy_(p + updates[k])
        for old, new in zip(leaves(state), leaves(new_state)):
            if isinstance(old, Tensor) and new is not old and old.numel():
                # torch 2.13 drops a copy_ into a 0-dim input under torch.compile (the step count would
                # stay 0); the same write through a 1-element view is kept.
                old.unsqueeze(0).copy_(new.unsqueeze(0)) if old.dim() == 0 else old.copy_(new)

    compiled = torch.compile(step_, fullgraph=True, mode=mode, backend=backend)

    def step(params: Params, grads: Params, state: Any) -> None:
        with more_graphs():
            compiled(params, grads, state)

    return step
