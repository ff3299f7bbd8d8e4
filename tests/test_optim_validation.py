"""Validation in one layer with torch's wording: every ``error_inputs`` row of the optimizer database
(tests/optim_db.py) is checked by one test.

Each row that torch.optim also rejects (``torch_too``) is checked against torch too, so the wording stays
torch's."""

from __future__ import annotations

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
