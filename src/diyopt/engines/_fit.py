"""The fit loop: ``fit(loss_fn, params, optimizer, steps) -> Result``.

Per step: ``loss = loss_fn(params)``, gradients by autograd, ``optimizer.update``, ``apply_updates``.
The loss recorded at step ``i`` is the loss *before* update ``i``, as the seed records it.

Speed: no ``.item()`` per step (losses are kept as tensors and stacked once), and when the optimizer is
``flattenable`` and all params share a dtype and device, the params live in one flat buffer with named
views, so the optimizer runs a handful of ops per step instead of a handful per tensor; a built-in with one of
torch's fused steps (``adam``, ``adamw``, ``adagrad``) runs that one in-place call on the buffer instead of its
pure rule (:mod:`diyopt.engines._fit_step`, tested against the pure rule step by step).

Reliability (see ``fit``'s arguments): a divergence guard (one reduction and one sync per step, off with
``on_nonfinite="ignore"``), atomic checkpoints with exact resume (:mod:`diyopt.checkpoint`), a first-step
check that the rule's updates match the params, and gradients all-reduced under ``torch.distributed``
(:mod:`diyopt.distributed`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diyopt._util.interrupts import PENDING, interrupted
from diyopt._util.progress import StepBar
from diyopt._util.validate import check_steps, positive_integer
from diyopt.core.checks import NONFINITE_POLICIES, check_gradients, check_loss_value, check_updates
from diyopt.core.contract import Optimizer
from diyopt.core.modules import bind_module, load_into
from diyopt.core.result import CALLBACK, DIVERGED, MAX_STEPS, Result
from diyopt.core.tree import FlatLayout, LossFn, Params, as_params
from diyopt.engines._extended import CountedGradFn, checkpoint_report, engine_update, reported
from diyopt.engines._fit_step import KernelStep, Leaves, PureStep, grad
from diyopt.engines._torch_class import fit_torch_class
from diyopt.errors import DivergedError


def fit(
    loss_fn: LossFn,
    params: Mapping[str, Tensor] | torch.nn.Module,
    optimizer: Any,
    steps: int,
    *,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    engine: str = "eager",
    callback: Callable[[int, Tensor, Params], Any] | None = None,
    on_nonfinite: str = "stop",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    settings: Mapping[str, Any] | None = None,
    distributed: bool | str | None = None,
    progress: bool | None = False,
    **options: Any,
) -> Result:
    """Minimize ``loss_fn(params)`` for ``steps`` updates.

    Args:
      loss_fn: ``loss_fn(params) -> scalar Tensor``; params is a ``dict[str, Tensor]``. It must compute
        with the tensors it is given: a loss on which no optimized tensor has a gradient is an error at
        the first step (naming them); params without a gradient while others have one get one warning.
      params: initial parameters, a dict of tensors or an ``nn.Module``. With a module its trainable
        parameters (``requires_grad``) are optimized, and every natural loss trains them: one that calls
        the module it closes over (``lambda p: mse(model(x), y)``), one that calls what it is given
        (``lambda m: mse(m(x), y)``: a dict of the fit's tensors that also calls the module and reads
        its attributes), or the dict style (``p["weight"]``, ``functional_call(model, p, (x,))``). During
        each loss call the module's parameters are the fit's tensors (see :mod:`diyopt.core.modules`). **After
        the fit the module holds the fitted parameters**, equal to ``Result.params``.
      optimizer: a diyopt :class:`Optimizer`, or a ``torch.optim.Optimizer`` *class* (used as is, with
        ``optimizer_kwargs`` or extra keyword arguments), e.g. ``fit(loss, p, torch.optim.Adam, 4000)``.
      steps: number of updates (>= 1).
      engine: ``"eager"`` (the reference) or ``"compiled"`` (``torch.compile`` of the whole step).
      callback: ``callback(step, loss, params)`` after each update (``loss`` from before it, ``params``
        after it: the evaluation params, as ``Result.params``, for an optimizer that has them); returning
        ``True`` stops the fit
        (``stop_reason="callback"``). Costs a Python call per step: leave it out for speed.
      on_nonfinite: the divergence guard, what to do when the loss or a gradient is nan or inf at a step:
        ``"stop"`` (default) ends the fit there with ``stop_reason="diverged"`` and the last finite params,
        ``info["diverged"] = {"step", "what": "loss"|"grad", "param", "loss"}``; ``"raise"`` raises
        :class:`DivergedError`; ``"skip"`` leaves params and state as they were for that step (the steps
        are listed in ``info["skipped"]``); ``"ignore"`` turns the check off (one bool per step saved).
      checkpoint: a file to save the run to every ``checkpoint_every`` updates (default 100), at the end
        and on divergence, atomically (see :mod:`diyopt.checkpoint`). An existing file is refused unless
        ``resume=True``, which continues from it bit for bit -- if its settings match; ``settings``
        (problem, loss, seed, ...) joins the optimizer's hyperparameters and ``steps`` in that check.
      distributed: under an initialized ``torch.distributed`` process group (``torchrun``), each rank's
        ``loss_fn`` sees its shard of the data and loss and gradients are all-reduced each step:
        ``"mean"`` (default; mean losses such as ``mse`` over equal shards), ``"sum"`` (``sse``) or
        ``"norm"`` (``l2_norm``: sqrt of the summed squares). ``False`` turns it off. Only rank 0 writes
        checkpoints. See :mod:`diyopt.distributed`.
      progress: a progress bar on stderr (steps, loss, rate, time left; tqdm), redrawn every 0.1 s;
        ``None``: only when stderr is a terminal (what ``diyopt fit`` does). With ``engine="compiled"``
        it also says when it compiles and how long that took (it says so on a terminal anyway).

    Returns:
      A :class:`Result`.

    Example::

        >>> import torch, diyopt
        >>> x, y = diyopt.data.make_line(seed=0)
        >>> loss = lambda p: diyopt.losses.l2_norm(p["a"] * x + p["b"], y)
        >>> p0 = {"a": torch.zeros(1, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
        >>> r = diyopt.fit(loss, p0, diyopt.optim.adam(lr=1e-2), steps=2000)
        >>> round(r.params["a"].item(), 2), r.stop_reason
        (-1.0, 'max_steps')
    """
    steps = check_steps(steps)
    module = params if isinstance(params, torch.nn.Module) else None
    if module is not None:  # every loss style trains it: see diyopt.core.modules
        loss_fn, params = bind_module(loss_fn, module)
    params = as_params(params)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        kwargs = {**(optimizer_kwargs or {}), **options}
        if checkpoint is not None or distributed:
            raise ValueError(
                "checkpoint= and distributed= need a diyopt optimizer; for a torch.optim class "
                "wrap its diyopt twin, or use DistributedDataParallel and state_dict()"
            )
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, got {on_nonfinite!r}"
            )
        return _into(
            module, fit_torch_class(loss_fn, params, optimizer, kwargs, steps, callback, on_nonfinite, progress)
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "pass the torch.optim class and its arguments, not an instance: "
            f"fit(loss_fn, params, torch.optim.{type(optimizer).__name__}, steps, lr=...)"
        )
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a diyopt Optimizer or a torch.optim.Optimizer class, got {type(optimizer).__name__}"
        )
    if optimizer_kwargs:
        optimizer = optimizer.replace_hyperparams(**optimizer_kwargs)
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, got {on_nonfinite!r}"
        )
    # settings only join the checkpoint's fingerprint: without a checkpoint no engine needs them
    reliability = dict(
        on_nonfinite=on_nonfinite,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        settings=settings if checkpoint is not None else None,
        distributed=distributed,
        progress=progress,
    )
    if engine == "compiled":
        from diyopt.engines.compiled import fit_compiled

        asked = [k for k in EAGER_ONLY if reliability[k] not in (None, False)]
        if asked:
            raise ValueError(f"engine='compiled' does not support {asked[0]}= yet; use engine='eager'")
        return _into(
            module,
            fit_compiled(
                loss_fn,
                params,
                optimizer,
                steps,
                callback=callback,
                on_nonfinite=on_nonfinite,
                progress=progress,
                **options,
            ),
        )
    if engine != "eager":
        raise ValueError(f"unknown engine {engine!r}; known: 'eager', 'compiled'")
    if options:
        raise TypeError(f"fit() got unexpected keyword argument(s) {sorted(options)}")
    if checkpoint is None:
        return _into(module, _fit_eager(loss_fn, params, optimizer, steps, callback, **reliability))
    import contextlib

    from diyopt._util.files import locked
    from diyopt._util.interrupts import deferred
    from diyopt.engines.distributed import is_main

    # One run at a time on a checkpoint, for the run's whole life (rank 0 writes it, so rank 0 holds the
    # lock); SIGINT/SIGTERM save it at the next step boundary and stop.
    with locked(checkpoint) if is_main() else contextlib.nullcontext(), deferred():
        return _into(module, _fit_eager(loss_fn, params, optimizer, steps, callback, **reliability))


def _into(module: torch.nn.Module | None, result: Result) -> Result:
    """A fitted module holds the fitted parameters, as ``Result.params`` does."""
    if module is not None:
        load_into(module, result.params)
    return result


# What only the eager engine does yet; the compiled engine refuses them rather than ignore them.
EAGER_ONLY = ("checkpoint", "checkpoint_every", "resume", "distributed")


# ---------------------------------------------------------------- the eager engine (source of truth)


def _fit_eager(
    loss_fn: LossFn,
    params: Params,
    optimizer: Optimizer,
    steps: int,
    callback,
    on_nonfinite: str = "stop",
    checkpoint=None,
    checkpoint_every=None,
    resume: bool = False,
    settings=None,
    distributed=None,
    progress: bool = False,
) -> Result:
    layout = FlatLayout.maybe(params) if optimizer.flattenable else None
    # The optimizer sees either the named tensors or one flat tensor under a single key.
    current = {"flat": layout.flatten(params)} if layout else params
    view = (lambda p: layout.unflatten(p["flat"])) if layout else (lambda p: p)
    state = optimizer.init(current)
    reduce = None
    if distributed is not False:
        from diyopt.engines.distributed import grad_reducer

        reduce = grad_reducer(distributed)
    saver = None
    losses: list[Tensor] = []
    if checkpoint is not None:
        saver = _Saver(checkpoint, checkpoint_every, optimizer, steps, params, on_nonfinite, settings, reduce)
        saver.report = checkpoint_report(optimizer, layout)  # evaluation params, training params beside
        if resume and saver.exists():
            named, state, losses = saver.resume(params, state)
            current = {"flat": layout.flatten(named)} if layout else named
        elif saver.exists():
            raise FileExistsError(
                f"checkpoint {checkpoint} exists: resume from it (resume=True, --resume) or choose another file"
            )
    guard = on_nonfinite != "ignore"
    counted = CountedGradFn(_eager_grad_fn(loss_fn, layout, reduce)) if "grad_fn" in optimizer.extra_args else None
    update = engine_update(optimizer, counted)
    per_update = 0  # grad_fn calls in one update, for the steps a resumed run did before this process
    first = len(losses)
    bar = StepBar.maybe(progress, steps)
    checked = False
    stop_reason, info, skipped = MAX_STEPS, {}, []
    pending = PENDING if saver is not None else None  # a signal is deferred to a step boundary (save, exit)
    stepper = _stepper(optimizer, update, layout, current, state, guard, view)
    leaves = Leaves(layout) if layout else None
    check = lambda updates, params: check_updates(updates, params, optimizer, layout)  # noqa: E731
    start = time.perf_counter()
    for step in range(first, steps):
        loss, grads = _loss_and_grads(loss_fn, stepper.current, layout, check=step == first, leaves=leaves)
        if reduce is not None:
            loss, grads = reduce(loss, grads)
        value = loss.detach()
        if not stepper.propose(grads, value, None if checked else check):  # a kernel declined: the pure rule
            stepper = PureStep(update, stepper.current, stepper.state, view)
            stepper.propose(grads, value)
        if not checked:
            checked = True
            per_update = counted.calls if counted is not None else 0
        # nothing non-finite ever becomes the params or the state (see _fit_step)
        if guard and not stepper.finite(value, grads) and (event := stepper.event(step, value, grads)):
            stepper.reject()
            if on_nonfinite == "skip":
                losses.append(value)
                skipped.append(step)
                continue
            stop_reason, info["diverged"] = DIVERGED, event
            if saver is not None:
                saver.save(view(stepper.current), stepper.state, losses)
            if on_nonfinite == "raise":
                raise DivergedError(event)
            break
        stepper.take()
        losses.append(value)
        if bar is not None:
            bar.update(len(losses), value)
        if callback is not None and callback(step, value, view(reported(optimizer, *stepper.shown())[0])):
            stop_reason = CALLBACK
            break
        if saver is not None and ((step + 1) % saver.every == 0 or pending.signum):
            saver.save(view(stepper.current), stepper.state, losses)
            if pending.signum:  # SIGINT/SIGTERM: saved at this step boundary, now stop
                signum, pending.signum = pending.signum, 0
                raise interrupted(signum)
    current, state = stepper.current, stepper.state
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close(len(losses), losses[-1] if losses else None)
    if saver is not None and stop_reason != DIVERGED and saver.saved_at != len(losses):
        saver.save(view(current), state, losses)
    if skipped:
        info["skipped"] = skipped
    history = torch.stack(losses) if losses else torch.empty(0)
    evals = len(losses) + (stop_reason == DIVERGED)  # the step that diverged evaluated its loss too
    if counted is not None:  # the update's own evaluations (SAM's gradient at the ascent point)
        if first and not checked:  # resumed with no step left: count one update's calls to know the earlier ones
            per_update = _calls_per_update(update, counted, loss_fn, current, state, layout, reduce)
        evals += counted.calls + first * per_update
    shown, train = reported(optimizer, state, current)
    if train is not None:  # the loss at the params reported, not at the last gradient point
        loss, grads = _loss_and_grads(loss_fn, shown, layout, check=False)
        info["final_loss"] = float(loss.detach() if reduce is None else reduce(loss, grads)[0])
    return Result(
        view(shown),
        history,
        len(losses),
        seconds,
        stop_reason,
        state,
        info=info,
        nfev=evals,
        njev=evals,
        train_params=None if train is None else view(train),
    )


def _stepper(optimizer: Optimizer, update, layout, current: Params, state, guard: bool, view):
    """The rule's in-place kernel where it has one for this state (``Optimizer.kernel``), else its pure update."""
    kernel = KernelStep.maybe(optimizer, layout, current, state, guard, view)
    return kernel if kernel is not None else PureStep(update, current, state, view)


def _calls_per_update(update, counted: CountedGradFn, loss_fn: LossFn, current, state, layout, reduce) -> int:
    """The ``grad_fn`` calls of one update at ``current``, not counted as this run's: a resumed run with no
    step left still reports the evaluations its earlier steps made. The update is pure, so nothing changes."""
    loss, grads = _loss_and_grads(loss_fn, current, layout, check=False)
    if reduce is not None:
        loss, grads = reduce(loss, grads)
    before = counted.calls
    update(grads, state, current, loss.detach())
    calls, counted.calls = counted.calls - before, before
    return calls


def _eager_grad_fn(loss_fn: LossFn, layout: FlatLayout | None, reduce):
    """The gradient at other params (``grad_fn``), as the loop computes it: autograd, all-reduced."""

    def grad_fn(at: Params) -> Params:
        loss, grads = _loss_and_grads(loss_fn, at, layout, check=False)
        return grads if reduce is None else reduce(loss, grads)[1]

    return grad_fn


# ---------------------------------------------------------------- the divergence guard


# ---------------------------------------------------------------- checks that run once, on the first step


# ---------------------------------------------------------------- checkpoints from the loop


class _Saver:
    """Saves the loop's state by parameter name; resumes it after checking the settings fingerprint."""

    def __init__(self, path, every, optimizer, steps, params, on_nonfinite, settings, reduce):
        from diyopt.engines import checkpoint as ckpt

        if every is None:
            every = 100
        every = positive_integer(every, "checkpoint_every")
        self.path, self.every, self.ckpt = Path(path), every, ckpt
        extra = dict(settings or {})
        if reduce is not None:
            extra["world_size"] = reduce.world_size
        self.fingerprint = ckpt.fingerprint(optimizer, steps, params, on_nonfinite=on_nonfinite, **extra)
        self.writer = reduce is None or reduce.rank == 0  # rank 0 writes, every rank reads
        self.saved_at = -1
        self.steps = steps
        self.history = ckpt.LossFile(self.path)
        self.report = None  # (named params, state) -> (evaluation params, training params); None: the params
        if self.writer:  # temp files of earlier runs on this checkpoint that were killed mid-write
            from diyopt._util.files import sweep_temps

            sweep_temps(self.path.parent, self.path.name)

    def exists(self) -> bool:
        return self.path.exists()

    def resume(self, params: Params, state: Any) -> tuple[Params, Any, list[Tensor]]:
        payload = self.ckpt.load(self.path)
        if "train_params" in payload:  # it holds the evaluation params: training continues from these
            payload = {**payload, "params": payload["train_params"]}
        self.ckpt.check_fingerprint(payload["fingerprint"], self.fingerprint, self.path)
        if payload["step"] > self.steps:
            raise self.ckpt.CheckpointError(
                f"cannot resume from {self.path}: it is at step {payload['step']}, past steps={self.steps}; "
                f"give at least {payload['step']} steps to continue it"
            )
        named = self.ckpt.restore_params(payload, params, self.path)
        state = self.ckpt.restore_state(payload, state, self.path)
        device = next(iter(params.values())).device
        losses = list(payload["losses"].to(device).unbind())
        self.ckpt.restore_rng(payload["rng"])
        self.saved_at = len(losses)
        # A version-1 checkpoint holds its history inline: the first save writes it all to the file.
        on_file = len(losses) if "losses_file" in payload else 0
        self.history = self.ckpt.LossFile(self.path, on_file, payload["losses"].dtype)
        return named, state, losses

    def save(self, params: Params, state: Any, losses: list[Tensor]) -> None:
        """Append the losses since the last save to the history file, then write the (small) checkpoint
        that counts them: a save costs O(1) in the run's length, not a rewrite of the whole history."""
        if self.writer:
            new = losses[self.history.count :]
            if new:
                self.history.append(torch.stack(new))
            elif self.history.count > len(losses):  # cannot happen in a loop, but never count a ghost
                self.history = self.ckpt.LossFile(self.path)
                if losses:
                    self.history.append(torch.stack(losses))
            params, train = self.report(params, state) if self.report is not None else (params, None)
            self.ckpt.save(
                self.path,
                params=params,
                state=state,
                step=len(losses),
                losses=self.history,
                fingerprint=self.fingerprint,
                train_params=train,
            )
        self.saved_at = len(losses)


def _loss_and_grads(
    loss_fn: LossFn, current: Params, layout: FlatLayout | None, check: bool, leaves: Leaves | None = None
):
    """The loss at ``current`` and its gradients, in the optimizer's layout (named, or one flat tensor).

    With a flat layout the loss sees named views of the buffer, each its own autograd leaf, and the
    gradients are joined afterwards: cheaper than differentiating through the split into views.
    ``leaves``: the loop's, kept while the buffer is written in place (see ``_fit_step.Leaves``).
    """
    if leaves is not None:
        named = leaves.of(current["flat"])
    elif layout:
        named = layout.leaves(current["flat"])
    else:
        named = {k: v.detach().requires_grad_() for k, v in current.items()}
    loss = loss_fn(named)
    if check:
        check_loss_value(loss, named)
    inputs = tuple(named.values())
    grads = leaves.grad(loss, inputs) if leaves is not None else grad(loss, inputs)
    if check:
        check_gradients(dict(zip(named, grads)))
    if any(g is None for g in grads):  # a param the loss does not use (warned above): a zero gradient
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]
    if layout:
        return loss, {"flat": layout.join(grads)}
    return loss, dict(zip(named, grads))


# ---------------------------------------------------------------- torch.optim classes, used as they are
