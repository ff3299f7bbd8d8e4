"""Validation in one layer with torch's wording: every ``error_inputs`` row of the optimizer database
(tests/optim_db.py) is checked by one test.

Each row that torch.optim also rejects (``torch_too``) is checked against torch too, so the wording stays
torch's."""

from __future__ import annotations

import itertools

import pytest
import torch
from optim_db import optim_db

from diyopt import optim

ERROR_CASES = [pytest.param(info, e, id=f"{info.name}-{e.kwargs}") for info in optim_db for e in info.error_inputs]


@pytest.mark.parametrize("info,case", ERROR_CASES)
def test_bad_hyperparameters_raise_torch_errors(info, case):
    with pytest.raises(case.error, match=case.regex):
        getattr(optim, info.name)(**case.kwargs)
    # Where torch validates the same argument, it says the same thing.
    if case.torch_too:
        with pytest.raises(case.error, match=case.regex):
            info.torch_cls([torch.zeros(1, requires_grad=True)], **case.kwargs)


def test_tensor_hyperparameters_are_not_checked():
    # The batched engine sweeps tensors; a value is only checked when it is a Python number.
    optim.adam(lr=torch.tensor(-1.0), betas=(torch.tensor(0.9), torch.tensor(0.999)))


def _two_bad_settings():
    """Every pair of the database's one-setting rows that torch rejects too, given together."""
    for info in optim_db:
        rows = [e for e in info.error_inputs if e.torch_too and len(e.kwargs) == 1]
        for a, b in itertools.combinations(rows, 2):
            if a.kwargs.keys() != b.kwargs.keys():
                kwargs = {**a.kwargs, **b.kwargs}
                yield pytest.param(info, kwargs, id=f"{info.name}-{kwargs}")


@pytest.mark.parametrize("info,kwargs", list(_two_bad_settings()))
def test_of_two_bad_settings_the_one_torch_names_is_named(info, kwargs):
    # check_settings checks in the order a factory names them: torch's order, so the same error comes first
    with pytest.raises(Exception) as theirs:
        info.torch_cls([torch.zeros(1, requires_grad=True)], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(optim, info.name)(**kwargs)
    assert str(ours.value) == str(theirs.value)
