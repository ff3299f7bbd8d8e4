"""The contract: an optimizer is a pair of pure functions over dicts of tensors.

    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    params = apply_updates(params, updates)          # params[k] + updates[k]

``params``, ``grads`` and ``updates`` are ordered ``dict[str, Tensor]`` with the same keys (the shape of
``nn.Module.named_parameters()``). ``state`` is a tree of tuples, NamedTuples and dicts whose leaves are
tensors -- the step count included -- so it can be saved, compiled and vmapped. Nothing lives in closures
except the hyperparameters an optimizer was built with.

A user's own per-tensor rule becomes an :class:`Optimizer` through :func:`elementwise`; small transforms
compose with :func:`chain`, optax-style.

The contract's edges (docs/contract.md), both optional, so the plain pair above stays the common case:

- ``extra_args``: inputs beyond ``(grads, state, params)`` an ``update`` takes as keywords --
  ``"loss"`` (the loss at ``params``, a 0-dim tensor) and ``"grad_fn"`` (``grad_fn(other) -> grads``, the
  gradient at other params: SAM's second evaluation). Every engine supplies exactly the declared ones.
- ``eval_params(state, params) -> params``: the params to evaluate and report when they are not the
  training params (schedule-free's average ``x``, an EMA, lookahead's slow weights).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import re
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from diyopt.core.tree import Params

State = Any


class Optimizer(NamedTuple):
    """A gradient transformation: ``init(params) -> state`` and ``update(grads, state, params)``.

    Attributes:
      init: builds the initial state (tensors only) for ``params``.
      update: ``(grads, state, params) -> (updates, new_state)``; pure, never mutates its inputs.
        ``updates`` are *added* to the params by :func:`apply_updates`.
      hyperparams: the settings it was built with (``{"lr": 1e-3, ...}``), empty for bare transforms.
      build: ``build(**hyperparams) -> Optimizer``, to rebuild it with other settings -- how ``to_torch``
        honours per-group ``lr`` and how the fast engines pass hyperparameters as tensors.
      flattenable: True when the update depends only on the values, not on how they are split into named
        tensors (per-element rules, global norms). The fit loop may then run it on one flat buffer.
      sparse_grads: True when ``update`` takes sparse (COO) gradients as they come, and may return sparse
        updates (SparseAdam); ``to_torch`` refuses a sparse gradient otherwise, as torch.optim does.
      torch_optimizer: the ``torch.optim.Optimizer`` class ``to_torch`` builds for it, for a method that is
        no gradient transformation (L-BFGS evaluates the loss many times per step); None: the generic one.
      kernel: the name of an in-place multi-tensor kernel (torch's fused CPU/CUDA step) that computes
        exactly this update from ``hyperparams`` -- ``"adam"``, ``"adamw"``, ``"sgd"``, ``"adagrad"`` -- set by the named
        factory only for settings the kernel can do (Python-number hyperparameters, no schedule); ``to_torch``'s default engine then runs it instead of ``update`` (see
        :mod:`diyopt.engines`). Anything built around it (``chain``, ``masked``) has None.
      extra_args: the extra keyword inputs ``update`` takes, a subset of :data:`EXTRA_ARGS`: ``"loss"``
        (the loss at ``params``) and ``"grad_fn"`` (``grad_fn(other_params) -> grads``). Engines pass exactly
        these; empty for the plain contract.
      eval_params: ``eval_params(state, params) -> params``, the params to evaluate and report where they
        differ from the training params the update sees; None: they are the same. ``fit``'s
        ``Result.params``, checkpoints, ``sweep`` and ``to_torch(...).eval()`` use it.
    """

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params | None], tuple[Params, State]]
    hyperparams: Mapping[str, Any] | None = None
    build: Callable[..., Optimizer] | None = None
    flattenable: bool = False
    sparse_grads: bool = False
    torch_optimizer: type | None = None
    kernel: str | None = None
    extra_args: frozenset[str] = frozenset()
    eval_params: Callable[[State, Params], Params] | None = None

    def replace_hyperparams(self, **changes: Any) -> Optimizer:
        """The same optimizer built with some hyperparameters changed (floats or tensors)."""
        if self.build is None:
            raise TypeError("this optimizer was not built by a configurable factory; it cannot be rebuilt")
        unknown = set(changes) - set(self.hyperparams or {})
        if unknown:
            raise TypeError(f"unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(self.hyperparams or {})}")
        return self.build(**{**(self.hyperparams or {}), **changes})


def configurable(factory: Callable[..., Optimizer]) -> Callable[..., Optimizer]:
    """Decorate an optimizer factory so what it returns remembers its settings and how to rebuild.

    The returned optimizer's ``hyperparams`` are the factory's arguments, defaults filled in.
    """
    sig = inspect.signature(factory)

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Optimizer:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        opt = factory(*bound.args, **bound.kwargs)
        return opt._replace(hyperparams=dict(bound.arguments), build=make)

    make.signature = sig  # type: ignore[attr-defined]
    return make


def apply_updates(params: Params, updates: Params) -> Params:
    """``params[k] + updates[k]`` for every name, keeping each parameter's dtype."""
    return {k: p + updates[k].to(p.dtype) for k, p in params.items()}


def chain(*transforms: Optimizer) -> Optimizer:
    """Run transforms in order; each one's updates are the next one's input.

    The state is a tuple with one entry per transform.
    Example: ``adam = chain(scale_by_adam(), scale_by_lr(1e-3))``.

    The chain keeps its members' settings: a hyperparameter that exactly one rebuildable member has
    (``chain(clip_by_global_norm(1.0), my_rule(lr=0.1))`` has ``lr``) is the chain's, so a user's own
    chain can be swept, tuned and given per-group settings like a named optimizer. A name two members
    share is left out (changing it would be ambiguous), and so is one set to None (a feature left off).
    """

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Params, state: tuple, params: Params | None = None, **extra: Any) -> tuple[Params, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            # each transform gets the extra inputs it declares, and only those
            grads, s = t.update(grads, s, params, **{k: extra[k] for k in t.extra_args if k in extra})
            new_state.append(s)
        return grads, tuple(new_state)

    def eval_params(state: tuple, params: Params) -> Params:
        for t, s in zip(transforms, state):
            if t.eval_params is not None:
                params = t.eval_params(s, params)
        return params

    evaluates = any(t.eval_params is not None for t in transforms)
    common = dict(
        flattenable=all(t.flattenable for t in transforms),
        extra_args=frozenset().union(*(t.extra_args for t in transforms)),
        eval_params=eval_params if evaluates else None,
    )
    owners: dict[str, list[int]] = {}
    for i, t in enumerate(transforms):
        if t.build is not None:
            for name, value in (t.hyperparams or {}).items():
                if value is not None:  # a feature left off (scale_by_adam's folded lr) is no setting to turn
                    owners.setdefault(name, []).append(i)
    owner = {name: ids[0] for name, ids in owners.items() if len(ids) == 1}
    if not owner:
        return Optimizer(init, update, **common)

    def build(**hyperparams: Any) -> Optimizer:
        members = list(transforms)
        for i in sorted({owner[name] for name in hyperparams}):
            mine = {name: v for name, v in hyperparams.items() if owner[name] == i}
            members[i] = members[i].replace_hyperparams(**mine)
        return chain(*members)

    hyperparams = {name: transforms[i].hyperparams[name] for name, i in owner.items()}
    return Optimizer(init, update, hyperparams=hyperparams, build=build, **common)


#: The extra inputs an ``update`` may declare in ``Optimizer.extra_args``; every engine supplies them.
EXTRA_ARGS = frozenset({"loss", "grad_fn"})


_FORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("diyopt_form", default=None)


def checking_form() -> str | None:
    """The form an engine is about to run the update in, while it checks one step eagerly first:
    ``"compiled"`` (``fit(engine="compiled")``), else None. A rule that cannot run in a form refuses here,
    with a ``ValueError`` naming the form and why -- before tracing starts, where Dynamo would bury the
    message in a graph-break report."""
    return _FORM.get()


@contextlib.contextmanager
def checked_for(form: str):
    """Run the engine's eager first-step check under :func:`checking_form` ``== form``."""
    token = _FORM.set(form)
    try:
        yield
    finally:
        _FORM.reset(token)


_PER_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("diyopt_per_run", default=False)


def per_run_hyperparams() -> bool:
    """True while an engine builds one rule for many runs at once (``diyopt.sweep``'s broadcast step): a
    tensor hyperparameter then holds one value per run, shaped ``[runs, 1]``, so a factory's check that a
    tensor setting has one element (torch's, for a user's own tensor) does not apply."""
    return _PER_RUN.get()


@contextlib.contextmanager
def building_per_run():
    """Build optimizers under :func:`per_run_hyperparams` ``== True``."""
    token = _PER_RUN.set(True)
    try:
        yield
    finally:
        _PER_RUN.reset(token)


def eval_params(optimizer: Optimizer, state: State, params: Params) -> Params:
    """The params to evaluate and report: ``optimizer.eval_params(state, params)``, or ``params`` itself
    for an optimizer whose evaluation params are its training params (the common case)."""
    return params if optimizer.eval_params is None else optimizer.eval_params(state, params)


class elementwise:
    """Turn a per-tensor pure rule into an optimizer factory.

    The rule is ``rule(grad, state, param, *, **hyperparams) -> (update, new_state)`` for one tensor;
    its keyword-only arguments with defaults are the hyperparameters. The per-tensor state starts as
    ``()`` unless an init is declared, with ``@rule.init`` or ``elementwise(rule, init=...)``: ``init(param)``
    (it may also take any of the hyperparameters as keywords).

    By default the rule is taken to treat every element on its own (as Adam, RMSprop, ... do), so the
    fit loop may run it once on all params joined into one flat buffer -- far fewer ops per step. A rule
    that looks at a whole tensor (its norm, its shape, a per-row statistic) must say so with
    ``@diyopt.elementwise(whole_tensor=True)``; it then always sees each named tensor as it is.

    Example -- the seed's ``a = a - eta * a.grad``::

        @diyopt.elementwise
        def gradient_descent(grad, state, param, *, lr=1e-3):
            return -lr * grad, state

        opt = gradient_descent(lr=1e-2)        # an Optimizer
    """

    def __new__(cls, rule: Callable | None = None, init: Callable | None = None, *, whole_tensor: bool = False):
        if rule is None:  # used with arguments: @elementwise(whole_tensor=True)
            return functools.partial(cls, init=init, whole_tensor=whole_tensor)
        return super().__new__(cls)

    def __init__(self, rule: Callable, init: Callable | None = None, *, whole_tensor: bool = False):
        functools.update_wrapper(self, rule)
        self.rule = rule
        self._init = init
        self.whole_tensor = whole_tensor
        sig = inspect.signature(rule)
        self.defaults = {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        missing = [n for n, d in self.defaults.items() if d is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"{rule.__name__}: hyperparameters need defaults, missing for {missing}")

    def init(self, fn: Callable) -> Callable:
        """Decorator: declare the per-tensor initial state, ``init(param) -> state``."""
        self._init = fn
        return fn

    def __call__(self, **hyperparams: Any) -> Optimizer:
        unknown = set(hyperparams) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"{self.__name__}() got unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}"
            )
        hyper = {**self.defaults, **hyperparams}
        rule, init_one = self.rule, self._init
        if init_one is None:
            init_kwargs: dict = {}
        else:
            accepted = inspect.signature(init_one).parameters
            init_kwargs = {k: v for k, v in hyper.items() if k in accepted}

        def init(params: Params) -> dict:
            if init_one is None:
                return {k: () for k in params}
            return {k: init_one(p, **init_kwargs) for k, p in params.items()}

        def update(grads: Params, state: dict, params: Params | None = None) -> tuple[Params, dict]:
            updates, new_state = {}, {}
            for k, g in grads.items():
                try:
                    out = rule(g, state[k], None if params is None else params[k], **hyper)
                except (TypeError, IndexError, KeyError, AttributeError) as e:
                    if init_one is None and _uses_missing_state(rule, e):
                        raise TypeError(_no_init_message(rule, e)) from e
                    raise
                if not isinstance(out, tuple) or len(out) != 2:
                    raise TypeError(_arity_message(rule, out))
                updates[k], new_state[k] = out
            return updates, new_state

        return Optimizer(init, update, hyper, self, flattenable=not self.whole_tensor)

    def __repr__(self) -> str:
        return f"elementwise({self.__name__})"


def _uses_missing_state(rule: Callable, error: BaseException) -> bool:
    """Whether ``error`` came from the rule using a state it never declared (so it is ``()``).

    The rule's own frame in the traceback tells: the line that failed names the state argument (``state *
    0.9``, ``state["m"]``). Without source lines, the error's words about a tuple say it.
    """
    names = list(inspect.signature(rule).parameters)
    state_name = names[1] if len(names) > 1 else "state"
    code = getattr(rule, "__code__", None)
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if code is not None and frame.filename == code.co_filename and frame.name == code.co_name:
            if frame.line:
                code_part = frame.line.split("#", 1)[0]  # a comment naming the state does not count
                return re.search(rf"\b{re.escape(state_name)}\b", code_part) is not None
            break
    return "tuple" in str(error) or "sequence" in str(error)


def _no_init_message(rule: Callable, error: BaseException) -> str:
    code = getattr(rule, "__code__", None)
    name = getattr(rule, "__name__", repr(rule))
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return (
        f"rule {name!r}{where} uses its state, but declares no initial "
        f"state, so the state is () ({type(error).__name__}: {error}). Declare it with @{name}.init, "
        f"e.g. `@{name}.init` above `def init(param): return torch.zeros_like(param)`"
    )


# ---------------------------------------------------------------- dict-of-tensor helpers


def _arity_message(rule: Callable, out: Any) -> str:
    """``rule 'signum' (my.py:4) must return (update, new_state), got a Tensor`` -- names the rule's file."""
    code = getattr(rule, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    got = f"a tuple of {len(out)}" if isinstance(out, tuple) else f"a {type(out).__name__}"
    return (
        f"rule {getattr(rule, '__name__', 'rule')!r}{where} must return (update, new_state), got {got}; "
        "write `return update, state`"
    )
