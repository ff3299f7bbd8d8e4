"""The fast engines: the same pure step as the eager loop in ``fit.py``, compiled or batched.

- :func:`fit_compiled` (``fit(..., engine="compiled")``): ``torch.compile`` of the whole step -- loss,
  gradient (``torch.func.grad_and_value``) and update -- several steps per compiled call.
- :func:`compiled_update`: the optimizer's ``update`` + ``apply_updates`` compiled, for real training loops
  (``to_torch(..., compiled=True)``).
- ``diyopt.sweep`` (in :mod:`diyopt.engines`) runs many fits as one vectorized computation.

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

import contextlib
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from diyopt._util.progress import CompileNotice, StepBar
from diyopt._util.validate import positive_integer
from diyopt.core.checks import check_updates, first_step_check, nonfinite_event
from diyopt.core.contract import Optimizer, checked_for
from diyopt.core.result import CALLBACK, DIVERGED, MAX_STEPS, Result
from diyopt.core.tree import FlatLayout, Params
from diyopt.engines._extended import CountedGradFn, engine_update, functional_grad_fn, reported
from diyopt.engines._inductor import inductor_settings
from diyopt.engines.hoisting import hoisting_backend
from diyopt.errors import DivergedError

#: Steps per compiled call when the parameters are small: Python's per-call overhead (guards, wrapper,
#: allocation) is paid once per chunk. Large models gain nothing from it, so they run one step per call.
SMALL_PROBLEM_CHUNK = 256
SMALL_PROBLEM_NUMEL = 1 << 16

#: Steps per turn of the compiled loop. One turn allocates its buffers once, so a few steps per turn run
#: a small fit several times faster than one; more steps per turn compile longer (BENCHMARKS.md, "Design
#: measurements").
STEPS_PER_TURN = 4

#: Every fit shares the chunk function's code object, and Dynamo caches graphs per code object (8 by
#: default): each loss x optimizer structure is one entry, so a process that compiles many is allowed more.
RECOMPILE_LIMIT = 64


def more_graphs():
    """Context for calling the engines' compiled functions: room for RECOMPILE_LIMIT cached graphs, and
    Inductor's settings for compiling fast and into its on-disk caches (:func:`inductor_settings`)."""
    stack = contextlib.ExitStack()
    stack.enter_context(
        torch._dynamo.config.patch(
            recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=max(RECOMPILE_LIMIT * 4, 256)
        )
    )
    stack.enter_context(inductor_settings())
    return stack


def call_compiled(compiled: Callable, *args: Any, may_compile: bool) -> Any:
    """Call a ``torch.compile``'d function, with room for more graphs only on calls that may compile.

    Patching Dynamo's config costs more per call than a chunk of a small fit runs (BENCHMARKS.md, "Design
    measurements"), so only the first call of a run -- the one that traces -- is made inside :func:`more_graphs`.
    Should a later call's guards fail with the default limit already reached, Dynamo refuses
    (``fullgraph=True``) before tracing anything, and the call is simply repeated with room.
    """
    _forget_float_specializations()
    if not may_compile:
        try:
            return compiled(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            pass
    with more_graphs():
        return compiled(*args)


def faithful_casts():
    """Inductor's config while a compiled fit compiles and runs: ``emulate_precision_casts``, so a cast to a
    narrower dtype rounds there as in eager, instead of the intermediates staying in float32 (without it,
    Muon's bfloat16 Newton-Schulz parted from eager by 3e-3 in 30 steps; with it, 1e-16 in float64)."""
    config = torch._inductor.config
    if not hasattr(config, "emulate_precision_casts"):  # an older torch (pyproject allows >=2.3): as it is
        return contextlib.nullcontext()
    return config.patch(emulate_precision_casts=True)


def _forget_float_specializations() -> None:
    """Clear Dynamo's process-wide list of float symbols to specialize, left over from earlier compiles.

    Why: when Dynamo's tensorify pass restarts a trace, it records the float symbols to specialize by
    *name* (``zf1``, ``zf6``, ...) in ``TensorifyState``, a class-level set that torch 2.13 clears only on a
    failed trace or ``torch._dynamo.reset()``. Names restart from ``zf0`` in every new trace, so a later,
    unrelated compile (another rule, another graph) specializes whichever of its floats happen to carry a
    leftover name -- no guard covers it. After a compiled schedule-free fit, ``compiled_update`` of a user's
    Adam baked a 0-dim parameter's value into its graph that way and left it ~5% off. Between two of our
    calls no trace is in progress, so clearing here loses nothing a restart needs.
    """
    state = getattr(torch._dynamo.symbolic_convert, "TensorifyState", None)
    empty, clear = getattr(state, "empty", None), getattr(state, "clear", None)
    if callable(empty) and callable(clear) and not empty():  # another torch may hold it otherwise
        clear()


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


def fit_compiled(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    optimizer: Optimizer,
    steps: int,
    callback: Callable | None = None,
    *,
    on_nonfinite: str = "stop",
    chunk: int | None = None,
    mode: str | None = None,
    backend: str = "inductor",
    progress: bool = False,
) -> Result:
    """``fit`` with the whole step compiled; equal to the eager engine up to rounding.

    Args:
      chunk: steps per compiled call, run as a loop inside the compiled code. Default: 256 for problems
        up to 65,536 parameters, else 1; with a ``callback`` it is 1 (the callback sees every step's
        params). The last call runs the steps left over, with the same graph; fewer than 4 (the steps
        per turn of the compiled loop) left over run in the eager engine's step (the same math).
      mode: ``torch.compile``'s mode (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"``
        for CUDA graphs on a GPU). With ``None`` on CPU, Inductor's C++ wrapper is used.
      backend: ``torch.compile``'s backend; ``"aot_eager"`` skips code generation (for debugging).
      on_nonfinite: ``"stop"`` (default), ``"raise"`` or ``"ignore"``, as in ``fit``. A chunk that went
        non-finite is replayed step by step to stop at the last finite params, exactly as the eager loop.
      progress: a bar on stderr, advanced after each compiled call. The first call's "compiling" notice
        and its time are shown with it, or whenever stderr is a terminal.

    The recorded losses, ``Result.seconds`` (the loop, compilation excluded) and ``Result.compile_seconds``
    (the first call's extra time: tracing, compiling or loading from Inductor's cache) are as in ``fit``.
    """
    if on_nonfinite not in ("stop", "raise", "ignore"):
        raise ValueError(
            f"engine='compiled' supports on_nonfinite='stop', 'raise' or 'ignore', got "
            f"{on_nonfinite!r}; use engine='eager' for 'skip'"
        )
    numel = sum(p.numel() for p in params.values())
    if chunk is None:
        chunk = 1 if callback is not None or numel > SMALL_PROBLEM_NUMEL else SMALL_PROBLEM_CHUNK
    chunk = positive_integer(chunk, "chunk")

    layout = FlatLayout.maybe(params) if optimizer.flattenable else None
    current = {"flat": layout.flatten(params)} if layout else dict(params)
    view = (lambda p: layout.unflatten(p["flat"])) if layout else (lambda p: p)
    optimizer = tensor_hyperparams(optimizer, next(iter(current.values())))
    state = optimizer.init(current)
    guard = on_nonfinite != "ignore"

    # First-step checks run eagerly, so a bad loss or rule fails with fit's message, not a compiler trace.
    grad_fn = functional_grad_fn(optimizer, loss_fn, view)
    update = engine_update(optimizer, grad_fn)  # + declared extras
    eager_step = _make_step(loss_fn, view, update)
    first_step_check(loss_fn, view(current))
    zero = {k: torch.zeros_like(v) for k, v in current.items()}
    counted = CountedGradFn(grad_fn) if grad_fn is not None else None  # its calls per update, for nfev
    with checked_for("compiled"):  # a rule that cannot be compiled refuses here, in its own words
        check_updates(engine_update(optimizer, counted)(zero, state, current)[0], current, optimizer, layout)

    # On CPU, Inductor's C++ wrapper calls the chunk's kernels without a Python call and allocation
    # per kernel: 2-3x less time per step on small problems (measured, BENCHMARKS.md).
    cpp = backend == "inductor" and mode is None and current[next(iter(current))].device.type == "cpu"
    per_turn = next(k for k in (STEPS_PER_TURN, 2, 1) if chunk % k == 0)
    run = _make_loop(eager_step, chunk, per_turn, guard) if chunk > 1 else _make_single(eager_step, guard)
    # dynamic=False: one graph per problem shape. A second shape would otherwise make Dynamo trace with
    # symbolic sizes, which while_loop does not take for the sizes the loss captures.
    compiled = torch.compile(
        run, fullgraph=True, dynamic=False, mode=mode, backend=backend, options={"cpp_wrapper": True} if cpp else None
    )
    losses = torch.empty(steps, dtype=current[next(iter(current))].dtype)
    counts = {}  # steps per call, as the 0-dim tensors the graph takes (at most two distinct values)
    stop_reason, info = MAX_STEPS, {}

    def diverged(event: dict) -> str:
        if on_nonfinite == "raise":
            raise DivergedError(event)
        info["diverged"] = event
        return DIVERGED

    done = 0
    first_call = None
    bar = StepBar.maybe(progress, steps)
    notice = CompileNotice(progress)
    eager_seconds = _eager_estimate(eager_step, current, state, steps) if notice.show else None
    notice.start()
    start = time.perf_counter()
    while steps - done >= per_turn:
        n = min(chunk, steps - done) // per_turn * per_turn
        count = counts.setdefault(n, torch.tensor(n))
        t0 = time.perf_counter()
        try:
            with faithful_casts():
                new_current, new_state, chunk_losses, finite = call_compiled(
                    compiled, current, state, count, may_compile=first_call is None
                )
        except torch._dynamo.exc.Unsupported as e:  # e.g. .item() or numpy inside loss_fn or the rule
            raise TypeError(
                f"engine='compiled' cannot compile this loss or update rule as one graph "
                f"({str(e).strip().splitlines()[0]}); use engine='eager'"
            ) from e
        if first_call is None:
            first_call = time.perf_counter() - t0
            notice.done(first_call, eager_seconds)
        if guard and not bool(finite[:n].all()):
            # Replay the chunk in the eager step to stop exactly where the eager loop would.
            done, current, state, event = _replay(eager_step, current, state, losses, done, n, view)
            if event is None:  # cannot happen (same math), but never report a divergence that wasn't
                continue
            stop_reason = diverged(event)
            break
        losses[done : done + n] = chunk_losses[:n]
        current, state = new_current, new_state
        done += n
        if bar is not None:
            bar.update(done, losses[done - 1])
        if callback is not None:
            if callback(done - 1, losses[done - 1], view(reported(optimizer, state, current)[0])):
                stop_reason = CALLBACK
                break
    if stop_reason == MAX_STEPS and done < steps:  # fewer than per_turn steps left: the eager step (same math)
        done, current, state, event = _replay(eager_step, current, state, losses, done, steps - done, view, guard)
        if event is not None:
            stop_reason = diverged(event)
    total = time.perf_counter() - start
    if bar is not None:
        bar.close(done, losses[done - 1] if done else None)
    calls = max(-(-done // chunk), 1)
    per_call = (total - first_call) / (calls - 1) if calls > 1 and first_call is not None else 0.0
    compile_seconds = max((first_call or 0.0) - per_call, 0.0)
    info.update(engine="compiled", chunk=chunk, steps_per_turn=per_turn)
    evals = done + (stop_reason == DIVERGED)  # as the eager loop counts: the step that diverged too
    if counted is not None:  # the update's own evaluations (SAM's gradient at the ascent point)
        evals += (done + (stop_reason == DIVERGED)) * counted.calls
    shown, train = reported(optimizer, state, current)
    if train is not None:  # the loss at the params reported, not at the last gradient point
        info["final_loss"] = float(loss_fn(view(shown)).detach())
    return Result(
        view(shown),
        losses[:done].clone(),
        done,
        total - compile_seconds,
        stop_reason,
        state,
        compile_seconds=compile_seconds,
        info=info,
        nfev=evals,
        njev=evals,
        train_params=None if train is None else view(train),
    )


def _eager_estimate(step: Callable, current: Params, state: Any, steps: int, probes: int = 3) -> float:
    """Seconds the whole fit would take in the eager step: ``probes`` timed steps (after an untimed one),
    times ``steps`` -- so the compile notice can say when compiling costs more than it saves (a short fit
    of a small model). The steps are pure and run under a forked RNG, so the fit itself is unchanged."""
    with torch.random.fork_rng(devices=[]):
        c, s, *_ = step(current, state)
        t0 = time.perf_counter()
        for _ in range(probes):
            c, s, *_ = step(c, s)
        return (time.perf_counter() - t0) / probes * steps


def _make_step(loss_fn: Callable, view: Callable, update: Callable) -> Callable:
    """One pure step ``(current, state) -> (current, state, loss, finite)`` on the (flat or named) params."""
    grad_and_value = torch.func.grad_and_value(lambda current: loss_fn(view(current)))

    def step(current: Params, state: Any):
        grads, loss = grad_and_value(current)
        updates, state = update(grads, state, current, loss.detach())
        new = {k: v + updates[k] for k, v in current.items()}
        # The guard: the loss, the gradients and the new params (finite old and new params mean a
        # finite update) -- nothing non-finite is ever written.
        finite = torch.isfinite(loss)
        for t in (*grads.values(), *new.values()):
            finite = finite & torch.isfinite(t).all()
        return new, state, loss.detach(), finite

    def event(current: Params, state: Any, at: int) -> dict | None:
        """What went non-finite at step ``at`` (the guard's report, off the hot path)."""
        grads, loss = grad_and_value(current)
        updates, _ = update(grads, state, current, loss.detach())
        new = {k: v + updates[k] for k, v in current.items()}
        return nonfinite_event(at, loss, view(grads), view(updates), view(new))

    step.event = event
    return step


def _make_single(step: Callable, guard: bool) -> Callable:
    """One step per compiled call, with :func:`_make_loop`'s signature (``count`` is always 1)."""

    def run(current: Params, state: Any, count: Tensor):
        current, state, loss, ok = step(current, state)
        return current, state, loss.reshape(1), ok.reshape(1) if guard else torch.ones((), dtype=torch.bool)

    return run


def _make_loop(step: Callable, chunk: int, per_turn: int, guard: bool) -> Callable:
    """Up to ``chunk`` steps in one compiled call: ``run(current, state, count)``, every step's loss recorded.

    The steps run in ``torch._higher_order_ops.while_loop``, ``per_turn`` steps per turn, so the compiler
    traces and compiles ``per_turn`` steps however long the chunk is (32 unrolled steps took 2.6x longer
    to compile from an empty cache, measured), and the loop runs inside the compiled code. ``count`` (a
    multiple of ``per_turn``) is a 0-dim tensor: a fit's last, shorter chunk uses the same graph.
    Returns ``(current, state, losses, finite)``: buffers of length ``chunk``, filled up to ``count``.
    """
    flatten, unflatten = torch.utils._pytree.tree_flatten, torch.utils._pytree.tree_unflatten

    def run(current: Params, state: Any, count: Tensor):
        leaves, spec = flatten((current, state))
        # Only tensors are carried through the loop; anything else in the state is a constant.
        carried = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        ref = leaves[carried[0]]

        def rebuild(values):
            full = list(leaves)
            for i, v in zip(carried, values):
                full[i] = v
            return unflatten(full, spec)

        def cond(i, losses, finite, *values):
            return i < count

        def body(i, losses, finite, *values):
            current, state = rebuild(values)
            for k in range(per_turn):
                current, state, loss, ok = step(current, state)
                losses = losses.index_put((i + k,), loss)
                finite = finite.index_put((i + k,), ok)
            new = [flatten((current, state))[0][j] for j in carried]
            # A loop may not return its input as is (e.g. an empty state passed through): copy those.
            new = [n.clone() if n is old else n for n, old in zip(new, values)]
            return (i + per_turn, losses, finite, *new)

        start = (
            torch.zeros((), dtype=torch.int64, device=ref.device),
            torch.zeros(chunk, dtype=ref.dtype, device=ref.device),
            torch.ones(chunk, dtype=torch.bool, device=ref.device),
        )
        # The loop's carry must keep its layout; contiguous() makes init's expanded zeros plain tensors.
        _, losses, finite, *values = while_loop(cond, body, (*start, *(leaves[j].contiguous() for j in carried)))
        current, state = rebuild(values)
        return current, state, losses, finite if guard else torch.ones((), dtype=torch.bool)

    return run


def _replay(
    step: Callable,
    current: Params,
    state: Any,
    losses: Tensor,
    done: int,
    count: int,
    view: Callable,
    guard: bool = True,
):
    """Run up to ``count`` eager steps from ``done``; stop before the first non-finite one (as fit does)."""
    for _ in range(count):
        new_current, new_state, loss, finite = step(current, state)
        if guard and not bool(finite):
            return done, current, state, step.event(current, state, done)
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
            _write(p, p + updates[k])
        for old, new in zip(leaves(state), leaves(new_state)):
            if isinstance(old, Tensor) and new is not old and old.numel():
                _write(old, new)

    if backend == "inductor" and mode is None:
        backend = hoisting_backend()  # the scalar math once per step, not once per element
    compiled = torch.compile(step_, fullgraph=True, mode=mode, backend=backend)

    calls = 0

    def step(params: Params, grads: Params, state: Any) -> None:
        nonlocal calls
        call_compiled(compiled, params, grads, state, may_compile=calls == 0)
        calls += 1

    return step


def _write(into: Tensor, value: Tensor) -> None:
    """``into.copy_(value)`` inside a compiled step, also for a 0-dim ``into``.

    torch 2.13 under ``torch.compile`` drops a ``copy_`` into a 0-dim input when Dynamo restarts the trace
    for its float specializations (the step count, or a 0-dim parameter, would keep its old value); the same
    write through a 1-element view is kept.
    """
    if into.dim() == 0:
        into.unsqueeze(0).copy_(value.unsqueeze(0))
    else:
        into.copy_(value)
