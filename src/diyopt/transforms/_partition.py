"""Routing by tensor: each parameter to one of several rules, chosen by its name or shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import Tensor

from diyopt.core.contract import Optimizer
from diyopt.core.tree import Params

Labels = Callable[[str, Tensor], str] | Mapping[str, str]


class Routing(NamedTuple):
    """How a :func:`partition` routes: its rules and ``route(tensors) -> {label: [names]}`` (every label, in
    the rules' order). ``to_torch`` reads it to run each rule's own fast engine on its own params."""

    rules: Mapping[str, Optimizer]
    route: Callable[[Params], dict[str, list[str]]]


def routing(optimizer: Optimizer) -> Routing | None:
    """The :class:`Routing` of a :func:`partition` (also one rebuilt with other settings), else None."""
    return getattr(optimizer.update, "routing", None)


def partition(rules: Mapping[str, Optimizer], labels: Labels) -> Optimizer:
    """Send each parameter to one rule, chosen by a label (optax's ``partition``); one transform.

    Args:
      rules: ``{label: optimizer}``, e.g. ``{"muon": optim.muon(lr=0.02), "adamw": optim.adamw(lr=3e-4)}``.
        Any diyopt optimizers or transforms.
      labels: ``labels(name, tensor) -> label``, called with each parameter's name and a tensor of its
        shape and dtype (the param at ``init``, its gradient at each ``update``); or a ``{name: label}``
        dict naming every parameter.

    Each rule sees, and keeps state for, only its own parameters: the state is ``{label: rule's state}``,
    so a rule's per-parameter state stays under the parameter's name (``to_torch`` and checkpoints find it
    there). A label that names no rule is an error naming the parameter. Not flattenable: the routing
    depends on names and shapes.

    Example -- Muon for the hidden matrices, AdamW for everything else::

        opt = partition({"muon": optim.muon(lr=0.02), "adamw": optim.adamw(lr=3e-4)},
                        lambda name, p: "muon" if p.ndim == 2 and "embed" not in name else "adamw")
    """
    if not isinstance(rules, Mapping) or not rules:
        raise ValueError("partition needs a non-empty {label: optimizer} dict")
    for label, rule in rules.items():
        if not isinstance(rule, Optimizer):
            raise TypeError(f"partition rule {label!r} is a {type(rule).__name__}, not a diyopt Optimizer")
    if not (callable(labels) or isinstance(labels, Mapping)):
        raise TypeError(
            f"labels must be a function (name, tensor) -> label or a {{name: label}} dict, got {type(labels).__name__}"
        )

    def route(tensors: Params) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {label: [] for label in rules}
        for name, t in tensors.items():
            if isinstance(labels, Mapping):
                if name not in labels:
                    raise ValueError(f"partition: parameter {name!r} has no label; labels names {sorted(labels)}")
                label = labels[name]
            else:
                label = labels(name, t)
            if label not in rules:
                raise ValueError(
                    f"partition: parameter {name!r} is labelled {label!r}, which names no rule; rules: {sorted(rules)}"
                )
            groups[label].append(name)
        return groups

    def init(params: Params) -> dict[str, Any]:
        return {
            label: rules[label].init({n: params[n] for n in names}) if names else ()
            for label, names in route(params).items()
        }

    def update(grads: Params, state: dict, params: Params | None = None):
        updates: dict[str, Tensor] = {}
        new_state = {}
        for label, names in route(grads).items():
            if not names:
                new_state[label] = state[label]
                continue
            sub_params = None if params is None else {n: params[n] for n in names}
            sub, new_state[label] = rules[label].update({n: grads[n] for n in names}, state[label], sub_params)
            updates.update(sub)
        return {k: updates[k] for k in grads}, new_state

    update.routing = Routing(dict(rules), route)  # type: ignore[attr-defined] -- what to_torch reads
    return Optimizer(init, update, flattenable=False)
