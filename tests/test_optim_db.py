"""The optimizer database itself (tests/optim_db.py): one record per built-in, complete enough that every
generic test runs every optimizer it can drive."""

from __future__ import annotations

import inspect

import pytest
from optim_db import ALL_FORMS, FIT, IMPLEMENTATION_FLAGS, UPDATE, optim_db

import diyopt


def test_every_builtin_has_exactly_one_record():
    # The library's one registry, diyopt.optim.names(), against the database: a new built-in fails here
    # until its record is added (and every generic test then runs it).
    names = [info.name for info in optim_db]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    missing, extra = set(diyopt.optim.names()) - set(names), set(names) - set(diyopt.optim.names())
    assert not missing, f"built-ins without a record in tests/optim_db.py: {sorted(missing)}"
    assert not extra, f"records of no built-in: {sorted(extra)}"


@pytest.mark.parametrize("info", optim_db, ids=lambda info: info.name)
def test_record_is_complete(info):
    assert set(info.forms) <= set(ALL_FORMS), info.forms
    if set(info.forms) != set(ALL_FORMS):
        assert info.why, f"{info.name}: a record that opts out of a form says why"
    if UPDATE in info.forms:
        assert len(info.settings) >= 5, f"{info.name}: at least 5 settings"
        assert info.torch_cls is not None or info.reference is not None, f"{info.name}: no reference to test against"
    if FIT in info.forms:
        assert info.budget is not None, f"{info.name}: no convergence budget"
        assert info.check_lr is not None, f"{info.name}: no check_lr for the conformance kit"
    for case in info.error_inputs:
        assert not case.torch_too or info.torch_cls is not None, f"{info.name}: torch_too without a torch class"


@pytest.mark.parametrize("info", [i for i in optim_db if i.settings], ids=lambda info: info.name)
def test_settings_cover_every_flag(info):
    # Every argument of the factory is set to a non-default value by at least one setting.
    factory = getattr(diyopt.optim, info.name)
    params = inspect.signature(factory).parameters
    if isinstance(factory, diyopt.elementwise):
        params = factory.defaults
    for arg, p in params.items():
        if arg in IMPLEMENTATION_FLAGS:
            continue
        default = p.default if hasattr(p, "default") else p
        assert any(arg in kw and kw[arg] != default for kw in info.settings), f"{info.name}: no setting sets {arg!r}"


# A declared kernel no record tests, and why it is still declared (strict xfail: fix the library, then
# remove the entry).
UNTESTED_KERNELS: dict[str, str] = {}  # name -> why a declared kernel has no kernel_settings yet


@pytest.mark.parametrize(
    "info",
    [
        pytest.param(
            i,
            id=i.name,
            marks=[pytest.mark.xfail(strict=True, reason=UNTESTED_KERNELS[i.name])]
            if i.name in UNTESTED_KERNELS
            else [],
        )
        for i in optim_db
        if i.settings
    ],
)
def test_a_declared_kernel_has_kernel_settings(info):
    # to_torch's kernel engine runs torch's fused step for a rule whose factory sets Optimizer.kernel;
    # test_to_torch_kernels.py checks it against the pure rule for the record's kernel_settings only.
    factory = getattr(diyopt.optim, info.name)
    kernels = [(kw, factory(**kw).kernel) for kw in info.settings]
    declared = [(kw, kernel) for kw, kernel in kernels if kernel is not None]
    assert info.kernel_settings or not declared, f"{info.name}: kernels {declared} but no kernel_settings"
