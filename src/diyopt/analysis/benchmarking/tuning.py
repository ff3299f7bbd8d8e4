"""Fair tuning, the AlgoPerf way: a documented quasi-random search space per optimizer.

Rules (after AlgoPerf's external tuning ruleset, Dahl et al. 2023):

- each optimizer has a search space (:data:`SPACES`, or ``space=`` for one's own): a box over a few
  hyperparameters, log-uniform for learning rates; trial ``k`` is point ``k`` of a scrambled Sobol sequence
  (``torch.quasirandom.SobolEngine(d, scramble=True, seed=0)``) mapped into the box -- the same points for
  every task, study and optimizer of the same space;
- a *study* is the ``N`` trials run from one seed (its starting point, its noise); there are ``S`` studies;
- a study solves a task when any of its trials passes; the task counts as solved when the median study
  does (more than half of them, for odd ``S``: ``solved_studies > S / 2``);
- ``attempts``: the median over studies of the number of trials up to and including the first passing one
  (trials in Sobol order; ``inf`` for a study that never passes).

Trials of one study run as one vectorized computation: the trial's point is one hyperparameter, ``point``,
of a wrapper optimizer (:func:`tunable`), which ``diyopt.sweep`` maps over like any grid value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from diyopt.core.contract import Optimizer

#: name -> {hyperparameter: (low, high, "log" | "linear")}; ``beta1`` sets ``betas[0]`` (betas[1] kept).
SPACES: dict[str, dict[str, tuple[float, float, str]]] = {
    "sgd": {"lr": (1e-4, 1.0, "log"), "momentum": (0.0, 0.99, "linear")},
    "gradient_descent": {"lr": (1e-4, 1.0, "log")},
    "adam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")},
    "adamw": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")},
    "nadam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")},
    "radam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")},
    "adamax": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear")},
    "lion": {"lr": (1e-5, 1e-1, "log"), "beta1": (0.5, 0.99, "linear")},
    "rmsprop": {"lr": (1e-5, 1e-1, "log")},
    "adagrad": {"lr": (1e-3, 10.0, "log")},
    "adadelta": {"lr": (1e-2, 100.0, "log")},
    "rprop": {"lr": (1e-4, 1.0, "log")},
    "asgd": {"lr": (1e-4, 1.0, "log")},
}
#: an optimizer without an entry (a user's rule): its ``lr`` only, log-uniform over this range.
DEFAULT_SPACE = {"lr": (1e-4, 1.0, "log")}


def space_for(name: str, optimizer: Optimizer | type, space: Mapping | None = None) -> dict:
    """The search space of an optimizer (a diyopt optimizer or a ``torch.optim`` class, whose constructor's
    keyword arguments are its hyperparameters); one-line errors when it cannot be tuned."""
    space = dict(space if space is not None else SPACES.get(name, DEFAULT_SPACE))
    known = set(optimizer.hyperparams or {}) if isinstance(optimizer, Optimizer) else set(torch_defaults(optimizer))
    for key, box in space.items():
        hp = "betas" if key == "beta1" else key
        if hp not in known:
            raise ValueError(
                f"cannot tune {name}: its search space names {key!r}, which is not one of its "
                f"hyperparameters ({', '.join(sorted(known)) or 'none'}); pass space={{...}}"
            )
        if not (isinstance(box, tuple) and len(box) == 3 and box[2] in ("log", "linear") and box[0] <= box[1]):
            raise ValueError(f"search space {key}={box!r} for {name}: expected (low, high, 'log'|'linear')")
        if box[2] == "log" and box[0] <= 0:
            raise ValueError(f"search space {key}={box!r} for {name}: a log range needs low > 0")
    return space


def points(space: Mapping, n: int) -> list[dict[str, float]]:
    """The first ``n`` quasi-random points of ``space`` (scrambled Sobol, seed 0), as hyperparameter dicts."""
    keys = list(space)
    if not keys:
        return [{}] * n
    u = torch.quasirandom.SobolEngine(len(keys), scramble=True, seed=0).draw(n, dtype=torch.float64)
    out = []
    for row in u.tolist():
        pt = {}
        for k, x in zip(keys, row):
            lo, hi, kind = space[k]
            pt[k] = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) if kind == "log" else lo + x * (hi - lo)
        out.append(pt)
    return out


def torch_defaults(cls: type) -> dict[str, Any]:
    """A ``torch.optim`` class's hyperparameters: its constructor's keyword arguments and their defaults."""
    import inspect

    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def torch_kwargs(cls: type, keys: list[str], point: tuple) -> dict[str, Any]:
    """The constructor arguments of trial ``point`` for a ``torch.optim`` class (``beta1`` sets
    ``betas[0]``, ``betas[1]`` keeps the class's default, as for a diyopt optimizer)."""
    out: dict[str, Any] = {}
    for k, v in zip(keys, point):
        if k == "beta1":
            out["betas"] = (float(v), float(torch_defaults(cls)["betas"][1]))
        else:
            out[k] = float(v)
    return out


def _settings(base: Optimizer, keys: list[str], point: tuple) -> dict[str, Any]:
    hyper: dict[str, Any] = {}
    for k, v in zip(keys, point):
        if k == "beta1":
            b = base.hyperparams["betas"]
            # betas must be both floats or both tensors (torch's rule); inside vmap ``v`` is a tensor
            b2 = torch.full_like(v, float(b[1])) if isinstance(v, torch.Tensor) else b[1]
            hyper["betas"] = (v, b2)
        else:
            hyper[k] = v
    return hyper


def tunable(base: Optimizer, keys: list[str], effect=None) -> Optimizer:
    """``base`` with one hyperparameter, ``point`` (a tuple, one value per ``keys``), that sets the tuned
    ones -- so a list of arbitrary points is one ``sweep`` grid axis -- wrapped by :func:`with_effect`."""
    hyper = base.hyperparams or {}
    start = tuple(float(hyper["betas"][0]) if k == "beta1" else float(hyper[k]) for k in keys)

    def build(point=start) -> Optimizer:
        inner = base.replace_hyperparams(**_settings(base, keys, point)) if keys else base
        opt = with_effect(inner, effect)
        return opt._replace(hyperparams={"point": point}, build=build)

    return build()


def with_effect(inner: Optimizer, effect) -> Optimizer:
    """``inner`` fed the task's gradients: state ``(step, extra, inner_state)``; the update rewrites the
    gradients with ``effect.apply(grads, extra, step)`` (identity without an effect), then runs ``inner``.
    The step counter is an int64 tensor, so it is vmapped, guarded and saved like any state."""

    def init(params):
        extra = effect.init(params) if effect is not None else ()
        return (torch.zeros((), dtype=torch.int64), extra, inner.init(params))

    def update(grads, state, params=None):
        step, extra, inner_state = state
        if effect is not None:
            grads, extra = effect.apply(grads, extra, step)
        updates, inner_state = inner.update(grads, inner_state, params)
        return updates, (step + 1, extra, inner_state)

    return Optimizer(init, update, inner.hyperparams, None, flattenable=False)


STUDY = "_study"  # the params leaf that tells a run which study (seed) it belongs to; see with_studies


def with_studies(inner: Optimizer, effect) -> Optimizer:
    """:func:`with_effect` for the runs of *several* studies in one sweep.

    The params carry one extra 0-dim leaf, :data:`STUDY` (the study's index, a float that never moves: its
    update is zero), so the update knows whose noise table to read: ``effect`` is a :class:`StudyEffect`
    whose ``apply(grads, extra, step, study)`` takes that index. The loss adds ``0 * params[STUDY]``, so the
    leaf gets a zero gradient; ``inner`` never sees it.
    """

    def init(params):
        own = {k: v for k, v in params.items() if k != STUDY}
        extra = effect.init(own) if effect is not None else ()
        return (torch.zeros((), dtype=torch.int64), extra, inner.init(own))

    def update(grads, state, params=None):
        step, extra, inner_state = state
        study = params[STUDY].to(torch.int64)
        grads = {k: g for k, g in grads.items() if k != STUDY}
        own = {k: v for k, v in params.items() if k != STUDY}
        if effect is not None:
            grads, extra = effect.apply(grads, extra, step, study)
        updates, inner_state = inner.update(grads, inner_state, own)
        updates = {**updates, STUDY: torch.zeros_like(params[STUDY])}
        return updates, (step + 1, extra, inner_state)

    return Optimizer(init, update, inner.hyperparams, None, flattenable=False)


def tunable_studies(base: Optimizer, keys: list[str], effect=None) -> Optimizer:
    """:func:`tunable` over :func:`with_studies`: one hyperparameter ``point``, runs of several studies."""
    hyper = base.hyperparams or {}
    start = tuple(float(hyper["betas"][0]) if k == "beta1" else float(hyper[k]) for k in keys)

    def build(point=start) -> Optimizer:
        inner = base.replace_hyperparams(**_settings(base, keys, point)) if keys else base
        return with_studies(inner, effect)._replace(hyperparams={"point": point}, build=build)

    return build()
