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

The learning-rate schedule is part of the search space (:data:`SCHEDULE`, as AlgoPerf's baselines tune a
warmup then a decay): ``warmup``, the fraction of the step budget ``T`` over which the step ramps up
linearly, and ``decay``, a choice between a constant step (0) and a cosine decay to zero over the budget
(1). At update ``t = 0, 1, ...`` the step is scaled by

    f(t) = min(1, (t + 1) / max(1, warmup T)) * ((1 - decay) + decay * cosine_decay(1, T)(t))

(``cosine_decay`` from :mod:`diyopt.schedules`). For a diyopt rule the factor multiplies its update (the
step counter lives in the wrapper's state, so it vmaps); for a ``torch.optim`` class it multiplies
``param_group["lr"]`` before each ``step()`` -- the same thing for every rule whose step is proportional to
``lr``, which is why only those get the schedule dimensions (not Rprop, whose ``lr`` is an initial step
size, nor ASGD, whose ``lr`` enters its averaging). A spec that fixes ``lr`` fixes the schedule too
(constant, no warmup).

Trials of one study run as one vectorized computation: the trial's point is one hyperparameter, ``point``,
of a wrapper optimizer (:func:`tunable`), which ``diyopt.sweep`` maps over like any grid value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from diyopt.core.contract import Optimizer

#: the schedule dimensions (see the module docstring): a warmup fraction of the budget and a choice,
#: 0 constant / 1 cosine decay ("choice": the integers low..high, equally likely).
SCHEDULE: dict[str, tuple[float, float, str]] = {"warmup": (0.0, 0.1, "linear"), "decay": (0, 1, "choice")}
SCHEDULE_KEYS = tuple(SCHEDULE)
#: name -> {hyperparameter: (low, high, "log" | "linear" | "choice")}; ``beta1`` sets ``betas[0]`` (betas[1]
#: kept); ``warmup`` and ``decay`` are the schedule's (:data:`SCHEDULE`).
SPACES: dict[str, dict[str, tuple[float, float, str]]] = {
    "sgd": {"lr": (1e-4, 1.0, "log"), "momentum": (0.0, 0.99, "linear"), **SCHEDULE},
    "gradient_descent": {"lr": (1e-4, 1.0, "log"), **SCHEDULE},
    "adam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "adamw": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "nadam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "radam": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "adamax": {"lr": (1e-4, 1.0, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "lion": {"lr": (1e-5, 1e-1, "log"), "beta1": (0.5, 0.99, "linear"), **SCHEDULE},
    "rmsprop": {"lr": (1e-5, 1e-1, "log"), **SCHEDULE},
    "adagrad": {"lr": (1e-3, 10.0, "log"), **SCHEDULE},
    "adadelta": {"lr": (1e-2, 100.0, "log"), **SCHEDULE},
    "rprop": {"lr": (1e-4, 1.0, "log")},  # lr is the initial step size: no schedule
    "asgd": {"lr": (1e-4, 1.0, "log")},  # lr enters the averaging: no schedule
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
        if key in SCHEDULE_KEYS and "lr" in known:
            pass  # a schedule scales the step of any rule with an lr
        elif hp not in known:
            raise ValueError(
                f"cannot tune {name}: its search space names {key!r}, which is not one of its "
                f"hyperparameters ({', '.join(sorted(known)) or 'none'}); pass space={{...}}"
            )
        if not (
            isinstance(box, tuple) and len(box) == 3 and box[2] in ("log", "linear", "choice") and box[0] <= box[1]
        ):
            raise ValueError(f"search space {key}={box!r} for {name}: expected (low, high, 'log'|'linear'|'choice')")
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
            if kind == "log":
                pt[k] = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
            elif kind == "choice":  # the integers lo..hi, each on an equal share of [0, 1)
                pt[k] = float(min(int(lo) + math.floor(x * (int(hi) - int(lo) + 1)), int(hi)))
            else:
                pt[k] = lo + x * (hi - lo)
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
        if k in SCHEDULE_KEYS:
            continue  # the schedule: see schedule_of / effected
        if k == "beta1":
            out["betas"] = (float(v), float(torch_defaults(cls)["betas"][1]))
        else:
            out[k] = float(v)
    return out


def schedule_of(keys: list[str], point: tuple, steps: int | None):
    """``(warmup, decay, steps)`` of trial ``point`` (None when the space has no schedule dimension or the
    budget is unknown): what :func:`schedule_factor` needs."""
    if steps is None or not any(k in SCHEDULE_KEYS for k in keys):
        return None
    got = dict(zip(keys, point))
    return (got.get("warmup", 0.0), got.get("decay", 0.0), int(steps))


def schedule_factor(step, schedule, dtype=torch.float64):
    r"""The step's scale at update ``step`` (a 0-dim tensor, 0 first) for ``schedule = (warmup, decay, T)``:

    :math:`f(t) = \min(1, (t+1)/\max(1, wT)) \, ((1-d) + d \cdot \mathrm{cosine\_decay}(1, T)(t))`.

    ``warmup`` and ``decay`` may be tensors (batched under vmap): the arithmetic never branches on them.
    """
    from diyopt import schedules

    warmup, decay, steps = schedule
    t = torch.as_tensor(step).to(dtype)
    span = torch.clamp(torch.as_tensor(warmup, dtype=dtype) * steps, min=1.0)
    ramp = torch.clamp((t + 1) / span, max=1.0)
    decay = torch.as_tensor(decay, dtype=dtype)
    return ramp * ((1 - decay) + decay * schedules.cosine_decay(1.0, steps)(t))


def _settings(base: Optimizer, keys: list[str], point: tuple) -> dict[str, Any]:
    hyper: dict[str, Any] = {}
    for k, v in zip(keys, point):
        if k in SCHEDULE_KEYS:
            continue  # applied by the wrapper (with_effect / with_studies), not a hyperparameter of base
        if k == "beta1":
            b = base.hyperparams["betas"]
            # betas must be both floats or both tensors (torch's rule); inside vmap ``v`` is a tensor
            b2 = torch.full_like(v, float(b[1])) if isinstance(v, torch.Tensor) else b[1]
            hyper["betas"] = (v, b2)
        else:
            hyper[k] = v
    return hyper


def _start(base: Optimizer, keys: list[str]) -> tuple:
    hyper = base.hyperparams or {}
    return tuple(
        0.0 if k in SCHEDULE_KEYS else float(hyper["betas"][0]) if k == "beta1" else float(hyper[k]) for k in keys
    )


def tunable(base: Optimizer, keys: list[str], effect=None, steps: int | None = None) -> Optimizer:
    """``base`` with one hyperparameter, ``point`` (a tuple, one value per ``keys``), that sets the tuned
    ones -- so a list of arbitrary points is one ``sweep`` grid axis -- wrapped by :func:`with_effect`
    (with the point's schedule over a budget of ``steps`` updates)."""
    start = _start(base, keys)

    def build(point=start) -> Optimizer:
        inner = base.replace_hyperparams(**_settings(base, keys, point)) if keys else base
        opt = with_effect(inner, effect, schedule_of(keys, point, steps))
        return opt._replace(hyperparams={"point": point}, build=build)

    return build()


def _scaled(updates, step, schedule, like):
    """The updates times the schedule's factor, in the params' dtype (a float64 tensor hyperparameter, a
    Sobol point's ``lr``, would otherwise promote a float32 update, and the params with it)."""
    f = None if schedule is None else schedule_factor(step, schedule)
    return {k: (u if f is None else u * f.to(u.dtype)).to(like[k].dtype) for k, u in updates.items()}


def with_effect(inner: Optimizer, effect, schedule=None) -> Optimizer:
    """``inner`` fed the task's gradients: state ``(step, extra, inner_state)``; the update rewrites the
    gradients with ``effect.apply(grads, extra, step)`` (identity without an effect), then runs ``inner``,
    whose update is scaled by :func:`schedule_factor` when ``schedule`` is given.
    The step counter is an int64 tensor, so it is vmapped, guarded and saved like any state."""

    def init(params):
        extra = effect.init(params) if effect is not None else ()
        return (torch.zeros((), dtype=torch.int64), extra, inner.init(params))

    def update(grads, state, params=None):
        step, extra, inner_state = state
        if effect is not None:
            grads, extra = effect.apply(grads, extra, step)
        updates, inner_state = inner.update(grads, inner_state, params)
        return _scaled(updates, step, schedule, grads), (step + 1, extra, inner_state)

    return Optimizer(init, update, inner.hyperparams, None, flattenable=False)


STUDY = "_study"  # the params leaf that tells a run which study (seed) it belongs to; see with_studies


def with_studies(inner: Optimizer, effect, schedule=None) -> Optimizer:
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
        updates = {**_scaled(updates, step, schedule, grads), STUDY: torch.zeros_like(params[STUDY])}
        return updates, (step + 1, extra, inner_state)

    return Optimizer(init, update, inner.hyperparams, None, flattenable=False)


def tunable_studies(base: Optimizer, keys: list[str], effect=None, steps: int | None = None) -> Optimizer:
    """:func:`tunable` over :func:`with_studies`: one hyperparameter ``point``, runs of several studies."""
    start = _start(base, keys)

    def build(point=start) -> Optimizer:
        inner = base.replace_hyperparams(**_settings(base, keys, point)) if keys else base
        opt = with_studies(inner, effect, schedule_of(keys, point, steps))
        return opt._replace(hyperparams={"point": point}, build=build)

    return build()
