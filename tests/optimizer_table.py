"""The one table of optimizers under test, shared by the generic tests (reference, to_torch, check).

Each row is ``(name, torch_class, settings)``:

- ``name``: the factory's name in ``diyopt.optim`` (``getattr(diyopt.optim, name)``).
- ``torch_class``: the ``torch.optim`` class computing the same algorithm, or None where torch has none
  (``lion``: its reference is a from-the-paper loop in ``test_optim_reference.py``).
- ``settings``: >= 5 keyword-argument dicts that together cover every flag of the optimizer. diyopt's
  factories take torch.optim's exact argument names, so one dict builds both:
  ``getattr(diyopt.optim, name)(**kw)`` and ``torch_class(params, **kw)``.

The learning rates are chosen so 100+ steps stay finite on the reference problem (a random least
squares with a little nonlinearity, float64). Keep this table stable: other test files import it.
"""
from __future__ import annotations

import torch

OPTIMIZERS_UNDER_TEST: list[tuple[str, type | None, list[dict]]] = [
    ("gradient_descent", torch.optim.SGD, [
        {},
        {"lr": 1e-2},
        {"lr": 3e-2},
        {"lr": 1e-4},
        {"lr": 5e-3},
    ]),
    ("sgd", torch.optim.SGD, [
        {"lr": 1e-2},
        {"lr": 1e-2, "momentum": 0.9},
        {"lr": 1e-2, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
        {"lr": 1e-2, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        {"lr": 1e-2, "momentum": 0.5, "maximize": True},
        {"lr": 2e-2, "weight_decay": 0.1, "maximize": True},
    ]),
    ("adagrad", torch.optim.Adagrad, [
        {},
        {"lr": 0.1, "lr_decay": 0.01},
        {"lr": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
        {"lr": 0.05, "eps": 1e-6, "maximize": True},
        {"lr": 0.1, "lr_decay": 0.001, "weight_decay": 0.1, "initial_accumulator_value": 0.5},
    ]),
    ("rmsprop", torch.optim.RMSprop, [
        {},
        {"lr": 1e-2, "centered": True},
        {"lr": 1e-3, "momentum": 0.9},
        {"lr": 1e-3, "centered": True, "momentum": 0.5, "weight_decay": 0.01},
        {"lr": 1e-2, "alpha": 0.9, "eps": 1e-6, "maximize": True},
        {"lr": 1e-2, "weight_decay": 0.1, "alpha": 0.95},
    ]),
    ("adadelta", torch.optim.Adadelta, [
        {},
        {"lr": 0.5, "rho": 0.95},
        {"weight_decay": 0.1},
        {"eps": 1e-4, "maximize": True},
        {"lr": 2.0, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01},
    ]),
    ("adam", torch.optim.Adam, [
        {},
        {"lr": 1e-2, "amsgrad": True},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True},
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
        {"lr": 3e-2, "betas": (0.0, 0.9)},
    ]),
    ("adamw", torch.optim.AdamW, [
        {},
        {"lr": 1e-2, "amsgrad": True},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.0},
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True, "weight_decay": 0.05},
    ]),
    ("adamax", torch.optim.Adamax, [
        {},
        {"lr": 1e-2, "betas": (0.8, 0.99)},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "eps": 1e-4, "maximize": True},
        {"lr": 5e-2, "betas": (0.0, 0.9), "weight_decay": 0.01},
    ]),
    ("nadam", torch.optim.NAdam, [
        {},
        {"lr": 1e-2, "momentum_decay": 0.01},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
    ]),
    ("radam", torch.optim.RAdam, [
        {},
        {"lr": 1e-2, "betas": (0.8, 0.99)},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 1e-2, "eps": 1e-6, "maximize": True},
    ]),
    ("rprop", torch.optim.Rprop, [
        {},
        {"lr": 1e-3, "etas": (0.3, 1.5)},
        {"lr": 1e-2, "step_sizes": (1e-3, 0.05)},
        {"lr": 1e-2, "maximize": True},
        {"lr": 0.1, "etas": (0.6, 1.1), "step_sizes": (1e-8, 1.0)},
    ]),
    ("asgd", torch.optim.ASGD, [
        {},
        {"lr": 1e-2, "lambd": 0.1},
        {"lr": 1e-2, "alpha": 0.5, "t0": 10},
        {"lr": 1e-2, "weight_decay": 0.1, "t0": 5, "lambd": 0.01},
        {"lr": 5e-3, "maximize": True, "t0": 20},
    ]),
    ("adafactor", torch.optim.Adafactor, [
        {},
        {"lr": 3e-2, "beta2_decay": -0.5},
        {"lr": 1e-2, "eps": (1e-30, 1e-3), "d": 2.0},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "maximize": True},
    ]),
    ("lion", None, [
        {},
        {"lr": 1e-3},
        {"lr": 1e-3, "betas": (0.95, 0.98)},
        {"lr": 1e-3, "weight_decay": 0.1},
        {"lr": 3e-4, "betas": (0.8, 0.999), "weight_decay": 1.0, "maximize": True},
    ]),
]


def settings(name: str) -> list[dict]:
    """The settings of one row, by optimizer name."""
    for row_name, _, rows in OPTIMIZERS_UNDER_TEST:
        if row_name == name:
            return rows
    raise KeyError(name)


def cases() -> list[tuple[str, type | None, dict]]:
    """Every ``(name, torch_class, kwargs)`` triple, flattened: handy for ``pytest.mark.parametrize``."""
    return [(name, cls, kw) for name, cls, rows in OPTIMIZERS_UNDER_TEST for kw in rows]


def case_id(case: tuple) -> str:
    """A readable pytest id: ``adam-lr=0.01,amsgrad=True``."""
    name, _, kw = case
    return name + "-" + (",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")


def lockstep_problem(seed: int = 0, batches: int = 200):
    """Initial params ``{"w": (5, 3), "b": (3,)}`` and ``loss(params, step)``: a random least squares with a
    little nonlinearity, on minibatch ``step`` (cycling through ``batches`` of them).

    Both optimizers in a lockstep run see the same batch at each step. A fresh batch keeps the gradient's
    spread realistic instead of shrinking to zero at the optimum, where centered RMSprop's
    ``E[g^2] - E[g]^2`` cancels and would amplify the rounding of any two correct implementations far
    beyond 1e-12.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + torch.randn(400, 3, generator=g,
                                                                               dtype=torch.float64)
    params0 = {"w": 0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64),
               "b": torch.randn(3, generator=g, dtype=torch.float64)}
    picks = [torch.randperm(400, generator=g)[:20] for _ in range(batches)]

    def loss(p, step=0):
        i = picks[step % len(picks)]
        r = x[i] @ p["w"] + p["b"] - y[i]
        return (r ** 2).mean() + 0.1 * torch.sin(3 * p["w"]).sum()

    return params0, loss
