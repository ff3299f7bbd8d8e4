"""The eager fit's step, two ways: the rule's pure ``update`` (the reference) or its in-place kernel.

Per step the loop (:func:`diyopt.engines._fit._fit_eager`) asks a stepper to ``propose`` the step from the
gradients, checks it with the divergence guard (``finite``; ``event`` says where it went non-finite), then
``take``s it or ``reject``s it. Both steppers keep the guard's meaning exactly: nothing non-finite becomes
the params or the state, and on divergence the params and state are the last finite ones.

- :class:`PureStep`: ``updates, state' = rule.update(grads, state, params)``, ``params' = params + updates``,
  new tensors each step; taking the step rebinds them.
- :class:`KernelStep`: for a built-in whose ``Optimizer.kernel`` computes the same math in place with one of
  torch's fused steps (``torch._fused_adam_``, ``_fused_adamw_``, ``_fused_adagrad_``: the
  kernels of :mod:`diyopt.engines._kernels`, which ``to_torch`` runs too) on the fit's one flat buffer and the pure rule's own state tensors. One C++ call replaces
  the rule's ~14 small ops (step count, bias corrections, moments, the update and the add). With the
  guard on, the buffer and state are copied aside first (one ``_foreach_copy_``) and put back when the
  step is rejected; the event of a rejected step is the pure rule's, computed from that copy.

Also here: the gradients (``grad``: the C++ autograd engine's entry without ``torch.autograd.grad``'s Python
checks) and the flat buffer's autograd leaves, made once per buffer (``Leaves``): the kernel writes the
buffer in place, so its leaves stay valid step after step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from diyopt.core.checks import all_finite, nonfinite_event
from diyopt.core.contract import Optimizer
from diyopt.core.tree import FlatLayout, Params
from diyopt.engines._kernels import KERNELS, SCALARS_ANY_DTYPE

#: The kernels a fit runs: torch's fused steps, one C++ call each. torch.optim's multi-tensor (foreach) steps
#: are slower than the pure rule on a small fit (the seed line, thread time per step: rmsprop 1.35x,
#: adadelta 1.47x, rprop 1.44x, asgd 1.05x, adamax 1.06x; Python that groups tensors around ~10 ops),
#: where the fused ones are faster (adam 0.65x, adamw 0.63x, adagrad 0.88x). Not ``sgd``: its fused step
#: (0.92x without momentum, 0.95x with) writes ``p + alpha g`` in one rounding (an FMA), so ``sgd(lr)``
#: would no longer be the seed's ``a - lr * a.grad`` (``gradient_descent``) bit for bit.
FUSED = frozenset({"adam", "adamw", "adagrad"})

# ---------------------------------------------------------------- gradients

try:  # the call torch.autograd.grad ends in, and the C++ engine it calls
    from torch.autograd.graph import _engine_run_backward
    from torch.autograd.graph import log as _graph_log
    from torch.autograd.variable import Variable

    _ENGINE = Variable._execution_engine
except ImportError:  # another torch: the public function
    _engine_run_backward = _ENGINE = None


def grad(loss: Tensor, leaves: tuple, seed: Tensor | None = None) -> tuple:
    """``torch.autograd.grad(loss, leaves, allow_unused=True)``: None for a leaf the loss does not use.

    For a plain tensor loss it calls the engine directly, as that function does after its Python checks
    (argument forms, ``__torch_function__`` overrides, building the ``ones_like(loss)`` to start from):
    ~20 us of a ~100 us step on the seed line. For a CPU loss of CPU leaves it also leaves out what torch
    does around the engine call for device threads (it copies the caller's ``contextvars`` into them,
    ~4 us): a CPU graph's backward runs on this thread. With torch's autograd debug log on, torch's own
    call (which adds its logging hooks). ``seed``, when given, is that ``ones_like(loss)``, kept by the
    caller between steps (only where the gradients are copied before anything can write them:
    a gradient can be a view of the seed, ``d sum(a) / da = seed.expand(...)``).
    """
    if _ENGINE is None or type(loss) is not Tensor or not loss.requires_grad:
        return torch.autograd.grad(loss, leaves, allow_unused=True)
    if seed is None:
        seed = torch.ones_like(loss)
    if loss.is_cpu and leaves[0].is_cpu and not _graph_log.isEnabledFor(logging.DEBUG):
        return _ENGINE.run_backward((loss,), (seed,), False, False, leaves, True, False)
    return _engine_run_backward((loss,), (seed,), False, False, leaves, True, accumulate_grad=False)


class Leaves:
    """The flat buffer's named views, each an autograd leaf, made once per buffer: a kernel writes the
    buffer in place, so its views stay its views (a pure step's new buffer gets new ones). Also the
    backward pass's seed ``ones_like(loss)`` (the gradients are joined by a copy, so none aliases it)."""

    def __init__(self, layout: FlatLayout):
        self.layout, self.buffer, self.named, self.seed = layout, None, None, None

    def of(self, flat: Tensor) -> Params:
        if flat is not self.buffer:
            self.buffer, self.named = flat, self.layout.leaves(flat)
        return self.named

    def grad(self, loss: Tensor, leaves: tuple) -> tuple:
        seed = self.seed
        if seed is None or seed.shape != loss.shape or seed.dtype != loss.dtype or seed.device != loss.device:
            seed = self.seed = torch.ones_like(loss)
        return grad(loss, leaves, seed)


# ---------------------------------------------------------------- steppers


class PureStep:
    """The reference step: the rule's pure ``update``, new params and state each step."""

    def __init__(self, update: Callable, current: Params, state: Any, view: Callable):
        self.update, self.current, self.state, self.view = update, current, state, view
        self.updates = self.new = self.new_state = None

    def propose(self, grads: Params, value: Tensor, check: Callable | None = None) -> bool:
        """Compute the step (nothing taken yet); ``check(updates, params)``: the first step's check."""
        self.updates, self.new_state = self.update(grads, self.state, self.current, value)
        if check is not None:
            check(self.updates, self.current)
        self.new = {k: v + self.updates[k] for k, v in self.current.items()}
        return True

    def finite(self, value: Tensor, grads: Params) -> bool:
        # what is about to be written (the new params) as well as the loss and the gradients, in one check
        return all_finite(value, grads, self.new)

    def event(self, step: int, value: Tensor, grads: Params) -> dict | None:
        v = self.view
        return nonfinite_event(step, value, v(grads), v(self.updates), v(self.new))

    def reject(self) -> None:
        """Nothing was written."""

    def take(self) -> None:
        self.current, self.state = self.new, self.new_state

    def shown(self) -> tuple:
        """The state and params a callback sees (new tensors each step: these themselves)."""
        return self.state, self.current


class KernelStep:
    """The rule's in-place kernel on the flat buffer and the pure rule's state tensors (see the module)."""

    def __init__(
        self, optimizer: Optimizer, run: Callable, names: list, current: Params, state: Any, guard: bool, view
    ):
        self.optimizer, self.run, self.guard, self.view = optimizer, run, guard, view
        leaves, self.spec = pytree.tree_flatten(state)
        # the state's own tensors, once: the kernel writes them, and no other tensor may share their memory
        # (an init that hands one zero tensor to two leaves, a state that holds a gradient)
        leaves = [t.clone() for t in leaves]
        self.current, self.state = {"flat": current["flat"].clone()}, pytree.tree_unflatten(leaves, self.spec)
        self.states = [dict(zip(names, leaves))]
        self.live = [self.current["flat"], *leaves]
        self.saved = [t.clone() for t in self.live] if guard else None

    @classmethod
    def maybe(cls, optimizer: Optimizer, layout, current: Params, state: Any, guard: bool, view) -> KernelStep | None:
        """A kernel step when the rule has one that does this state: the state's leaves are the kernel's
        (the same names, as ``to_torch`` checks), dense tensors of the buffer's dtype and device."""
        spec = KERNELS.get(optimizer.kernel) if optimizer.kernel in FUSED else None
        if spec is None or layout is None or optimizer.extra_args or torch.compiler.is_compiling():
            return None
        flat = current["flat"]
        if not flat.is_floating_point() or flat.is_complex() or flat.is_sparse:
            return None
        paths, _ = pytree.tree_flatten_with_path(state)
        names = [_leaf_name(path) for path, _ in paths]
        if len(set(names)) != len(names) or set(names) != set(spec[0](optimizer.hyperparams)):
            return None
        loose = optimizer.kernel in SCALARS_ANY_DTYPE
        for _, t in paths:
            if not isinstance(t, Tensor) or t.is_sparse or t.device != flat.device:
                return None
            if not (t.dtype is flat.dtype or (loose and t.dim() == 0 and t.is_floating_point())):
                return None
        return cls(optimizer, spec[1], names, current, state, guard, view)

    def propose(self, grads: Params, value: Tensor, check: Callable | None = None) -> bool:
        """Run the kernel in place, after saving what it writes (guard on); False: it declined this state,
        nothing written. ``check`` (the first step's) sees the pure rule's updates, computed for it."""
        if check is not None:
            check(self.optimizer.update(grads, self.state, self.current)[0], self.current)
        if self.guard:
            torch._foreach_copy_(self.saved, self.live)
        with torch.no_grad():
            return self.run(self.optimizer.hyperparams, [self.current["flat"]], [grads["flat"]], self.states)

    def finite(self, value: Tensor, grads: Params) -> bool:
        return all_finite(value, grads, self.current)

    def event(self, step: int, value: Tensor, grads: Params) -> dict | None:
        """The pure rule's event at the saved (last finite) params and state: the same as the pure path's."""
        before = {"flat": self.saved[0]}
        updates = self.optimizer.update(grads, pytree.tree_unflatten(self.saved[1:], self.spec), before)[0]
        new = {"flat": before["flat"] + updates["flat"]}
        v = self.view
        return nonfinite_event(step, value, v(grads), v(updates), v(new))

    def reject(self) -> None:
        torch._foreach_copy_(self.live, self.saved)

    def take(self) -> None:
        """The kernel wrote the step in place."""

    def shown(self) -> tuple:
        """The state and params a callback sees: the params copied, as the next step writes the buffer."""
        return self.state, {"flat": self.current["flat"].clone()}


def _leaf_name(path: tuple) -> str | None:
    """A state leaf's name, as the kernels call it: the last attribute or key on its path (``exp_avg``)."""
    for k in reversed(path):
        if isinstance(k, pytree.GetAttrKey):
            return k.name
        if isinstance(k, pytree.MappingKey) and k.key != "flat":
            return str(k.key)
    return None
