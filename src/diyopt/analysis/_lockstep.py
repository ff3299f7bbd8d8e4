"""Reference equivalence: a diyopt optimizer and a ``torch.optim``-style class, in lockstep, every step.

    report = diyopt.lockstep(diyopt.optim.adam(lr=1e-2), torch.optim.Adam, {"lr": 1e-2}, steps=100)
    print(report.summary())      # "equal to 1e-12 over 100 steps (bitwise for the first 1)"
    assert report.passed

Both run on the same small model -- an MLP ``4 -> 8 -> 3`` (``tanh``), so there are matrices and vectors
-- from the same start, on the same mini-batch at each step (float64 unless told otherwise). The diyopt
side runs its pure ``init``/``update``/``apply_updates`` (``form="functional"``) or ``to_torch``
(``form="to_torch"``, which also takes param groups and a ``state_dict`` reload halfway); the reference is
built as ``reference(params_or_groups, **kwargs)`` and stepped as torch.optim is (``zero_grad``,
``backward``, ``step``). After every step each parameter is compared with its twin:

- the **first difference**: the first step and tensor where any element differs at all, and by how much;
- the **parting**: the first step and tensor where the error ``max|ours - ref| / max|ref|`` exceeds
  ``tol``. None means "equal to ``tol`` over ``steps`` steps".

This is what ``diyopt check SPEC --against MODULE:Class[:k=v,...]`` runs, and what the built-ins' tests
against their references use.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diyopt.core.contract import Optimizer, apply_updates


@dataclass
class Difference:
    """Where two runs differ: after ``step`` steps (1 = after the first), in parameter ``param``."""

    step: int
    param: str
    abs_error: float  # max |ours - reference| over the tensor's elements
    rel_error: float  # abs_error / max |reference|

    def __str__(self) -> str:
        return (
            f"step {self.step}, tensor {self.param!r}: max abs error {self.abs_error:.3g}, "
            f"relative {self.rel_error:.3g}"
        )


@dataclass
class LockstepReport:
    """The outcome of :func:`lockstep`; ``passed`` when the runs never parted by more than ``tol``."""

    steps: int
    tol: float
    first_difference: Difference | None  # the first bitwise difference, however small
    parted: Difference | None  # the first error above tol
    worst: Difference | None = None  # the largest error seen
    reference: str = "reference"
    steps_run: int = 0  # steps both ran (fewer than ``steps`` when they parted)

    @property
    def passed(self) -> bool:
        return self.parted is None

    def summary(self) -> str:
        if self.parted is not None:
            return f"parted from {self.reference} at {self.parted} (tol {self.tol:g})"
        if self.first_difference is None:
            return f"equal to {self.tol:g} over {self.steps} steps (bitwise equal throughout)"
        return (
            f"equal to {self.tol:g} over {self.steps} steps; first bitwise difference at "
            f"{self.first_difference}; largest at {self.worst}"
        )

    def __str__(self) -> str:
        return self.summary()


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64, sizes: Sequence[int] = (4, 8, 3)) -> torch.nn.Module:
    """The harness's default model: ``Linear, tanh, Linear`` -- weights (2-D) and biases (1-D)."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=dtype) / a**0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=dtype))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _batches(model: torch.nn.Module, steps: int, seed: int, batch: int = 16):
    """One mini-batch per step, drawn in order from one generator: step t's batch does not depend on how
    many steps run."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(seed + 1)
    dtype = linears[0].weight.dtype
    pairs = [
        (
            torch.randn(batch, linears[0].in_features, generator=gen, dtype=dtype),
            torch.randn(batch, linears[-1].out_features, generator=gen, dtype=dtype),
        )
        for _ in range(steps)
    ]
    return [x for x, _ in pairs], [y for _, y in pairs]


def load_reference(spec: str) -> tuple[Callable, dict]:
    """``MODULE:Class[:k=v,...]`` (``torch.optim:Adam``, ``pytorch_optimizer:ADOPT:lr=1e-2``) or
    ``FILE.py:Class[:k=v,...]`` -> ``(class, kwargs)``. Values parse as in optimizer specs."""
    from diyopt.optim import getattr_from_file, parse_settings

    text = spec.strip()
    at = text.find(".py:")
    if at >= 0:
        path, rest = text[: at + 3], text[at + 4 :]
        name, _, settings = rest.partition(":")
        obj = getattr_from_file(path, name)
    else:
        module, sep, rest = text.partition(":")
        name, _, settings = rest.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"bad reference {spec!r}: expected MODULE:Class[:k=v,...] or FILE.py:Class[:k=v,...]")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"cannot import {module!r} for --against: {e}") from None
        if not hasattr(mod, name):
            raise ValueError(f"module {module!r} has no {name!r}")
        obj = getattr(mod, name)
    if not callable(obj):
        raise TypeError(f"{spec}: {name} is a {type(obj).__name__}, not a class")
    return obj, parse_settings(settings, spec)


def lockstep(
    optimizer: Optimizer,
    reference: Callable | str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    steps: int = 100,
    tol: float = 1e-12,
    model: torch.nn.Module | None = None,
    dtype: torch.dtype = torch.float64,
    form: str = "functional",
    groups: Sequence[Mapping[str, Any]] | None = None,
    reload_at: int | None = None,
    seed: int = 0,
) -> LockstepReport:
    """Run ``optimizer`` and ``reference(params, **kwargs)`` side by side; see the module docstring.

    Args:
      optimizer: the diyopt optimizer.
      reference: a ``torch.optim.Optimizer``-style class (or any callable building one), or a spec string
        ``MODULE:Class[:k=v,...]`` whose settings are added to ``kwargs``.
      kwargs: the reference's constructor arguments.
      steps: how many steps; the run stops where the two part.
      tol: the largest relative error (``max|a - b| / max|b|`` per tensor) still called equal.
      model: the module to train (a copy of it for each side), starting and ending with ``nn.Linear``
        (the batches are shaped from them); default :func:`mlp` in ``dtype``.
      form: ``"functional"`` (``init``/``update``/``apply_updates``) or ``"to_torch"``.
      groups: param groups (``to_torch`` only), one dict of settings per group given to both sides: with
        one, every param; with two, the matrices (``ndim >= 2``) in the first, the rest in the second.
      reload_at: (``to_torch`` only) after this many steps each side's ``state_dict()`` is loaded into a
        fresh instance, which carries on.
    """
    if isinstance(reference, str):
        reference, extra = load_reference(reference)
        kwargs = {**(kwargs or {}), **extra}
    if form not in ("functional", "to_torch"):
        raise ValueError(f"form must be 'functional' or 'to_torch', got {form!r}")
    if (groups is not None or reload_at is not None) and form != "to_torch":
        raise ValueError("param groups and a state_dict reload need form='to_torch'")
    if groups is not None and len(groups) not in (1, 2):
        raise ValueError("groups: give one or two groups (matrices first, then the rest)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    model = mlp(seed, dtype) if model is None else model
    xs, ys = _batches(model, steps, seed)

    def loss_of(module, step):
        return torch.nn.functional.mse_loss(module(xs[step]), ys[step])

    ref = _TorchSide(copy.deepcopy(model), lambda ps: reference(ps, **(kwargs or {})), groups)
    if form == "to_torch":
        from diyopt.engines import to_torch

        ours: _TorchSide | _FunctionalSide = _TorchSide(
            copy.deepcopy(model), lambda ps: to_torch(optimizer, ps), groups, named=True
        )
    else:
        ours = _FunctionalSide(copy.deepcopy(model), optimizer)

    report = LockstepReport(steps, tol, None, None, reference=getattr(reference, "__name__", "reference"))
    for step in range(steps):
        theirs, mine = ref.step(loss_of, step), ours.step(loss_of, step)
        report.steps_run = step + 1
        for name, q in theirs.items():
            diff = _difference(step + 1, name, mine[name], q)
            if diff is None:
                continue
            if report.first_difference is None:
                report.first_difference = diff
            if report.worst is None or diff.rel_error > report.worst.rel_error:
                report.worst = diff
            if diff.rel_error > tol and report.parted is None:
                report.parted = diff
        if report.parted is not None:
            break
        if reload_at is not None and step + 1 == reload_at:
            ref.reload()
            ours.reload()
    return report


class _TorchSide:
    """A module and a torch.optim-style optimizer over its params (in ``groups`` when given)."""

    def __init__(self, module: torch.nn.Module, build: Callable, groups, named: bool = False):
        self.module, self.build, self.groups, self.named = module, build, groups, named
        self.opt = self._new()

    def _new(self):
        named = list(self.module.named_parameters())
        if self.groups is None:
            return self.build(named if self.named else [p for _, p in named])
        pick = [lambda p: True] if len(self.groups) == 1 else [lambda p: p.ndim >= 2, lambda p: p.ndim < 2]
        return self.build(
            [
                {"params": [(n, p) if self.named else p for n, p in named if keep(p)], **settings}
                for keep, settings in zip(pick, self.groups)
            ]
        )

    def step(self, loss_of, step: int) -> dict[str, Tensor]:
        self.opt.zero_grad()
        loss_of(self.module, step).backward()
        self.opt.step()
        return {n: p.detach() for n, p in self.module.named_parameters()}

    def reload(self) -> None:
        """A fresh optimizer, given this one's ``state_dict`` (a deep copy, so nothing is shared)."""
        saved = copy.deepcopy(self.opt.state_dict())
        self.opt = self._new()
        self.opt.load_state_dict(saved)


class _FunctionalSide:
    """The pure form: ``init`` once, then ``update`` and ``apply_updates`` with gradients from ``torch.func``."""

    def __init__(self, module: torch.nn.Module, optimizer: Optimizer):
        self.module, self.optimizer = module, optimizer
        self.params = {n: p.detach().clone() for n, p in module.named_parameters()}
        self.state = optimizer.init(self.params)

    def step(self, loss_of, step: int) -> dict[str, Tensor]:
        grads = torch.func.grad(lambda p: loss_of(_Bound(self.module, p), step))(self.params)
        updates, self.state = self.optimizer.update(grads, self.state, self.params)
        self.params = apply_updates(self.params, updates)
        return self.params

    def reload(self) -> None:  # lockstep() allows a reload only with form="to_torch"
        raise NotImplementedError


class _Bound(torch.nn.Module):
    """A module called with other parameters (``torch.func.functional_call``), for the functional form."""

    def __init__(self, module, params):
        super().__init__()
        self._module, self._params = module, params

    def forward(self, *args):
        return torch.func.functional_call(self._module, self._params, args)


def _difference(step: int, name: str, mine: Tensor, ref: Tensor) -> Difference | None:
    mine = mine.detach().to(torch.float64)
    ref = ref.to(torch.float64)
    if mine.shape != ref.shape:
        return Difference(step, name, float("inf"), float("inf"))
    if torch.equal(mine, ref):
        return None
    err = (mine - ref).abs()
    abs_error = float(err.nan_to_num(nan=float("inf")).max())
    scale = float(ref.abs().max())
    return Difference(step, name, abs_error, abs_error / scale if scale > 0 else float("inf"))
