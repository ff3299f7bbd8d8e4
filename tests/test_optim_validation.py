"""Validation in one layer with torch's wording: one table of (factory, kwargs, error, regex) rows, one test.

Each row that torch.optim also rejects is checked against torch too, so the wording stays torch's."""
from __future__ import annotations

import pytest
import torch

from diyopt import optim, schedules

TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
         "adadelta": torch.optim.Adadelta, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
         "adamax": torch.optim.Adamax, "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam,
         "rprop": torch.optim.Rprop}

ERROR_CASES = [
    ("sgd", {"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$"),
    ("sgd", {"momentum": -0.5}, ValueError, r"^Invalid momentum value: -0.5$"),
    ("sgd", {"weight_decay": -1e-2}, ValueError, r"^Invalid weight_decay value: -0.01$"),
    ("sgd", {"nesterov": True}, ValueError, r"^Nesterov momentum requires a momentum and zero dampening$"),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError,
     r"^Nesterov momentum requires a momentum and zero dampening$"),
    ("adagrad", {"lr": -0.1}, ValueError, r"^Invalid learning rate: -0.1$"),
    ("adagrad", {"lr_decay": -1.0}, ValueError, r"^Invalid lr_decay value: -1.0$"),
    ("adagrad", {"initial_accumulator_value": -1.0}, ValueError, r"^Invalid initial_accumulator_value value: -1.0$"),
    ("adagrad", {"eps": -1e-10}, ValueError, r"^Invalid epsilon value: -1e-10$"),
    ("adagrad", {"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$"),
    ("rmsprop", {"alpha": -0.1}, ValueError, r"^Invalid alpha value: -0.1$"),
    ("rmsprop", {"momentum": -0.1}, ValueError, r"^Invalid momentum value: -0.1$"),
    ("rmsprop", {"eps": -1.0}, ValueError, r"^Invalid epsilon value: -1.0$"),
    ("adadelta", {"rho": 1.5}, ValueError, r"^Invalid rho value: 1.5$"),
    ("adadelta", {"rho": -0.1}, ValueError, r"^Invalid rho value: -0.1$"),
    ("adadelta", {"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$"),
    ("adam", {"betas": (1.0, 0.999)}, ValueError, r"^Invalid beta parameter at index 0: 1.0$"),
    ("adam", {"betas": (0.9, -0.1)}, ValueError, r"^Invalid beta parameter at index 1: -0.1$"),
    ("adam", {"eps": -1e-8}, ValueError, r"^Invalid epsilon value: -1e-08$"),
    ("adam", {"weight_decay": -0.1}, ValueError, r"^Invalid weight_decay value: -0.1$"),
    ("adamw", {"lr": -1e-3}, ValueError, r"^Invalid learning rate: -0.001$"),
    ("adamw", {"betas": (0.9, 1.0)}, ValueError, r"^Invalid beta parameter at index 1: 1.0$"),
    ("adamax", {"betas": (-0.1, 0.9)}, ValueError, r"^Invalid beta parameter at index 0: -0.1$"),
    ("nadam", {"momentum_decay": -1.0}, ValueError, r"^Invalid momentum_decay value: -1.0$"),
    ("nadam", {"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$"),
    ("radam", {"eps": -1.0}, ValueError, r"^Invalid epsilon value: -1.0$"),
    ("radam", {"betas": (0.9, 1.5)}, ValueError, r"^Invalid beta parameter at index 1: 1.5$"),
    ("rprop", {"etas": (1.5, 1.2)}, ValueError, r"^Invalid eta values: 1.5, 1.2$"),
    ("rprop", {"etas": (0.5, 0.9)}, ValueError, r"^Invalid eta values: 0.5, 0.9$"),
    ("rprop", {"lr": -1.0}, ValueError, r"^Invalid learning rate: -1.0$"),
    ("rprop", {"step_sizes": (1.0, 1e-3)}, ValueError, r"^Invalid step_sizes values: 1.0, 0.001$"),
    ("rprop", {"lr": lambda t: 0.1}, TypeError, r"rprop's lr is its initial step size and cannot be a schedule"),
    ("lion", {"lr": -1e-4}, ValueError, r"^Invalid learning rate: -0.0001$"),
    ("lion", {"betas": (0.9, 1.0)}, ValueError, r"^Invalid beta parameter at index 1: 1.0$"),
    ("lion", {"weight_decay": -1.0}, ValueError, r"^Invalid weight_decay value: -1.0$"),
    ("adam", {"betas": 0.9}, TypeError, r"betas must be a pair \(beta1, beta2\), got 0.9"),
    # torch's implementation flags are accepted (they change no numbers); torch's checks of them are kept
    ("adam", {"foreach": True, "fused": True}, RuntimeError, r"`fused` and `foreach` cannot be `True` together"),
    ("sgd", {"fused": True, "differentiable": True}, RuntimeError, r"`fused` does not support `differentiable`"),
    # rules whose lr enters their own step-size arithmetic take no schedule
    ("asgd", {"lr": schedules.constant(0.1)}, TypeError, r"asgd's lr cannot be a schedule"),
    ("muon", {"lr": schedules.constant(0.1)}, TypeError, r"muon's lr cannot be a schedule"),
]


@pytest.mark.parametrize("name,kwargs,error,regex", ERROR_CASES,
                         ids=[f"{n}-{kw}" for n, kw, _, _ in ERROR_CASES])
def test_bad_hyperparameters_raise_torch_errors(name, kwargs, error, regex):
    with pytest.raises(error, match=regex):
        getattr(optim, name)(**kwargs)
    # Where torch validates the same argument, it says the same thing.
    if name in TORCH and error is ValueError and "step_sizes" not in kwargs:
        with pytest.raises(ValueError, match=regex):
            TORCH[name]([torch.zeros(1, requires_grad=True)], **kwargs)


def test_tensor_hyperparameters_are_not_checked():
    # The batched engine sweeps tensors; a value is only checked when it is a Python number.
    optim.adam(lr=torch.tensor(-1.0), betas=(torch.tensor(0.9), torch.tensor(0.999)))
