"""In-place multi-tensor kernels for ``to_torch``'s default engine (see ``Optimizer.kernel``).

Each kernel is ``run(hyperparams, params, grads, states) -> bool``: one in-place step of a whole param
group, on the very state tensors (and names) the optimizer's pure ``update`` keeps, or False when it
cannot do this state (then the pure rule runs). ``state_names(hyperparams)`` says which leaves it keeps.
The pure rule stays the reference: ``tests/test_to_torch_kernels.py`` checks every kernel against it step
by step in float64 and float32.

- ``adam``, ``adamw``, ``sgd``, ``adagrad``: torch's fused single-pass steps (``torch._fused_adam_``, ...,
  what ``torch.optim.Adam(fused=True)`` runs).
- ``muon``: torch.optim.Muon's own step (``torch.optim._muon.muon``; it has no multi-tensor form).
- ``rmsprop``, ``adadelta``, ``adamax``, ``nadam``, ``radam``, ``rprop``, ``asgd``: torch has no fused
  kernel for these; they run torch.optim's own multi-tensor implementations (the functional
  ``torch.optim.rmsprop.rmsprop(..., foreach=True)``, what the class runs with ``foreach=True``): a
  handful of ``torch._foreach_*`` ops, in place, run over cache-sized chunks of the group (``chunks``), so
  only the first of the 6-10 passes over each chunk reads memory; the rest read the cache.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

# The step counters are 0-dim CPU tensors: ``_foreach_add_(steps, 1)`` wraps the 1 into a new tensor per
# counter (torch's slow path, ~4 us each); adding one prepared tensor is what torch.optim does too.
_ONE = torch.tensor(1.0)


def _count(steps: list) -> None:
    if steps[0].is_cpu:
        torch._foreach_add_(steps, _ONE, alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def _steps(states: list) -> list | None:
    """The group's step counters, or None when one is not a 0-dim tensor (a state the kernels cannot do)."""
    steps = [s["step"] for s in states]
    return steps if all(s.dim() == 0 for s in steps) else None


# ---------------------------------------------------------------- cache blocking

#: Bytes of params per chunk for the multi-tensor steps (``chunks``); None: the whole group at once.
#: Measured by ``benchmarks/chunk_sweep.py`` (2-core EPYC, L2 1 MiB a core, L3 32 MiB): see BENCHMARKS.md.
CHUNK_BYTES: int | None = 2 << 20
#: The same for a user's ``elementwise`` rule run by ``to_torch`` (``TorchOptimizer._rule_step``): a tensor
#: larger than this runs piece by piece, so the rule's out-of-place temporaries are small and cached.
RULE_CHUNK_BYTES: int | None = 1 << 20


def cuts(n: int, per: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into the fewest near-equal contiguous ``(start, stop)`` pieces of at most ``per``."""
    k = -(-n // max(per, 1))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


@functools.lru_cache(maxsize=64)
def _plan(numels: tuple, itemsize: int, limit: int) -> tuple:
    """The group cut into chunks of at most ``limit`` bytes of params, in order: each chunk a
    tuple of ``(tensor index, start, stop, first)`` over the flattened tensors, ``first`` marking the piece of
    a tensor that runs first. Whole tensors are packed together while they fit; one larger than a chunk is
    cut into near-equal contiguous pieces, each a chunk of its own."""
    per = max(limit // itemsize, 1)
    chunks, current, room = [], [], per
    for j, n in enumerate(numels):
        if n > per:
            if current:
                chunks.append(current)
                current, room = [], per
            chunks += [[(j, a, b)] for a, b in cuts(n, per)]
            continue
        if n > room and current:
            chunks.append(current)
            current, room = [], per
        current.append((j, 0, n))
        room -= n
    if current:
        chunks.append(current)
    return tuple(tuple((j, a, b, a == 0) for j, a, b in chunk) for chunk in chunks)


def chunks(lists: list, limit: int | None = None) -> list | None:
    """``lists`` (the params, then lists of tensors of one per param: grads, state; or empty) cut into
    cache-sized chunks (see ``_plan``): per chunk, the same lists of the pieces -- views of a flat slice of
    each tensor, which an elementwise step updates in place. A 0-dim entry (a step count, NAdam's
    ``mu_product``) is per tensor, not per element: the piece of a tensor that runs first gets the tensor
    itself, the others a copy of its value taken before any chunk runs, so every piece computes from the
    same old value and the tensor is stepped once. None: a cut tensor is not contiguous (no flat view).

    Why: torch's multi-tensor steps make 6-10 passes over memory, one per ``_foreach_*`` op, and a group far
    larger than the cache streams every pass from DRAM; over a chunk that fits the cache only the first
    pass does (``benchmarks/chunk_sweep.py``)."""
    limit = CHUNK_BYTES if limit is None else limit
    params = lists[0]
    if not limit or sum(p.numel() for p in params) * params[0].element_size() <= limit:
        return [lists]
    plan = _plan(tuple(p.numel() for p in params), params[0].element_size(), limit)
    out = []
    for chunk in plan:
        pieces = [[] for _ in lists]
        for j, a, b, first in chunk:
            whole = a == 0 and b == params[j].numel()
            for lst, mine in zip(lists, pieces):
                if not lst:
                    continue
                t = lst[j]
                if whole:
                    mine.append(t)
                elif t.dim() == 0 and params[j].dim() != 0:
                    mine.append(t if first else t.clone())
                elif t.numel() == params[j].numel() and t.is_contiguous():
                    mine.append(t.view(-1)[a:b])
                else:
                    return None
        out.append(pieces)
    return out


# ---------------------------------------------------------------- torch's fused kernels


def _adam_state(hp: Mapping) -> tuple:
    return ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _adam_kernel(decoupled: bool):
    """torch's fused Adam / AdamW (``torch._fused_adam_``), as ``torch.optim.Adam(fused=True)`` calls it:
    the step count first, then one in-place pass per tensor computing ``scale_by_adam``'s math."""

    def run(hp: Mapping, params: list, grads: list, states: list) -> bool:
        steps = _steps(states)
        if steps is None:
            return False
        amsgrad = bool(hp["amsgrad"])
        _count(steps)
        (torch._fused_adamw_ if decoupled else torch._fused_adam_)(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            steps,
            amsgrad=amsgrad,
            lr=float(hp["lr"]),
            beta1=float(hp["betas"][0]),
            beta2=float(hp["betas"][1]),
            weight_decay=float(hp["weight_decay"]),
            eps=float(hp["eps"]),
            maximize=bool(hp["maximize"]),
            grad_scale=None,
            found_inf=None,
        )
        return True

    return run


def _sgd_state(hp: Mapping) -> tuple:
    return ("step", "momentum_buffer") if hp["momentum"] != 0 else ()


def _sgd_kernel(hp: Mapping, params: list, grads: list, states: list) -> bool:
    """torch's fused SGD (``torch._fused_sgd_``). With momentum, its first step copies the gradient into
    the buffer, as ``trace`` does where ``step == 0``: so all the group's steps must be 0, or none.
    Without momentum the pure rule keeps no state, and the kernel is ``p -= lr (g + wd p)`` in one pass."""
    momentum = float(hp["momentum"])
    first = [False]
    if momentum != 0:
        steps = _steps(states)
        if steps is None:
            return False
        first = torch.stack(steps).eq(0).tolist()  # one read, not one per tensor
        if any(first) and not all(first):
            return False
    torch._fused_sgd_(
        params,
        grads,
        [s["momentum_buffer"] for s in states] if momentum != 0 else [],
        weight_decay=float(hp["weight_decay"]),
        momentum=momentum,
        lr=float(hp["lr"]),
        dampening=float(hp["dampening"]),
        nesterov=bool(hp["nesterov"]),
        maximize=bool(hp["maximize"]),
        is_first_step=first[0],
        grad_scale=None,
        found_inf=None,
    )
    if momentum != 0:
        _count(steps)
    return True


def _adagrad_kernel(hp: Mapping, params: list, grads: list, states: list) -> bool:
    """torch's fused Adagrad (``torch._fused_adagrad_``), no ``lr_decay``: the step count, then one pass."""
    steps = _steps(states)
    if steps is None:
        return False
    _count(steps)
    torch._fused_adagrad_(
        params,
        grads,
        [s["sum"] for s in states],
        steps,
        lr=float(hp["lr"]),
        lr_decay=0.0,
        weight_decay=float(hp["weight_decay"]),
        eps=float(hp["eps"]),
        maximize=bool(hp["maximize"]),
        grad_scale=None,
        found_inf=None,
    )
    return True


def _muon_kernel(hp: Mapping, params: list, grads: list, states: list) -> bool:
    """torch.optim.Muon's own step (the functional ``torch.optim._muon.muon``, what the class calls), in place
    on diyopt's ``momentum_buffer``: ``buf.lerp_(g, 1 - mu)``, Newton-Schulz in bfloat16, then
    ``p.mul_(1 - lr wd)`` and ``p.add_(O, alpha=-lr r)`` -- the param written as torch writes it, where the
    pure rule's update (the new param minus the old) can land one rounding away when added back."""
    if any(p.ndim != 2 for p in params):
        return False
    try:
        step = importlib.import_module("torch.optim._muon").muon
    except (ImportError, AttributeError):  # another torch: the pure rule
        return False
    args = (params, grads, [s["momentum_buffer"] for s in states])
    settings = dict(
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        momentum=float(hp["momentum"]),
        nesterov=bool(hp["nesterov"]),
        ns_coefficients=tuple(float(c) for c in hp["ns_coefficients"]),
        ns_steps=int(hp["ns_steps"]),
        eps=float(hp["eps"]),
        adjust_lr_fn=hp["adjust_lr_fn"],
        has_complex=False,
    )
    # A private function: another torch may take other arguments. Binding them first (not catching a
    # TypeError from the call, which could come half way through an in-place step) falls back untouched.
    try:
        inspect.signature(step).bind(*args, **settings)
    except (TypeError, ValueError):
        return False
    step(*args, **settings)
    return True


# ---------------------------------------------------------------- torch.optim's multi-tensor (foreach) steps


class ForeachStep(NamedTuple):
    """One of torch.optim's functional multi-tensor steps, called as ``torch.optim.<function>.<function>(params,
    grads, *state lists, step counts, foreach=True, **settings)`` -- the call the class makes with
    ``foreach=True`` -- on diyopt's own state tensors."""

    function: str  # "rmsprop": torch.optim.rmsprop.rmsprop
    lists: tuple  # the state lists it takes, in order: a leaf name, or (name, when(hp)) -- an empty list otherwise
    settings: dict  # torch's keyword -> (diyopt's hyperparameter, index into it or None, float or bool)
    accepts: Callable[[list], bool] | None = None  # a further condition on the group's states


def _foreach_kernel(spec: ForeachStep) -> Callable:
    def run(hp: Mapping, params: list, grads: list, states: list) -> bool:
        steps = _steps(states)
        if steps is None or (spec.accepts is not None and not spec.accepts(states)):
            return False
        step = getattr(importlib.import_module(f"torch.optim.{spec.function}"), spec.function)
        lists = []
        for entry in spec.lists:
            name, when = (entry, None) if isinstance(entry, str) else entry
            lists.append([s[name] for s in states] if when is None or when(hp) else [])
        settings = {k: kind(hp[key] if i is None else hp[key][i]) for k, (key, i, kind) in spec.settings.items()}
        for ps, gs, *ls, ss in chunks([params, grads, *lists, steps]) or [[params, grads, *lists, steps]]:
            step(ps, gs, *ls, ss, foreach=True, **settings)
        return True

    return run


def _rmsprop_state(hp: Mapping) -> tuple:
    return ("step", "square_avg", "grad_avg") + (("momentum_buffer",) if hp["momentum"] != 0 else ())


def _names(*names: str) -> Callable[[Mapping], tuple]:
    return lambda hp: ("step", *names)


_LR, _EPS, _WD, _MAX = (
    ("lr", None, float),
    ("eps", None, float),
    ("weight_decay", None, float),
    ("maximize", None, bool),
)
_BETAS = {"beta1": ("betas", 0, float), "beta2": ("betas", 1, float)}

#: ``Optimizer.kernel`` -> (the state leaf names diyopt keeps, torch.optim's multi-tensor step for them)
FOREACH = {
    "rmsprop": (
        _rmsprop_state,
        ForeachStep(
            "rmsprop",
            (
                "square_avg",
                ("grad_avg", lambda hp: bool(hp["centered"])),
                ("momentum_buffer", lambda hp: hp["momentum"] != 0),
            ),
            {
                "maximize": _MAX,
                "lr": _LR,
                "alpha": ("alpha", None, float),
                "eps": _EPS,
                "weight_decay": _WD,
                "momentum": ("momentum", None, float),
                "centered": ("centered", None, bool),
            },
        ),
    ),
    "adadelta": (
        _names("square_avg", "acc_delta"),
        ForeachStep(
            "adadelta",
            ("square_avg", "acc_delta"),
            {"lr": _LR, "rho": ("rho", None, float), "eps": _EPS, "weight_decay": _WD, "maximize": _MAX},
        ),
    ),
    "adamax": (
        _names("exp_avg", "exp_inf"),
        ForeachStep(
            "adamax", ("exp_avg", "exp_inf"), {"maximize": _MAX, "eps": _EPS, **_BETAS, "lr": _LR, "weight_decay": _WD}
        ),
    ),
    "nadam": (
        _names("exp_avg", "exp_avg_sq", "mu_product"),
        ForeachStep(
            "nadam",
            ("exp_avg", "exp_avg_sq", "mu_product"),
            {
                "decoupled_weight_decay": ("decoupled_weight_decay", None, bool),
                "maximize": _MAX,
                **_BETAS,
                "lr": _LR,
                "weight_decay": _WD,
                "momentum_decay": ("momentum_decay", None, float),
                "eps": _EPS,
            },
        ),
    ),
    "radam": (
        _names("exp_avg", "exp_avg_sq"),
        ForeachStep(
            "radam",
            ("exp_avg", "exp_avg_sq"),
            {
                "decoupled_weight_decay": ("decoupled_weight_decay", None, bool),
                "maximize": _MAX,
                **_BETAS,
                "lr": _LR,
                "weight_decay": _WD,
                "eps": _EPS,
            },
        ),
    ),
    "rprop": (
        _names("prev", "step_size"),
        ForeachStep(
            "rprop",
            ("prev", "step_size"),
            {
                "maximize": _MAX,
                "step_size_min": ("step_sizes", 0, float),
                "step_size_max": ("step_sizes", 1, float),
                "etaminus": ("etas", 0, float),
                "etaplus": ("etas", 1, float),
            },
        ),
    ),
    "asgd": (
        _names("eta", "mu", "ax"),
        ForeachStep(
            "asgd",
            ("ax", "mu", "eta"),
            {
                "maximize": _MAX,
                "lambd": ("lambd", None, float),
                "lr": _LR,
                "t0": ("t0", None, float),
                "alpha": ("alpha", None, float),
                "weight_decay": _WD,
            },
            accepts=lambda states: all(s["eta"].dim() == 0 and s["mu"].dim() == 0 for s in states),
        ),
    ),
}


#: ``Optimizer.kernel`` -> (the state leaf names it keeps, the kernel): see ``TorchOptimizer._kernel_step``
KERNELS = {
    "adam": (_adam_state, _adam_kernel(False)),
    "adamw": (_adam_state, _adam_kernel(True)),
    "sgd": (_sgd_state, _sgd_kernel),
    "adagrad": (lambda hp: ("step", "sum"), _adagrad_kernel),
    "muon": (lambda hp: ("momentum_buffer",), _muon_kernel),
    **{name: (names, _foreach_kernel(spec)) for name, (names, spec) in FOREACH.items()},
}

#: Kernels whose 0-dim state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) may be in another floating
#: dtype than the params: diyopt keeps them in float32 as torch does, and torch's step takes them so.
SCALARS_ANY_DTYPE = frozenset({"nadam", "asgd"})
